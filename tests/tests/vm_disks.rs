//! husk-vm's root disk on a volume end to end through CRI
//! (docs/vm-pods.md, "The root disk on a volume"): the Debian test image
//! (tests/fixtures/build-vm-image.sh) and a raw block volume on a loop
//! device, passed as kubelet passes a block PVC's `volumeDevices`, named
//! by the pod annotation `io.husk.vm.root-disk`.
//!
//! 1. Refused before any VM runs: a path the container is not given, and
//!    a volume holding something that is not a disk (left as it was);
//! 2. the blank volume gets the image imported (progress on the
//!    container's stderr) and boots; a file written through exec;
//! 3. a second pod on the same volume is refused, naming the first;
//! 4. StopContainer, the pod deleted, a new pod on the volume: no
//!    import, and the file is there.
//!
//! And a filesystem volume (an ext4 file system on a loop device, as a
//! filesystem PVC is mounted): its `disk.img` left by an import cut short
//! (blank start, data behind it) is imported again and booted; a file
//! written and synced in the guest survives QEMU's SIGKILL, the pod's
//! deletion and a new pod, which boots the disk with no import.
//!
//! Four Debian boots under TCG, one at a time: minutes on a loaded host.

use husk_tests::cri::{
    assert_no_vm_left, harness_or_skip, vm_archive, ContainerSpec, Cri, Pod, PodSpec, HUSK_VM,
};
use husk_tests::vm_guest::{stderr_log, wait_exec};
use k8s_cri::v1 as cri;
use std::io::{Read, Seek, SeekFrom, Write};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const DEBIAN_VM: &str = "docker.io/husk/debian-vm:test";
const VM_COMMAND: &[&str] = &["/disk"];
const ROOT_DISK: &str = "io.husk.vm.root-disk";
/// Where the container is given its volume.
const DEVICE: &str = "/dev/xvda";
/// The Debian image's disk is 2049 MiB; the volume is larger, as a PVC
/// usually is.
const VOLUME_MIB: u64 = 2200;
/// Where the container is given its filesystem volume.
const VOLUME_DIR: &str = "/vm";
/// The ext4 file system that stands for a filesystem PVC: room for the
/// image's 2049 MiB disk and ext4's own share.
const FS_VOLUME_MIB: u64 = 2400;
/// One Debian boot at a time: two under TCG on a small host only slow
/// each other past their deadlines.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A loop device over a sparse file of `mib` MiB whose start is `head`.
struct LoopDevice {
    dev: String,
    file: tempfile::NamedTempFile,
}

impl LoopDevice {
    fn new(mib: u64, head: &[u8]) -> Option<Self> {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(mib << 20).unwrap();
        file.write_all(head).unwrap();
        file.flush().unwrap();
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file.path())
            .output()
            .ok()?;
        if !out.status.success() {
            println!(
                "SKIPPED: losetup: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Self {
            dev: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            file,
        })
    }

    /// The first `n` bytes, as the volume holds them.
    fn head(&self, n: usize) -> Vec<u8> {
        let mut f = std::fs::File::open(self.file.path()).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        let mut b = vec![0u8; n];
        f.read_exact(&mut b).unwrap();
        b
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).output();
    }
}

/// An ext4 file system on a loop device, mounted on a directory of its
/// own: what kubelet mounts for a filesystem PVC.
struct FsVolume {
    dir: tempfile::TempDir,
    _device: LoopDevice,
}

