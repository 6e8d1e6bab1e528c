//! QEMU's command line for a VM *image* (VM-image pods, docs/vm-pods.md):
//! a whole OS with its own kernel, booted from a disk, unlike the
//! micro-VMs of [`super::Qemu`]. The disk is a PC's: `-M pc` with SeaBIOS,
//! `-M q35` with OVMF for UEFI-only images, or the image's own kernel and
//! initrd booted directly. Devices are what a cloud image expects
//! (virtio-blk, virtio-net, virtio-serial for the QEMU guest agent,
//! pvpanic) and nothing else (`-nodefaults`).
//!
//! QEMU opens no file by name but the boot kernel and initrd: every disk,
//! the firmware and its variables are descriptors the launcher opened
//! ([`VmImage`](crate::VmImage)), passed through `-add-fd` and named
//! `/dev/fdset/N`; QMP's and the guest agent's sockets are listening
//! sockets it is handed. The root disk's backing node is given explicitly
//! (`-blockdev ... backing=base`), so the name an overlay's header holds is
//! never resolved, and the image's disk is opened read-only. So QEMU's
//! jail needs no disk, no directory it may write, no socket path.
//!
//! QEMU starts paused (`-S`): the launcher connects QMP and the console
//! first and the vCPUs run at QMP `cont`, so no console byte is lost. The
//! serial console is QEMU's stdin and stdout, its own messages its stderr.
//! A guest panic (pvpanic) makes QEMU exit with status 1 (`-action
//! panic=exit-failure`) after the GUEST_PANICKED event; a guest reboot
//! resets the VM, as on a PC.

use super::passed_files::Files;
pub use super::passed_files::{Access, PassedFile};
use super::vm_extras::{self, ExtraFds, VmExtras};
use super::vm_volume::{self, VolumeDisk};
use crate::disk_format::DiskFormat;
use crate::{Accelerator, MacAddr};
use std::path::PathBuf;

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

/// The disk the VM boots from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootDisk {
    /// A qcow2 overlay (written) on the image's disk (only read).
    Overlay {
        overlay: PathBuf,
        base: PathBuf,
        base_format: DiskFormat,
    },
    /// A persistent volume, booted as it is and written in place
    /// ([`vm_volume`]); where it holds no disk yet, the image's disk is
    /// imported into it first.
    Volume(VolumeDisk),
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
    /// How far it may be resized while it runs (none: the boot's size).
    pub room: super::vm_resize::Room,
    /// TCG's translation cache in MiB (QEMU's default is 1 GiB, most of
    /// its RSS under TCG); 0 keeps QEMU's. Not used under KVM.
    pub tcg_tb_size_mib: u32,
    pub boot: ImageBoot,
    pub root: RootDisk,
    /// The NoCloud seed (vfat, read-only).
    pub seed: Option<PathBuf>,
    pub block_devices: Vec<BlockDevice>,
    /// The NIC's MAC; its TAP comes as a descriptor.
    pub nic: Option<MacAddr>,
    /// Secure Boot, a TPM, a display, the exec tools ([`vm_extras`]).
    pub extras: VmExtras,
}

/// Where QEMU finds each descriptor it is handed: QMP's and the guest
/// agent's listening sockets, the TAP, then the files of
/// [`files`] in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLayout {
    pub qmp: i32,
    pub guest_agent: i32,
    pub tap: Option<i32>,
    pub first_file: i32,
}

impl FdLayout {
    pub fn of(l: &VmImageLaunch) -> Self {
        let first = crate::PASSED_FDS_START;
        let tap = l.nic.is_some().then_some(first + 2);
        FdLayout {
            qmp: first,
            guest_agent: first + 1,
            tap,
            first_file: first + 2 + i32::from(tap.is_some()),
        }
    }
}

/// The files QEMU is handed, in the order of their descriptors.
pub fn files(l: &VmImageLaunch) -> Vec<PassedFile> {
    let file = |path: &PathBuf, access| PassedFile {
        path: path.clone(),
        access,
        block_device: false,
    };
    let mut f = Vec::new();
    if let ImageBoot::Uefi { code, vars } = &l.boot {
        f.push(file(code, Access::ReadOnly));
        f.push(file(vars, Access::ReadWrite));
    }
    match &l.root {
        RootDisk::Overlay { overlay, base, .. } => {
            f.push(file(base, Access::ReadOnly));
            f.push(file(overlay, Access::ReadWrite));
        }
        RootDisk::Volume(v) => {
            if let Some(i) = &v.import {
                f.push(file(&i.image, Access::ReadOnly));
            }
            f.push(PassedFile {
                path: v.path.clone(),
                access: Access::ReadWrite,
                block_device: v.block_device,
            });
        }
    }
    if let Some(seed) = &l.seed {
        f.push(file(seed, Access::ReadOnly));
    }
    for d in &l.block_devices {
        f.push(PassedFile {
            path: d.path.clone(),
            access: Access::ReadWrite,
            block_device: true,
        });
    }
    f.extend(vm_extras::files(&l.extras));
    f
}

