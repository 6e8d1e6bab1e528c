//! What a VM image may get beyond its disks and NIC, as QEMU options
//! (docs/vm-pods.md: "A graphical console", "Firmware state and a TPM",
//! "Interactive exec"):
//!
//! - Secure Boot: OVMF's Secure Boot build needs SMM (`-M q35,smm=on`) and
//!   its flash locked to SMM (`cfi.pflash01.secure=on`), or a guest could
//!   write the variable store around the firmware;
//! - a TPM 2.0: swtpm ([`crate::swtpm`]) on the other end of a
//!   socket pair whose end QEMU is handed (`-chardev socket,fd=N`, which
//!   QEMU treats as connected; the emulator's data channel is a further
//!   socket pair QEMU passes over it), a CRB interface on q35 (what
//!   Windows 11 and OVMF expect), TIS on `pc` (what SeaBIOS knows best);
//! - a display: std VGA and a USB tablet (an absolute pointer, so a VNC
//!   client's cursor is where the guest's is), and QEMU's VNC server with
//!   no listener of its own (`-vnc none`): QEMU runs in a network
//!   namespace of its own, so the shim listens in the pod's and hands
//!   each client over QMP (`getfd`, `add_client`), as libvirt does; with
//!   `password=on` it asks VNC authentication (RFB's DES challenge, the
//!   password set over QMP);
//! - the tools disk and channel for `kubectl exec -it`: a read-only disk
//!   (serial [`TOOLS_DISK_SERIAL`]) holding husk's guest helper, and a
//!   virtio-serial port ([`TOOLS_PORT`]) on a listening socket QEMU is
//!   handed, which the helper opens in the guest.
//!
//! Their descriptors come after everything [`super::vm_image::FdLayout`]
//! places: the passed files (the tools disk is the last), then the TPM's
//! socket, then the tools channel's listener ([`ExtraFds`]).

use super::passed_files::{Access, Files, PassedFile};
use std::path::PathBuf;

/// The virtio-serial port the guest helper of `exec -it` opens, and the
/// tools disk's serial (husk-proto's tools channel).
pub use husk_proto::tools::{DISK_SERIAL as TOOLS_DISK_SERIAL, PORT as TOOLS_PORT};

/// What a VM image gets beyond its disks and NIC; all off by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmExtras {
    /// UEFI Secure Boot (with UEFI, a Secure Boot OVMF):
    /// SMM, and the flash only SMM may write.
    pub secure_boot: bool,
    /// A TPM 2.0 whose state swtpm keeps in this directory (opened by the
    /// launcher, never followed as a link).
    pub tpm_state: Option<PathBuf>,
    /// A display and QEMU's VNC server for clients handed over QMP.
    pub display: Option<Display>,
    /// The tools disk (read-only raw) and its channel, for `exec -it`.
    pub tools_disk: Option<PathBuf>,
}

/// The VM's graphical console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Display {
    /// VNC authentication is required (the password is set over QMP
    /// before any client is handed over); false: none (asked for
    /// explicitly).
    pub password: bool,
}

/// Where QEMU finds the extras' descriptors (after the passed files).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtraFds {
    /// QEMU's end of the socket pair to swtpm's control channel.
    pub tpm: Option<i32>,
    /// The tools channel's listening socket.
    pub tools: Option<i32>,
}

impl ExtraFds {
    /// The extras' descriptors from `first` on (after every passed file:
    /// [`super::vm_image::extra_fds`]).
    pub fn after(extras: &VmExtras, first: i32) -> Self {
        let mut next = first;
        let mut take = |wanted: bool| {
            wanted.then(|| {
                next += 1;
                next - 1
            })
        };
        let tpm = take(extras.tpm_state.is_some());
        let tools = take(extras.tools_disk.is_some());
        ExtraFds { tpm, tools }
    }

    /// How many there are.
    pub fn count(&self) -> usize {
        usize::from(self.tpm.is_some()) + usize::from(self.tools.is_some())
    }
}

