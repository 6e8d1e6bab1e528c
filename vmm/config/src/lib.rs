//! husk-vmm-config: how husk-vmm is launched, as one type.
//!
//! [`VmmConfig`] describes one husk-vmm VM. The launcher (husk-hypervisor's
//! husk-vmm backend) builds one and writes it as husk-vmm's arguments with
//! [`VmmConfig::to_args`]; husk-vmm reads them back with
//! [`VmmConfig::parse`] and runs what they say. Both ends check it against
//! the same limits ([`MAX_VCPUS`], [`MIN_MEMORY_MIB`], [`MAX_MEMORY_MIB`],
//! [`FS_TAG_MAX`]), and husk-config bounds `hypervisor.vcpus` and
//! `hypervisor.memory_mib` with them too, so a configuration that loads is
//! one husk-vmm accepts. [`tap`] is the rest of the contract: the TAP the
//! launcher hands over as `--net-tap fd:N`. [`Snapshot`] makes a VM a
//! template or a clone of one (`--memory-file` with `--snapshot-to` or
//! `--restore-from`).
//!
//! The crate needs only libc and thiserror, so the shim links it without
//! the VMM's KVM, guest-memory, vhost and seccomp crates.

mod args;
mod error;
mod mac;
mod snapshot;
pub mod tap;

pub use args::USAGE;
pub use error::{ConfigError, ValueError};
pub use mac::{MacAddr, MacError};
pub use snapshot::Snapshot;

use std::os::fd::RawFd;
use std::path::PathBuf;

/// The most vCPUs a guest may have: xAPIC IDs are 8 bits, 0xff is the
/// broadcast ID, and the MP table gives the IOAPIC the ID after the last
/// vCPU. KVM's own limit may be lower; husk-vmm checks that when it starts.
pub const MAX_VCPUS: u8 = 254;
/// The smallest guest: boot structures, a kernel and a stack.
pub const MIN_MEMORY_MIB: u32 = 16;
/// The largest guest, 1 TiB.
pub const MAX_MEMORY_MIB: u32 = 1 << 20;
/// The longest virtio-fs tag (virtio 1.2, 5.11.4: `char tag[36]`).
pub const FS_TAG_MAX: usize = 36;

/// What `--memory-mib` and `--vcpus` are when not given.
pub const DEFAULT_MEMORY_MIB: u32 = 128;
pub const DEFAULT_VCPUS: u8 = 1;
/// The guest NIC's MAC when `--net-mac` is not given (locally
/// administered, QEMU's default prefix).
pub const DEFAULT_MAC: MacAddr = MacAddr::DEFAULT;

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

/// The ids an [`Identity`] may take: not root's, and not -1 (which
/// set*id(2) read as "leave unchanged").
pub const IDENTITY_MIN: u32 = 1;
pub const IDENTITY_MAX: u32 = u32::MAX - 1;

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

    /// Checks the limits: vCPUs, memory, the fs tag, the TAP, what a
    /// template or clone may not have, and that no value holds a NUL (it
    /// could not be an argument). The error names the flag. `parse` calls it; the launcher calls it before `to_args`, and
    /// husk-vmm before it sets a VM up.
    pub fn validate(&self) -> Result<(), ConfigError> {
        use args::flag;
        check_range(flag::VCPUS, self.vcpus.into(), 1, MAX_VCPUS.into())?;
        check_range(
            flag::MEMORY_MIB,
            self.memory_mib.into(),
            MIN_MEMORY_MIB.into(),
            MAX_MEMORY_MIB.into(),
        )?;
        if let Some(fs) = &self.fs {
            if fs.tag.is_empty() || fs.tag.len() > FS_TAG_MAX {
                return Err(ConfigError::value(flag::FS_TAG, &fs.tag, ValueError::FsTag));
            }
        }
        if let Some(id) = self.identity {
            let (min, max) = (IDENTITY_MIN.into(), IDENTITY_MAX.into());
            check_range(flag::UID, id.uid.into(), min, max)?;
            check_range(flag::GID, id.gid.into(), min, max)?;
        }
        match self.net.as_ref().map(|n| &n.tap) {
            Some(NetTap::Fd(fd)) if *fd < 0 => {
                return Err(ConfigError::value(
                    flag::NET_TAP,
                    &args::tap_arg(&NetTap::Fd(*fd)),
                    ValueError::Descriptor,
                ));
            }
            Some(NetTap::Name(name)) => {
                tap::check_name(name)
                    .map_err(|e| ConfigError::value(flag::NET_TAP, name, e.into()))?;
                if name.starts_with(args::TAP_FD_PREFIX) {
                    return Err(ConfigError::value(
                        flag::NET_TAP,
                        name,
                        ValueError::Descriptor,
                    ));
                }
            }
            _ => {}
        }
        snapshot::check(self)?;
        for (flag, value) in self.flags() {
            if let Some(v) = value.filter(|v| v.as_encoded_bytes().contains(&0)) {
                return Err(ConfigError::value(
                    flag,
                    &v.to_string_lossy(),
                    ValueError::Nul,
                ));
            }
        }
        Ok(())
    }
}

/// `value` of `flag` within `min..=max`.
fn check_range(flag: &'static str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::value(
            flag,
            &value.to_string(),
            ValueError::OutOfRange { min, max },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seccomp_modes_read_and_write_as_their_names() {
        for mode in [SeccompMode::Kill, SeccompMode::Log, SeccompMode::Off] {
            assert_eq!(mode.as_str().parse::<SeccompMode>().unwrap(), mode);
        }
        let e = "strict".parse::<SeccompMode>().unwrap_err().to_string();
        assert!(e.contains("kill, log or off"), "{e}");
    }

    #[test]
    fn new_has_the_defaults_parse_applies() {
        let parsed = VmmConfig::parse(["--kernel", "/k", "--console-log", "/c"]).unwrap();
        assert_eq!(parsed, VmmConfig::new("/k", "/c"));
    }
}
