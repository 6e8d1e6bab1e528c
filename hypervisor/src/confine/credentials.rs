//! [`Credentials`]: who a confined child becomes — its bounding and
//! ambient capability sets dropped, its groups, gid and uid switched (raw
//! system calls), every capability gone — applied by the helper and by its
//! PID-namespace monitor, between fork and exec.

use super::Identity;

/// Who the child becomes: applied by the helper and by its monitor.
#[derive(Debug)]
pub(crate) struct Credentials {
    pub(crate) identity: Option<Identity>,
    pub(crate) groups: Vec<libc::gid_t>,
    pub(crate) drop_capabilities: bool,
}

impl Credentials {
    /// Bounding and ambient sets first (dropping needs CAP_SETPCAP), then
    /// groups, gid, uid (the uid last: it takes CAP_SETGID with it), then
    /// what capabilities are left. System calls only.
    pub(crate) fn apply(&self) -> std::io::Result<()> {
        let check = |ret: libc::c_long| {
            if ret < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        // SAFETY: every call: prctl, setgroups, setres[ug]id and capset
        // on integers and on the group list and capability structs owned
        // here, which outlive each call.
        unsafe {
            if self.drop_capabilities {
                for cap in 0..64 {
                    if libc::prctl(libc::PR_CAPBSET_READ, cap) != 1 {
                        continue;
                    }
                    check(libc::prctl(libc::PR_CAPBSET_DROP, cap) as _)?;
                }
                check(libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_CLEAR_ALL,
                    0,
                    0,
                    0,
                ) as _)?;
            }
            if let Some(id) = self.identity {
                check(libc::syscall(
                    libc::SYS_setgroups,
                    self.groups.len(),
                    self.groups.as_ptr(),
                ))?;
                check(libc::syscall(libc::SYS_setresgid, id.gid, id.gid, id.gid))?;
                check(libc::syscall(libc::SYS_setresuid, id.uid, id.uid, id.uid))?;
            }
            if self.drop_capabilities {
                #[repr(C)]
                struct Header {
                    version: u32,
                    pid: i32,
                }
                #[repr(C)]
                #[derive(Clone, Copy)]
                struct Data {
                    effective: u32,
                    permitted: u32,
                    inheritable: u32,
                }
                let header = Header {
                    version: 0x2008_0522,
                    pid: 0,
                };
                let data = [Data {
                    effective: 0,
                    permitted: 0,
                    inheritable: 0,
                }; 2];
                check(libc::syscall(libc::SYS_capset, &header, data.as_ptr()))?;
            }
        }
        Ok(())
    }
}
