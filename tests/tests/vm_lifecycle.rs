//! A real micro-VM per test: real QEMU, guest kernel, agent, virtiofsd and
//! vhost-device-vsock. Under TCG each boot takes seconds, so each test does
//! as much as it can with one VM.

use husk_hypervisor::{MicroVm, VmSpec};
use husk_proto::agent::{GuestInfoRequest, ReadSharedFileRequest};
use husk_tests::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::os::unix::process::ExitStatusExt;

/// A runtime directory, a directory to share with the guest, and the
/// configuration that puts VMs in the first; fails the test when the guest
/// artifacts are missing.
struct Fixture {
    runtime: tempfile::TempDir,
    shared: tempfile::TempDir,
    config: husk_config::Config,
}

impl Fixture {
    fn new() -> Self {
        let runtime = tempfile::tempdir().unwrap();
        let config = test_config(runtime.path());
        require_guest_artifacts(&config);
        Fixture {
            runtime,
            shared: tempfile::tempdir().unwrap(),
            config,
        }
    }
}

fn spec(id: &str, shared: &std::path::Path) -> VmSpec {
    VmSpec {
        id: id.into(),
        shared_dir: shared.to_owned(),
        nets: Vec::new(),
        cgroup_procs: Vec::new(),
        oom_score_adj: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_runs_our_kernel_and_sees_the_shared_directory() {
    let Fixture {
        runtime,
        shared,
        config,
    } = Fixture::new();
    let built_release = kernel_release_of(&config.hypervisor.kernel)
        .expect("the guest kernel image has no 'Linux version' banner");

    std::fs::write(
        shared.path().join("before-boot.txt"),
        b"written before boot\n",
    )
    .unwrap();
    let mut vm = MicroVm::start(&config, spec("info", shared.path()))
        .await
        .expect("VM start");
    let pids = vm.pids();
    let mut agent = vm.agent().await.unwrap();
    // The logs are in the configured log directory, private, and the
    // console's shows the agent's marker line.
    let log_dir = vm.log_dir().to_owned();
    assert_eq!(log_dir, config.logs.dir.join("info"));
    assert_private(&log_dir, 0o700);
    for log in [
        "console.log",
        "vmm.log",
        "virtiofsd.log",
        "vhost-device-vsock.log",
    ] {
        assert_private(&log_dir.join(log), 0o600);
    }
    let console = std::fs::read_to_string(vm.console_log()).unwrap();
    assert!(
        console.contains(husk_proto::AGENT_LISTENING_MARKER),
        "{console}"
    );

    let info = agent
        .guest_info(GuestInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.kernel_release, built_release);
    assert_ne!(info.kernel_release, host_kernel_release());
    assert_eq!(info.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(info.online_cpus, config.hypervisor.vcpus);
    let configured_kib = u64::from(config.hypervisor.memory_mib) * 1024;
    assert!(
        info.memory_total_kib <= configured_kib && info.memory_total_kib > configured_kib / 2,
        "guest sees {} KiB of {} KiB",
        info.memory_total_kib,
        configured_kib
    );
    assert!(info.agent_started_ms <= info.agent_serving_ms);
    assert!(info.agent_serving_ms <= info.uptime_ms);
    assert_eq!(info.boot_id.len(), 36, "boot id {:?}", info.boot_id);
    assert_eq!(info.shared_dir, husk_proto::GUEST_SHARED_DIR);
    assert_eq!(info.hw_rng, "virtio_rng.0", "the guest's entropy source");

    // A file written before boot and one written while the guest runs.
    let read = |path: &str| ReadSharedFileRequest {
        path: path.into(),
        max_bytes: 0,
    };
    let before = agent
        .read_shared_file(read("before-boot.txt"))
        .await
        .unwrap();
    assert_eq!(before.into_inner().content, b"written before boot\n");
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::create_dir(shared.path().join("sub")).unwrap();
    std::fs::write(shared.path().join("sub/live.bin"), &payload).unwrap();
    let live = agent
        .read_shared_file(read("sub/live.bin"))
        .await
        .unwrap()
        .into_inner();
    assert!(!live.truncated);
    assert_eq!(live.content, payload);

    // The agent refuses to read outside the shared directory.
    let escape = agent.read_shared_file(read("../../etc/hostname")).await;
    assert_eq!(escape.unwrap_err().code(), tonic::Code::InvalidArgument);

    // Every host process of the VM: QEMU, virtiofsd and the server it
    // forks into its sandbox, vhost-device-vsock's PID-namespace monitor
    // and vhost-device-vsock under it.
    let processes = vm.processes();
    let comms: Vec<String> = processes.iter().map(|p| husk_tests::comm(*p)).collect();
    assert_eq!(processes.len(), 5, "{comms:?}");
    for (pid, name) in [
        (pids.vmm, "qemu"),
        (pids.virtiofsd, "virtiofsd"),
        (pids.vsock_backend, "husk-ns-monitor"),
    ] {
        let at = processes.iter().position(|p| *p == pid).unwrap();
        assert!(comms[at].starts_with(name), "{comms:?}");
    }
    assert_eq!(comms.iter().filter(|c| *c == "virtiofsd").count(), 2);
    assert!(comms.iter().any(|c| c.starts_with("vhost-device-vs")));

    // A pooled VM takes its pod's id while it runs: its run directory
    // moves under helpers that hold it bound into their jails, and the
    // launcher's own link to the agent's socket moves with it.
    let old_run_dir = vm.run_dir().to_owned();
    vm.rename("info-renamed").unwrap();
    assert!(!old_run_dir.exists());
    assert!(!log_dir.exists());
    assert_eq!(
        vm.agent_socket(),
        runtime.path().join("vms/info-renamed/agent.vsock")
    );
    let log_dir = vm.log_dir().to_owned();
    assert_eq!(log_dir, config.logs.dir.join("info-renamed"));
    let mut agent = vm.agent().await.unwrap();
    let again = agent
        .read_shared_file(read("before-boot.txt"))
        .await
        .unwrap();
    assert_eq!(again.into_inner().content, b"written before boot\n");
    drop(agent);

    // Graceful stop: the guest powers itself off and QEMU exits 0.
    let status = vm.stop().await.expect("the VMM had started");
    assert!(status.success(), "QEMU ended with {status}");
    assert!(!log_dir.exists(), "a cleanly stopped VM keeps no logs");
    for pid in &processes {
        assert!(!process_alive(*pid), "pid {pid} of {comms:?} still runs");
    }
    for (name, pid) in [
        ("qemu", pids.vmm),
        ("virtiofsd", pids.virtiofsd),
        ("vhost-device-vsock", pids.vsock_backend),
    ] {
        assert!(!process_alive(pid), "{name} (pid {pid}) still runs");
    }
    assert!(
        !vm.run_dir().exists(),
        "{} left behind",
        vm.run_dir().display()
    );
    assert_eq!(
        entries(&runtime.path().join("vms")),
        Vec::<std::path::PathBuf>::new()
    );
    // The host's files are untouched by the VM's lifecycle.
    assert_eq!(
        std::fs::read(shared.path().join("sub/live.bin")).unwrap(),
        payload
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_qemu_leaves_no_process_socket_or_directory() {
    let Fixture {
        runtime,
        shared,
        config,
    } = Fixture::new();

    let mut vm = MicroVm::start(&config, spec("killed", shared.path()))
        .await
        .expect("VM start");
    let pids = vm.pids();
    let run_dir = vm.run_dir().to_owned();
    let agent_socket = vm.agent_socket();
    assert!(
        agent_socket.exists(),
        "hybrid vsock socket missing while running"
    );
    for pid in [pids.vmm, pids.virtiofsd, pids.vsock_backend] {
        assert!(process_alive(pid));
    }

    kill(Pid::from_raw(pids.vmm as i32), Signal::SIGKILL).unwrap();
    let status = vm.wait().await.unwrap();
    assert_eq!(
        status.signal(),
        Some(libc_sigkill()),
        "QEMU ended with {status}"
    );

    let stopped = vm.stop().await.unwrap();
    assert_eq!(stopped.signal(), Some(libc_sigkill()));
    for (name, pid) in [
        ("qemu", pids.vmm),
        ("virtiofsd", pids.virtiofsd),
        ("vhost-device-vsock", pids.vsock_backend),
    ] {
        assert!(!process_alive(pid), "{name} (pid {pid}) survived");
    }
    assert!(
        !agent_socket.exists(),
        "socket {} left behind",
        agent_socket.display()
    );
    assert!(!run_dir.exists(), "{} left behind", run_dir.display());
    assert!(entries(&runtime.path().join("vms")).is_empty());
    // A VM that died keeps its logs, the console's up to its last line.
    let console = std::fs::read_to_string(config.logs.dir.join("killed/console.log")).unwrap();
    assert!(
        console.contains(husk_proto::AGENT_LISTENING_MARKER),
        "{console}"
    );
}

/// `path` has exactly `mode` and is root's.
fn assert_private(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).unwrap();
    assert_eq!(meta.mode() & 0o777, mode, "{}", path.display());
    assert_eq!(meta.uid(), 0, "{}", path.display());
}

/// A device daemon that dies takes its VM down: neither VMM can reconnect
/// a vhost-user device, and a guest waiting on it would hang. The VMM gets
/// SIGKILL from the watcher, and stop() leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_device_daemon_takes_the_vm_down() {
    for daemon in ["virtiofsd", "vhost-device-vsock"] {
        let Fixture {
            runtime,
            shared,
            config,
        } = Fixture::new();
        let mut vm = MicroVm::start(&config, spec("orphaned", shared.path()))
            .await
            .expect("VM start");
        let pids = vm.pids();
        let victim = match daemon {
            "virtiofsd" => pids.virtiofsd,
            _ => pids.vsock_backend,
        };
        kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
        let status = tokio::time::timeout(std::time::Duration::from_secs(20), vm.wait())
            .await
            .unwrap_or_else(|_| panic!("the VM outlived its {daemon}"))
            .unwrap();
        assert_eq!(
            status.signal(),
            Some(libc_sigkill()),
            "{daemon} died: the VMM should have been killed, it ended with {status}"
        );
        vm.stop().await;
        for pid in [pids.vmm, pids.virtiofsd, pids.vsock_backend] {
            assert!(!process_alive(pid), "{daemon}: pid {pid} survived");
        }
        assert!(entries(&runtime.path().join("vms")).is_empty());
    }
}

fn libc_sigkill() -> i32 {
    Signal::SIGKILL as i32
}

/// husk-vmm boots the same guest (kernel, agent, vsock, virtio-fs) where
/// KVM can run it. On a host without vmx/svm (these build machines' PVM
/// /dev/kvm) it cannot, and the test says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn husk_vmm_boots_the_guest_where_kvm_allows() {
    let decision = husk_hypervisor::detect_accelerator();
    if decision.accelerator != husk_hypervisor::Accelerator::Kvm {
        println!(
            "SKIPPED: husk-vmm needs KVM with vmx/svm: {}",
            decision.reason
        );
        return;
    }
    let Fixture {
        runtime,
        shared,
        mut config,
    } = Fixture::new();
    config.hypervisor.backend = husk_config::Backend::HuskVmm;
    config.hypervisor.vmm_path = husk_tests::containerd::build_bin_dir().join("husk-vmm");
    std::fs::write(shared.path().join("f"), b"through virtio-fs\n").unwrap();
    let mut vm = MicroVm::start(&config, spec("husk-vmm", shared.path()))
        .await
        .expect("VM start on husk-vmm");
    let mut agent = vm.agent().await.unwrap();
    let info = agent
        .guest_info(GuestInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        Some(info.kernel_release),
        kernel_release_of(&config.hypervisor.kernel)
    );
    assert_eq!(info.hw_rng, "virtio_rng.0", "husk-vmm's --rng");
    let file = agent
        .read_shared_file(ReadSharedFileRequest {
            path: "f".into(),
            max_bytes: 64,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(file.content, b"through virtio-fs\n");
    vm.stop().await;
    assert!(entries(&runtime.path().join("vms")).is_empty());
}
