//! The pool of pre-booted VMs through CRI (docs/pool.md): a pod of a
//! pooled size gets a VM booted before it, made its own (IP, MAC,
//! hostname, cgroup, clock); two pods never share one; a pool VM that
//! died is replaced, not handed out; a member ended with SIGTERM, and the
//! pods, leave nothing behind.

use husk_tests::containerd::{mounts_under, processes_mentioning};
use husk_tests::cri::{cgroup_pids, ContainerSpec, Cri, Pod, PodSpec, HUSK};
use husk_tests::{comm, parent_pid, stat_fields};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The CRI harness with a pool of `size` VMs of the default pod size.
fn harness(size: u32) -> Option<Cri> {
    if let Some(reason) = husk_tests::cri::unsupported_reason() {
        println!("SKIPPED: {reason}");
        return None;
    }
    let cri = Cri::start();
    let path = cri.containerd().dir.path().join("husk.toml");
    let mut config = husk_config::Config::load(&path).unwrap();
    config.pool.shapes = vec![husk_config::PoolShape {
        vcpus: config.hypervisor.vcpus,
        memory_mib: config.hypervisor.memory_mib,
        size,
    }];
    std::fs::write(&path, config.to_toml()).unwrap();
    Some(cri)
}

fn shape_dir(cri: &Cri) -> PathBuf {
    let path = cri.containerd().dir.path().join("husk.toml");
    let config = husk_config::Config::load(&path).unwrap();
    cri.containerd()
        .husk_runtime
        .join("pool")
        .join(config.pool.shapes[0].name())
}

/// Idle members' sockets.
fn idle_members(cri: &Cri) -> Vec<PathBuf> {
    std::fs::read_dir(shape_dir(cri))
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "sock"))
                .collect()
        })
        .unwrap_or_default()
}

fn wait_for_members(cri: &Cri, n: usize) -> Vec<PathBuf> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let idle = idle_members(cri);
        if idle.len() >= n {
            return idle;
        }
        assert!(
            Instant::now() < deadline,
            "the pool never had {n} idle VMs: {idle:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whether the containerd log says this pod got a pool VM.
fn got_pool_vm(cri: &Cri, pod: &Pod) -> bool {
    std::fs::read_to_string(cri.containerd().dir.path().join("containerd.log"))
        .unwrap_or_default()
        .lines()
        .any(|l| l.contains("pool VM handed out") && l.contains(&pod.id))
}

fn sleeper(cri: &Cri, pod: &Pod) -> String {
    cri.create_and_start(pod, &ContainerSpec::new("idle", &["sleep", "3600"]))
}

fn exec(cri: &Cri, id: &str, cmd: &str) -> String {
    let r = cri.exec_sync(id, &["sh", "-c", cmd], 30);
    assert_eq!(r.exit_code, 0, "{cmd}: {}", r.stderr);
    r.stdout.trim().to_owned()
}

/// Pool members (their processes) of this harness.
fn member_processes(cri: &Cri) -> Vec<u32> {
    cri.containerd().pool_members()
}

/// The niceness of each thread of `pid` (field 19 of its tasks' stat).
fn niceness(pid: u32) -> Vec<i64> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| {
            let tid = t.file_name().to_str()?.parse().ok()?;
            stat_fields(tid).get(16)?.parse().ok()
        })
        .collect()
}

