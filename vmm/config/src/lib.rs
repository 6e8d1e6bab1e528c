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
mod config;
mod error;
mod flag;
mod limits;
mod mac;
mod snapshot;
pub mod tap;
mod validate;
mod written;

pub use config::{FsShare, Identity, NetConfig, NetTap, SeccompMode, VmmConfig};
pub use error::{ConfigError, ValueError};
pub use flag::USAGE;
pub use limits::{
    DEFAULT_MAC, DEFAULT_MEMORY_MIB, DEFAULT_VCPUS, FS_TAG_MAX, IDENTITY_MAX, IDENTITY_MIN,
    MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB,
};
pub use mac::{MacAddr, MacError};
pub use snapshot::Snapshot;

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