impl FsVolume {
    fn new(mib: u64) -> Option<Self> {
        let device = LoopDevice::new(mib, &[])?;
        let dir = tempfile::tempdir().unwrap();
        let run = |cmd: &mut Command| {
            let out = cmd.output().expect("running mkfs.ext4 or mount");
            assert!(
                out.status.success(),
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(Command::new("mkfs.ext4").args(["-q", "-F", &device.dev]));
        run(Command::new("mount").arg(&device.dev).arg(dir.path()));
        Some(Self {
            dir,
            _device: device,
        })
    }
}

impl Drop for FsVolume {
    fn drop(&mut self) {
        // Unmounted before the loop device goes (fields drop after this).
        let _ = Command::new("umount").arg(self.dir.path()).output();
    }
}

/// A husk-vm container of the Debian image, one CPU and 1 GiB.
fn debian_vm(name: &str) -> ContainerSpec {
    let mut spec = ContainerSpec::new(name, VM_COMMAND);
    spec.image = DEBIAN_VM.into();
    spec.resources = Some(cri::LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: 100_000,
        memory_limit_in_bytes: 1024 << 20,
        ..Default::default()
    });
    spec
}

/// A husk-vm container on the filesystem volume mounted at `dir`.
fn vm_in(name: &str, dir: &std::path::Path) -> ContainerSpec {
    let mut spec = debian_vm(name);
    spec.mounts = vec![cri::Mount {
        container_path: VOLUME_DIR.into(),
        host_path: dir.display().to_string(),
        ..Default::default()
    }];
    spec
}

/// A husk-vm container on the block volume `dev`.
fn vm_on(name: &str, dev: &str) -> ContainerSpec {
    let mut spec = debian_vm(name);
    spec.devices = vec![cri::Device {
        container_path: DEVICE.into(),
        host_path: dev.into(),
        permissions: "rwm".into(),
    }];
    spec
}

/// A pod whose annotation puts the VM's root disk at `path`.
fn pod_spec(name: &str, path: &str) -> PodSpec {
    let mut p = PodSpec::new(name);
    p.annotations.insert(ROOT_DISK.into(), path.into());
    p
}

/// What StartContainer says of a VM that must not start.
fn refused(cri: &Cri, pod: &Pod, spec: &ContainerSpec) -> String {
    let id = cri.try_create(pod, spec).unwrap();
    let e = cri.start_container(&id).expect_err(&spec.name);
    cri.remove_container(&id);
    e
}

#[test]
fn a_root_volume_is_imported_once_kept_across_restarts_and_written_by_one_vm() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut cri) = harness_or_skip() else {
        return;
    };
    let started = Instant::now();
    cri.import_image(&vm_archive("debian-vm-oci.tar"), DEBIAN_VM);
    let Some(volume) = LoopDevice::new(VOLUME_MIB, &[]) else {
        return;
    };
    let mut xfs = vec![0u8; 4096];
    xfs[..4].copy_from_slice(b"XFSB");
    let Some(garbage) = LoopDevice::new(64, &xfs) else {
        return;
    };

    // 1. Refused before any VM runs.
    let pod_a = cri.run_pod(HUSK_VM, &pod_spec("vm-disk-a", DEVICE));
    let pod_typo = cri.run_pod(HUSK_VM, &pod_spec("vm-disk-typo", "/dev/xvdz"));
    let e = refused(&cri, &pod_typo, &vm_on("vm", &volume.dev));
    assert!(
        e.contains("/dev/xvdz") && e.contains("neither a block device"),
        "{e}"
    );
    let e = refused(&cri, &pod_a, &vm_on("on-garbage", &garbage.dev));
    assert!(e.contains("XFS") && e.contains("does not overwrite"), "{e}");
    assert_eq!(garbage.head(4096), xfs, "the refused volume was written");

    // 2. Imported, then booted; a file written in the guest.
    let spec = vm_on("vm", &volume.dev);
    let t = Instant::now();
    let first = cri.create_and_start(&pod_a, &spec);
    let booted = wait_exec(&cri, &first, t);
    let log = stderr_log(&pod_a, &spec);
    assert!(log.contains("the root volume is blank: importing"), "{log}");
    let done = log
        .lines()
        .find(|l| l.contains("import done in"))
        .unwrap_or_else(|| panic!("{log}"));
    println!("import: {done}; exec works after {booted:?}");
    assert_eq!(
        &volume.head(512)[510..],
        &[0x55, 0xaa],
        "no MBR after the import"
    );
    let w = cri.exec_sync(
        &first,
        &["sh", "-c", "echo kept > /var/tmp/kept && sync"],
        60,
    );
    assert_eq!(w.exit_code, 0, "{w:?}");

    // 3. A second VM on the node that would write the volume is refused,
    //    naming the first.
    let pod_b = cri.run_pod(HUSK_VM, &pod_spec("vm-disk-b", DEVICE));
    let e = refused(&cri, &pod_b, &vm_on("vm", &volume.dev));
    println!("second writer: {e}");
    assert!(e.contains("another VM") && e.contains("vm-disk-a"), "{e}");

    // 4. Stopped, the pod deleted; a new pod boots the volume as it is.
    cri.stop_container(&first, 120);
    println!(
        "first VM stopped: exit {}",
        cri.container_status(&first).exit_code
    );
    cri.stop_and_remove(&pod_a);
    let pod_a2 = cri.run_pod(HUSK_VM, &pod_spec("vm-disk-a2", DEVICE));
    let spec2 = vm_on("vm-again", &volume.dev);
    let t = Instant::now();
    let second = cri.create_and_start(&pod_a2, &spec2);
    let booted = wait_exec(&cri, &second, t);
    let kept = cri.exec_sync(&second, &["cat", "/var/tmp/kept"], 60);
    assert_eq!(kept.stdout.trim(), "kept", "{kept:?}");
    let log = stderr_log(&pod_a2, &spec2);
    assert!(!log.contains("importing"), "imported again: {log}");
    println!("a new pod on the volume: exec works after {booted:?}");

    cri.stop_and_remove(&pod_a2);
    cri.stop_and_remove(&pod_b);
    cri.stop_and_remove(&pod_typo);
    assert_no_vm_left(&cri, Duration::from_secs(30));
    println!("vm_disks: {:?} in all", started.elapsed());
}

