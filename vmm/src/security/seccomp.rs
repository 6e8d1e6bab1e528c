//! Seccomp filters, one per thread kind, and the capability drop: after
//! setup the VMM needs a handful of system calls and no privilege, so a
//! guest that escapes into device emulation finds little to use.
//!
//! Filters are per thread (seccomp without TSYNC): each thread installs
//! its own at its start, after which it cannot widen it. The lists come
//! from tracing `husk-vmm` through boot, guest I/O, interrupts, guest
//! shutdown and SIGTERM; the KVM tests run with the filters in `kill` mode,
//! so a missing entry fails them.

use super::identity::{self, IdentityError};
use kvm_bindings::{
    kvm_clock_data, kvm_cpuid2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msrs, kvm_pit_state2, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, KVMIO,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;
use vmm_sys_util::{ioctl_ior_nr, ioctl_iowr_nr};

vmm_sys_util::ioctl_io_nr!(KVM_RUN, kvm_bindings::KVMIO, 0x80);
vmm_sys_util::ioctl_ior_nr!(
    KVM_GET_REGS,
    kvm_bindings::KVMIO,
    0x81,
    kvm_bindings::kvm_regs
);

/// What a system call outside the filter does (`--seccomp`).
pub use husk_vmm_config::SeccompMode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// Runs KVM_RUN and device emulation for port/MMIO exits.
    Vcpu,
    /// Waits for SIGTERM/SIGINT.
    Signals,
    /// Waits for the VM to end, then stops the vCPUs and tears down; in a
    /// template (`snapshot`) it also reads the VM's state for the snapshot
    /// and writes it out.
    Main { snapshot: bool },
    /// A vhost-user device: sets its daemon up over the socket at
    /// activation, then relays the daemon's interrupts.
    VhostUser,
    /// An in-process device's I/O thread (virtio-net, virtio-rng): reads
    /// and writes its fd and guest memory, waits in poll, and getrandom.
    DeviceIo,
    /// The first process of a VM run in a new PID namespace
    /// (`--new-pid-ns`): waits for `child`, the VM's process, and passes
    /// SIGTERM/SIGINT (and a template's SIGUSR1) on to it, and to nothing
    /// else.
    Waiter { child: libc::pid_t, snapshot: bool },
}

