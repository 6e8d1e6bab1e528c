//! End to end through a real containerd: `ctr run` with the husk runtime
//! against the same command under runc, the oracle. Each test starts its own
//! containerd (own root, state and sockets) and checks that nothing of the
//! VM is left afterwards.

use husk_tests::containerd::{mounts_under, processes_mentioning, Containerd};
use husk_tests::*;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const IMAGE: &str = "docker.io/husk/busybox:test";
const HUSK: &str = "io.containerd.husk.v2";
const RUNC: &str = "io.containerd.runc.v2";

/// The test image archive built by scripts/setup.sh.
fn image_archive() -> PathBuf {
    let path = std::env::var_os("HUSK_TEST_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/local/share/husk/busybox-oci.tar"));
    assert!(
        path.exists(),
        "{} missing: run `sudo bash scripts/setup.sh`",
        path.display()
    );
    path
}

fn setup() -> Containerd {
    let runtime = tempfile::tempdir().unwrap();
    require_guest_artifacts(&test_config(runtime.path()));
    let ctrd = Containerd::start();
    ctrd.import(&image_archive());
    ctrd
}

fn run(ctrd: &Containerd, runtime: &str, id: &str, cmd: &[&str], stdin: Option<&[u8]>) -> Output {
    run_with(ctrd, runtime, &[], id, cmd, stdin)
}

