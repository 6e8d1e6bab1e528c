//! A husk-vm VM resized in place through CRI (docs/vm-pods.md, "Resizing
//! a running VM"): UpdateContainerResources, as `crictl update` and
//! kubelet's in-place pod resize send it, on the Debian test image booted
//! with 1 vCPU and 512 MiB.
//!
//! 1. Up to 2 CPUs and 1 GiB: the guest shows 2 online CPUs and 512 MiB
//!    more memory (`nproc`, `/proc/meminfo`), and can use it.
//! 2. Back to 1 CPU and 512 MiB: the guest shows 1 CPU and its boot
//!    memory again, QEMU runs 1 vCPU, and QEMU's RSS on the host falls
//!    back to within 64 MiB of where it was before the growth.
//! 3. Refused, the size kept: more than the room the VM booted with, and
//!    less than its boot size.
//!
//! One Debian boot under TCG: a few minutes on a loaded host.

use husk_tests::cri::{harness_or_skip, vm_archive, ContainerSpec, Cri, PodSpec, HUSK_VM};
use k8s_cri::v1 as cri;
use std::time::{Duration, Instant};

const DEBIAN_VM: &str = "docker.io/husk/debian-vm:test";
const BOOT_TIMEOUT: Duration = Duration::from_secs(1200);
const PERIOD: i64 = 100_000;

fn resources(cpus: i64, mib: i64) -> cri::LinuxContainerResources {
    cri::LinuxContainerResources {
        cpu_period: PERIOD,
        cpu_quota: cpus * PERIOD,
        memory_limit_in_bytes: mib << 20,
        ..Default::default()
    }
}

/// (online CPUs, MemTotal in KiB) as the guest sees them.
fn guest_size(cri: &Cri, id: &str) -> (u32, u64) {
    let r = cri.exec_sync(
        id,
        &[
            "sh",
            "-c",
            "nproc; sed -n 's/^MemTotal: *//p' /proc/meminfo",
        ],
        60,
    );
    assert_eq!(r.exit_code, 0, "{r:?}");
    let mut lines = r.stdout.lines();
    let cpus = lines.next().and_then(|l| l.trim().parse().ok());
    let kib = lines
        .next()
        .and_then(|l| l.split_whitespace().next()?.parse().ok());
    match (cpus, kib) {
        (Some(c), Some(k)) => (c, k),
        _ => panic!("the guest said {r:?}"),
    }
}

/// Polls the guest until `done` holds for its size; how long it took.
fn until(cri: &Cri, id: &str, done: impl Fn((u32, u64)) -> bool) -> (Duration, (u32, u64)) {
    let t = Instant::now();
    loop {
        let size = guest_size(cri, id);
        if done(size) {
            return (t.elapsed(), size);
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the guest stays at {size:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn qemu_rss_mib(id: &str) -> u64 {
    let pid = husk_tests::containerd::processes_mentioning(&format!("husk-vm-{id},"))
        .into_iter()
        .find(|p| husk_tests::comm(*p).contains("qemu"))
        .expect("the VM's QEMU");
    husk_tests::rss_kib(pid).expect("QEMU's RSS").0 / 1024
}

#[test]
fn a_running_vm_grows_and_shrinks_with_its_limits() {
    let Some(mut cri) = harness_or_skip() else {
        return;
    };
    cri.import_image(&vm_archive("debian-vm-oci.tar"), DEBIAN_VM);
    let pod = cri.run_pod(HUSK_VM, &PodSpec::new("vm-resize"));
    let mut spec = ContainerSpec::new("vm", &["/disk"]);
    spec.image = DEBIAN_VM.into();
    spec.resources = Some(resources(1, 512));
    let id = cri.create_and_start(&pod, &spec);
    let deadline = Instant::now() + BOOT_TIMEOUT;
    while !matches!(cri.try_exec_sync(&id, &["cloud-init", "status", "--wait"], 600), Ok(r) if r.exit_code == 0)
    {
        assert!(Instant::now() < deadline, "the VM never booted");
        std::thread::sleep(Duration::from_secs(2));
    }
    let (cpus0, kib0) = guest_size(&cri, &id);
    let rss0 = qemu_rss_mib(&id);
    println!("booted: {cpus0} CPU, MemTotal {kib0} KiB; QEMU RSS {rss0} MiB");
    assert_eq!(cpus0, 1);

    // 1. Up.
    let t = Instant::now();
    cri.try_update_resources(&id, resources(2, 1024))
        .unwrap_or_else(|e| panic!("the update up failed: {e}"));
    let call = t.elapsed();
    let (seen, (cpus, kib)) = until(&cri, &id, |(c, k)| c == 2 && k >= kib0 + (500 << 10));
    println!(
        "up: the update returned after {call:?}, the guest showed {cpus} CPUs and MemTotal {kib} \
         KiB {:?} after the call",
        call + seen
    );
    let used = cri.exec_sync(
        &id,
        &[
            "python3",
            "-c",
            "b = bytearray(600 << 20); b[::4096] = b'x' * len(b[::4096]); print(len(b) >> 20)",
        ],
        300,
    );
    assert_eq!(used.stdout.trim(), "600", "600 MiB not usable: {used:?}");
    let rss_up = qemu_rss_mib(&id);
    println!("600 MiB used in the guest; QEMU RSS {rss_up} MiB");

    // 2. Down.
    let t = Instant::now();
    cri.try_update_resources(&id, resources(1, 512))
        .unwrap_or_else(|e| panic!("the update down failed: {e}"));
    let call = t.elapsed();
    let (seen, (cpus, kib)) = until(&cri, &id, |(c, k)| c == 1 && k <= kib0);
    std::thread::sleep(Duration::from_secs(2));
    let rss_down = qemu_rss_mib(&id);
    println!(
        "down: the update returned after {call:?}, the guest showed {cpus} CPU and MemTotal {kib} \
         KiB {:?} after the call; QEMU RSS {rss_down} MiB (before the growth {rss0})",
        call + seen
    );
    assert!(
        rss_down <= rss0 + 64,
        "QEMU's RSS stayed at {rss_down} MiB after the shrink, {rss0} before the growth"
    );

    // 3. Refused, the size kept.
    let e = cri
        .try_update_resources(&id, resources(8, 1024))
        .unwrap_err();
    assert!(e.contains("room for 4"), "{e}");
    let e = cri
        .try_update_resources(&id, resources(1, 256))
        .unwrap_err();
    assert!(e.contains("booted with"), "{e}");
    println!("refused: {e}");
    assert_eq!(guest_size(&cri, &id).0, 1);

    cri.stop_container(&id, 60);
    cri.stop_and_remove(&pod);
}
