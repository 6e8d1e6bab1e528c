//! The husk-vmm backend of the [`Hypervisor`] trait: how `MicroVm`
//! launches husk's own VMM for a [`VmLaunch`], with the same vhost-user
//! daemons QEMU uses. The launch is a husk-vmm-config [`VmmConfig`],
//! checked against husk-vmm's limits and written with
//! [`VmmConfig::to_args`], the inverse of the `parse` husk-vmm reads it
//! with. `hypervisor.backend = "auto"` selects it where KVM has vmx/svm
//! (see `resolve_backend`); it has no emulator, so it is never used with
//! TCG.

use crate::{Error, Hypervisor, VmLaunch};
use husk_vmm_config::{FsShare, NetConfig, NetTap, SeccompMode, VmmConfig};
use std::path::PathBuf;
use tokio::process::Command;

pub struct HuskVmm {
    /// The `husk-vmm` executable.
    pub binary: PathBuf,
}

impl Hypervisor for HuskVmm {
    fn name(&self) -> &'static str {
        "husk-vmm"
    }

    fn command(&self, l: &VmLaunch) -> Result<Command, Error> {
        let mut cmd = Command::new(&self.binary);
        cmd.args(vmm_config(l)?.to_args());
        // husk-vmm confines itself; its standing with the OOM killer is
        // the one thing set from outside, before it runs.
        crate::confine::Confinement {
            oom_score_adj: l.oom_score_adj,
            ..Default::default()
        }
        .apply(&mut cmd)?;
        Ok(cmd)
    }
}

/// husk-vmm's view of `l`. husk-vmm exits when the guest resets
/// (`reboot=t`), like QEMU with `-no-reboot`, and appends the
/// `virtio_mmio.device=` entries itself, like QEMU's microvm. It runs as
/// PID 1 of a PID namespace of its own (`new_pid_ns`); once set up it
/// confines itself to the VM's run directory (`jail`, with IPC and UTS
/// namespaces of its own) and becomes the VM's user (`identity`), under
/// the default seccomp mode (kill).
pub fn vmm_config(l: &VmLaunch) -> Result<VmmConfig, Error> {
    let vcpus = u8::try_from(l.vcpus).map_err(|_| Error::InvalidSpec {
        field: "hypervisor.vcpus",
        message: format!(
            "{} vCPUs; husk-vmm runs 1 to {}",
            l.vcpus,
            husk_vmm_config::MAX_VCPUS
        ),
    })?;
    let config = VmmConfig {
        kernel: l.kernel.clone(),
        initrd: Some(l.initrd.clone()),
        cmdline: l.cmdline.clone(),
        memory_mib: l.memory_mib,
        vcpus,
        console_log: l.console_log.clone(),
        seccomp: SeccompMode::Kill,
        vsock_socket: Some(l.vsock_vhost_socket.clone()),
        fs: Some(FsShare {
            socket: l.fs_vhost_socket.clone(),
            tag: l.fs_tag.clone(),
        }),
        // husk-vmm drives one NIC: a pod has one interface.
        net: l.nets.first().map(|net| NetConfig {
            tap: NetTap::Fd(crate::FIRST_TAP_FD),
            mac: net.mac,
        }),
        rng: true,
        jail: Some(l.run_dir.clone()),
        identity: l.identity,
        new_pid_ns: true,
        snapshot: None,
    };
    config.validate()?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{launch, value_after};
    use crate::Accelerator;

    #[test]
    fn the_launch_becomes_husk_vmms_config_field_by_field() {
        let mut l = launch(Accelerator::Kvm);
        l.nets = vec![crate::NetLaunch {
            mac: "02:00:00:00:00:07".parse().unwrap(),
        }];
        let c = vmm_config(&l).unwrap();
        assert_eq!(c.kernel, l.kernel);
        assert_eq!(c.initrd.as_ref(), Some(&l.initrd));
        assert_eq!(c.cmdline, "console=ttyS0 reboot=t");
        assert_eq!((c.memory_mib, c.vcpus), (128, 2));
        assert_eq!(c.console_log, l.console_log);
        assert_eq!(c.seccomp, SeccompMode::Kill);
        assert_eq!(c.vsock_socket.as_ref(), Some(&l.vsock_vhost_socket));
        let fs = c.fs.as_ref().unwrap();
        assert_eq!(
            (&fs.socket, fs.tag.as_str()),
            (&l.fs_vhost_socket, "husk-shared")
        );
        let net = c.net.as_ref().unwrap();
        assert_eq!(net.tap, NetTap::Fd(4));
        assert_eq!(net.mac.to_string(), "02:00:00:00:00:07");
        assert!(c.rng);
        assert_eq!(c.jail.as_ref(), Some(&l.run_dir));
        assert_eq!(c.identity, l.identity);
        assert!(c.new_pid_ns);
        // What the command carries is exactly that config, as husk-vmm
        // will read it back.
        let args = c.to_args();
        assert_eq!(VmmConfig::parse(args.clone()).unwrap(), c);
        let args: Vec<String> = args.iter().map(|a| a.to_string_lossy().into()).collect();
        assert_eq!(value_after(&args, "--net-tap"), "fd:4");
        assert_eq!(value_after(&args, "--jail"), "/run/x");
        assert_eq!(value_after(&args, "--uid"), "1879048200");
        assert!(args.contains(&"--new-pid-ns".to_string()));
        assert_eq!(
            HuskVmm {
                binary: "/x".into()
            }
            .name(),
            "husk-vmm"
        );
    }

    /// MicroVm gives the console as the pipe at CONSOLE_FD, by path;
    /// husk-vmm opens it before it confines itself.
    #[test]
    fn the_console_pipe_is_husk_vmms_console_log() {
        let mut l = launch(Accelerator::Kvm);
        l.console_log = format!("/proc/self/fd/{}", crate::CONSOLE_FD).into();
        let args: Vec<String> = vmm_config(&l)
            .unwrap()
            .to_args()
            .iter()
            .map(|a| a.to_string_lossy().into())
            .collect();
        assert_eq!(value_after(&args, "--console-log"), "/proc/self/fd/3");
    }

    #[test]
    fn a_launch_outside_husk_vmms_limits_is_refused_naming_the_limit() {
        let mut l = launch(Accelerator::Kvm);
        l.vcpus = 255;
        let e = vmm_config(&l).unwrap_err().to_string();
        assert!(e.contains("--vcpus \"255\": must be from 1 to 254"), "{e}");
        l.vcpus = 1000;
        let e = vmm_config(&l).unwrap_err().to_string();
        assert!(e.contains("husk-vmm runs 1 to 254"), "{e}");
        let mut l = launch(Accelerator::Kvm);
        l.fs_tag = "t".repeat(37);
        let e = vmm_config(&l).unwrap_err().to_string();
        assert!(e.contains("--fs-tag"), "{e}");
    }
}