/// Where QEMU finds the extras' descriptors: after all of [`files`].
pub fn extra_fds(l: &VmImageLaunch) -> ExtraFds {
    ExtraFds::after(
        &l.extras,
        FdLayout::of(l).first_file + files(l).len() as i32,
    )
}

fn uefi(l: &VmImageLaunch) -> bool {
    matches!(l.boot, ImageBoot::Uefi { .. })
}

/// QEMU's command line for `l` (without the binary).
pub fn qemu_args(l: &VmImageLaunch) -> Vec<String> {
    let fds = FdLayout::of(l);
    let mut files = Files::new(fds.first_file);
    let firmware = firmware_args(l, &mut files);
    let disks = disk_args(l, &mut files);
    let extras = vm_extras::args(&l.extras, uefi(l), extra_fds(l), &mut files);
    [
        machine_args(l, firmware),
        monitor_args(&fds),
        files.take_args(),
        disks,
        device_args(l, &fds),
        extras,
        kernel_args(l),
    ]
    .concat()
}

fn strs(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The machine (with its firmware's flash), its CPUs and memory, what
/// QEMU may do, and the console.
fn machine_args(l: &VmImageLaunch, firmware: Vec<String>) -> Vec<String> {
    let machine = match l.boot {
        ImageBoot::Uefi { .. } => "q35,pflash0=fw-code,pflash1=fw-vars",
        _ => "pc",
    };
    let machine = format!(
        "{machine}{}",
        vm_extras::machine_options(&l.extras, uefi(l))
    );
    let accel = super::accel::accel(l.accelerator, l.tcg_tb_size_mib);
    let cpu = super::accel::cpu(l.accelerator);
    let (smp, memory, hot_memory) = super::vm_resize::args(l.vcpus, l.memory_mib, l.room);
    let mut a = strs(&[
        "-name",
        &format!("husk-vm-{},debug-threads=on", l.id),
        "-M",
        &machine,
        "-accel",
        &accel,
        "-cpu",
        cpu,
        "-smp",
        &smp,
        "-m",
        &memory,
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
    ]);
    a.extend(firmware);
    a.extend(hot_memory);
    a
}

/// QMP and the guest agent's channel, each on a listening socket QEMU is
/// handed (QEMU makes no socket file).
fn monitor_args(fds: &FdLayout) -> Vec<String> {
    strs(&[
        "-chardev",
        &format!("socket,id=qmp,fd={},server=on,wait=off", fds.qmp),
        "-mon",
        "chardev=qmp,mode=control",
        "-chardev",
        &format!("socket,id=qga,fd={},server=on,wait=off", fds.guest_agent),
    ])
}

/// OVMF's code (read-only) and the VM's own copy of its variables, as
/// the machine's two flash devices.
fn firmware_args(l: &VmImageLaunch, files: &mut Files) -> Vec<String> {
    if !matches!(l.boot, ImageBoot::Uefi { .. }) {
        return Vec::new();
    }
    let mut a = files.node("file", "fw-code", Access::ReadOnly, "");
    a.extend(strs(&[
        "-blockdev",
        "driver=raw,file=fw-code-file,node-name=fw-code,read-only=on",
    ]));
    a.extend(files.node("file", "fw-vars", Access::ReadWrite, ""));
    a.extend(strs(&[
        "-blockdev",
        "driver=raw,file=fw-vars-file,node-name=fw-vars",
    ]));
    a
}

/// The root disk, the cloud-init seed and the pod's raw block volumes.
fn disk_args(l: &VmImageLaunch, files: &mut Files) -> Vec<String> {
    // The kernel's option ROM takes boot index 0 itself ("bootindex 0 has
    // already been used").
    let bootindex = match l.boot {
        ImageBoot::Kernel { .. } => "",
        _ => ",bootindex=0",
    };
    let mut a = Vec::new();
    match &l.root {
        RootDisk::Overlay { base_format, .. } => {
            a.extend(files.node("file", "base", Access::ReadOnly, ""));
            a.extend(strs(&[
                "-blockdev",
                &format!(
                    "driver={},file=base-file,node-name=base,read-only=on",
                    base_format.as_str()
                ),
            ]));
            a.extend(files.node("file", "root", Access::ReadWrite, ",discard=unmap"));
            a.extend(strs(&[
                "-blockdev",
                "driver=qcow2,file=root-file,backing=base,node-name=root,discard=unmap",
            ]));
        }
        RootDisk::Volume(v) => {
            let image = v.import.as_ref().map(|_| files.add_fd());
            let volume = files.add_fd();
            a.extend(vm_volume::blockdev_args(v, image, volume));
        }
    }
    a.extend(strs(&[
        "-device",
        &format!("virtio-blk-pci,drive=root{bootindex}"),
    ]));
    if l.seed.is_some() {
        a.extend(files.node("file", "seed", Access::ReadOnly, ""));
        a.extend(strs(&[
            "-blockdev",
            "driver=raw,file=seed-file,node-name=seed,read-only=on",
            "-device",
            "virtio-blk-pci,drive=seed",
        ]));
    }
    for (i, d) in l.block_devices.iter().enumerate() {
        let node = format!("blk{i}");
        a.extend(files.node(
            "host_device",
            &node,
            Access::ReadWrite,
            ",cache.direct=on,aio=threads",
        ));
        a.extend(strs(&[
            "-blockdev",
            &format!("driver=raw,file={node}-file,node-name={node},cache.direct=on"),
            "-device",
            &format!(
                "virtio-blk-pci,drive={node},serial={}",
                d.serial.replace(',', ",,")
            ),
        ]));
    }
    a
}

/// The pod's NIC (on the TAP passed as an fd), the guest agent's channel
/// and the panic device.
fn device_args(l: &VmImageLaunch, fds: &FdLayout) -> Vec<String> {
    let mut a = Vec::new();
    if let (Some(mac), Some(tap)) = (&l.nic, fds.tap) {
        a = strs(&[
            "-netdev",
            &format!("tap,id=net0,fd={tap},vhost=off"),
            "-device",
            &format!("virtio-net-pci,netdev=net0,mac={mac}"),
        ]);
    }
    a.extend(strs(&[
        "-device",
        "virtio-serial-pci",
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
            room: Default::default(),
            tcg_tb_size_mib: 256,
            boot,
            root: RootDisk::Overlay {
                overlay: "/b/rootfs/.husk-vm/root.qcow2".into(),
                base: "/b/rootfs/disk/disk.qcow2".into(),
                base_format: DiskFormat::Qcow2,
            },
            seed: Some("/b/rootfs/.husk-vm/seed.img".into()),
            block_devices: Vec::new(),
            nic: Some("02:42:0a:00:00:05".parse().unwrap()),
            extras: VmExtras::default(),
        }
    }

    #[test]
    fn firmware_boot_is_a_pc_booting_the_root_disk_first() {
        let l = launch(ImageBoot::Bios);
        let args = qemu_args(&l);
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
            "-chardev socket,id=qmp,fd=3,server=on,wait=off -mon chardev=qmp,mode=control",
            "-chardev socket,id=qga,fd=4,server=on,wait=off",
            "-netdev tap,id=net0,fd=5,vhost=off -device virtio-net-pci,netdev=net0,mac=02:42:0a:00:00:05",
            // The image's disk read-only, the overlay on it, the seed.
            "-add-fd fd=6,set=1 -add-fd fd=7,set=2 -add-fd fd=8,set=3",
            "-blockdev driver=file,filename=/dev/fdset/1,node-name=base-file,read-only=on",
            "-blockdev driver=qcow2,file=base-file,node-name=base,read-only=on",
            "-blockdev driver=file,filename=/dev/fdset/2,node-name=root-file,discard=unmap",
            "driver=qcow2,file=root-file,backing=base,node-name=root",
            "-device virtio-blk-pci,drive=root,bootindex=0",
            "-blockdev driver=file,filename=/dev/fdset/3,node-name=seed-file,read-only=on",
            "virtserialport,chardev=qga,name=org.qemu.guest_agent.0",
            "-device pvpanic",
        ] {
            assert!(line.contains(part), "{part:?} missing in {line}");
        }
        assert!(!line.contains("-kernel"), "{line}");
        assert!(!line.contains("pflash"), "{line}");
        // QEMU is given no disk by name.
        assert!(!line.contains("/b/rootfs"), "{line}");
        let paths: Vec<_> = files(&l).into_iter().map(|f| (f.path, f.access)).collect();
        assert_eq!(
            paths,
            [
                ("/b/rootfs/disk/disk.qcow2".into(), Access::ReadOnly),
                ("/b/rootfs/.husk-vm/root.qcow2".into(), Access::ReadWrite),
                ("/b/rootfs/.husk-vm/seed.img".into(), Access::ReadOnly),
            ]
        );
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
    fn uefi_is_q35_with_the_firmware_and_its_own_variables_as_flash() {
        let l = launch(ImageBoot::Uefi {
            code: "/usr/share/OVMF/OVMF_CODE.fd".into(),
            vars: "/b/rootfs/.husk-vm/OVMF_VARS.fd".into(),
        });
        let args = qemu_args(&l).join(" ");
        for part in [
            "-M q35,pflash0=fw-code,pflash1=fw-vars",
            "-add-fd fd=6,set=1",
            "driver=file,filename=/dev/fdset/1,node-name=fw-code-file,read-only=on",
            "driver=raw,file=fw-code-file,node-name=fw-code,read-only=on",
            "driver=file,filename=/dev/fdset/2,node-name=fw-vars-file ",
            "driver=raw,file=fw-vars-file,node-name=fw-vars",
        ] {
            assert!(args.contains(part), "{part:?} missing in {args}");
        }
        let f = files(&l);
        assert_eq!(f[0].path, PathBuf::from("/usr/share/OVMF/OVMF_CODE.fd"));
        assert_eq!(f[1].access, Access::ReadWrite);
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
    fn a_root_volume_importing_the_image_gets_both_descriptors() {
        use crate::qemu::vm_volume::ImportSource;
        let mut l = launch(ImageBoot::Bios);
        l.root = RootDisk::Volume(VolumeDisk {
            path: "/dev/loop3".into(),
            block_device: true,
            format: DiskFormat::Raw,
            import: Some(ImportSource {
                image: "/b/rootfs/disk/disk.qcow2".into(),
                format: DiskFormat::Qcow2,
                virtual_size: 2 << 30,
            }),
        });
        let args = qemu_args(&l).join(" ");
        for part in [
            "-add-fd fd=6,set=1 -add-fd fd=7,set=2 -add-fd fd=8,set=3",
            "driver=file,filename=/dev/fdset/1,node-name=image-file,read-only=on",
            "driver=host_device,filename=/dev/fdset/2,node-name=root-file,cache.direct=on",
            "-device virtio-blk-pci,drive=root,bootindex=0 ",
            "node-name=import-file",
            "driver=file,filename=/dev/fdset/3,node-name=seed-file,read-only=on",
        ] {
            assert!(args.contains(part), "{part:?} missing in {args}");
        }
        assert!(
            !args.contains("/b/rootfs") && !args.contains("/dev/loop3"),
            "{args}"
        );
        // The import writes through a node of its own: the guest's device
        // never shares write.
        assert!(!args.contains("share-rw"), "{args}");
        let f = files(&l);
        assert_eq!(
            f.iter()
                .map(|f| (f.path.clone(), f.access, f.block_device))
                .collect::<Vec<_>>(),
            [
                ("/b/rootfs/disk/disk.qcow2".into(), Access::ReadOnly, false),
                ("/dev/loop3".into(), Access::ReadWrite, true),
                (
                    "/b/rootfs/.husk-vm/seed.img".into(),
                    Access::ReadOnly,
                    false
                ),
            ]
        );
    }

    #[test]
    fn volumes_are_block_devices_and_serials_cannot_add_options() {
        let mut l = launch(ImageBoot::Bios);
        l.nic = None;
        l.block_devices = vec![BlockDevice {
            path: "/dev/block/7:1".into(),
            serial: "data,x=y".into(),
        }];
        let args = qemu_args(&l).join(" ");
        assert!(!args.contains("-netdev"), "{args}");
        assert!(
            args.contains(
                "driver=host_device,filename=/dev/fdset/4,node-name=blk0-file,cache.direct=on"
            ),
            "{args}"
        );
        assert!(args.contains("-add-fd fd=8,set=4"), "{args}");
        assert!(args.contains("serial=data,,x=y"), "{args}");
        assert!(files(&l)[3].block_device);
    }
}
