//! Confinement of a VM's helper processes (QEMU, vhost-device-vsock,
//! virtiofsd) from the outside, between fork and exec, for helpers whose
//! code is not ours: husk-vmm confines itself (docs/husk-vmm.md). What a
//! [`Confinement`] can take away, in the order it is applied:
//!
//! 0. its standing with the OOM killer: the score its pod's containers
//!    would have under runc (`oom_score_adj`, set first, while `/proc` is
//!    still the host's; inherited by everything it forks; [`oom`]);
//! 1. the host's PID namespace: a new one, the helper its PID 1, behind a
//!    small monitor process ([`monitor`]);
//! 2. the host's IPC, UTS, network and mount namespaces (`namespaces`);
//! 3. the host's file system: a root of its own with only what it is
//!    given ([`Jail`]);
//! 4. root: an unprivileged uid and gid of the VM's own ([`Identity`],
//!    [`VmIds`]), with only the supplementary groups named;
//! 5. every capability, the bounding set included, so none comes back
//!    through exec;
//! 6. gaining privileges through exec (no_new_privs);
//! 7. the system calls of [`seccomp::DENIED`] (a deny list: the helpers'
//!    own needs change with their releases; what they must never do does
//!    not), or for virtiofsd, which mounts and unshares itself, only the
//!    file-handle calls ([`seccomp::Filter::FileHandles`]).
//!
//! Everything that allocates is done in the parent ([`Confinement::apply`]);
//! the closure that runs in the child makes system calls only. On
//! failure it writes the failed step to the helper's log (its stderr is in
//! place by then) and the spawn fails with the system call's error.

mod credentials;
mod ids;
mod jail;
mod monitor;
pub mod oom;
pub mod policy;
pub mod seccomp;
#[cfg(test)]
mod tests;

use credentials::Credentials;
pub use ids::VmIds;
pub use jail::Jail;
pub use monitor::MONITOR_NAME;

use crate::Error;
pub use husk_vmm_config::Identity;
use libc::sock_filter;
use nix::sched::CloneFlags;
use tokio::process::Command;

/// What a helper process is left with.
#[derive(Debug, Clone)]
pub struct Confinement {
    /// The uid and gid it runs as; None: it stays uid 0.
    pub identity: Option<Identity>,
    /// Its supplementary groups (none unless named: e.g. /dev/kvm's).
    pub groups: Vec<u32>,
    /// Drop every capability (bounding, ambient, permitted, effective,
    /// inheritable). Without an identity a helper stays uid 0 but holds
    /// no capability.
    pub drop_capabilities: bool,
    /// Namespaces of its own: any of CLONE_NEWIPC, NEWUTS, NEWNET, NEWNS
    /// (a jail implies NEWNS).
    pub namespaces: CloneFlags,
    /// A PID namespace of its own, behind a monitor ([`monitor`]).
    pub pid_namespace: bool,
    pub jail: Option<Jail>,
    /// A seccomp filter ([`seccomp::Filter`]), with no_new_privs.
    pub seccomp: Option<seccomp::Filter>,
    /// `/proc/self/oom_score_adj` before anything else: the pod's score
    /// (-1000..=1000). None: the launcher's, inherited.
    pub oom_score_adj: Option<i32>,
}

impl Default for Confinement {
    /// Nothing taken away.
    fn default() -> Self {
        Self {
            identity: None,
            groups: Vec::new(),
            drop_capabilities: false,
            namespaces: CloneFlags::empty(),
            pid_namespace: false,
            jail: None,
            seccomp: None,
            oom_score_adj: None,
        }
    }
}

/// A step's name on the helper's stderr, then its error for the spawn.
fn report(step: &'static str, e: std::io::Error) -> std::io::Error {
    let parts: [&[u8]; 3] = [
        b"husk: confining the process: ",
        step.as_bytes(),
        b" failed\n",
    ];
    for p in parts {
        // SAFETY: write of a buffer we own to fd 2.
        unsafe { libc::write(2, p.as_ptr().cast(), p.len()) };
    }
    e
}

