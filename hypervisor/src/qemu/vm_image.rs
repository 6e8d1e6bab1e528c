//! Launching a VM *image* (husk-vm pods, docs/vm-pods.md): a whole OS
//! with its own kernel, booted by QEMU from a disk, unlike the micro-VMs of
//! `vm` that boot husk's kernel and agent. The disk is a PC's: `-M pc`
//! with SeaBIOS, `-M q35` with OVMF for UEFI-only images, or the image's
//! own kernel and initrd booted directly. Devices are what a cloud image
//! expects (virtio-blk, virtio-net, virtio-serial for the QEMU guest
//! agent, pvpanic) and nothing else (`-nodefaults`).
//!
//! QEMU starts paused (`-S`): the caller connects QMP and the console
//! first and lets the vCPUs run with QMP `cont`, so no console byte is
//! lost. The serial console is QEMU's stdin and stdout, its own messages
//! its stderr; QMP and the guest agent are Unix sockets in the run
//! directory. A guest panic (pvpanic) makes QEMU exit with status 1
//! (`-action panic=exit-failure`) after the GUEST_PANICKED event; a guest
//! reboot resets the VM, as on a PC.

use crate::{Accelerator, Error, MacAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};

const QMP_SOCKET: &str = "qmp.sock";
const GUEST_AGENT_SOCKET: &str = "qga.sock";
/// The port name qemu-guest-agent opens in the guest.
pub const GUEST_AGENT_PORT: &str = "org.qemu.guest_agent.0";

/// How the VM finds its kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageBoot {
    /// SeaBIOS boots the root disk's MBR (`-M pc`).
    Bios,
    /// OVMF boots the root disk's EFI system partition (`-M q35`); `vars`
    /// is the VM's own writable copy of the variable store.
    Uefi { code: PathBuf, vars: PathBuf },
    /// The image's kernel and initrd, booted directly (`-M pc`).
    Kernel {
        kernel: PathBuf,
        initrd: PathBuf,
        cmdline: String,
    },
}

/// A host block device given to the guest as a further virtio-blk disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDevice {
    pub path: PathBuf,
    /// The disk's serial (the guest's /dev/disk/by-id/virtio-<serial>).
    pub serial: String,
}

/// One VM image as QEMU is told to run it.
#[derive(Debug, Clone)]
pub struct VmImageLaunch {
    /// Names the QEMU process; [A-Za-z0-9_.-].
    pub id: String,
    pub accelerator: Accelerator,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// TCG's translation cache in MiB (QEMU's default is 1 GiB, most of
    /// its RSS under TCG); 0 keeps QEMU's. Not used under KVM.
    pub tcg_tb_size_mib: u32,
    pub boot: ImageBoot,
    /// The root disk: a qcow2 overlay whose backing file is the image's.
    pub root: PathBuf,
    /// The NoCloud seed (vfat, read-only).
    pub seed: Option<PathBuf>,
    pub block_devices: Vec<BlockDevice>,
    /// The NIC's MAC; its TAP is the child's fd `FIRST_TAP_FD`.
    pub nic: Option<MacAddr>,
    /// Where QMP's and the guest agent's sockets are made.
    pub run_dir: PathBuf,
}

pub fn qmp_socket(run_dir: &Path) -> PathBuf {
    run_dir.join(QMP_SOCKET)
}

pub fn guest_agent_socket(run_dir: &Path) -> PathBuf {
    run_dir.join(GUEST_AGENT_SOCKET)
}