#[test]
fn a_filesystem_volume_cut_short_is_imported_again_and_survives_a_killed_qemu() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut cri) = harness_or_skip() else {
        return;
    };
    let started = Instant::now();
    cri.import_image(&vm_archive("debian-vm-oci.tar"), DEBIAN_VM);
    let Some(volume) = FsVolume::new(FS_VOLUME_MIB) else {
        return;
    };
    let dir = volume.dir.path().to_owned();
    let disk = dir.join("disk.img");

    // An import cut short: the disk file made, data written, but not its
    // start (which an import writes last).
    {
        let mut f = std::fs::File::create(&disk).unwrap();
        f.set_len(2100 << 20).unwrap();
        f.seek(SeekFrom::Start(8 << 20)).unwrap();
        f.write_all(b"left by an import cut short").unwrap();
        f.sync_all().unwrap();
    }

    // 1. Imported again, then booted; a file written and synced.
    let pod = cri.run_pod(HUSK_VM, &pod_spec("vm-fs", VOLUME_DIR));
    let spec = vm_in("vm", &dir);
    let t = Instant::now();
    let first = cri.create_and_start(&pod, &spec);
    let booted = wait_exec(&cri, &first, t);
    let log = stderr_log(&pod, &spec);
    assert!(log.contains("the root volume is blank: importing"), "{log}");
    println!("an import cut short, redone; exec works after {booted:?}");
    let w = cri.exec_sync(
        &first,
        &["sh", "-c", "echo survived > /var/tmp/kept && sync"],
        60,
    );
    assert_eq!(w.exit_code, 0, "{w:?}");

    // 2. QEMU SIGKILLed, as the OOM killer or a node's crash would.
    let qemu: Vec<u32> = husk_tests::containerd::processes_mentioning(&format!("husk-vm-{first},"))
        .into_iter()
        .filter(|p| husk_tests::comm(*p).contains("qemu"))
        .collect();
    assert_eq!(qemu.len(), 1, "QEMU of {first}: {qemu:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(qemu[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let status = cri.wait_exited(&first, Duration::from_secs(60));
    println!("QEMU killed: the container exited {}", status.exit_code);
    assert_ne!(status.exit_code, 0, "{status:?}");

    // 3. The pod deleted; a new pod boots the disk as it is.
    cri.stop_and_remove(&pod);
    let pod2 = cri.run_pod(HUSK_VM, &pod_spec("vm-fs-again", VOLUME_DIR));
    let spec2 = vm_in("vm-again", &dir);
    let t = Instant::now();
    let second = cri.create_and_start(&pod2, &spec2);
    let booted = wait_exec(&cri, &second, t);
    let kept = cri.exec_sync(&second, &["cat", "/var/tmp/kept"], 60);
    assert_eq!(kept.stdout.trim(), "survived", "{kept:?}");
    let log = stderr_log(&pod2, &spec2);
    assert!(!log.contains("importing"), "imported again: {log}");
    let replay = cri.exec_sync(
        &second,
        &["sh", "-c", "dmesg | grep -i 'EXT4-fs.*recover' || true"],
        60,
    );
    println!(
        "after the kill, a new pod: exec works after {booted:?}; {}",
        if replay.stdout.trim().is_empty() {
            "no journal recovery logged".to_owned()
        } else {
            replay.stdout.trim().to_owned()
        }
    );

    cri.stop_and_remove(&pod2);
    assert_no_vm_left(&cri, Duration::from_secs(30));
    println!(
        "vm_disks (filesystem volume): {:?} in all",
        started.elapsed()
    );
}