fn end_members(cri: &Cri) {
    for pid in member_processes(cri) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !member_processes(cri).is_empty() {
        assert!(Instant::now() < deadline, "pool members outlived SIGTERM");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn assert_pool_empty(cri: &Cri) {
    let runtime = &cri.containerd().husk_runtime;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let vms = processes_mentioning(&runtime.display().to_string());
        let mounts = mounts_under(runtime);
        let pods: Vec<PathBuf> = std::fs::read_dir(runtime.join("pods"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        if vms.is_empty() && mounts.is_empty() && pods.is_empty() && idle_members(cri).is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "left: processes {vms:?}, mounts {mounts:?}, trees {pods:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_pooled_vm_becomes_the_pods_own() {
    let Some(cri) = harness(1) else { return };
    // The first pod boots cold and fills the pool.
    let first = cri.run_pod(HUSK, &PodSpec::new("pool-first"));
    assert!(!got_pool_vm(&cri, &first));
    let first_c = sleeper(&cri, &first);
    wait_for_members(&cri, 1);
    // An idle member booted its VM at the pool's lower priority.
    for m in member_processes(&cri) {
        let nice = niceness(m);
        assert!(
            !nice.is_empty()
                && nice
                    .iter()
                    .all(|n| *n == husk_shim::micro_vm::pool::BOOT_NICENESS as i64),
            "member {m}: {nice:?}"
        );
    }
    // The second is handed the pooled VM.
    let pod = cri.run_pod(HUSK, &PodSpec::new("pool-second"));
    assert!(got_pool_vm(&cri, &pod), "the second pod booted cold");
    let c = sleeper(&cri, &pod);
    // Its address and MAC are the pod interface's.
    let addrs = exec(&cri, &c, "ip -o addr show; ip -o link show");
    assert!(addrs.contains(&format!("{}/", pod.ip)), "{addrs}");
    let link = std::process::Command::new("nsenter")
        .arg(format!("--net={}", pod.netns.display()))
        .args(["ip", "-o", "link", "show", "eth0"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let pod_mac = link
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    assert!(!pod_mac.is_empty(), "no eth0 in {}", pod.netns.display());
    assert!(
        addrs.contains(&pod_mac),
        "guest NIC lacks {pod_mac}: {addrs}"
    );
    // Reachable from the host at the pod IP: a server in the pod answers.
    cri.create_and_start(
        &pod,
        &ContainerSpec::new("server", &["nc", "-ll", "-p", "8080", "-e", "echo", "hi"]),
    );
    let addr = std::net::SocketAddr::from((pod.ip, 8080));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).and_then(
            |mut s| {
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                let mut text = String::new();
                std::io::Read::read_to_string(&mut s, &mut text)?;
                Ok(text)
            },
        );
        if answer.as_deref().is_ok_and(|t| t == "hi\n") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no answer from {addr}: {answer:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(exec(&cri, &c, "hostname"), "pool-second");
    // The clock is the host's, to within a second of the exec's span (an
    // exec takes seconds on a loaded machine).
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    let before = now();
    let guest: i64 = exec(&cri, &c, "date +%s").parse().unwrap();
    let after = now();
    assert!(
        (before - 1..=after + 1).contains(&guest),
        "guest {guest}, host {before}..{after}"
    );
    // Its VM's processes are in the pod's cgroup.
    let in_cgroup = cgroup_pids(&pod.cgroup);
    // (The VM's processes were started under the member's name.)
    let log = std::fs::read_to_string(cri.containerd().dir.path().join("containerd.log")).unwrap();
    let member = log
        .lines()
        .find(|l| l.contains("serving the pod with a pool VM") && l.contains(&pod.id))
        .and_then(|l| l.split("member=\"").nth(1))
        .and_then(|m| m.split('"').next())
        .expect("the member that served the pod")
        .to_owned();
    let mut vm: Vec<u32> = processes_mentioning(&format!("vms/{member}/"))
        .into_iter()
        .filter(|p| !member_processes(&cri).contains(p))
        .collect();
    assert_eq!(
        vm.len(),
        4,
        "QEMU, virtiofsd and its sandboxed server, vhost-device-vsock: {vm:?}"
    );
    // And vhost-device-vsock's PID-namespace monitor (it names no VM):
    // what the daemons forked moved with them.
    let monitors: Vec<u32> = vm
        .iter()
        .map(|p| parent_pid(*p))
        .filter(|p| comm(*p) == husk_hypervisor::confine::MONITOR_NAME.to_string_lossy())
        .collect();
    assert_eq!(monitors.len(), 1, "the vsock daemon's monitor: {vm:?}");
    vm.extend(monitors);
    for p in &vm {
        assert!(
            in_cgroup.contains(p),
            "{p} is not in {}: {in_cgroup:?}",
            pod.cgroup
        );
        // And runs at the pod's priority, every thread (vCPUs included).
        let nice = niceness(*p);
        assert!(
            !nice.is_empty() && nice.iter().all(|n| *n == 0),
            "{p}: {nice:?}"
        );
    }
    // Two pods, two VMs.
    let boot = |id: &str| exec(&cri, id, "cat /proc/sys/kernel/random/boot_id");
    assert_ne!(boot(&first_c), boot(&c));
    cri.stop_and_remove(&pod);
    cri.stop_and_remove(&first);
    end_members(&cri);
    assert_pool_empty(&cri);
}

#[test]
fn a_dead_pool_vm_is_replaced_not_handed_out() {
    let Some(cri) = harness(1) else { return };
    let first = cri.run_pod(HUSK, &PodSpec::new("pool-warm"));
    let idle = wait_for_members(&cri, 1);
    // Kill the idle VM's QEMU: the member leaves the pool.
    let member = idle[0].file_stem().unwrap().to_string_lossy().into_owned();
    let qemu: Vec<u32> = processes_mentioning(&format!("husk-{member}"))
        .into_iter()
        .filter(|p| comm(*p).starts_with("qemu"))
        .collect();
    assert_eq!(qemu.len(), 1, "{qemu:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(qemu[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Path::new(&idle[0]).exists() {
        assert!(Instant::now() < deadline, "the dead VM's member stayed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let pod = cri.run_pod(HUSK, &PodSpec::new("pool-after-death"));
    assert!(!got_pool_vm(&cri, &pod), "a dead VM was handed out");
    let c = sleeper(&cri, &pod);
    assert_eq!(exec(&cri, &c, "echo alive"), "alive");
    // And the pool is filled again.
    let refilled = wait_for_members(&cri, 1);
    assert_ne!(refilled[0], idle[0]);
    cri.stop_and_remove(&pod);
    cri.stop_and_remove(&first);
    end_members(&cri);
    assert_pool_empty(&cri);
}
