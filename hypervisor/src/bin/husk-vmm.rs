//! husk-vmm: the built-in VMM process, one per micro-VM. It sets the VM up
//! from its arguments, runs it, and exits when the guest powers off or
//! resets (the guest kernel runs with `reboot=t`) or on SIGTERM/SIGINT.
//!
//! Exit status: 0 when the guest ended itself or the host asked it to stop,
//! 1 when the VM could not be set up or KVM failed while running it.

use anyhow::{bail, Context, Result};
use husk_hypervisor::builtin::jail::Jail;
use husk_hypervisor::builtin::seccomp::{self, SeccompMode, ThreadKind};
use husk_hypervisor::builtin::virtio::net::Net;
use husk_hypervisor::builtin::virtio::rng::Rng;
use husk_hypervisor::builtin::virtio::vhost_user::VhostUserDevice;
use husk_hypervisor::builtin::virtio::VirtioDevice;
use husk_hypervisor::builtin::{vcpu::VcpuStop, VmConfig, VmEvent, Vmm};
use husk_hypervisor::tap::{adopt_tap, open_tap};
use nix::sys::signal::{SigSet, Signal};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: husk-vmm --kernel PATH [--initrd PATH] [--cmdline STRING] \
[--memory-mib N] [--vcpus N] --console-log PATH [--seccomp kill|log|off] \
[--vsock-socket PATH] [--fs-socket PATH --fs-tag TAG] [--net-tap NAME|fd:N [--net-mac MAC]] \
[--rng] [--jail DIR]";

/// The MAC address of the guest's NIC when none is given (locally
/// administered, QEMU's default prefix).
const DEFAULT_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// The VM and the vhost-user daemons to attach, in this order, as
/// virtio-mmio devices.
#[derive(Debug)]
struct Args {
    vm: VmConfig,
    vsock_socket: Option<PathBuf>,
    fs: Option<(PathBuf, String)>,
    net: Option<(String, [u8; 6])>,
    /// Attach a virtio-rng.
    rng: bool,
    /// The directory husk-vmm confines itself to once set up.
    jail: Option<PathBuf>,
}

fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let parts: Vec<_> = s.split(':').collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6 {
        bail!("--net-mac {s:?} is not six hex bytes separated by ':'");
    }
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16)
            .ok()
            .filter(|_| p.len() == 2)
            .with_context(|| format!("--net-mac {s:?}: {p:?} is not a hex byte"))?;
    }
    if mac[0] & 1 != 0 {
        bail!("--net-mac {s:?} is a multicast address");
    }
    Ok(mac)
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args> {
    let (mut kernel, mut initrd, mut console_log) = (None, None, None);
    let mut cmdline = String::new();
    let (mut memory_mib, mut vcpus) = (128u64, 1u8);
    let mut seccomp = SeccompMode::Kill;
    let (mut vsock_socket, mut fs_socket, mut fs_tag) = (None, None, None);
    let (mut net_tap, mut net_mac) = (None, None);
    let mut jail = None;
    let mut rng = false;
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--kernel" => kernel = Some(PathBuf::from(value()?)),
            "--initrd" => initrd = Some(PathBuf::from(value()?)),
            "--cmdline" => cmdline = value()?,
            "--console-log" => console_log = Some(PathBuf::from(value()?)),
            "--memory-mib" => {
                let v = value()?;
                memory_mib = v
                    .parse()
                    .with_context(|| format!("--memory-mib {v:?} is not a number of MiB"))?
            }
            "--vcpus" => {
                let v = value()?;
                vcpus = v
                    .parse()
                    .with_context(|| format!("--vcpus {v:?} is not a number from 1 to 254"))?
            }
            "--seccomp" => seccomp = value()?.parse().map_err(anyhow::Error::msg)?,
            "--vsock-socket" => vsock_socket = Some(PathBuf::from(value()?)),
            "--fs-socket" => fs_socket = Some(PathBuf::from(value()?)),
            "--fs-tag" => fs_tag = Some(value()?),
            "--net-tap" => net_tap = Some(value()?),
            "--net-mac" => net_mac = Some(parse_mac(&value()?)?),
            "--jail" => jail = Some(PathBuf::from(value()?)),
            "--rng" => rng = true,
            "--help" | "-h" => bail!("{USAGE}"),
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let fs = match (fs_socket, fs_tag) {
        (Some(socket), Some(tag)) => Some((socket, tag)),
        (None, None) => None,
        _ => bail!("--fs-socket and --fs-tag go together\n{USAGE}"),
    };
    let net = match (net_tap, net_mac) {
        (Some(tap), mac) => Some((tap, mac.unwrap_or(DEFAULT_MAC))),
        (None, None) => None,
        (None, Some(_)) => bail!("--net-mac needs --net-tap\n{USAGE}"),
    };
    let vm = VmConfig {
        kernel: kernel.with_context(|| format!("--kernel is required\n{USAGE}"))?,
        initrd,
        cmdline,
        memory_mib,
        vcpus,
        console_log: console_log.with_context(|| format!("--console-log is required\n{USAGE}"))?,
        seccomp,
    };
    Ok(Args {
        vm,
        vsock_socket,
        fs,
        net,
        rng,
        jail,
    })
}