#[derive(Debug, thiserror::Error)]
pub enum HardeningError {
    #[error("building the {kind:?} seccomp filter: {source}")]
    Build {
        kind: ThreadKind,
        source: seccompiler::BackendError,
    },
    #[error("installing the {kind:?} seccomp filter: {source}")]
    Install {
        kind: ThreadKind,
        source: seccompiler::Error,
    },
    #[error("dropping capabilities: {what}: {source}")]
    Capabilities {
        what: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

/// Calls every thread makes: memory management by the allocator, futexes
/// (channels, locks, joins), logging and eventfd writes, signal masks at
/// thread exit, time, and exiting.
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_sched_yield,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

fn rules(kind: ThreadKind) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let mut map: BTreeMap<i64, Vec<SeccompRule>> =
        COMMON.iter().map(|nr| (*nr, Vec::new())).collect();
    // fcntl(F_GETFD) only: std checks an fd is open before closing it
    // (debug builds); nothing else may change fds.
    let getfd = SeccompCondition::new(
        1,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        libc::F_GETFD as u64,
    )?;
    map.insert(libc::SYS_fcntl, vec![SeccompRule::new(vec![getfd])?]);
    match kind {
        ThreadKind::Vcpu => {
            // Only running the vCPU, and reading its registers for the
            // diagnostics of a failed or stopped guest.
            let ioctl = |request: u64| {
                SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, request)
                    .and_then(|c| SeccompRule::new(vec![c]))
            };
            map.insert(
                libc::SYS_ioctl,
                vec![ioctl(KVM_RUN() as u64)?, ioctl(KVM_GET_REGS() as u64)?],
            );
        }
        ThreadKind::Signals => {
            map.insert(libc::SYS_rt_sigtimedwait, Vec::new());
        }
        ThreadKind::Main { snapshot } => main_rules(&mut map, snapshot)?,
        ThreadKind::Waiter { child, snapshot } => waiter_rules(&mut map, child, snapshot)?,
        ThreadKind::DeviceIo => {
            map.insert(libc::SYS_poll, Vec::new());
            map.insert(libc::SYS_ppoll, Vec::new());
            // virtio-rng's source.
            map.insert(libc::SYS_getrandom, Vec::new());
            // virtio-net: the TAP's offloads follow the driver's features.
            let offload = SeccompCondition::new(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                husk_vmm_config::tap::TUNSETOFFLOAD,
            )?;
            map.insert(libc::SYS_ioctl, vec![SeccompRule::new(vec![offload])?]);
        }
        ThreadKind::VhostUser => {
            // vhost-user messages (with fds), the call eventfds it makes,
            // and waiting on them.
            for nr in [
                libc::SYS_sendmsg,
                libc::SYS_recvmsg,
                libc::SYS_eventfd2,
                libc::SYS_poll,
                libc::SYS_ppoll,
            ] {
                map.insert(nr, Vec::new());
            }
        }
    }
    Ok(map)
}

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// The main thread: kicking vCPU threads out of KVM_RUN (pthread_kill):
/// only threads of this process, only with the kick signal; any other
/// process, or another signal, is refused. A template also reads the
/// stopped VM's state (nothing that sets it) and writes the state and
/// memory files out.
fn main_rules(map: &mut Rules, snapshot: bool) -> Result<(), seccompiler::BackendError> {
    // SAFETY: getpid takes nothing and cannot fail.
    let tgid = unsafe { libc::getpid() };
    map.insert(
        libc::SYS_tgkill,
        vec![SeccompRule::new(vec![
            arg_eq(0, tgid as u64)?,
            arg_eq(2, crate::vcpu::kick_signal() as u64)?,
        ])?],
    );
    if snapshot {
        let reads = snapshot_ioctls()
            .into_iter()
            .map(|request| SeccompRule::new(vec![arg_eq(1, request)?]))
            .collect::<Result<_, _>>()?;
        map.insert(libc::SYS_ioctl, reads);
        map.insert(libc::SYS_msync, Vec::new());
        map.insert(libc::SYS_fdatasync, Vec::new());
    }
    Ok(())
}

/// The PID-namespace parent: waiting for its one child and passing it
/// TERM, INT or KILL (and a template's USR1), nothing else, no one else.
fn waiter_rules(
    map: &mut Rules,
    child: libc::pid_t,
    snapshot: bool,
) -> Result<(), seccompiler::BackendError> {
    map.insert(libc::SYS_wait4, Vec::new());
    map.insert(libc::SYS_rt_sigtimedwait, Vec::new());
    let mut signals = vec![libc::SIGTERM, libc::SIGINT, libc::SIGKILL];
    if snapshot {
        signals.push(libc::SIGUSR1);
    }
    map.insert(
        libc::SYS_kill,
        signals
            .into_iter()
            .map(|sig| SeccompRule::new(vec![arg_eq(0, child as u64)?, arg_eq(1, sig as u64)?]))
            .collect::<Result<_, _>>()?,
    );
    Ok(())
}

// The KVM_GET_* ioctls a template's snapshot makes on the VM and its
// vCPUs (see `snapshot::capture`), numbered as <linux/kvm.h> (and
// kvm-ioctls) define them.
ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
ioctl_iowr_nr!(KVM_GET_CPUID2, KVMIO, 0x91, kvm_cpuid2);
ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
ioctl_ior_nr!(KVM_GET_DEBUGREGS, KVMIO, 0xa1, kvm_debugregs);
ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_xsave);
ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_xcrs);
ioctl_iowr_nr!(KVM_GET_IRQCHIP, KVMIO, 0x62, kvm_irqchip);
ioctl_ior_nr!(KVM_GET_PIT2, KVMIO, 0x9f, kvm_pit_state2);
ioctl_ior_nr!(KVM_GET_CLOCK, KVMIO, 0x7c, kvm_clock_data);