impl Confinement {
    /// Confines what `command` spawns. Its closure runs before those
    /// added later (a launcher's cgroup placement, descriptor passing,
    /// parent-death signal: they then act on the confined process, and
    /// the parent-death signal is set after the change of credentials
    /// that would clear it).
    pub fn apply(&self, command: &mut Command) -> Result<(), Error> {
        let program = std::path::PathBuf::from(command.as_std().get_program());
        let mut plan = match &self.jail {
            Some(jail) => Some(jail.plan().map_err(|source| Error::Confine {
                program: program.clone(),
                source,
            })?),
            None => None,
        };
        let creds = Credentials {
            identity: self.identity,
            groups: self.groups.clone(),
            drop_capabilities: self.drop_capabilities,
        };
        let filter: Option<Vec<sock_filter>> = self.seccomp.map(seccomp::Filter::program);
        let mut namespaces = self.namespaces;
        if plan.is_some() {
            namespaces |= CloneFlags::CLONE_NEWNS;
        }
        let pid_namespace = self.pid_namespace;
        let oom_score_adj = self.oom_score_adj.map(oom::Score::new).transpose()?;
        let no_new_privs =
            self.seccomp.is_some() || self.identity.is_some() || self.drop_capabilities;
        // SAFETY: the closure makes system calls only, on data moved into
        // it and prepared above (see the module comment); it allocates
        // nothing.
        unsafe {
            command.pre_exec(move || {
                if let Some(score) = &oom_score_adj {
                    score.write_own().map_err(|e| report("oom_score_adj", e))?;
                }
                let launcher = libc::getppid();
                // A change of credentials clears the parent-death signal:
                // whatever was asked for before (or the monitor's, below)
                // is set again after it.
                let mut pdeathsig: libc::c_int = 0;
                libc::prctl(libc::PR_GET_PDEATHSIG, &mut pdeathsig);
                let mut monitor_fd = -1;
                if pid_namespace {
                    monitor_fd = monitor::split(&creds, filter.as_deref(), launcher)
                        .map_err(|e| report("a PID namespace and its monitor", e))?;
                    pdeathsig = libc::SIGKILL;
                }
                if let Some(plan) = plan.as_mut() {
                    plan.clone_held().map_err(|(step, e)| report(step, e))?;
                }
                if !namespaces.is_empty() && libc::unshare(namespaces.bits()) != 0 {
                    return Err(report("unshare", std::io::Error::last_os_error()));
                }
                if let Some(plan) = plan.as_mut() {
                    plan.enter().map_err(|(step, e)| report(step, e))?;
                }
                creds
                    .apply()
                    .map_err(|e| report("dropping credentials", e))?;
                if pdeathsig != 0 {
                    rearm_parent_death(pdeathsig, pid_namespace, monitor_fd, launcher)?;
                }
                if monitor_fd >= 0 {
                    libc::close(monitor_fd);
                }
                if no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(report("no_new_privs", std::io::Error::last_os_error()));
                }
                if let Some(program) = filter.as_deref() {
                    seccomp::install(program).map_err(|e| report("seccomp", e))?;
                }
                Ok(())
            });
        }
        Ok(())
    }
}

/// Sets the parent-death signal again after a change of credentials
/// cleared it, and fails if the parent (the launcher, or the monitor in
/// a PID namespace) died before it was set: the signal would never come.
/// Runs between fork and exec: system calls only.
fn rearm_parent_death(
    signal: libc::c_int,
    pid_namespace: bool,
    monitor_fd: libc::c_int,
    launcher: libc::pid_t,
) -> std::io::Result<()> {
    // SAFETY: prctl with an integer argument, no pointer.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal) };
    let parent_gone = if pid_namespace {
        !monitor::parent_alive(monitor_fd)
    } else {
        // SAFETY: getppid takes nothing and cannot fail.
        unsafe { libc::getppid() != launcher }
    };
    if parent_gone {
        return Err(report(
            "the parent died during set-up",
            std::io::Error::from_raw_os_error(libc::ESRCH),
        ));
    }
    Ok(())
}