fn run() -> Result<()> {
    let args = parse_args(std::env::args().skip(1))?;
    let config = args.vm;
    // While this is the only thread: a mount namespace entered later would
    // hold only the thread that entered it.
    let jail = args.jail.as_deref().map(Jail::prepare).transpose()?;
    // Block the stop signals before any thread exists, so every thread
    // inherits the mask and only the waiter below ever receives them.
    let mut stop_signals = SigSet::empty();
    stop_signals.add(Signal::SIGTERM);
    stop_signals.add(Signal::SIGINT);
    stop_signals
        .thread_block()
        .context("blocking SIGTERM/SIGINT")?;

    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    if let Some(socket) = &args.vsock_socket {
        devices.push(Box::new(VhostUserDevice::vsock(socket, config.seccomp)?));
    }
    if let Some((socket, tag)) = &args.fs {
        devices.push(Box::new(VhostUserDevice::fs(socket, tag, config.seccomp)?));
    }
    if let Some((tap, mac)) = &args.net {
        // "fd:N": a TAP the parent opened (in the pod's network namespace)
        // and passed down; otherwise a name in husk-vmm's own namespace.
        let tap = match tap.strip_prefix("fd:") {
            Some(n) => {
                let fd: std::os::fd::RawFd = n
                    .parse()
                    .with_context(|| format!("--net-tap {tap:?}: not fd:<number>"))?;
                nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD)
                    .with_context(|| format!("--net-tap {tap:?}: no such open fd"))?;
                // SAFETY: the fd was passed to this process for this use and
                // nothing else here owns it (checked open just above).
                let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
                adopt_tap(file, &format!("--net-tap {tap}"))?
            }
            None => open_tap(tap)?,
        };
        devices.push(Box::new(Net::new(tap, *mac, config.seccomp)?));
    }
    if args.rng {
        devices.push(Box::new(
            Rng::new(config.seccomp).context("starting the virtio-rng thread")?,
        ));
    }
    let vmm = Vmm::with_devices(&config, devices).context("setting up the VM")?;
    let boot = vmm.boot_entry();
    tracing::info!(
        kernel = %config.kernel.display(),
        entry = format_args!("{:#x}", boot.entry.0),
        mode = ?boot.mode,
        vcpus = config.vcpus,
        memory_mib = config.memory_mib,
        "starting guest"
    );
    // Everything from the host (/dev/kvm, the memfd, kernel and initrd,
    // the console log, the daemons' sockets, the TAP) is open or loaded.
    if let Some(jail) = jail {
        let dir = jail.dir().to_path_buf();
        jail.enter()?;
        tracing::info!(jail = %dir.display(), "confined to the jail directory");
    }
    if config.seccomp != SeccompMode::Off {
        seccomp::drop_capabilities()?;
    }
    let mut vm = vmm.start().context("starting the vCPUs")?;
    let terminator = vm.terminator();
    let mode = config.seccomp;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Err(e) = seccomp::harden_thread(ThreadKind::Signals, mode) {
                let _ = terminator.send(VmEvent::Failed(format!("signal thread: {e}")));
                return;
            }
            if let Ok(sig) = stop_signals.wait() {
                tracing::info!("{sig}: stopping the guest");
                let _ = terminator.send(VmEvent::Terminate);
            }
        })
        .context("starting the signal thread")?;
    seccomp::apply(ThreadKind::Main, mode)?;

    let event = vm.wait();
    vm.stop_and_join();
    match event {
        VmEvent::Terminate => Ok(()),
        VmEvent::Failed(why) => bail!("{why}"),
        VmEvent::Vcpu(i, VcpuStop::GuestShutdown) => {
            tracing::info!("vCPU {i}: guest shut down");
            Ok(())
        }
        VmEvent::Vcpu(i, VcpuStop::GuestReset) => {
            tracing::info!("vCPU {i}: guest reset; a micro-VM does not reboot");
            Ok(())
        }
        VmEvent::Vcpu(i, VcpuStop::Stopped) => {
            tracing::info!("vCPU {i} stopped");
            Ok(())
        }
        VmEvent::Vcpu(i, VcpuStop::Failed(why)) => bail!("vCPU {i}: {why}"),
    }
}