/// Every ioctl a snapshot makes.
fn snapshot_ioctls() -> [u64; 13] {
    [
        KVM_GET_REGS(),
        KVM_GET_SREGS(),
        KVM_GET_MSRS(),
        KVM_GET_LAPIC(),
        KVM_GET_CPUID2(),
        KVM_GET_MP_STATE(),
        KVM_GET_VCPU_EVENTS(),
        KVM_GET_DEBUGREGS(),
        KVM_GET_XSAVE(),
        KVM_GET_XCRS(),
        KVM_GET_IRQCHIP(),
        KVM_GET_PIT2(),
        KVM_GET_CLOCK(),
    ]
    .map(u64::from)
}

/// Argument `index` (as a 32-bit value) equals `value`.
fn arg_eq(index: u8, value: u64) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
}

/// The compiled filter for `kind`; calls outside it get `mismatch`.
pub fn filter(kind: ThreadKind, mismatch: SeccompAction) -> Result<BpfProgram, HardeningError> {
    let build = |source| HardeningError::Build { kind, source };
    let rules = rules(kind).map_err(build)?;
    let f = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(build)?;
    BpfProgram::try_from(f).map_err(build)
}

/// Installs the filter for `kind` on the calling thread.
pub fn apply(kind: ThreadKind, mode: SeccompMode) -> Result<(), HardeningError> {
    let mismatch = match mode {
        SeccompMode::Off => return Ok(()),
        SeccompMode::Kill => SeccompAction::KillProcess,
        SeccompMode::Log => SeccompAction::Log,
    };
    let prog = filter(kind, mismatch)?;
    // apply_filter sets no_new_privs first, so no privilege is needed.
    seccompiler::apply_filter(&prog).map_err(|source| HardeningError::Install { kind, source })
}

/// Hardens the calling thread for its life as `kind`: drops every
/// capability (unless hardening is off), switches to the process's
/// identity (if one is set, whatever the mode) and installs the thread's
/// filter. Each VMM thread calls it first thing: capabilities and
/// credentials are per thread, so a device thread started during setup
/// would otherwise keep root's.
pub fn harden_thread(kind: ThreadKind, mode: SeccompMode) -> Result<(), HardeningError> {
    if mode != SeccompMode::Off {
        drop_capabilities()?;
    } else {
        identity::switch_thread()?;
    }
    apply(kind, mode)
}

