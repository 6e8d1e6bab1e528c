//! The one list of flags a VM is written as ([`VmmConfig::flags`]):
//! `to_args` writes it, `parse` reads the same names, and `validate`
//! checks every value in it.

use crate::flag::*;
use crate::snapshot::Snapshot;
use crate::{NetTap, VmmConfig};
use std::ffi::{OsStr, OsString};

pub(crate) fn tap_arg(tap: &NetTap) -> String {
    match tap {
        NetTap::Fd(fd) => format!("{TAP_FD_PREFIX}{fd}"),
        NetTap::Name(name) => name.clone(),
    }
}

impl VmmConfig {
    /// Each flag this VM is written with, and its value (None for a
    /// switch), in the order of [`USAGE`].
    pub(crate) fn flags(&self) -> Vec<(&'static str, Option<OsString>)> {
        let value = |v: &dyn AsRef<OsStr>| Some(v.as_ref().to_owned());
        let mut f = Vec::new();
        // A clone boots nothing: its kernel is in the template's memory.
        if !matches!(self.snapshot, Some(Snapshot::Clone { .. })) {
            f.push((KERNEL, value(&self.kernel)));
            if let Some(initrd) = &self.initrd {
                f.push((INITRD, value(initrd)));
            }
            f.push((CMDLINE, value(&self.cmdline)));
        }
        f.extend([
            (MEMORY_MIB, value(&self.memory_mib.to_string())),
            (VCPUS, value(&self.vcpus.to_string())),
            (CONSOLE_LOG, value(&self.console_log)),
            (SECCOMP, value(&self.seccomp.as_str())),
        ]);
        if let Some(socket) = &self.vsock_socket {
            f.push((VSOCK_SOCKET, value(socket)));
        }
        if let Some(fs) = &self.fs {
            f.push((FS_SOCKET, value(&fs.socket)));
            f.push((FS_TAG, value(&fs.tag)));
        }
        if let Some(net) = &self.net {
            f.push((NET_TAP, value(&tap_arg(&net.tap))));
            f.push((NET_MAC, value(&net.mac.to_string())));
        }
        if self.rng {
            f.push((RNG, None));
        }
        if let Some(jail) = &self.jail {
            f.push((JAIL, value(jail)));
        }
        if let Some(id) = self.identity {
            f.push((UID, value(&id.uid.to_string())));
            f.push((GID, value(&id.gid.to_string())));
        }
        if self.new_pid_ns {
            f.push((NEW_PID_NS, None));
        }
        match &self.snapshot {
            Some(Snapshot::Template {
                memory_file,
                state_file,
            }) => f.extend([
                (MEMORY_FILE, value(memory_file)),
                (SNAPSHOT_TO, value(state_file)),
            ]),
            Some(Snapshot::Clone {
                memory_file,
                state_file,
            }) => f.extend([
                (MEMORY_FILE, value(memory_file)),
                (RESTORE_FROM, value(state_file)),
            ]),
            None => {}
        }
        f
    }
}
