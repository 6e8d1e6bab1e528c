//! The operator's commands against live pods through a real containerd:
//! `husk metrics` / `husk serve-metrics` scraped while pods run, boot and
//! fail (names, labels, and values that move), and `husk console` running
//! `uname -r` in a pod's guest, refused when the console is off.

use husk_config::Config;
use husk_shim::telemetry::text::Exposition;
use husk_tests::containerd::{build_bin_dir, Containerd};
use husk_tests::ctr::*;
use husk_tests::*;
use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `husk ARGS` with the harness' husk configuration.
fn husk(ctrd: &Containerd, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(build_bin_dir().join("husk"))
        .args(args)
        .env(husk_config::CONFIG_ENV, ctrd.husk_config_path())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("husk binary (cargo build -p husk-shim --bins)");
    if let Some(input) = stdin {
        // A refused console exits without reading: its input may meet a
        // closed pipe, which is the refusal, not a failure of the test.
        match child.stdin.take().unwrap().write_all(input) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            r => r.unwrap(),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("husk {args:?} did not return within 2 minutes");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn config(ctrd: &Containerd) -> Config {
    Config::load(ctrd.husk_config_path()).unwrap()
}

fn set_config(ctrd: &Containerd, config: &Config) {
    std::fs::write(ctrd.husk_config_path(), config.to_toml()).unwrap();
}

fn scrape(ctrd: &Containerd) -> Exposition {
    let out = husk(ctrd, &["metrics"], None);
    assert!(out.status.success(), "husk metrics: {}", text(&out.stderr));
    Exposition::parse(&text(&out.stdout)).expect("husk metrics prints the text format")
}

/// The one value of `name` with `labels`.
fn one(exp: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
    let v = exp.find(name, labels);
    assert_eq!(v.len(), 1, "{name}{labels:?}: {v:?}\n{}", exp.render());
    v[0]
}

/// The number of calls `call` made, 0 when there were none.
fn calls(exp: &Exposition, pod: &str, call: &str) -> f64 {
    exp.find(
        "husk_pod_agent_call_duration_seconds_count",
        &[("pod", pod), ("call", call)],
    )
    .first()
    .copied()
    .unwrap_or(0.0)
}

#[test]
fn metrics_name_label_and_move_with_the_pods() {
    let ctrd = setup();
    let cfg = config(&ctrd);
    let empty = scrape(&ctrd);
    assert_eq!(one(&empty, "husk_node_pods_running", &[]), 0.0);

    run_detached(&ctrd, HUSK, "metrics-a", &["sleep", "1000"]);
    let first = scrape(&ctrd);
    let pod = [("pod", "metrics-a")];
    let (accel, backend) = husk_hypervisor::resolve_vmm(&cfg.hypervisor);
    println!("{}", first.render());
    assert_eq!(
        one(
            &first,
            "husk_pod_info",
            &[
                ("pod", "metrics-a"),
                ("accelerator", accel.accelerator.as_str()),
                ("backend", backend.backend.as_str()),
            ]
        ),
        1.0
    );
    assert_eq!(
        one(&first, "husk_pod_vcpus", &pod),
        cfg.hypervisor.vcpus as f64
    );
    assert_eq!(
        one(&first, "husk_pod_memory_bytes", &pod),
        cfg.hypervisor.memory_mib as f64 * 1048576.0
    );
    let phase = |p: &str| {
        one(
            &first,
            "husk_pod_boot_phase_seconds",
            &[("pod", "metrics-a"), ("phase", p)],
        )
    };
    for p in [
        "daemons",
        "vmm_spawn",
        "agent_ready",
        "total",
        "guest_kernel",
        "guest_agent_init",
    ] {
        assert!(phase(p) > 0.0, "phase {p} is {}", phase(p));
    }
    assert!(phase("agent_ready") <= phase("total"));
    assert!(phase("guest_kernel") <= phase("agent_ready"));
    for process in ["shim", "vmm", "virtiofsd", "vsock_backend"] {
        let rss = one(
            &first,
            "husk_pod_process_resident_bytes",
            &[("pod", "metrics-a"), ("process", process)],
        );
        assert!(rss > 1048576.0, "{process} RSS {rss}");
    }
    assert!(calls(&first, "metrics-a", "create") >= 1.0);
    assert!(calls(&first, "metrics-a", "start") >= 1.0);
    assert_eq!(one(&first, "husk_node_pods_running", &[]), 1.0);
    assert_eq!(one(&first, "husk_node_pods_unreachable", &[]), 0.0);
    assert_eq!(
        one(&first, "husk_node_vm_boots_total", &[("result", "ok")]),
        1.0
    );
    assert_eq!(
        one(&first, "husk_node_vm_boots_total", &[("result", "failed")]),
        0.0
    );

    // Agent calls move: stats (ctr task metrics) and an exec.
    let stats_before = calls(&first, "metrics-a", "stats");
    assert!(ctrd.ctr(&["task", "metrics", "metrics-a"]).status.success());
    let exec = ctrd.ctr(&["task", "exec", "--exec-id", "e1", "metrics-a", "true"]);
    assert!(exec.status.success(), "{}", text(&exec.stderr));
    let second = scrape(&ctrd);
    assert!(calls(&second, "metrics-a", "stats") >= stats_before + 1.0);
    assert!(calls(&second, "metrics-a", "exec") >= 1.0);

    // A failed boot is counted on the node; the running pod stays.
    let mut broken = cfg.clone();
    broken.hypervisor.kernel = "/nonexistent/vmlinux".into();
    set_config(&ctrd, &broken);
    let out = run(&ctrd, HUSK, "metrics-fail", &["true"], None);
    assert!(!out.status.success());
    set_config(&ctrd, &cfg);
    // A second pod, booted: two running, two boots.
    run_detached(&ctrd, HUSK, "metrics-b", &["sleep", "1000"]);
    let third = scrape(&ctrd);
    assert_eq!(
        one(&third, "husk_node_vm_boots_total", &[("result", "failed")]),
        1.0
    );
    assert_eq!(
        one(&third, "husk_node_vm_boots_total", &[("result", "ok")]),
        2.0
    );
    assert_eq!(one(&third, "husk_node_pods_running", &[]), 2.0);
    assert_eq!(
        third
            .render()
            .matches("# TYPE husk_pod_vcpus gauge")
            .count(),
        1
    );
    assert_eq!(third.find("husk_pod_vcpus", &[]).len(), 2);

    // The same exposition over HTTP, as Prometheus scrapes it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut server = Command::new(build_bin_dir().join("husk"))
        .args(["serve-metrics", "--listen", &listen])
        .env(husk_config::CONFIG_ENV, ctrd.husk_config_path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let body = http_get(&listen);
    let _ = server.kill();
    let _ = server.wait();
    let (head, body) = body.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    let served = Exposition::parse(body).unwrap();
    assert_eq!(one(&served, "husk_node_pods_running", &[]), 2.0);

    for id in ["metrics-a", "metrics-b"] {
        assert!(ctrd
            .ctr(&["task", "kill", "-s", "KILL", id])
            .status
            .success());
        remove_task(&ctrd, id);
    }
    let last = scrape(&ctrd);
    assert_eq!(one(&last, "husk_node_pods_running", &[]), 0.0);
    assert!(last.find("husk_pod_vcpus", &[]).is_empty());
    assert_nothing_left(&ctrd);
}

/// GET /metrics from `addr`, retried while the server starts.
fn http_get(addr: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut answer = String::new();
            s.read_to_string(&mut answer).unwrap();
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "husk serve-metrics never listened"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn console_runs_uname_in_the_guest_and_is_refused_when_off() {
    let ctrd = setup();
    let cfg = config(&ctrd);
    let initrd = std::fs::read(&cfg.hypervisor.initrd).unwrap();
    assert!(
        initrd.windows(12).any(|w| w == b"bin/busybox\0"),
        "{} has no bin/busybox for the console's shell: rebuild it with scripts/setup.sh",
        cfg.hypervisor.initrd.display()
    );
    let guest = kernel_release_of(&cfg.hypervisor.kernel).unwrap();

    // Off: a pod booted so, and husk refusing before it connects.
    run_detached(&ctrd, HUSK, "console-off", &["sleep", "1000"]);
    let out = husk(&ctrd, &["console", "console-off"], Some(b"uname -r\n"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("[debug] console = true"),
        "{}",
        text(&out.stderr)
    );
    // Turned on for husk, but that guest was not booted with it: the
    // guest itself refuses.
    let mut on = cfg.clone();
    on.debug.console = true;
    set_config(&ctrd, &on);
    let out = husk(&ctrd, &["console", "console-off"], Some(b"uname -r\n"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("serves no debug console")
            || text(&out.stderr).contains("did not answer"),
        "{}",
        text(&out.stderr)
    );

    // On: a pod booted now has it. The shell is the guest's, outside the
    // container: its PID 1 is the agent (/init), not the container's sleep.
    run_detached(&ctrd, HUSK, "console-on", &["sleep", "1000"]);
    let out = husk(
        &ctrd,
        &["console", "console-on"],
        Some(b"uname -r\ntr '\\0' ' ' < /proc/1/cmdline; echo\nexit\n"),
    );
    let shown = text(&out.stdout);
    println!("{shown}");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let lines: Vec<&str> = shown.lines().map(|l| l.trim_end_matches('\r')).collect();
    // The PTY echoes input and the shell prompts ("/ # "), so the answer
    // ends a line rather than being one.
    assert!(
        lines.iter().any(|l| l.ends_with(guest.as_str())),
        "no line ending in {guest:?} in {shown:?}"
    );
    assert_ne!(guest, host_kernel_release());
    assert!(
        lines.iter().any(|l| l.contains("/init --switched-root")),
        "PID 1 is not the agent: {shown:?}"
    );
    // Not a second console for a pod id that does not run.
    let out = husk(&ctrd, &["console", "no-such-pod"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no VM runs"),
        "{}",
        text(&out.stderr)
    );

    set_config(&ctrd, &cfg);
    for id in ["console-off", "console-on"] {
        assert!(ctrd
            .ctr(&["task", "kill", "-s", "KILL", id])
            .status
            .success());
        remove_task(&ctrd, id);
    }
    assert_nothing_left(&ctrd);
}
