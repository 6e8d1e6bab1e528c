//! The `builtin` backend of the [`Hypervisor`] trait: how `MicroVm`
//! launches `husk-vmm` for a [`VmLaunch`], with the same vhost-user
//! daemons QEMU uses. `hypervisor.backend = "auto"` selects it where KVM
//! has vmx/svm (see `resolve_backend`); it has no emulator, so it is never
//! used with TCG.

use crate::{Hypervisor, VmLaunch};
use std::path::PathBuf;
use tokio::process::Command;

pub struct Builtin {
    /// The `husk-vmm` executable.
    pub binary: PathBuf,
}

impl Hypervisor for Builtin {
    fn name(&self) -> &'static str {
        "builtin"
    }

    fn command(&self, l: &VmLaunch) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.args(husk_vmm_args(l));
        cmd
    }
}

/// husk-vmm's arguments for `l`. husk-vmm exits when the guest resets
/// (`reboot=t`), like QEMU with `-no-reboot`, and appends the
/// `virtio_mmio.device=` entries itself, like QEMU's microvm. Once set
/// up it confines itself to the VM's run directory (`--jail`).
pub fn husk_vmm_args(l: &VmLaunch) -> Vec<String> {
    let mut args = base_args(l);
    // husk-vmm drives one NIC: a pod has one interface.
    if let Some(net) = l.nets.first() {
        args.extend([
            "--net-tap".into(),
            format!("fd:{}", crate::FIRST_TAP_FD),
            "--net-mac".into(),
            net.mac.clone(),
        ]);
    }
    args
}

fn base_args(l: &VmLaunch) -> Vec<String> {
    vec![
        "--kernel".into(),
        l.kernel.display().to_string(),
        "--initrd".into(),
        l.initrd.display().to_string(),
        "--cmdline".into(),
        l.cmdline.clone(),
        "--memory-mib".into(),
        l.memory_mib.to_string(),
        "--vcpus".into(),
        l.vcpus.to_string(),
        "--console-log".into(),
        l.console_log.display().to_string(),
        "--vsock-socket".into(),
        l.vsock_vhost_socket.display().to_string(),
        "--fs-socket".into(),
        l.fs_vhost_socket.display().to_string(),
        "--fs-tag".into(),
        l.fs_tag.clone(),
        "--rng".into(),
        "--jail".into(),
        l.run_dir.display().to_string(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{launch, value_after};
    use crate::Accelerator;

    #[test]
    fn arguments_carry_every_field_of_the_launch() {
        let mut l = launch(Accelerator::Kvm);
        l.nets = vec![crate::NetLaunch {
            mac: "02:00:00:00:00:07".into(),
        }];
        let args = husk_vmm_args(&l);
        let after = |flag: &str| value_after(&args, flag);
        assert_eq!(after("--kernel"), "/k/vmlinux");
        assert_eq!(after("--net-tap"), "fd:3");
        assert_eq!(after("--net-mac"), "02:00:00:00:00:07");
        assert_eq!(after("--initrd"), "/k/initrd");
        assert_eq!(after("--cmdline"), "console=ttyS0 reboot=t");
        assert_eq!(after("--memory-mib"), "128");
        assert_eq!(after("--vcpus"), "2");
        assert_eq!(after("--console-log"), "/run/x/console.log");
        assert_eq!(after("--vsock-socket"), "/run/x/vhost-vsock.sock");
        assert_eq!(after("--fs-socket"), "/run/x/vhost-fs.sock");
        assert_eq!(after("--fs-tag"), "husk-shared");
        assert_eq!(after("--jail"), "/run/x");
        assert!(args.iter().any(|a| a == "--rng"));
        assert_eq!(
            Builtin {
                binary: "/x".into()
            }
            .name(),
            "builtin"
        );
    }
}
