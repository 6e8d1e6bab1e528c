//! End-to-end tests through containerd's CRI plugin, driven as kubelet
//! drives it (tests/src/cri.rs). Each scenario is a function of the
//! runtime handler name, so that the same scenario runs under `runc` (the
//! oracle, wrapped here) and under `husk` (add a wrapper calling it with
//! `HUSK`). A host that cannot give pods a network prints `SKIPPED: <why>`.

use husk_tests::cri::{
    harness_or_skip, parse_log_line, ContainerSpec, Cri, Pod, PodSpec, HUSK, PAUSE_IMAGE, RUNC,
};
use k8s_cri::v1 as cri;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// A TCP server answering "hi" to every connection, in busybox.
const SERVER: &[&str] = &["nc", "-ll", "-p", "8080", "-e", "echo", "hi"];

fn log_lines(pod: &Pod, spec: &ContainerSpec) -> Vec<String> {
    let path = pod.log_dir.join(&spec.log_path);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The texts of full (`F`) lines on `stream` of a container's CRI log;
/// fails on any line that is not in CRI format.
fn logged(pod: &Pod, spec: &ContainerSpec, stream: &str) -> Vec<String> {
    log_lines(pod, spec)
        .iter()
        .map(|l| parse_log_line(l).unwrap_or_else(|e| panic!("{e}")))
        .filter(|(s, tag, _)| *s == stream && *tag == "F")
        .map(|(_, _, text)| text.to_owned())
        .collect()
}

/// The pod gets an address from the harness' private subnet, and a TCP
/// server in the pod answers the host at that address.
fn pod_ip_is_reachable_from_the_host(handler: &str) {
    let Some(cri) = harness_or_skip() else {
        return;
    };
    let pod = cri.run_pod(handler, &PodSpec::new("reach"));
    assert!(
        cri.net.contains(pod.ip),
        "pod IP {} is not in {}",
        pod.ip,
        cri.net.subnet
    );
    cri.create_and_start(&pod, &ContainerSpec::new("server", SERVER));
    let addr = SocketAddr::from((pod.ip, 8080));
    let deadline = Instant::now() + Duration::from_secs(60);
    let answer = loop {
        let attempt =
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                let mut text = String::new();
                s.read_to_string(&mut text)?;
                Ok(text)
            });
        match attempt {
            Ok(text) if !text.is_empty() => break text,
            other => assert!(
                Instant::now() < deadline,
                "no answer from {addr}: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(answer, "hi\n");
    cri.stop_and_remove(&pod);
}

/// Two containers of one pod share its network namespace: a client reaches
/// the other container's server on 127.0.0.1, and exits 0 saying so.
fn containers_reach_each_other_on_localhost(handler: &str) {
    let Some(cri) = harness_or_skip() else {
        return;
    };
    let pod = cri.run_pod(handler, &PodSpec::new("localhost"));
    cri.create_and_start(&pod, &ContainerSpec::new("server", SERVER));
    let client = ContainerSpec::new(
        "client",
        &[
            "sh",
            "-c",
            "for i in $(seq 100); do \
               out=$(nc 127.0.0.1 8080 </dev/null) && [ -n \"$out\" ] && { echo \"got $out\"; exit 0; }; \
               sleep 0.2; \
             done; echo 'no answer on 127.0.0.1:8080' >&2; exit 1",
        ],
    );
    let id = cri.create_and_start(&pod, &client);
    let status = cri.wait_exited(&id, Duration::from_secs(120));
    assert_eq!(
        (status.exit_code, status.reason.as_str()),
        (0, "Completed"),
        "client: {:?}",
        log_lines(&pod, &client)
    );
    assert_eq!(logged(&pod, &client, "stdout"), ["got hi"]);
    cri.stop_and_remove(&pod);
}

/// ExecSync gives a command's stdout, stderr and exit code apart; the
/// container sees the pod's hostname and DNS configuration.
fn exec_sync_returns_output_and_exit_code(handler: &str) {
    let Some(cri) = harness_or_skip() else {
        return;
    };
    let spec = PodSpec::new("exec");
    let pod = cri.run_pod(handler, &spec);
    let id = cri.create_and_start(&pod, &ContainerSpec::new("sleeper", &["sleep", "3600"]));
    let r = cri.exec_sync(&id, &["sh", "-c", "echo out; echo err >&2; exit 3"], 60);
    assert_eq!(
        (r.stdout.as_str(), r.stderr.as_str(), r.exit_code),
        ("out\n", "err\n", 3)
    );
    let r = cri.exec_sync(&id, &["true"], 60);
    assert_eq!((r.stdout.as_str(), r.exit_code), ("", 0));
    let r = cri.exec_sync(&id, &["hostname"], 60);
    assert_eq!(r.stdout.trim(), spec.hostname);
    let r = cri.exec_sync(&id, &["cat", "/etc/resolv.conf"], 60);
    for line in [
        "nameserver 10.96.0.10",
        "search husk-test.svc.cluster.local",
        "options ndots:5",
    ] {
        assert!(
            r.stdout.lines().any(|l| l == line),
            "/etc/resolv.conf lacks {line:?}: {r:?}"
        );
    }
    cri.stop_and_remove(&pod);
}

/// A container's log file is where CreateContainer said, one CRI line per
/// output line, `<RFC3339Nano> <stream> F <text>`, both streams kept apart.
fn container_log_is_in_cri_format(handler: &str) {
    let Some(cri) = harness_or_skip() else {
        return;
    };
    let pod = cri.run_pod(handler, &PodSpec::new("logs"));
    let spec = ContainerSpec::new(
        "talker",
        &["sh", "-c", "echo one; echo two >&2; echo three; exit 7"],
    );
    let id = cri.create_and_start(&pod, &spec);
    let status = cri.wait_exited(&id, Duration::from_secs(120));
    assert_eq!(status.exit_code, 7);
    assert_eq!(
        Path::new(&status.log_path),
        pod.log_dir.join(&spec.log_path)
    );
    let lines = log_lines(&pod, &spec);
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(logged(&pod, &spec, "stdout"), ["one", "three"]);
    assert_eq!(logged(&pod, &spec, "stderr"), ["two"]);
    cri.stop_and_remove(&pod);
}

/// ContainerStatus, ContainerStats, ListContainers and PortForward answer
/// for a running pod; a read-only host mount, environment and a memory
/// limit from LinuxContainerResources reach the container.
fn status_stats_mounts_and_resources(handler: &str) {
    let Some(cri) = harness_or_skip() else {
        return;
    };
    let pod = cri.run_pod(handler, &PodSpec::new("status"));
    let shared = tempfile::tempdir().unwrap();
    std::fs::write(shared.path().join("greeting"), "hello from the host\n").unwrap();
    let limit: i64 = 64 << 20;
    let mut spec = ContainerSpec::new("main", &["sleep", "3600"]);
    spec.envs = vec![("HUSK_TEST".into(), "cri".into())];
    spec.mounts = vec![cri::Mount {
        container_path: "/mnt/host".into(),
        host_path: shared.path().display().to_string(),
        readonly: true,
        ..Default::default()
    }];
    spec.resources = Some(cri::LinuxContainerResources {
        memory_limit_in_bytes: limit,
        cpu_period: 100_000,
        cpu_quota: 50_000,
        cpu_shares: 512,
        ..Default::default()
    });
    let main = cri.create_and_start(&pod, &spec);
    let side = cri.create_and_start(&pod, &ContainerSpec::new("side", &["sleep", "3600"]));

    let status = cri.container_status(&main);
    assert_eq!(status.state(), cri::ContainerState::ContainerRunning);
    assert_eq!(status.metadata.as_ref().unwrap().name, "main");
    assert!(status.started_at > 0 && status.started_at >= status.created_at);
    assert!(
        status
            .image
            .as_ref()
            .unwrap()
            .image
            .contains("husk/busybox"),
        "{:?}",
        status.image
    );

    let r = cri.exec_sync(&main, &["cat", "/mnt/host/greeting"], 60);
    assert_eq!(
        (r.stdout.as_str(), r.exit_code),
        ("hello from the host\n", 0)
    );
    let r = cri.exec_sync(&main, &["touch", "/mnt/host/written"], 60);
    assert_ne!(r.exit_code, 0, "a read-only mount took a write: {r:?}");
    assert!(!shared.path().join("written").exists());
    let r = cri.exec_sync(&main, &["sh", "-c", "echo $HUSK_TEST"], 60);
    assert_eq!(r.stdout, "cri\n");
    // cgroup v2 in a guest, v1 on this host: either must show the limit.
    let r = cri.exec_sync(
        &main,
        &[
            "sh",
            "-c",
            "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes",
        ],
        60,
    );
    assert_eq!(r.stdout.trim(), limit.to_string(), "{r:?}");

    let stats = cri.container_stats(&main);
    assert_eq!(stats.attributes.as_ref().unwrap().id, main);
    let cpu = stats.cpu.as_ref().expect("cpu stats");
    assert!(cpu.timestamp > 0);
    assert!(
        cpu.usage_core_nano_seconds
            .as_ref()
            .is_some_and(|u| u.value > 0),
        "{cpu:?}"
    );
    let memory = stats.memory.as_ref().expect("memory stats");
    assert!(
        memory
            .working_set_bytes
            .as_ref()
            .is_some_and(|m| m.value > 0),
        "{memory:?}"
    );

    let mut listed: Vec<(String, String, i32)> = cri
        .list_containers(Some(&pod.id))
        .into_iter()
        .map(|c| (c.id, c.metadata.unwrap().name, c.state))
        .collect();
    listed.sort_by(|a, b| a.1.cmp(&b.1));
    let running = cri::ContainerState::ContainerRunning as i32;
    assert_eq!(
        listed,
        [
            (main.clone(), "main".to_string(), running),
            (side.clone(), "side".to_string(), running)
        ]
    );

    let url = cri.port_forward(&pod, &[8080]);
    assert!(
        url.starts_with(&format!("http://{}/portforward/", cri.stream_addr)),
        "{url}"
    );
    cri.stop_and_remove(&pod);
}

/// (pid, command, state, ppid) of each process a container sees, read by
/// the container's own shell from its /proc.
fn processes_seen_by(cri: &Cri, id: &str) -> Vec<(u32, String, String, u32)> {
    let r = cri.exec_sync(
        id,
        &[
            "sh",
            "-c",
            "for f in /proc/[0-9]*/stat; do cat $f 2>/dev/null; echo; done",
        ],
        60,
    );
    r.stdout
        .lines()
        .filter_map(|l| {
            let (head, rest) = l.split_once(" (")?;
            let (comm, rest) = rest.rsplit_once(") ")?;
            let mut f = rest.split_whitespace();
            let state = f.next()?.to_owned();
            Some((
                head.parse().ok()?,
                comm.to_owned(),
                state,
                f.next()?.parse().ok()?,
            ))
        })
        .collect()
}

/// The pause image's entrypoint does a pause process' job: as PID 1 of its
/// container it adopts an orphan and reaps it when it exits (no zombie), and
/// StopContainer's SIGTERM ends it at once with status 0.
fn pause_image_reaps_orphans_and_stops_on_sigterm(handler: &str) {
    let Some(cri) = harness_or_skip() else {
        return;
    };
    let pod = cri.run_pod(handler, &PodSpec::new("pause"));
    let mut spec = ContainerSpec::new("pause", &[]);
    spec.image = PAUSE_IMAGE.into();
    let id = cri.create_and_start(&pod, &spec);
    // The script's own `sleep` must be there before the orphan is made:
    // seen only afterwards, it would count as a second orphan.
    let deadline = Instant::now() + Duration::from_secs(30);
    let procs = loop {
        let procs = processes_seen_by(&cri, &id);
        if procs.iter().any(|p| p.1 == "sleep" && p.3 == 1) || Instant::now() > deadline {
            break procs;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        procs.iter().any(|p| p.0 == 1 && p.1 == "pause"),
        "PID 1 is not the pause script: {procs:?}"
    );
    assert!(
        procs.iter().any(|p| p.1 == "sleep" && p.3 == 1),
        "the pause script never started its sleep: {procs:?}"
    );
    let before: Vec<u32> = procs.iter().map(|p| p.0).collect();
    // The orphan lets go of the exec's output, or ExecSync waits for it.
    let orphan = "(sleep 3 </dev/null >/dev/null 2>&1 &); true";
    let r = cri.exec_sync(&id, &["sh", "-c", orphan], 60);
    assert_eq!(r.exit_code, 0, "{r:?}");
    let procs = processes_seen_by(&cri, &id);
    let orphans: Vec<u32> = procs
        .iter()
        .filter(|p| p.1 == "sleep" && p.3 == 1 && !before.contains(&p.0))
        .map(|p| p.0)
        .collect();
    assert_eq!(orphans.len(), 1, "no orphan adopted by PID 1: {procs:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let procs = processes_seen_by(&cri, &id);
        let left = procs.iter().any(|p| orphans.contains(&p.0));
        let zombies = procs.iter().any(|p| p.2 == "Z");
        if !left && !zombies {
            break;
        }
        assert!(Instant::now() < deadline, "not reaped: {procs:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let started = Instant::now();
    cri.stop_container(&id, 30);
    let status = cri.wait_exited(&id, Duration::from_secs(30));
    assert_eq!(status.exit_code, 0, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "SIGTERM took {:?} (the grace period is 30 s)",
        started.elapsed()
    );
    cri.stop_and_remove(&pod);
}

/// The network sysctls containerd puts into every sandbox (2.x:
/// `enable_unprivileged_ports` and `enable_unprivileged_icmp`, on by
/// default) reach the pod's network under husk as under runc: a container
/// of the pod reads the same values. (Under husk the sandbox joins the
/// guest's network, which is the pod's; see shim/src/spec.rs.)
#[test]
fn pod_network_sysctls_match_runc() {
    let Some(cri) = harness_or_skip() else {
        return;
    };
    let read = |handler: &str| {
        let pod = cri.run_pod(handler, &PodSpec::new("sysctl"));
        let id = cri.create_and_start(&pod, &ContainerSpec::new("sleeper", &["sleep", "3600"]));
        let r = cri.exec_sync(
            &id,
            &[
                "cat",
                "/proc/sys/net/ipv4/ip_unprivileged_port_start",
                "/proc/sys/net/ipv4/ping_group_range",
            ],
            60,
        );
        assert_eq!(r.exit_code, 0, "{handler}: {r:?}");
        cri.stop_and_remove(&pod);
        r.stdout
    };
    let runc = read(RUNC);
    let husk = read(HUSK);
    println!("runc:\n{runc}husk:\n{husk}");
    assert_eq!(husk, runc);
    if cri.containerd().release.major >= 2 {
        assert!(runc.starts_with("0\n"), "2.x opens all ports: {runc}");
    }
}

/// containerd parsed the CRI config as the harness and the operator
/// file (v2 snippet or v3 drop-in) meant: both handlers with their runtime
/// types, husk with its shim path and the io.husk.* annotation
/// passthrough, the private CNI and (1.x) the pause image.
#[test]
fn cri_plugin_config_has_both_handlers() {
    let Some(cri) = harness_or_skip() else {
        return;
    };
    let config = cri.plugin_config();
    let runtimes = &config["containerd"]["runtimes"];
    assert_eq!(runtimes[RUNC]["runtimeType"], "io.containerd.runc.v2");
    assert_eq!(runtimes[HUSK]["runtimeType"], "io.containerd.husk.v2");
    assert_eq!(
        runtimes[HUSK]["PodAnnotations"],
        serde_json::json!(["io.husk.*"])
    );
    assert_eq!(
        runtimes[HUSK]["ContainerAnnotations"],
        serde_json::json!(["io.husk.*"])
    );
    let shim = husk_tests::containerd::build_bin_dir().join("containerd-shim-husk-v2");
    assert_eq!(runtimes[HUSK]["runtimePath"], shim.to_str().unwrap());
    // husk-vm: the same shim under its husk-vm name (docs/vm-pods.md).
    let vm = &runtimes[husk_tests::cri::HUSK_VM];
    assert_eq!(vm["runtimeType"], "io.containerd.husk-vm.v2");
    let vm_shim = husk_tests::containerd::build_bin_dir().join("containerd-shim-husk-vm-v2");
    assert_eq!(vm["runtimePath"], vm_shim.to_str().unwrap());
    if cri.containerd().release.config_version() >= 3 {
        // 2.x reports the runtime service's config only; the sandbox image
        // is the images service's (pinned_images.sandbox), which every pod
        // start here uses.
        assert_eq!(
            config["cni"]["binDirs"],
            serde_json::json!(["/usr/lib/cni"])
        );
    } else {
        assert_eq!(config["sandboxImage"], PAUSE_IMAGE);
        assert_eq!(config["cni"]["binDir"], "/usr/lib/cni");
    }
}

/// Dropping the harness with a pod still running leaves nothing: no
/// process, mount, network namespace, bridge, cgroup, shim socket or
/// directory.
fn harness_drop_leaves_nothing(handler: &str) {
    let Some(cri) = harness_or_skip() else {
        return;
    };
    let pod = cri.run_pod(handler, &PodSpec::new("abandoned"));
    cri.create_and_start(&pod, &ContainerSpec::new("sleeper", &["sleep", "3600"]));
    let dir = cri.containerd().dir.path().to_owned();
    let bridge = Path::new("/sys/class/net").join(&cri.net.bridge);
    let cgroup_parent = cri.cgroup_parent.clone();
    let socket = husk_tests::cri::shim_socket(
        &cri.containerd().socket,
        husk_tests::cri::K8S_NAMESPACE,
        &pod.id,
    );
    // Something to clean up: the pod's shim runs, its veth is on the bridge.
    assert!(!husk_tests::containerd::processes_mentioning(&pod.id).is_empty());
    assert_eq!(cri.net.ports().len(), 1, "{:?}", cri.net.ports());
    drop(cri);
    assert!(!socket.exists(), "{} is still there", socket.display());
    let dir_text = dir.display().to_string();
    assert!(!dir.exists(), "{dir_text} is still there");
    assert!(!bridge.exists(), "{} is still there", bridge.display());
    assert_eq!(
        husk_tests::cri::cgroup_pids(&cgroup_parent),
        Vec::<u32>::new()
    );
    assert!(
        !Path::new("/sys/fs/cgroup/memory")
            .join(cgroup_parent.trim_start_matches('/'))
            .exists(),
        "cgroup {cgroup_parent} is still there"
    );
    assert_eq!(
        husk_tests::containerd::mounts_under(&dir),
        Vec::<std::path::PathBuf>::new()
    );
    assert_eq!(
        husk_tests::containerd::processes_mentioning(&dir_text),
        Vec::<u32>::new()
    );
    assert!(
        !pod.netns.exists(),
        "{} is still there",
        pod.netns.display()
    );
}

#[test]
fn runc_pod_ip_is_reachable_from_the_host() {
    pod_ip_is_reachable_from_the_host(RUNC);
}

#[test]
fn runc_containers_reach_each_other_on_localhost() {
    containers_reach_each_other_on_localhost(RUNC);
}

#[test]
fn runc_exec_sync_returns_output_and_exit_code() {
    exec_sync_returns_output_and_exit_code(RUNC);
}

#[test]
fn runc_container_log_is_in_cri_format() {
    container_log_is_in_cri_format(RUNC);
}

#[test]
fn runc_status_stats_mounts_and_resources() {
    status_stats_mounts_and_resources(RUNC);
}

#[test]
fn runc_pause_image_reaps_orphans_and_stops_on_sigterm() {
    pause_image_reaps_orphans_and_stops_on_sigterm(RUNC);
}

#[test]
fn runc_harness_drop_leaves_nothing() {
    harness_drop_leaves_nothing(RUNC);
}

// The same scenarios under husk: each pod is one VM.

#[test]
fn husk_pod_ip_is_reachable_from_the_host() {
    pod_ip_is_reachable_from_the_host(HUSK);
}

#[test]
fn husk_containers_reach_each_other_on_localhost() {
    containers_reach_each_other_on_localhost(HUSK);
}

#[test]
fn husk_exec_sync_returns_output_and_exit_code() {
    exec_sync_returns_output_and_exit_code(HUSK);
}

#[test]
fn husk_container_log_is_in_cri_format() {
    container_log_is_in_cri_format(HUSK);
}

#[test]
fn husk_status_stats_mounts_and_resources() {
    status_stats_mounts_and_resources(HUSK);
}

#[test]
fn husk_pause_image_reaps_orphans_and_stops_on_sigterm() {
    pause_image_reaps_orphans_and_stops_on_sigterm(HUSK);
}

#[test]
fn husk_harness_drop_leaves_nothing() {
    harness_drop_leaves_nothing(HUSK);
}

/// Two containers of a husk pod run in one VM (one guest boot id, not the
/// host's), share an emptyDir-style host directory both ways, and see a
/// hostPath file read-only; the same pod under runc gives the same output
/// apart from the boot id line.
#[test]
fn a_husk_pod_is_one_vm_with_shared_volumes_like_runc() {
    let Some(cri) = harness_or_skip() else {
        return;
    };
    let mut outputs = Vec::new();
    for handler in [RUNC, HUSK] {
        let empty_dir = tempfile::tempdir().unwrap();
        let host_file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(host_file.path(), "from the node\n").unwrap();
        let mounts = vec![
            cri::Mount {
                container_path: "/data".into(),
                host_path: empty_dir.path().display().to_string(),
                ..Default::default()
            },
            cri::Mount {
                container_path: "/etc/node-file".into(),
                host_path: host_file.path().display().to_string(),
                readonly: true,
                ..Default::default()
            },
        ];
        let pod = cri.run_pod(handler, &PodSpec::new(&format!("onevm-{handler}")));
        let mut writer = ContainerSpec::new(
            "writer",
            &["sh", "-c", "cat /proc/sys/kernel/random/boot_id > /data/boot_id; echo written > /data/w; sleep 3600"],
        );
        writer.mounts = mounts.clone();
        let writer_id = cri.create_and_start(&pod, &writer);
        let mut reader = ContainerSpec::new("reader", &["sleep", "3600"]);
        reader.mounts = mounts;
        let reader_id = cri.create_and_start(&pod, &reader);
        let script = "for i in $(seq 100); do [ -s /data/w ] && break; sleep 0.2; done; \
                      cat /data/w /etc/node-file; echo x > /etc/node-file 2>/dev/null || echo read-only; \
                      [ \"$(cat /data/boot_id)\" = \"$(cat /proc/sys/kernel/random/boot_id)\" ] && echo same-kernel";
        let r = cri.exec_sync(&reader_id, &["sh", "-c", script], 120);
        let boot_id = std::fs::read_to_string(empty_dir.path().join("boot_id")).unwrap();
        let _ = writer_id;
        cri.stop_and_remove(&pod);
        cri.assert_pod_gone(&pod);
        outputs.push((handler, r.stdout, r.exit_code, boot_id));
    }
    println!("{outputs:?}");
    let host_boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let (_, runc_out, runc_code, runc_boot) = &outputs[0];
    let (_, husk_out, husk_code, husk_boot) = &outputs[1];
    assert_eq!(husk_out, "written\nfrom the node\nread-only\nsame-kernel\n");
    assert_eq!((husk_out, husk_code), (runc_out, runc_code));
    assert_eq!(runc_boot, &host_boot_id, "runc shares the host's kernel");
    assert_ne!(husk_boot, &host_boot_id, "husk's pod runs its own kernel");
}

/// A pod asking for a VM outside the configured bounds is refused at
/// RunPodSandbox, with the annotation named, and leaves no pod behind.
#[test]
fn husk_refuses_pods_sized_outside_the_bounds() {
    let Some(cri) = harness_or_skip() else {
        return;
    };
    for (key, value) in [("io.husk.vcpus", "0"), ("io.husk.memory_mib", "9999999")] {
        let mut spec = PodSpec::new(&format!("bad-{}", key.rsplit('.').next().unwrap()));
        spec.annotations.insert(key.into(), value.into());
        let err = match cri.try_run_pod(HUSK, &spec) {
            Ok(pod) => {
                cri.stop_and_remove(&pod);
                panic!("a pod with {key}={value} ran")
            }
            Err(e) => e,
        };
        assert!(err.contains(key) && err.contains(value), "{err}");
        assert!(
            cri.list_pods()
                .iter()
                .all(|p| p.metadata.as_ref().is_none_or(|m| m.name != spec.name)
                    || p.state != cri::PodSandboxState::SandboxReady as i32),
            "the refused pod is listed as ready"
        );
    }
}

/// A VM cannot join the node's network namespace: a hostNetwork pod is
/// refused at RunPodSandbox with the reason, instead of silently getting a
/// private network where its servers cannot be reached on the node's
/// address. (runc runs it; that is what the message recommends.)
#[test]
fn husk_refuses_host_network_pods_with_the_reason() {
    let Some(cri) = harness_or_skip() else {
        return;
    };
    let mut spec = PodSpec::new("hostnet");
    spec.host_network = true;
    let err = match cri.try_run_pod(HUSK, &spec) {
        Ok(pod) => {
            cri.stop_and_remove(&pod);
            panic!("a hostNetwork pod ran under husk")
        }
        Err(e) => e,
    };
    assert!(err.contains("hostNetwork") && err.contains("runc"), "{err}");
    assert!(
        cri.list_pods()
            .iter()
            .all(|p| p.metadata.as_ref().is_none_or(|m| m.name != spec.name)
                || p.state != cri::PodSandboxState::SandboxReady as i32),
        "the refused pod is listed as ready"
    );
}

/// A container that puts 64 MiB in the pod's /dev/shm: ContainerStats and
/// ListContainerStats report at least that much memory, because a husk
/// pod's /dev/shm is the guest's own tmpfs (charged to the container's
/// cgroup in the guest), not a host directory; PodSandboxStats, read from
/// the pod's cgroup on the host where the VM's processes are, too.
#[test]
fn husk_stats_count_memory_the_container_allocated() {
    let Some(cri) = harness_or_skip() else {
        return;
    };
    let pod = cri.run_pod(HUSK, &PodSpec::new("stats64"));
    let spec = ContainerSpec::new(
        "filler",
        &[
            "sh",
            "-c",
            "head -c 67108864 /dev/zero > /dev/shm/fill; echo filled; sleep 3600",
        ],
    );
    let id = cri.create_and_start(&pod, &spec);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !logged(&pod, &spec, "stdout").contains(&"filled".to_string()) {
        assert!(
            Instant::now() < deadline,
            "the container never filled /dev/shm"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let stats = cri.container_stats(&id);
    let working_set = stats
        .memory
        .as_ref()
        .and_then(|m| m.working_set_bytes.as_ref())
        .map_or(0, |v| v.value);
    assert!(
        working_set >= 64 << 20,
        "working set {working_set} < 64 MiB: {stats:?}"
    );
    let listed = cri.list_container_stats(&pod.id);
    assert!(
        listed
            .iter()
            .any(|s| s.attributes.as_ref().is_some_and(|a| a.id == id)),
        "ListContainerStats lacks {id}: {listed:?}"
    );
    // The pod's cgroup on the host holds the VM: PodSandboxStats is the
    // VM's cost (guest RAM it touched included).
    let sandbox = cri
        .pod_sandbox_stats(&pod.id)
        .unwrap_or_else(|e| panic!("PodSandboxStats: {e}"));
    let vm_memory = sandbox
        .linux
        .as_ref()
        .and_then(|l| l.memory.as_ref())
        .and_then(|m| m.working_set_bytes.as_ref())
        .map_or(0, |v| v.value);
    assert!(
        vm_memory >= 64 << 20,
        "the pod's VM uses {vm_memory} bytes: {sandbox:?}"
    );
    cri.stop_and_remove(&pod);
    cri.assert_pod_gone(&pod);
}

/// PortForward through containerd's streaming server, as kubectl
/// port-forward uses it: bytes sent to a port of the pod come back from an
/// echo server there.
fn port_forward_carries_data_both_ways(handler: &str) {
    let Some(cri) = harness_or_skip() else {
        return;
    };
    let pod = cri.run_pod(handler, &PodSpec::new("portfwd"));
    cri.create_and_start(
        &pod,
        &ContainerSpec::new("echo", &["nc", "-ll", "-p", "8080", "-e", "cat"]),
    );
    let message = b"both ways through port-forward\n";
    let deadline = Instant::now() + Duration::from_secs(120);
    let got = loop {
        // A fresh URL per attempt: each is good for one connection.
        let url = cri.port_forward(&pod, &[8080]);
        match husk_tests::streaming::port_forward_exchange(&url, 8080, message, message.len()) {
            Ok(got) if !got.is_empty() => break got,
            // The server may not be listening yet.
            other => assert!(
                Instant::now() < deadline,
                "port-forward never answered: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(message)
    );
    cri.stop_and_remove(&pod);
}

#[test]
fn runc_port_forward_carries_data_both_ways() {
    port_forward_carries_data_both_ways(RUNC);
}

#[test]
fn husk_port_forward_carries_data_both_ways() {
    port_forward_carries_data_both_ways(HUSK);
}

/// Exec and Attach through the streaming server, as kubectl exec and
/// kubectl attach use them: separate stdout and stderr, the exit status in
/// the status frame, and the live output of a running container.
fn exec_and_attach_stream(handler: &str) {
    let Some(cri) = harness_or_skip() else {
        return;
    };
    let pod = cri.run_pod(handler, &PodSpec::new("streams"));
    let id = cri.create_and_start(
        &pod,
        &ContainerSpec::new(
            "ticker",
            &["sh", "-c", "while true; do echo tick; sleep 0.5; done"],
        ),
    );
    let url = cri.exec_url(&id, &["sh", "-c", "echo out; echo err >&2; exit 3"]);
    let exec = husk_tests::streaming::read_stream(&url, |_| false).unwrap();
    assert_eq!(
        (exec.stdout.as_str(), exec.stderr.as_str()),
        ("out\n", "err\n"),
        "{exec:?}"
    );
    assert!(
        exec.status.contains("NonZeroExitCode") && exec.status.contains("\"3\""),
        "{exec:?}"
    );
    let url = cri.attach_url(&id);
    let attached =
        husk_tests::streaming::read_stream(&url, |o| o.stdout.contains("tick\ntick\n")).unwrap();
    assert!(attached.stdout.contains("tick\ntick\n"), "{attached:?}");
    cri.stop_and_remove(&pod);
}

#[test]
fn runc_exec_and_attach_stream() {
    exec_and_attach_stream(RUNC);
}

#[test]
fn husk_exec_and_attach_stream() {
    exec_and_attach_stream(HUSK);
}
