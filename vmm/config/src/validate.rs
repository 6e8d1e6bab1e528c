//! [`VmmConfig::validate`]: the limits and rules a VM must meet, the same
//! for a configuration built in code (the launcher's) and one read from a
//! command line ([`VmmConfig::parse`]). Every error names the flag.

use crate::error::{check_range, ConfigError, ValueError};
use crate::flag::{self, TAP_FD_PREFIX};
use crate::limits::{
    FS_TAG_MAX, IDENTITY_MAX, IDENTITY_MIN, MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB,
};
use crate::snapshot::Snapshot;
use crate::written::tap_arg;
use crate::{tap, NetTap, VmmConfig};

/// Why a clone has no `--kernel`, `--initrd` or `--cmdline`.
const CLONE_BOOTS_NOTHING: &str = "a clone runs the template's kernel, already in its memory";
/// Why templates and clones have no vhost-user devices.
const NO_VHOST_USER: &str = "vhost-user daemons map guest RAM themselves, and a clone's RAM is \
a private copy-on-write mapping they cannot see (docs/husk-vmm.md)";

impl VmmConfig {
    /// Checks the limits: vCPUs, memory, the fs tag, the TAP, what a
    /// template or clone may not have, and that no value holds a NUL (it
    /// could not be an argument). The error names the flag. `parse` calls it; the launcher calls it before `to_args`, and
    /// husk-vmm before it sets a VM up.
    pub fn validate(&self) -> Result<(), ConfigError> {
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
                    &tap_arg(&NetTap::Fd(*fd)),
                    ValueError::Descriptor,
                ));
            }
            Some(NetTap::Name(name)) => {
                tap::check_name(name)
                    .map_err(|e| ConfigError::value(flag::NET_TAP, name, e.into()))?;
                if name.starts_with(TAP_FD_PREFIX) {
                    return Err(ConfigError::value(
                        flag::NET_TAP,
                        name,
                        ValueError::Descriptor,
                    ));
                }
            }
            _ => {}
        }
        check_snapshot(self)?;
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

/// What `config`'s role forbids: a clone boots no kernel, and neither a
/// template nor a clone has vhost-user devices.
fn check_snapshot(config: &VmmConfig) -> Result<(), ConfigError> {
    let Some(role) = &config.snapshot else {
        return Ok(());
    };
    let conflict = |flag, why| ConfigError::Conflict {
        flag,
        with: role.flag(),
        why,
    };
    if let Snapshot::Clone { .. } = role {
        if !config.kernel.as_os_str().is_empty() {
            return Err(conflict(flag::KERNEL, CLONE_BOOTS_NOTHING));
        }
        if config.initrd.is_some() {
            return Err(conflict(flag::INITRD, CLONE_BOOTS_NOTHING));
        }
        if !config.cmdline.is_empty() {
            return Err(conflict(flag::CMDLINE, CLONE_BOOTS_NOTHING));
        }
    }
    if config.vsock_socket.is_some() {
        return Err(conflict(flag::VSOCK_SOCKET, NO_VHOST_USER));
    }
    if config.fs.is_some() {
        return Err(conflict(flag::FS_SOCKET, NO_VHOST_USER));
    }
    Ok(())
}
