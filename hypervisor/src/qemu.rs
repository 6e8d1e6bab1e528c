//! The QEMU backend: `qemu-system-x86_64 -M microvm`. Guest RAM is a shared
//! memfd so the vhost-user daemons can map it; without ACPI, QEMU appends
//! `virtio_mmio.device=` entries for the devices to the kernel command line.

use crate::{Accelerator, Error, Hypervisor, VmLaunch};
use std::path::PathBuf;
use tokio::process::Command;

pub struct Qemu {
    pub binary: PathBuf,
}

impl Hypervisor for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn command(&self, l: &VmLaunch) -> Result<Command, Error> {
        let mut cmd = Command::new(&self.binary);
        cmd.args(qemu_args(l));
        Ok(cmd)
    }
}

fn qemu_args(l: &VmLaunch) -> Vec<String> {
    let mut args = base_args(l);
    for (i, net) in l.nets.iter().enumerate() {
        args.extend([
            "-netdev".into(),
            format!(
                "tap,id=net{i},fd={},vhost=off",
                crate::FIRST_TAP_FD + i as i32
            ),
            "-device".into(),
            format!("virtio-net-device,netdev=net{i},mac={}", net.mac),
        ]);
    }
    args
}

fn base_args(l: &VmLaunch) -> Vec<String> {
    let mem = format!("{}M", l.memory_mib);
    // -cpu host needs KVM; under TCG, max gives the guest every feature
    // QEMU can emulate.
    let cpu = match l.accelerator {
        Accelerator::Kvm => "host",
        Accelerator::Tcg => "max",
    };
    vec![
        "-name".into(),
        format!("husk-{},debug-threads=on", l.id),
        "-M".into(),
        "microvm,acpi=off,x-option-roms=off,rtc=off,memory-backend=mem".into(),
        "-accel".into(),
        l.accelerator.as_str().into(),
        "-cpu".into(),
        cpu.into(),
        "-smp".into(),
        l.vcpus.to_string(),
        "-m".into(),
        mem.clone(),
        "-object".into(),
        format!("memory-backend-memfd,id=mem,size={mem},share=on"),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        // The guest's reboot (reboot=t) ends QEMU instead of restarting it.
        "-no-reboot".into(),
        "-serial".into(),
        format!("file:{}", l.console_log.display()),
        "-kernel".into(),
        l.kernel.display().to_string(),
        "-initrd".into(),
        l.initrd.display().to_string(),
        "-append".into(),
        l.cmdline.clone(),
        "-chardev".into(),
        format!("socket,id=vsock0,path={}", l.vsock_vhost_socket.display()),
        "-device".into(),
        "vhost-user-vsock-device,chardev=vsock0".into(),
        "-chardev".into(),
        format!("socket,id=fs0,path={}", l.fs_vhost_socket.display()),
        "-device".into(),
        format!("vhost-user-fs-device,chardev=fs0,tag={}", l.fs_tag),
        // Entropy for the guest from its first second, as husk-vmm's --rng.
        "-object".into(),
        "rng-random,id=rng0,filename=/dev/urandom".into(),
        "-device".into(),
        "virtio-rng-device,rng=rng0".into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{launch, value_after};
    use crate::NetLaunch;

    #[test]
    fn tcg_uses_cpu_max_and_kvm_uses_cpu_host() {
        let tcg = qemu_args(&launch(Accelerator::Tcg));
        assert_eq!(value_after(&tcg, "-accel"), "tcg");
        assert_eq!(value_after(&tcg, "-cpu"), "max");
        let kvm = qemu_args(&launch(Accelerator::Kvm));
        assert_eq!(value_after(&kvm, "-accel"), "kvm");
        assert_eq!(value_after(&kvm, "-cpu"), "host");
    }

    #[test]
    fn guest_ram_is_a_shared_memfd_of_the_configured_size() {
        let args = qemu_args(&launch(Accelerator::Tcg));
        assert_eq!(value_after(&args, "-m"), "128M");
        assert_eq!(
            value_after(&args, "-object"),
            "memory-backend-memfd,id=mem,size=128M,share=on"
        );
        assert!(value_after(&args, "-M").contains("memory-backend=mem"));
        assert!(value_after(&args, "-M").contains("acpi=off"));
    }

    #[test]
    fn devices_point_at_the_vhost_user_sockets() {
        let args = qemu_args(&launch(Accelerator::Tcg)).join(" ");
        assert!(
            args.contains("socket,id=vsock0,path=/run/x/vhost-vsock.sock"),
            "{args}"
        );
        assert!(
            args.contains("vhost-user-fs-device,chardev=fs0,tag=husk-shared"),
            "{args}"
        );
        assert!(
            args.contains("-object rng-random,id=rng0,filename=/dev/urandom -device virtio-rng-device,rng=rng0"),
            "{args}"
        );
        assert!(args.contains("-serial file:/run/x/console.log"), "{args}");
        assert!(args.contains("-no-reboot"), "{args}");
        assert!(args.contains("-smp 2"), "{args}");
        assert!(!args.contains("-netdev"), "{args}");
    }

    #[test]
    fn each_tap_is_a_virtio_net_device_with_its_mac() {
        let mut l = launch(Accelerator::Tcg);
        l.nets = vec![NetLaunch {
            mac: "02:00:00:00:00:01".parse().unwrap(),
        }];
        let args = qemu_args(&l).join(" ");
        assert!(
            args.contains("-netdev tap,id=net0,fd=4,vhost=off"),
            "{args}"
        );
        assert!(
            args.contains("-device virtio-net-device,netdev=net0,mac=02:00:00:00:00:01"),
            "{args}"
        );
    }
}
