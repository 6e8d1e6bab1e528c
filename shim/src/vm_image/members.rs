//! What a VM-image pod's containers share on the host: the pod's context
//! (configuration, accelerator, deadlines), its members (the sandbox's
//! [`Placeholder`] and the VM container, by the stage each is at) and the
//! pod's network namespace. [`super::VmImagePod`] fills it, and
//! [`super::VmAgent`] answers the manager's calls from it.

use super::container::VmContainer;
use super::context::PodContext;
use super::launch::Prepared;
use crate::task::error::TaskError;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Exit status of a process ended by SIGKILL.
const KILLED: u32 = crate::task::manager::KILLED;

/// A container of the pod as the host side knows it.
pub enum Member {
    /// The sandbox, between share and create.
    PlannedSandbox,
    Sandbox(Arc<Placeholder>),
    /// The VM container, between share and create.
    Prepared(Box<Prepared>),
    /// The VM container while its create runs.
    Creating,
    Vm(Arc<VmContainer>),
}

pub struct Shared {
    pub ctx: Result<PodContext, Arc<husk_config::ConfigError>>,
    pub members: Mutex<HashMap<String, Member>>,
    /// The pod's network namespace (CNI's), from the sandbox's spec. The
    /// app containers' specs name the sandbox task's instead
    /// (`/proc/<pid>/ns/net`), and no process stands for the sandbox.
    pub pod_netns: Mutex<Option<PathBuf>>,
}

impl Shared {
    pub fn members(&self) -> std::sync::MutexGuard<'_, HashMap<String, Member>> {
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn ctx(&self) -> Result<&PodContext, TaskError> {
        self.ctx.as_ref().map_err(|e| TaskError::Config(e.clone()))
    }

    pub fn pod_netns(&self) -> std::sync::MutexGuard<'_, Option<PathBuf>> {
        self.pod_netns.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A VM container of the pod other than `except` that is being made or
/// still runs (one that exited may stay until kubelet removes it, and a
/// restart is created before that).
pub fn live_vm_in(members: &HashMap<String, Member>, except: &str) -> Option<String> {
    members.iter().find_map(|(id, m)| {
        let live = match m {
            Member::Prepared(_) | Member::Creating => true,
            Member::Vm(vm) => !vm.exited(),
            Member::PlannedSandbox | Member::Sandbox(_) => false,
        };
        (live && id != except).then(|| id.clone())
    })
}

/// The pod sandbox's stand-in: a process that is not there, which ends as
/// pause does — 0 on SIGTERM or SIGINT, 137 on SIGKILL, other signals
/// ignored.
pub struct Placeholder {
    exit: watch::Sender<Option<u32>>,
}

impl Default for Placeholder {
    fn default() -> Self {
        Self {
            exit: watch::channel(None).0,
        }
    }
}

impl Placeholder {
    pub fn signal(&self, signal: u32) {
        let status = match signal {
            9 => KILLED,
            2 | 15 => 0,
            _ => return,
        };
        self.exit.send_if_modified(|s| {
            let unset = s.is_none();
            if unset {
                *s = Some(status);
            }
            unset
        });
    }

    pub async fn wait(&self) -> u32 {
        let mut rx = self.exit.subscribe();
        let status = rx
            .wait_for(Option::is_some)
            .await
            .map(|s| s.unwrap_or(KILLED));
        status.unwrap_or(KILLED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_placeholder_ends_as_pause_does() {
        let p = Placeholder::default();
        p.signal(1);
        assert!(p.exit.borrow().is_none(), "SIGHUP is ignored");
        p.signal(15);
        p.signal(9);
        assert_eq!(p.wait().await, 0);
        let k = Placeholder::default();
        k.signal(9);
        assert_eq!(k.wait().await, 137);
    }
}