/// The extras' files QEMU is handed, after the VM's own ([`super::vm_image::files`]).
pub fn files(extras: &VmExtras) -> Vec<PassedFile> {
    extras
        .tools_disk
        .iter()
        .map(|path| PassedFile {
            path: path.clone(),
            access: Access::ReadOnly,
            block_device: false,
        })
        .collect()
}

/// What the machine option gains (`smm=on` for Secure Boot).
pub fn machine_options(extras: &VmExtras, uefi: bool) -> &'static str {
    if extras.secure_boot && uefi {
        ",smm=on"
    } else {
        ""
    }
}

fn strs(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The extras' options for a VM booting UEFI or not, their descriptors
/// at `fds`; `files` hands out the tools disk's descriptor.
pub(super) fn args(extras: &VmExtras, uefi: bool, fds: ExtraFds, files: &mut Files) -> Vec<String> {
    let mut a = Vec::new();
    if extras.secure_boot && uefi {
        a.extend(strs(&[
            "-global",
            "driver=cfi.pflash01,property=secure,value=on",
        ]));
    }
    if let Some(fd) = fds.tpm {
        let model = if uefi { "tpm-crb" } else { "tpm-tis" };
        a.extend(strs(&[
            "-chardev",
            &format!("socket,id=tpm-ctrl,fd={fd}"),
            "-tpmdev",
            "emulator,id=tpm0,chardev=tpm-ctrl",
            "-device",
            &format!("{model},tpmdev=tpm0"),
        ]));
    }
    if let Some(display) = extras.display {
        let vnc = match display.password {
            true => "none,password=on",
            false => "none",
        };
        a.extend(strs(&[
            "-vnc",
            vnc,
            "-device",
            "VGA",
            "-device",
            "qemu-xhci,id=usb",
            "-device",
            "usb-tablet,bus=usb.0",
        ]));
    }
    if extras.tools_disk.is_some() {
        a.extend(files.node("file", "tools", Access::ReadOnly, ""));
        a.extend(strs(&[
            "-blockdev",
            "driver=raw,file=tools-file,node-name=tools,read-only=on",
            "-device",
            &format!("virtio-blk-pci,drive=tools,serial={TOOLS_DISK_SERIAL}"),
        ]));
    }
    if let Some(fd) = fds.tools {
        a.extend(strs(&[
            "-chardev",
            &format!("socket,id=tools,fd={fd},server=on,wait=off"),
            "-device",
            &format!("virtserialport,chardev=tools,name={TOOLS_PORT}"),
        ]));
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk_format::DiskFormat;
    use crate::qemu::vm_image::{extra_fds, qemu_args, ImageBoot, RootDisk, VmImageLaunch};
    use crate::Accelerator;

    fn launch(boot: ImageBoot, extras: VmExtras) -> VmImageLaunch {
        VmImageLaunch {
            id: "c1".into(),
            accelerator: Accelerator::Tcg,
            vcpus: 1,
            memory_mib: 512,
            room: Default::default(),
            tcg_tb_size_mib: 256,
            boot,
            root: RootDisk::Overlay {
                overlay: "/b/.husk-vm/root.qcow2".into(),
                base: "/b/disk/disk.qcow2".into(),
                base_format: DiskFormat::Qcow2,
            },
            seed: Some("/b/.husk-vm/seed.img".into()),
            block_devices: Vec::new(),
            nic: None,
            extras,
        }
    }

    fn uefi() -> ImageBoot {
        ImageBoot::Uefi {
            code: "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd".into(),
            vars: "/state/OVMF_VARS.fd".into(),
        }
    }

    #[test]
    fn nothing_is_added_unless_asked() {
        let args = qemu_args(&launch(ImageBoot::Bios, VmExtras::default())).join(" ");
        for absent in ["-vnc", "-tpmdev", "VGA", "smm", "tools", "-global"] {
            assert!(!args.contains(absent), "{absent} in {args}");
        }
        assert!(args.contains("-display none"), "{args}");
    }

    #[test]
    fn secure_boot_locks_the_flash_to_smm_and_the_tpm_is_crb_on_q35() {
        let l = launch(
            uefi(),
            VmExtras {
                secure_boot: true,
                tpm_state: Some("/state/tpm".into()),
                ..VmExtras::default()
            },
        );
        let args = qemu_args(&l).join(" ");
        // Descriptors: QMP 3, QGA 4, code 5, vars 6, base 7, overlay 8,
        // seed 9; the TPM's socket next.
        assert_eq!(
            extra_fds(&l),
            ExtraFds {
                tpm: Some(10),
                tools: None
            }
        );
        for part in [
            "-M q35,pflash0=fw-code,pflash1=fw-vars,smm=on",
            "-global driver=cfi.pflash01,property=secure,value=on",
            "-chardev socket,id=tpm-ctrl,fd=10 -tpmdev emulator,id=tpm0,chardev=tpm-ctrl",
            "-device tpm-crb,tpmdev=tpm0",
        ] {
            assert!(args.contains(part), "{part:?} missing in {args}");
        }
        // Secure Boot means nothing to SeaBIOS; the TPM there is TIS.
        let bios = launch(
            ImageBoot::Bios,
            VmExtras {
                secure_boot: true,
                tpm_state: Some("/state/tpm".into()),
                ..VmExtras::default()
            },
        );
        let args = qemu_args(&bios).join(" ");
        assert!(
            !args.contains("smm") && args.contains("-device tpm-tis,tpmdev=tpm0"),
            "{args}"
        );
    }

    #[test]
    fn a_display_has_no_listener_and_asks_a_password_when_told() {
        let l = launch(
            ImageBoot::Bios,
            VmExtras {
                display: Some(Display { password: true }),
                ..VmExtras::default()
            },
        );
        let args = qemu_args(&l);
        assert_eq!(
            crate::test_support::value_after(&args, "-vnc"),
            "none,password=on"
        );
        let line = args.join(" ");
        assert!(
            line.contains("-device VGA") && line.contains("usb-tablet"),
            "{line}"
        );
        let open = launch(
            ImageBoot::Bios,
            VmExtras {
                display: Some(Display { password: false }),
                ..VmExtras::default()
            },
        );
        assert_eq!(
            crate::test_support::value_after(&qemu_args(&open), "-vnc"),
            "none"
        );
    }

    #[test]
    fn the_tools_disk_is_the_last_file_and_its_channel_the_last_descriptor() {
        let l = launch(
            ImageBoot::Bios,
            VmExtras {
                tpm_state: Some("/state/tpm".into()),
                tools_disk: Some("/usr/local/share/husk/husk-vm-tools.img".into()),
                ..VmExtras::default()
            },
        );
        let f = crate::qemu::vm_image::files(&l);
        assert_eq!(
            f.last().map(|f| (f.path.clone(), f.access)),
            Some((
                "/usr/local/share/husk/husk-vm-tools.img".into(),
                Access::ReadOnly
            ))
        );
        // QMP 3, QGA 4, base 5, overlay 6, seed 7, tools disk 8.
        assert_eq!(
            extra_fds(&l),
            ExtraFds {
                tpm: Some(9),
                tools: Some(10)
            }
        );
        let args = qemu_args(&l).join(" ");
        for part in [
            "-add-fd fd=8,set=4",
            "driver=file,filename=/dev/fdset/4,node-name=tools-file,read-only=on",
            "-device virtio-blk-pci,drive=tools,serial=husk-tools",
            "-chardev socket,id=tools,fd=10,server=on,wait=off",
            "-device virtserialport,chardev=tools,name=io.husk.tools.0",
        ] {
            assert!(args.contains(part), "{part:?} missing in {args}");
        }
        assert!(!args.contains("husk-vm-tools.img"), "{args}");
    }
}