fn run_with(
    ctrd: &Containerd,
    runtime: &str,
    flags: &[&str],
    id: &str,
    cmd: &[&str],
    stdin: Option<&[u8]>,
) -> Output {
    // ctr 1.6 always attaches its stdin (it has no -i flag).
    let mut args = vec!["run", "--rm", "--runtime", runtime];
    args.extend(flags);
    args.extend([IMAGE, id]);
    args.extend(cmd);
    ctrd.ctr_with_stdin(&args, stdin)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Nothing of any husk VM remains: no processes, mounts or directories.
fn assert_nothing_left(ctrd: &Containerd) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let procs = processes_mentioning(&ctrd.husk_runtime.display().to_string());
        let shims: Vec<u32> = processes_mentioning("containerd-shim-husk-v2")
            .into_iter()
            .filter(|p| {
                std::fs::read(format!("/proc/{p}/cmdline"))
                    .map(|c| text(&c).contains(&ctrd.socket.display().to_string()))
                    .unwrap_or(false)
            })
            .collect();
        let mounts = mounts_under(&ctrd.husk_runtime);
        if procs.is_empty() && shims.is_empty() && mounts.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: VM processes {procs:?}, shims {shims:?}, mounts {mounts:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for sub in ["vms", "shared"] {
        let left = entries(&ctrd.husk_runtime.join(sub));
        assert!(left.is_empty(), "{sub}/ still holds {left:?}");
    }
    let bundle_mounts: Vec<_> = mounts_under(ctrd.dir.path())
        .into_iter()
        .filter(|m| m.ends_with("rootfs"))
        .collect();
    assert!(
        bundle_mounts.is_empty(),
        "rootfs mounts left: {bundle_mounts:?}"
    );
}

#[test]
fn stdout_stderr_and_exit_status_match_runc() {
    let ctrd = setup();
    let script = ["sh", "-c", "uname -r; echo out; echo err >&2; exit 3"];
    let husk = run(&ctrd, HUSK, "diff-husk", &script, None);
    let runc = run(&ctrd, RUNC, "diff-runc", &script, None);
    let guest_release = kernel_release_of(&test_config(ctrd.dir.path()).hypervisor.kernel).unwrap();

    let husk_out = text(&husk.stdout);
    let runc_out = text(&runc.stdout);
    let (husk_kernel, husk_rest) = husk_out.split_once('\n').expect("a kernel line");
    let (runc_kernel, runc_rest) = runc_out.split_once('\n').expect("a kernel line");
    assert_eq!(husk_kernel, guest_release, "stderr: {}", text(&husk.stderr));
    assert_eq!(runc_kernel, host_kernel_release());
    assert_ne!(husk_kernel, runc_kernel);
    assert_eq!(husk_rest, "out\n");
    assert_eq!(husk_rest, runc_rest);
    assert_eq!(text(&husk.stderr), "err\n");
    assert_eq!(husk.stderr, runc.stderr);
    assert_eq!(husk.status.code(), Some(3));
    assert_eq!(husk.status.code(), runc.status.code());
    assert_nothing_left(&ctrd);
}

#[test]
fn stdin_reaches_the_process_and_ten_mib_of_stdout_arrive_whole() {
    let ctrd = setup();
    let out = run(&ctrd, HUSK, "stdin", &["cat"], Some(b"hello\n"));
    assert_eq!(
        text(&out.stdout),
        "hello\n",
        "stderr: {}",
        text(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0));

    // 10 MiB of random bytes, the container's own checksum on stderr.
    let script = "dd if=/dev/urandom of=/tmp/d bs=1048576 count=10 2>/dev/null; \
                  sha256sum /tmp/d | cut -d' ' -f1 >&2; cat /tmp/d";
    let out = run(&ctrd, HUSK, "bulk", &["sh", "-c", script], None);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(out.stdout.len(), 10 << 20);
    let mut sha = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(sha.stdin.as_mut().unwrap(), &out.stdout).unwrap();
    let host_sum = text(&sha.wait_with_output().unwrap().stdout);
    assert_eq!(
        host_sum.split_whitespace().next(),
        Some(text(&out.stderr).trim())
    );
    assert_nothing_left(&ctrd);
}

/// Runs `sleep 1000` in the foreground (like a user's `ctr run`), sends
/// SIGTERM and then SIGKILL with `ctr task kill`; returns whether SIGTERM
/// ended it and the final exit status.
fn kill_sequence(ctrd: &Containerd, runtime: &str, id: &str) -> (bool, Option<i32>) {
    let mut child = spawn_sleeper(ctrd, runtime, id);
    wait_running(ctrd, id);
    assert!(ctrd.ctr(&["task", "kill", id]).status.success());
    std::thread::sleep(Duration::from_secs(2));
    let ended_by_term = child.try_wait().unwrap().is_some();
    if !ended_by_term {
        assert!(ctrd
            .ctr(&["task", "kill", "-s", "SIGKILL", id])
            .status
            .success());
    }
    (
        ended_by_term,
        wait_exit(&mut child, "ctr run did not return after SIGKILL").code(),
    )
}

/// `ctr run --rm <image> <id> sleep 1000` in the background, as a user's
/// foreground `ctr run` would be.
fn spawn_sleeper(ctrd: &Containerd, runtime: &str, id: &str) -> std::process::Child {
    let socket = ctrd.socket.to_str().unwrap();
    Command::new("ctr")
        .args([
            "--address",
            socket,
            "run",
            "--rm",
            "--runtime",
            runtime,
            IMAGE,
            id,
            "sleep",
            "1000",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// `ctr run -d` of `cmd` as container `id`, returning once it runs.
fn run_detached(ctrd: &Containerd, runtime: &str, id: &str, cmd: &[&str]) {
    let mut args = vec!["run", "-d", "--runtime", runtime, IMAGE, id];
    args.extend(cmd);
    let run = ctrd.ctr(&args);
    assert!(run.status.success(), "{}", text(&run.stderr));
    wait_running(ctrd, id);
}

fn wait_running(ctrd: &Containerd, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ls = text(&ctrd.ctr(&["task", "ls"]).stdout);
        if ls
            .lines()
            .any(|l| l.starts_with(id) && l.contains("RUNNING"))
        {
            return;
        }
        assert!(Instant::now() < deadline, "{id} never ran: {ls}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits up to a minute for `child` to exit; fails with `hang` otherwise.
fn wait_exit(child: &mut std::process::Child, hang: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "{hang}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn task_kill_behaves_as_under_runc() {
    let ctrd = setup();
    let husk = kill_sequence(&ctrd, HUSK, "kill-husk");
    let runc = kill_sequence(&ctrd, RUNC, "kill-runc");
    println!("SIGTERM ended it / exit status: husk {husk:?}, runc {runc:?}");
    assert_eq!(husk, runc);
    assert_eq!(husk.1, Some(137));
    assert_nothing_left(&ctrd);
}

#[test]
fn missing_entrypoint_fails_like_runc_and_leaves_nothing() {
    let ctrd = setup();
    let husk = run(&ctrd, HUSK, "noent-husk", &["/nonexistent"], None);
    let runc = run(&ctrd, RUNC, "noent-runc", &["/nonexistent"], None);
    println!("husk: {}\nrunc: {}", text(&husk.stderr), text(&runc.stderr));
    assert!(!husk.status.success());
    assert_eq!(husk.status.code(), runc.status.code());
    for out in [&husk, &runc] {
        let err = text(&out.stderr);
        assert!(
            err.contains("/nonexistent") && err.contains("no such file or directory"),
            "{err}"
        );
    }
    assert_nothing_left(&ctrd);
}

#[test]
fn vm_killed_mid_run_fails_the_task_without_hanging() {
    let ctrd = setup();
    let mut child = spawn_sleeper(&ctrd, HUSK, "crash");
    wait_running(&ctrd, "crash");
    let vm_dir = ctrd.husk_runtime.join("vms/crash").display().to_string();
    let qemu: Vec<u32> = processes_mentioning(&vm_dir)
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.starts_with("qemu"))
        })
        .collect();
    assert_eq!(qemu.len(), 1, "one QEMU per VM: {qemu:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(qemu[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let status = wait_exit(&mut child, "ctr run hangs after the VM died");
    assert!(!status.success(), "the task should fail when its VM dies");
    assert_nothing_left(&ctrd);
}

#[test]
fn capabilities_rlimits_and_user_match_runc() {
    let ctrd = setup();
    let scenarios: &[(&str, &[&str], &[&str])] = &[
        (
            "chown-denied",
            &["--cap-drop", "CAP_CHOWN"],
            &["sh", "-c", "chown 1 /tmp; echo status=$?"],
        ),
        (
            "caps-and-limits",
            &[],
            &[
                "sh",
                "-c",
                "ulimit -n; id; grep -E '^(CapEff|CapBnd|CapPrm|NoNewPrivs)' /proc/self/status",
            ],
        ),
        (
            "env-cwd",
            &["--env", "GREETING=hi", "--cwd", "/tmp"],
            &["sh", "-c", "echo $GREETING; pwd"],
        ),
    ];
    for (name, flags, cmd) in scenarios {
        let husk = run_with(&ctrd, HUSK, flags, &format!("{name}-husk"), cmd, None);
        let runc = run_with(&ctrd, RUNC, flags, &format!("{name}-runc"), cmd, None);
        println!(
            "{name}: husk {:?} / runc {:?}",
            text(&husk.stdout),
            text(&runc.stdout)
        );
        assert_eq!(text(&husk.stdout), text(&runc.stdout), "{name} stdout");
        assert_eq!(text(&husk.stderr), text(&runc.stderr), "{name} stderr");
        assert_eq!(husk.status.code(), runc.status.code(), "{name} exit status");
        assert!(!husk.stdout.is_empty(), "{name}: no output");
    }
    assert_nothing_left(&ctrd);
}

/// `ctr task exec` in a detached container: output, stdin, exit status and
/// the container's PID namespace, against runc.
fn exec_scenario(ctrd: &Containerd, runtime: &str, id: &str) -> Vec<(String, String, Option<i32>)> {
    run_detached(ctrd, runtime, id, &["sleep", "1000"]);
    let mut results = Vec::new();
    let script = "tr '\\0' ' ' < /proc/1/cmdline; echo; echo err >&2; exit 4";
    for (exec_id, cmd, stdin) in [
        ("e1", vec!["sh", "-c", script], None),
        ("e2", vec!["cat"], Some(&b"piped into exec\n"[..])),
    ] {
        let mut args = vec!["task", "exec", "--exec-id", exec_id, id];
        args.extend(cmd);
        let out = ctrd.ctr_with_stdin(&args, stdin);
        results.push((text(&out.stdout), text(&out.stderr), out.status.code()));
    }
    assert!(ctrd
        .ctr(&["task", "kill", "-s", "SIGKILL", id])
        .status
        .success());
    remove_task(ctrd, id);
    results
}

/// `ctr task rm` once the (killed) task has stopped, then `ctr container rm`.
fn remove_task(ctrd: &Containerd, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ctrd.ctr(&["task", "rm", id]).status.success() {
        assert!(Instant::now() < deadline, "task {id} could not be removed");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(ctrd.ctr(&["container", "rm", id]).status.success());
}

#[test]
fn task_exec_matches_runc() {
    let ctrd = setup();
    let husk = exec_scenario(&ctrd, HUSK, "exec-husk");
    let runc = exec_scenario(&ctrd, RUNC, "exec-runc");
    println!("husk {husk:?}\nrunc {runc:?}");
    assert_eq!(husk[0], ("sleep 1000 \n".into(), "err\n".into(), Some(4)));
    assert_eq!(
        husk[1],
        ("piped into exec\n".into(), String::new(), Some(0))
    );
    assert_eq!(husk, runc);
    assert_nothing_left(&ctrd);
}

fn task_status(ctrd: &Containerd, id: &str) -> String {
    let ls = text(&ctrd.ctr(&["task", "ls"]).stdout);
    ls.lines()
        .find(|l| l.starts_with(id))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or("")
        .to_owned()
}

/// Pause, resume, `ctr task ps` and `kill --all` on a container with three
/// processes; returns what was seen at each step.
fn lifecycle_scenario(ctrd: &Containerd, runtime: &str, id: &str) -> Vec<String> {
    let script = "sleep 1000 & sleep 1000 & wait";
    run_detached(ctrd, runtime, id, &["sh", "-c", script]);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let processes = loop {
        // ps lists a header line, then one line per process.
        let ps = text(&ctrd.ctr(&["task", "ps", id]).stdout);
        let n = ps.lines().count().saturating_sub(1);
        if n == 3 || Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    seen.push(format!("processes {processes}"));
    for step in ["pause", "resume"] {
        let out = ctrd.ctr(&["task", step, id]);
        seen.push(format!(
            "{step} ok={} status={}",
            out.status.success(),
            task_status(ctrd, id)
        ));
    }
    let out = ctrd.ctr(&["task", "kill", "--all", "-s", "SIGKILL", id]);
    seen.push(format!("kill --all ok={}", out.status.success()));
    let deadline = Instant::now() + Duration::from_secs(60);
    while task_status(ctrd, id) != "STOPPED" {
        assert!(
            Instant::now() < deadline,
            "{id} did not stop after kill --all"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    remove_task(ctrd, id);
    seen
}

#[test]
fn pause_resume_ps_and_kill_all_match_runc() {
    let ctrd = setup();
    let husk = lifecycle_scenario(&ctrd, HUSK, "life-husk");
    let runc = lifecycle_scenario(&ctrd, RUNC, "life-runc");
    println!("husk {husk:?}\nrunc {runc:?}");
    assert_eq!(husk[0], "processes 3");
    assert_eq!(husk[1], "pause ok=true status=PAUSED");
    assert_eq!(husk[2], "resume ok=true status=RUNNING");
    assert_eq!(husk, runc);

    // Checkpoint is refused with a reason, not silently accepted.
    run_detached(&ctrd, HUSK, "ckpt", &["sleep", "1000"]);
    let out = ctrd.ctr(&["task", "checkpoint", "ckpt"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("checkpoint is not supported by husk"),
        "{}",
        text(&out.stderr)
    );
    assert!(ctrd
        .ctr(&["task", "kill", "-s", "SIGKILL", "ckpt"])
        .status
        .success());
    remove_task(&ctrd, "ckpt");
    assert_nothing_left(&ctrd);
}
