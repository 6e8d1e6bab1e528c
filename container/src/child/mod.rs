//! The cloned child: from a copy of the agent to the container's process.
//!
//! The agent is multi-threaded, so between clone and exec the child may
//! only make system calls: no allocation, no locks, no logging. Everything
//! it needs is in the `Plan`, made before the clone. It runs the phases
//! below in order, each in its own file; the first failure ends it with one
//! `Report` (step, index, errno) on the status pipe, which the agent turns
//! into words. The pipe is close-on-exec, so a successful exec shows as EOF.

mod capabilities;
mod cgroup;
mod console;
mod devices;
mod exec;
mod hostname;
mod identity;
mod masks;
mod mounts;
mod namespaces;
mod pivot_root;
mod rlimits;
mod seccomp;
mod start;
mod stdio;
mod sys;
mod sysctls;

pub(crate) use exec::ExecArgs;
pub(crate) use sys::ChildFds;

use crate::failure::{Report, Step};
use crate::plan::Plan;
use std::convert::Infallible;
use sys::At;

/// Runs in the child; never returns.
pub(crate) fn main(plan: &Plan, fds: &ChildFds, exec_args: &ExecArgs<'_>) -> isize {
    let Err(report) = run(plan, fds, exec_args);
    let _ = nix::unistd::write(sys::borrow(fds.status), &report.encode());
    sys::exit(127)
}

/// The phases, in order. Returns only with the report of a failure: a
/// successful exec does not return.
fn run(plan: &Plan, fds: &ChildFds, exec_args: &ExecArgs<'_>) -> Result<Infallible, Report> {
    stdio::attach(fds)?;
    namespaces::enter(&plan.namespaces)?;
    // An exec enters a container its init has set up.
    if !plan.exec {
        cgroup::join(plan)?;
        mounts::mount_all(plan)?;
        devices::create(&plan.devices)?;
        hostname::set(plan.hostname.as_deref())?;
        pivot_root::pivot(&plan.root)?;
        devices::link(&plan.devices)?;
        sysctls::write(&plan.sysctls)?;
        masks::apply(&plan.masks, &plan.root)?;
    }
    if plan.process.terminal {
        console::open(fds.console)?;
    }
    rlimits::set(&plan.rlimits)?;
    let program = start::find_program(&plan.process)?;
    start::wait(fds)?;

    // Seccomp where runc puts it: without noNewPrivileges only a privileged
    // process may load a filter, so it goes in before the privileges go;
    // with it, last, so the filter sees as few of our own calls as it can.
    let no_new_privileges = plan.process.no_new_privileges;
    if !no_new_privileges {
        seccomp::load(plan.seccomp.as_ref())?;
    }
    capabilities::bound(plan.capabilities.as_ref())?;
    identity::set_ids(&plan.process.user)?;
    capabilities::set(plan.capabilities.as_ref())?;
    if no_new_privileges {
        nix::sys::prctl::set_no_new_privs().at(Step::NoNewPrivs, 0)?;
    }
    identity::set_umask(&plan.process.user);
    if no_new_privileges {
        seccomp::load(plan.seccomp.as_ref())?;
    }
    Err(exec::exec(program, exec_args))
}