/// Drops every capability of the calling thread (and so of the threads it
/// starts afterwards): bounding set, ambient set, then (switching to the
/// process's unprivileged identity, if one is set: [`identity`])
/// effective, permitted and inheritable. Call it once all privileged setup
/// (opening /dev/kvm, TAP devices, entering the jail) is done. It reads no
/// file (the VMM may be jailed already) and may be called again:
/// capabilities already gone from the bounding set are left alone, as
/// dropping one needs CAP_SETPCAP, and a thread already switched stays.
pub fn drop_capabilities() -> Result<(), HardeningError> {
    let err = |what| move |source| HardeningError::Capabilities { what, source };
    // PR_CAPBSET_READ answers EINVAL past the kernel's last capability.
    for cap in 0.. {
        // SAFETY: prctl with integer arguments only.
        match unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) } {
            0 => continue,
            1 => {}
            _ => break,
        }
        // SAFETY: as above.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            return Err(err("PR_CAPBSET_DROP")(std::io::Error::last_os_error()));
        }
    }
    // SAFETY: as above.
    if unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    } != 0
    {
        return Err(err("PR_CAP_AMBIENT_CLEAR_ALL")(
            std::io::Error::last_os_error(),
        ));
    }
    // While CAP_SETUID and CAP_SETGID are still effective.
    identity::switch_thread()?;
    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset reads a v3 header and two data structs we own.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0 {
        return Err(err("capset")(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` in a fresh thread under the `kind` filter with EPERM as the
    /// mismatch action (so a refused call returns instead of killing the
    /// test process).
    fn under_filter<T: Send + 'static>(kind: ThreadKind, f: fn() -> T) -> T {
        std::thread::spawn(move || {
            let prog = filter(kind, SeccompAction::Errno(libc::EPERM as u32)).unwrap();
            seccompiler::apply_filter(&prog).unwrap();
            f()
        })
        .join()
        .unwrap()
    }

    fn errno_of(ret: i64) -> i32 {
        if ret < 0 {
            std::io::Error::last_os_error().raw_os_error().unwrap()
        } else {
            0
        }
    }

    #[test]
    fn ioctl_numbers_are_the_kvm_ones() {
        assert_eq!(KVM_RUN(), 0xae80);
        assert_eq!(KVM_GET_REGS(), 0x8090_ae81);
        // From <linux/kvm.h> on x86_64, as strace prints them.
        assert_eq!(KVM_GET_SREGS(), 0x8138_ae83);
        assert_eq!(KVM_GET_MSRS(), 0xc008_ae88);
        assert_eq!(KVM_GET_LAPIC(), 0x8400_ae8e);
        assert_eq!(KVM_GET_XSAVE(), 0x9000_aea4);
        assert_eq!(KVM_GET_IRQCHIP(), 0xc208_ae62);
        assert_eq!(KVM_GET_CLOCK(), 0x8030_ae7c);
        assert_eq!(KVM_GET_PIT2(), 0x8070_ae9f);
    }

    #[test]
    fn only_a_templates_main_thread_may_read_vm_state() {
        fn get_sregs() -> i32 {
            // SAFETY: an ioctl on fd -1: the filter decides, then EBADF.
            errno_of(unsafe { libc::ioctl(-1, KVM_GET_SREGS() as _, 0) } as i64)
        }
        fn set_sregs() -> i32 {
            // KVM_SET_SREGS: _IOW(KVMIO, 0x84, struct kvm_sregs).
            // SAFETY: as above.
            errno_of(unsafe { libc::ioctl(-1, 0x4138_ae84, 0) } as i64)
        }
        let (plain, template) = (
            ThreadKind::Main { snapshot: false },
            ThreadKind::Main { snapshot: true },
        );
        assert_eq!(under_filter(plain, get_sregs), libc::EPERM);
        assert_eq!(under_filter(template, get_sregs), libc::EBADF);
        assert_eq!(under_filter(template, set_sregs), libc::EPERM);
        assert_eq!(under_filter(ThreadKind::Vcpu, get_sregs), libc::EPERM);
    }

    #[test]
    fn vcpu_threads_may_run_kvm_but_not_open_files_or_sockets() {
        let (open, socket, other_ioctl, kvm_run, write) = under_filter(ThreadKind::Vcpu, || {
            // SAFETY: plain syscalls with valid or harmless arguments.
            unsafe {
                let path = c"/etc/hostname";
                let open = errno_of(libc::open(path.as_ptr(), libc::O_RDONLY) as i64);
                let socket = errno_of(libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) as i64);
                // Any other ioctl, e.g. TCGETS on stdin, is refused...
                let other = errno_of(libc::ioctl(0, libc::TCGETS, 0) as i64);
                // ...while KVM_RUN passes the filter and fails on the bad fd.
                let run = errno_of(libc::ioctl(-1, KVM_RUN() as _, 0) as i64);
                let write = errno_of(libc::write(-1, std::ptr::null(), 0) as i64);
                (open, socket, other, run, write)
            }
        });
        assert_eq!(open, libc::EPERM, "open");
        assert_eq!(socket, libc::EPERM, "socket");
        assert_eq!(other_ioctl, libc::EPERM, "other ioctl");
        assert_eq!(kvm_run, libc::EBADF, "KVM_RUN is allowed");
        assert_eq!(write, libc::EBADF, "write is allowed");
    }

    #[test]
    fn only_the_main_thread_may_signal_and_only_the_signal_thread_wait_for_signals() {
        fn tgkill() -> i32 {
            // SAFETY: the kick signal to a thread id no thread has: the
            // filter lets it through and the kernel answers ESRCH.
            errno_of(unsafe {
                libc::syscall(
                    libc::SYS_tgkill,
                    libc::getpid(),
                    i32::MAX - 1,
                    crate::vcpu::kick_signal(),
                )
            })
        }
        fn sigtimedwait() -> i32 {
            // SAFETY: an empty set with a zero timeout returns at once.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                let ts = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                errno_of(libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) as i64)
            }
        }
        let main = ThreadKind::Main { snapshot: false };
        assert_eq!(under_filter(ThreadKind::Vcpu, tgkill), libc::EPERM);
        assert_eq!(under_filter(main, tgkill), libc::ESRCH);
        assert_eq!(under_filter(main, sigtimedwait), libc::EPERM);
        assert_eq!(
            under_filter(ThreadKind::Signals, sigtimedwait),
            libc::EAGAIN
        );
    }

    /// The main thread's tgkill reaches its own threads with the kick
    /// signal and nothing else: not another process (init here), not
    /// another signal, and kill(2) not at all.
    #[test]
    fn the_main_thread_signals_only_its_own_threads_with_the_kick() {
        let refused = under_filter(ThreadKind::Main { snapshot: true }, || {
            // SAFETY: each call is refused by the filter before the kernel
            // sees it (the test asserts it); none reaches a process. Each
            // errno is read right after its call.
            unsafe {
                let me = libc::getpid();
                let kick = crate::vcpu::kick_signal();
                [
                    errno_of(libc::syscall(libc::SYS_tgkill, 1, 1, kick)),
                    errno_of(libc::syscall(
                        libc::SYS_tgkill,
                        me,
                        libc::gettid(),
                        libc::SIGTERM,
                    )),
                    errno_of(libc::syscall(
                        libc::SYS_tgkill,
                        me,
                        libc::gettid(),
                        libc::SIGKILL,
                    )),
                    errno_of(libc::syscall(libc::SYS_kill, me, 0)),
                    errno_of(libc::syscall(libc::SYS_tkill, libc::gettid(), 0)),
                ]
            }
        });
        assert_eq!(refused, [libc::EPERM; 5]);
    }

    /// The PID namespace's parent may wait and pass SIGTERM, SIGINT or
    /// SIGKILL to its one child; no other process, signal or call.
    #[test]
    fn the_waiter_signals_only_its_child() {
        // A pid no process has: allowed calls fail with ESRCH/ECHILD.
        const CHILD: libc::pid_t = i32::MAX - 1;
        fn calls() -> [i32; 7] {
            // SAFETY: signals to a pid no process has, or refused by the
            // filter; wait4 for no child; open of a path we only read.
            // Each errno is read right after its call.
            unsafe {
                [
                    errno_of(libc::syscall(libc::SYS_kill, CHILD, libc::SIGTERM)),
                    errno_of(libc::syscall(libc::SYS_kill, CHILD, libc::SIGKILL)),
                    errno_of(libc::syscall(
                        libc::SYS_wait4,
                        CHILD,
                        std::ptr::null_mut::<i32>(),
                        libc::WNOHANG,
                        std::ptr::null_mut::<libc::rusage>(),
                    )),
                    errno_of(libc::syscall(libc::SYS_kill, 1, libc::SIGTERM)),
                    errno_of(libc::syscall(libc::SYS_kill, CHILD, libc::SIGUSR1)),
                    errno_of(libc::syscall(libc::SYS_tgkill, CHILD, CHILD, libc::SIGTERM)),
                    errno_of(libc::open(c"/etc/hostname".as_ptr(), libc::O_RDONLY) as i64),
                ]
            }
        }
        let got = std::thread::spawn(|| {
            let kind = ThreadKind::Waiter {
                child: CHILD,
                snapshot: false,
            };
            let prog = filter(kind, SeccompAction::Errno(libc::EPERM as u32)).unwrap();
            seccompiler::apply_filter(&prog).unwrap();
            calls()
        })
        .join()
        .unwrap();
        assert_eq!(
            got,
            [
                libc::ESRCH,
                libc::ESRCH,
                libc::ECHILD,
                libc::EPERM,
                libc::EPERM,
                libc::EPERM,
                libc::EPERM
            ]
        );
        // A template's waiter passes SIGUSR1 (the snapshot) on as well.
        let usr1 = std::thread::spawn(|| {
            let kind = ThreadKind::Waiter {
                child: CHILD,
                snapshot: true,
            };
            let prog = filter(kind, SeccompAction::Errno(libc::EPERM as u32)).unwrap();
            seccompiler::apply_filter(&prog).unwrap();
            // SAFETY: a signal to a pid no process has.
            errno_of(unsafe { libc::syscall(libc::SYS_kill, CHILD, libc::SIGUSR1) })
        })
        .join()
        .unwrap();
        assert_eq!(usr1, libc::ESRCH);
    }
}