/// A path inside a QEMU option value: commas are doubled, as QEMU's
/// option parser reads `,,` as one comma.
fn opt_path(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// QEMU's command line for `l` (without the binary).
pub fn qemu_args(l: &VmImageLaunch) -> Vec<String> {
    [
        machine_args(l),
        firmware_args(l),
        disk_args(l),
        device_args(l),
        kernel_args(l),
    ]
    .concat()
}

fn strs(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The machine, its CPUs and memory, what QEMU may do, the console and
/// the monitor.
fn machine_args(l: &VmImageLaunch) -> Vec<String> {
    let machine = match l.boot {
        ImageBoot::Uefi { .. } => "q35",
        _ => "pc",
    };
    let accel = match (l.accelerator, l.tcg_tb_size_mib) {
        (Accelerator::Tcg, 0) | (Accelerator::Kvm, _) => l.accelerator.as_str().to_owned(),
        (Accelerator::Tcg, mib) => format!("tcg,tb-size={mib}"),
    };
    let cpu = match l.accelerator {
        Accelerator::Kvm => "host",
        Accelerator::Tcg => "max",
    };
    strs(&[
        "-name",
        &format!("husk-vm-{},debug-threads=on", l.id),
        "-M",
        machine,
        "-accel",
        &accel,
        "-cpu",
        cpu,
        "-smp",
        &l.vcpus.to_string(),
        "-m",
        &format!("{}M", l.memory_mib),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        // vCPUs wait for QMP `cont` (the container's Start).
        "-S",
        // QEMU itself may not exec, gain privileges or use obsolete calls.
        "-sandbox",
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        "-action",
        "panic=exit-failure",
        "-chardev",
        "stdio,id=console,signal=off",
        "-serial",
        "chardev:console",
        "-qmp",
        &format!(
            "unix:{},server=on,wait=off",
            opt_path(&qmp_socket(&l.run_dir))
        ),
    ])
}

/// OVMF's code (read-only) and the VM's own copy of its variables.
fn firmware_args(l: &VmImageLaunch) -> Vec<String> {
    let ImageBoot::Uefi { code, vars } = &l.boot else {
        return Vec::new();
    };
    strs(&[
        "-drive",
        &format!(
            "if=pflash,unit=0,format=raw,readonly=on,file={}",
            opt_path(code)
        ),
        "-drive",
        &format!("if=pflash,unit=1,format=raw,file={}", opt_path(vars)),
    ])
}

/// The root overlay, the cloud-init seed and the pod's raw block volumes.
fn disk_args(l: &VmImageLaunch) -> Vec<String> {
    // The kernel's option ROM takes boot index 0 itself ("bootindex 0 has
    // already been used").
    let bootindex = match l.boot {
        ImageBoot::Kernel { .. } => "",
        _ => ",bootindex=0",
    };
    let mut a = strs(&[
        "-drive",
        &format!(
            "if=none,id=root,file={},format=qcow2,discard=unmap",
            opt_path(&l.root)
        ),
        "-device",
        &format!("virtio-blk-pci,drive=root{bootindex}"),
    ]);
    if let Some(seed) = &l.seed {
        a.extend(strs(&[
            "-drive",
            &format!(
                "if=none,id=seed,file={},format=raw,readonly=on",
                opt_path(seed)
            ),
            "-device",
            "virtio-blk-pci,drive=seed",
        ]));
    }
    for (i, d) in l.block_devices.iter().enumerate() {
        a.extend(strs(&[
            "-drive",
            &format!(
                "if=none,id=blk{i},file={},format=raw,cache=none,aio=threads",
                opt_path(&d.path)
            ),
            "-device",
            &format!(
                "virtio-blk-pci,drive=blk{i},serial={}",
                d.serial.replace(',', ",,")
            ),
        ]));
    }
    a
}

/// The pod's NIC (on the TAP passed as an fd), the guest agent's channel
/// and the panic device.
fn device_args(l: &VmImageLaunch) -> Vec<String> {
    let mut a = Vec::new();
    if let Some(mac) = &l.nic {
        a = strs(&[
            "-netdev",
            &format!("tap,id=net0,fd={},vhost=off", crate::FIRST_TAP_FD),
            "-device",
            &format!("virtio-net-pci,netdev=net0,mac={mac}"),
        ]);
    }
    a.extend(strs(&[
        "-device",
        "virtio-serial-pci",
        "-chardev",
        &format!(
            "socket,id=qga,path={},server=on,wait=off",
            opt_path(&guest_agent_socket(&l.run_dir))
        ),
        "-device",
        &format!("virtserialport,chardev=qga,name={GUEST_AGENT_PORT}"),
        "-device",
        "pvpanic",
    ]));
    a
}

/// Direct kernel boot: kernel, initrd and command line.
fn kernel_args(l: &VmImageLaunch) -> Vec<String> {
    let ImageBoot::Kernel {
        kernel,
        initrd,
        cmdline,
    } = &l.boot
    else {
        return Vec::new();
    };
    strs(&[
        "-kernel",
        &kernel.display().to_string(),
        "-initrd",
        &initrd.display().to_string(),
        "-append",
        cmdline,
    ])
}

/// The QEMU process of a VM image, paused, with its stdio.
pub struct SpawnedVm {
    pub pid: u32,
    /// Waited for by whoever reports the VM's exit.
    pub child: Child,
    /// The serial console's input.
    pub console_in: ChildStdin,
    /// The serial console's output.
    pub console_out: ChildStdout,
    /// QEMU's own messages.
    pub diagnostics: ChildStderr,
    pub killer: VmKiller,
}

/// SIGKILLs the QEMU process through a pidfd, so a reaped and reused pid
/// is never hit.
pub struct VmKiller(crate::supervisor::Pidfd);

impl VmKiller {
    pub fn kill(&self) -> std::io::Result<()> {
        self.0.kill()
    }
}

/// Checks `l` and spawns QEMU (`qemu`) for it, the NIC's TAP `tap` as its
/// fd `FIRST_TAP_FD`. QEMU dies with the caller (PDEATHSIG), like every
/// VM process of husk.
pub fn spawn(
    qemu: &Path,
    l: &VmImageLaunch,
    tap: Option<std::os::fd::RawFd>,
) -> Result<SpawnedVm, Error> {
    crate::preflight::check_vm_id(&l.id)?;
    crate::preflight::check_executable("hypervisor.qemu_path", qemu)?;
    if l.nic.is_some() != tap.is_some() {
        return Err(Error::InvalidSpec {
            field: "nic",
            message: "a NIC needs its TAP, and a TAP its NIC".into(),
        });
    }
    if let ImageBoot::Kernel { cmdline, .. } = &l.boot {
        if cmdline.contains(['\n', '\0']) {
            return Err(Error::InvalidSpec {
                field: "kernel command line",
                message: "must not contain a newline or NUL".into(),
            });
        }
    }
    let mut command = Command::new(qemu);
    command
        .args(qemu_args(l))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    crate::daemon::pass_fds(&mut command, tap.into_iter().collect(), crate::FIRST_TAP_FD);
    // SAFETY: prctl is async-signal-safe and touches no memory of the
    // parent; PDEATHSIG ends QEMU if the shim dies, even by SIGKILL.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    let spawn_error = |source| Error::Spawn {
        program: qemu.to_owned(),
        source,
    };
    let mut child = command.spawn().map_err(spawn_error)?;
    let pid = child
        .id()
        .ok_or_else(|| spawn_error(std::io::Error::other("exited at once")))?;
    let killer = VmKiller(
        crate::supervisor::Pidfd::open(pid)
            .map_err(|e| Error::io(format!("pidfd_open of QEMU ({pid})"), e))?,
    );
    let missing = || spawn_error(std::io::Error::other("a stdio pipe is missing"));
    Ok(SpawnedVm {
        pid,
        console_in: child.stdin.take().ok_or_else(missing)?,
        console_out: child.stdout.take().ok_or_else(missing)?,
        diagnostics: child.stderr.take().ok_or_else(missing)?,
        child,
        killer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::value_after;

    fn launch(boot: ImageBoot) -> VmImageLaunch {
        VmImageLaunch {
            id: "c1".into(),
            accelerator: Accelerator::Tcg,
            vcpus: 2,
            memory_mib: 1024,
            tcg_tb_size_mib: 256,
            boot,
            root: "/b/rootfs/.husk-vm/root.qcow2".into(),
            seed: Some("/b/rootfs/.husk-vm/seed.img".into()),
            block_devices: Vec::new(),
            nic: Some("02:42:0a:00:00:05".parse().unwrap()),
            run_dir: "/run/husk/vms/c1".into(),
        }
    }

    #[test]
    fn firmware_boot_is_a_pc_booting_the_root_disk_first() {
        let args = qemu_args(&launch(ImageBoot::Bios));
        assert_eq!(value_after(&args, "-M"), "pc");
        assert_eq!(value_after(&args, "-accel"), "tcg,tb-size=256");
        assert_eq!(value_after(&args, "-cpu"), "max");
        assert_eq!(value_after(&args, "-m"), "1024M");
        assert_eq!(value_after(&args, "-smp"), "2");
        assert_eq!(value_after(&args, "-action"), "panic=exit-failure");
        let line = args.join(" ");
        for part in [
            "-S ",
            "-nodefaults",
            "-chardev stdio,id=console,signal=off -serial chardev:console",
            "-qmp unix:/run/husk/vms/c1/qmp.sock,server=on,wait=off",
            "file=/b/rootfs/.husk-vm/root.qcow2,format=qcow2",
            "-device virtio-blk-pci,drive=root,bootindex=0",
            "file=/b/rootfs/.husk-vm/seed.img,format=raw,readonly=on",
            &format!(
                "-netdev tap,id=net0,fd={},vhost=off -device virtio-net-pci,netdev=net0,mac=02:42:0a:00:00:05",
                crate::FIRST_TAP_FD
            ),
            "socket,id=qga,path=/run/husk/vms/c1/qga.sock,server=on,wait=off",
            "virtserialport,chardev=qga,name=org.qemu.guest_agent.0",
            "-device pvpanic",
        ] {
            assert!(line.contains(part), "{part:?} missing in {line}");
        }
        assert!(!line.contains("-kernel"), "{line}");
        assert!(!line.contains("pflash"), "{line}");
    }

    #[test]
    fn kernel_boot_gives_the_kernel_and_no_boot_index() {
        let args = qemu_args(&launch(ImageBoot::Kernel {
            kernel: "/b/rootfs/boot/vmlinuz".into(),
            initrd: "/b/rootfs/boot/initrd.img".into(),
            cmdline: "root=/dev/vda1 ro console=ttyS0".into(),
        }));
        assert_eq!(value_after(&args, "-kernel"), "/b/rootfs/boot/vmlinuz");
        assert_eq!(value_after(&args, "-initrd"), "/b/rootfs/boot/initrd.img");
        assert_eq!(
            value_after(&args, "-append"),
            "root=/dev/vda1 ro console=ttyS0"
        );
        assert!(args.contains(&"virtio-blk-pci,drive=root".to_string()));
    }

    #[test]
    fn uefi_is_q35_with_the_firmware_and_its_own_variables() {
        let args = qemu_args(&launch(ImageBoot::Uefi {
            code: "/usr/share/OVMF/OVMF_CODE.fd".into(),
            vars: "/b/rootfs/.husk-vm/OVMF_VARS.fd".into(),
        }))
        .join(" ");
        assert!(args.contains("-M q35"), "{args}");
        assert!(
            args.contains(
                "if=pflash,unit=0,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd"
            ),
            "{args}"
        );
        assert!(
            args.contains("if=pflash,unit=1,format=raw,file=/b/rootfs/.husk-vm/OVMF_VARS.fd"),
            "{args}"
        );
    }

    #[test]
    fn kvm_takes_the_host_cpu_and_no_translation_cache() {
        let mut l = launch(ImageBoot::Bios);
        l.accelerator = Accelerator::Kvm;
        let args = qemu_args(&l);
        assert_eq!(value_after(&args, "-accel"), "kvm");
        assert_eq!(value_after(&args, "-cpu"), "host");
    }

    #[test]
    fn commas_in_paths_cannot_add_options() {
        let mut l = launch(ImageBoot::Bios);
        l.root = "/b/x,file=/etc/shadow/root.qcow2".into();
        l.block_devices = vec![BlockDevice {
            path: "/dev/block/7:1".into(),
            serial: "data,x=y".into(),
        }];
        let args = qemu_args(&l).join(" ");
        assert!(
            args.contains("file=/b/x,,file=/etc/shadow/root.qcow2,format=qcow2"),
            "{args}"
        );
        assert!(
            args.contains("file=/dev/block/7:1,format=raw") && args.contains("serial=data,,x=y"),
            "{args}"
        );
    }

    #[test]
    fn a_nic_without_its_tap_is_refused_before_spawning() {
        let l = launch(ImageBoot::Bios);
        let e = spawn(Path::new("/bin/true"), &l, None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("TAP"), "{e}");
    }
}
