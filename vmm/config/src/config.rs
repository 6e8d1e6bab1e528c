//! [`VmmConfig`]: one husk-vmm VM, typed, and the types of its parts.

use crate::error::ValueError;
use crate::limits::{DEFAULT_MEMORY_MIB, DEFAULT_VCPUS};
use crate::mac::MacAddr;
use crate::snapshot::Snapshot;
use std::os::fd::RawFd;
use std::path::PathBuf;

/// What a system call outside a husk-vmm thread's seccomp filter does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeccompMode {
    /// Kill the whole VMM (SIGSYS): the default.
    #[default]
    Kill,
    /// Allow but log to the kernel audit log: for finding a missing entry.
    Log,
    /// No filter.
    Off,
}

impl SeccompMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SeccompMode::Kill => "kill",
            SeccompMode::Log => "log",
            SeccompMode::Off => "off",
        }
    }
}

impl std::fmt::Display for SeccompMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SeccompMode {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        match s {
            "kill" => Ok(SeccompMode::Kill),
            "log" => Ok(SeccompMode::Log),
            "off" => Ok(SeccompMode::Off),
            _ => Err(ValueError::SeccompMode),
        }
    }
}

/// A virtio-fs device served by a vhost-user daemon (virtiofsd).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsShare {
    /// The daemon's vhost-user socket.
    pub socket: PathBuf,
    /// The tag the guest mounts it by.
    pub tag: String,
}

/// Where husk-vmm finds the TAP of its NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetTap {
    /// A TAP the launcher opened (in the pod's network namespace) and
    /// passed down at this descriptor; written `fd:N`.
    Fd(RawFd),
    /// A TAP interface husk-vmm opens in its own network namespace.
    Name(String),
}

/// The guest's NIC: an in-process virtio-net on a TAP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub tap: NetTap,
    pub mac: MacAddr,
}

/// The unprivileged user and group husk-vmm runs as once its devices are
/// open (`--uid`, `--gid`): a VM's own ids, so that one VM's processes
/// cannot signal, trace or read another's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
}

/// One husk-vmm VM: what husk-vmm's arguments say, typed. The devices
/// become virtio-mmio devices in this order: vsock, fs, net, rng.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmConfig {
    /// ELF vmlinux (with or without a PVH note) or bzImage.
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// The kernel command line; husk-vmm appends its virtio-mmio devices.
    pub cmdline: String,
    pub memory_mib: u32,
    pub vcpus: u8,
    /// Where the serial console is written.
    pub console_log: PathBuf,
    /// The filter every husk-vmm thread installs.
    pub seccomp: SeccompMode,
    /// vhost-user socket of a vsock daemon (vhost-device-vsock).
    pub vsock_socket: Option<PathBuf>,
    pub fs: Option<FsShare>,
    pub net: Option<NetConfig>,
    /// Attach a virtio-rng.
    pub rng: bool,
    /// The directory husk-vmm confines itself to once set up (it must be
    /// an absolute path to a directory; husk-vmm checks when it starts).
    pub jail: Option<PathBuf>,
    /// Who husk-vmm becomes once set up (every thread); None: it stays
    /// root, without capabilities.
    pub identity: Option<Identity>,
    /// Run the VM in a new PID namespace, as its PID 1: husk-vmm forks
    /// first thing and its first process only waits for the VM and
    /// passes SIGTERM/SIGINT on (Firecracker's jailer's `--new-pid-ns`).
    pub new_pid_ns: bool,
    /// A template (snapshotted on SIGUSR1) or a clone of one; None: an
    /// ordinary VM, RAM in a memfd. A clone's `kernel` is empty, and it
    /// has no `initrd` or `cmdline`: it boots nothing.
    pub snapshot: Option<Snapshot>,
}

impl VmmConfig {
    /// A VM with this kernel and console and everything else at the
    /// defaults `parse` applies: 128 MiB, 1 vCPU, seccomp kill, no
    /// devices, no jail, root's ids, the caller's PID namespace.
    pub fn new(kernel: impl Into<PathBuf>, console_log: impl Into<PathBuf>) -> Self {
        VmmConfig {
            kernel: kernel.into(),
            initrd: None,
            cmdline: String::new(),
            memory_mib: DEFAULT_MEMORY_MIB,
            vcpus: DEFAULT_VCPUS,
            console_log: console_log.into(),
            seccomp: SeccompMode::Kill,
            vsock_socket: None,
            fs: None,
            net: None,
            rng: false,
            jail: None,
            identity: None,
            new_pid_ns: false,
            snapshot: None,
        }
    }

    /// A clone of the template whose RAM is `memory_file` and whose state
    /// is `state_file`, with the console `console_log` and everything else
    /// at the defaults `parse` applies (`memory_mib` and `vcpus` must be
    /// set to the template's).
    pub fn clone_of(
        memory_file: impl Into<PathBuf>,
        state_file: impl Into<PathBuf>,
        console_log: impl Into<PathBuf>,
    ) -> Self {
        VmmConfig {
            snapshot: Some(Snapshot::Clone {
                memory_file: memory_file.into(),
                state_file: state_file.into(),
            }),
            ..VmmConfig::new("", console_log)
        }
    }
}
