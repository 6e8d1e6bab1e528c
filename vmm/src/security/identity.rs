//! Who husk-vmm is once its VM is set up (`--uid`, `--gid`): an
//! unprivileged user and group of the VM's own, with no supplementary
//! group. Firecracker's jailer switches before exec; husk-vmm must open
//! /dev/kvm, the daemons' sockets and the TAP first, so it switches after
//! setup, like the capability drop, and per thread:
//!
//! - credentials are per thread in the kernel, and glibc's `setresuid`
//!   reaches the other threads by signalling each to make the call
//!   itself, which a device thread's seccomp filter would answer by
//!   killing the process. So every thread switches itself with the raw
//!   system calls, before its filter ([`switch_thread`]);
//! - the identity is set once for the process ([`set`]), before any
//!   thread, so each thread finds it without every device constructor
//!   carrying it.
//!
//! A change of credentials clears the parent-death signal the launcher set
//! (PR_SET_PDEATHSIG); the main thread sets it again
//! ([`restore_pdeathsig`]), so a killed launcher still takes the VM with
//! it.

use husk_vmm_config::Identity;
use std::sync::OnceLock;

static IDENTITY: OnceLock<Identity> = OnceLock::new();

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("--uid/--gid: {what}: {source}")]
    Switch {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("--uid/--gid: the process's identity was already set to {set:?}")]
    AlreadySet { set: Identity },
    #[error("the launcher died before husk-vmm took its parent-death signal again")]
    ParentGone,
    #[error("--uid/--gid: husk-vmm needs CAP_SETUID and CAP_SETGID to become the VM's user")]
    Unprivileged,
}

/// Sets the identity every thread switches to, after checking now (before
/// anything is set up) that the switch will be allowed. Call once, before
/// any thread starts.
pub fn set(identity: Identity) -> Result<(), IdentityError> {
    if !can_switch() {
        return Err(IdentityError::Unprivileged);
    }
    IDENTITY
        .set(identity)
        .map_err(|_| IdentityError::AlreadySet {
            set: *IDENTITY.get().expect("set"),
        })
}

/// Whether the calling thread holds CAP_SETUID and CAP_SETGID.
fn can_switch() -> bool {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut header = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget reads the v3 header and writes two data structs we own.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } != 0 {
        return false;
    }
    // linux/capability.h: CAP_SETGID 6, CAP_SETUID 7.
    let needed = (1 << 6) | (1 << 7);
    data[0].effective & needed == needed
}

/// The identity set for the process, if any.
pub fn get() -> Option<Identity> {
    IDENTITY.get().copied()
}

/// Switches the calling thread to the process's identity, if one is set
/// and the thread has not switched yet: no supplementary groups, then the
/// group, then the user (the user last: it takes CAP_SETGID with it).
/// Needs CAP_SETUID and CAP_SETGID the first time.
pub fn switch_thread() -> Result<(), IdentityError> {
    let Some(id) = get() else {
        return Ok(());
    };
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: getresuid writes three uid_t we own.
    if unsafe { libc::getresuid(&mut r, &mut e, &mut s) } != 0 {
        return Err(last("getresuid"));
    }
    if [r, e, s] == [id.uid; 3] {
        return Ok(());
    }
    let sys = |what: &'static str, ret: libc::c_long| {
        if ret == 0 {
            Ok(())
        } else {
            Err(last(what))
        }
    };
    // Raw system calls: they change this thread alone (see the module
    // comment for why glibc's wrappers must not be used).
    // SAFETY: setgroups with a count of 0 reads no memory; setresgid and
    // setresuid take integers only.
    unsafe {
        sys(
            "setgroups",
            libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()),
        )?;
        sys(
            "setresgid",
            libc::syscall(libc::SYS_setresgid, id.gid, id.gid, id.gid),
        )?;
        sys(
            "setresuid",
            libc::syscall(libc::SYS_setresuid, id.uid, id.uid, id.uid),
        )?;
    }
    Ok(())
}

/// The calling thread's parent-death signal (0 for none).
pub fn pdeathsig() -> libc::c_int {
    let mut sig: libc::c_int = 0;
    // SAFETY: PR_GET_PDEATHSIG writes one int we own.
    unsafe { libc::prctl(libc::PR_GET_PDEATHSIG, &mut sig) };
    sig
}

/// Sets the parent-death signal `sig` again after a change of credentials
/// cleared it (nothing when `sig` is 0), and fails if the parent died in
/// between. `parent` is a pidfd of the parent, taken while it was known
/// alive.
pub fn restore_pdeathsig(
    sig: libc::c_int,
    parent: Option<&std::os::fd::OwnedFd>,
) -> Result<(), IdentityError> {
    if sig == 0 {
        return Ok(());
    }
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig) } != 0 {
        return Err(last("PR_SET_PDEATHSIG"));
    }
    if let Some(pidfd) = parent {
        use std::os::fd::AsRawFd;
        let mut poll = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd we own; zero timeout.
        if unsafe { libc::poll(&mut poll, 1, 0) } > 0 {
            return Err(IdentityError::ParentGone);
        }
    }
    Ok(())
}

/// A pidfd of this process's parent (None where pidfds are not
/// available): proof, later, that the parent is still the one that
/// started us.
pub fn parent_pidfd() -> Option<std::os::fd::OwnedFd> {
    // SAFETY: getppid takes nothing; pidfd_open takes integers and
    // returns a new fd we then own.
    unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, libc::getppid(), 0);
        (fd >= 0).then(|| std::os::fd::FromRawFd::from_raw_fd(fd as i32))
    }
}

fn last(what: &'static str) -> IdentityError {
    IdentityError::Switch {
        what,
        source: std::io::Error::last_os_error(),
    }
}
