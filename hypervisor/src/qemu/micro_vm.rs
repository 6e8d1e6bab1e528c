//! The QEMU backend: `qemu-system-x86_64 -M microvm`. Guest RAM is a shared
//! memfd so the vhost-user daemons can map it; without ACPI, QEMU appends
//! `virtio_mmio.device=` entries for the devices to the kernel command line.
//!
//! QEMU starts as the VM's own user, without capabilities, in namespaces
//! of its own, under husk's deny-list filter ([`confine::policy::qemu`]),
//! and confines itself further with `-sandbox` ([`SANDBOX`]). The user is
//! switched before exec rather than with `-runas`: `-runas` switches after
//! QEMU's set-up, and `elevateprivileges=deny` (in force from the start)
//! then kills QEMU at its own setuid.

use crate::{confine, Error, Hypervisor, VmLaunch};
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
        confine::policy::qemu(&self.binary, l)?.apply(&mut cmd)?;
        Ok(cmd)
    }
}

fn qemu_args(l: &VmLaunch) -> Vec<String> {
    let mut args = base_args(l);
    args.extend(serial_args(&l.console_log));
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

/// The fd set a console passed as a descriptor goes into.
const CONSOLE_FDSET: u32 = 1;

/// The serial console's arguments. A console handed over as a descriptor
/// (`/proc/self/fd/N`) goes through an fd set: QEMU then duplicates the
/// descriptor instead of opening /proc/self/fd/N, which its jail does not
/// hold and which the VM's user may not reopen (a pipe belongs to the
/// launcher's uid).
fn serial_args(console: &std::path::Path) -> Vec<String> {
    let passed = console
        .strip_prefix("/proc/self/fd")
        .ok()
        .and_then(|n| n.to_str()?.parse::<i32>().ok());
    match passed {
        Some(fd) => vec![
            "-add-fd".into(),
            format!("fd={fd},set={CONSOLE_FDSET}"),
            "-chardev".into(),
            format!("file,id=console,path=/dev/fdset/{CONSOLE_FDSET},append=on"),
            "-serial".into(),
            "chardev:console".into(),
        ],
        None => vec!["-serial".into(), format!("file:{}", console.display())],
    }
}

/// QEMU's own seccomp filter (QEMU 7.2, docs "-sandbox"): its default
/// deny list, plus obsolete system calls, set*uid/gid, fork and exec,
/// and scheduler and resource changes. It applies from QEMU's start,
/// before any guest code.
pub const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

fn base_args(l: &VmLaunch) -> Vec<String> {
    let mem = format!("{}M", l.memory_mib);
    vec![
        "-name".into(),
        format!("husk-{},debug-threads=on", l.id),
        "-sandbox".into(),
        SANDBOX.into(),
        "-M".into(),
        "microvm,acpi=off,x-option-roms=off,rtc=off,memory-backend=mem".into(),
        "-accel".into(),
        super::accel::accel(l.accelerator, l.tcg_tb_size_mib),
        "-cpu".into(),
        super::accel::cpu(l.accelerator).into(),
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
    use crate::{Accelerator, NetLaunch};

    #[test]
    fn tcg_uses_cpu_max_and_kvm_uses_cpu_host() {
        let tcg = qemu_args(&launch(Accelerator::Tcg));
        assert_eq!(value_after(&tcg, "-accel"), "tcg,tb-size=16");
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
        assert!(
            args.contains(
                "-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
            ),
            "{args}"
        );
        assert!(args.contains("-smp 2"), "{args}");
        assert!(!args.contains("-netdev"), "{args}");
    }

    #[test]
    fn a_console_passed_as_a_descriptor_goes_through_an_fd_set() {
        let mut l = launch(Accelerator::Tcg);
        l.console_log = "/proc/self/fd/3".into();
        let args = qemu_args(&l).join(" ");
        assert!(
            args.contains(
                "-add-fd fd=3,set=1 -chardev file,id=console,path=/dev/fdset/1,append=on \
                 -serial chardev:console"
            ),
            "{args}"
        );
        assert!(!args.contains("/proc"), "{args}");
    }

    /// QEMU under [`SANDBOX`] cannot start a program: a TAP with an
    /// up-script makes it fork and exec one, and it dies of SIGSYS, where
    /// without the denials the script runs and QEMU goes on. In a network
    /// namespace of its own, so the TAP never reaches the host.
    #[test]
    fn qemu_under_the_sandbox_cannot_spawn_a_program() {
        let qemu = std::path::Path::new("/usr/bin/qemu-system-x86_64");
        if !nix::unistd::geteuid().is_root() || !qemu.exists() {
            println!("SKIPPED: needs root and {}", qemu.display());
            return;
        }
        let run = |sandbox: &str, wait: u64| {
            let mut child = std::process::Command::new("unshare")
                .arg("--net")
                .arg(qemu)
                .args(["-sandbox", sandbox, "-M", "microvm", "-nodefaults"])
                .args([
                    "-display", "none", "-accel", "tcg", "-S", "-monitor", "none",
                ])
                .args([
                    "-netdev",
                    "tap,id=n0,ifname=husksbx0,script=/bin/true,downscript=no",
                ])
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait);
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    return Some(status);
                }
                if std::time::Instant::now() > deadline {
                    child.kill().unwrap();
                    child.wait().unwrap();
                    return None;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        };
        use std::os::unix::process::ExitStatusExt;
        let denied = run(SANDBOX, 10).expect("QEMU ran its up-script under spawn=deny");
        // unshare reports its child's death by signal as 128 + the signal.
        assert!(
            denied.code() == Some(128 + libc::SIGSYS) || denied.signal() == Some(libc::SIGSYS),
            "{denied}"
        );
        assert_eq!(run("on", 3), None, "QEMU without spawn=deny should run on");
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