/// The error and its causes, "outer: inner: ...", leaving out a cause
/// whose text the message already carries (the library's errors name
/// their cause in their own message, as the rest of husk's do).
fn error_chain(e: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Plain text when stderr is a log file, as under the shim.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HUSK_VMM_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Not through tracing: the cause must reach stderr whatever
            // HUSK_VMM_LOG filters.
            eprintln!("husk-vmm: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> impl Iterator<Item = String> + '_ {
        s.split_whitespace().map(String::from)
    }

    #[test]
    fn arguments_with_defaults() {
        let a = parse_args(args("--kernel k --console-log c --vcpus 2")).unwrap();
        let c = a.vm;
        assert_eq!((c.kernel, c.console_log), ("k".into(), "c".into()));
        assert_eq!(
            (c.vcpus, c.memory_mib, c.seccomp),
            (2, 128, SeccompMode::Kill)
        );
        assert!(c.initrd.is_none() && c.cmdline.is_empty());
        assert!(a.vsock_socket.is_none() && a.fs.is_none() && a.jail.is_none());
        assert!(!a.rng);
        let a = parse_args(args("--kernel k --console-log c --jail /run/vm1 --rng")).unwrap();
        assert_eq!(a.jail, Some("/run/vm1".into()));
        assert!(a.rng);
        let a = parse_args(args("--kernel k --console-log c --fs-socket s --fs-tag t")).unwrap();
        assert_eq!(a.fs, Some(("s".into(), "t".into())));
        let a = parse_args(args("--kernel k --console-log c --net-tap tap0")).unwrap();
        assert_eq!(a.net, Some(("tap0".into(), DEFAULT_MAC)));
        let a = parse_args(args(
            "--kernel k --console-log c --net-tap t --net-mac 02:00:00:aa:bb:0c",
        ))
        .unwrap();
        assert_eq!(a.net, Some(("t".into(), [2, 0, 0, 0xaa, 0xbb, 0x0c])));
    }

    #[test]
    fn bad_arguments_are_named() {
        for (a, want) in [
            ("--console-log c", "--kernel is required"),
            ("--kernel k", "--console-log is required"),
            (
                "--kernel k --console-log c --memory-mib lots",
                "--memory-mib \"lots\"",
            ),
            ("--kernel k --console-log c --vcpus -1", "--vcpus \"-1\""),
            (
                "--kernel k --console-log c --frobnicate",
                "unknown argument \"--frobnicate\"",
            ),
            ("--kernel", "--kernel needs a value"),
            (
                "--kernel k --console-log c --fs-socket s",
                "--fs-socket and --fs-tag go together",
            ),
            (
                "--kernel k --console-log c --net-mac 02:00:00:00:00:01",
                "--net-mac needs --net-tap",
            ),
            (
                "--kernel k --console-log c --net-tap t --net-mac 02:00:00:00:01",
                "six hex bytes",
            ),
            (
                "--kernel k --console-log c --net-tap t --net-mac 02:00:00:00:00:zz",
                "\"zz\" is not a hex byte",
            ),
            (
                "--kernel k --console-log c --net-tap t --net-mac 01:00:00:00:00:01",
                "multicast",
            ),
        ] {
            let e = parse_args(args(a)).unwrap_err().to_string();
            assert!(e.contains(want), "{a}: {e}");
        }
    }

    #[test]
    fn error_chain_leaves_out_causes_already_in_the_message() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        #[derive(Debug, thiserror::Error)]
        #[error("initrd x: cannot open: {source}")]
        struct Open {
            source: std::io::Error,
        }
        let e = anyhow::Error::new(Open { source: io }).context("setting up the VM");
        assert_eq!(
            error_chain(&e),
            "setting up the VM: initrd x: cannot open: no such file"
        );
    }
}
