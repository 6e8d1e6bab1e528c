//! The cloned child: from a copy of the agent to the container's process.
//!
//! The agent is multi-threaded, so between clone and exec the child may
//! only make system calls: no allocation, no locks, no logging. Everything
//! it needs is precomputed in the `LaunchPlan`; failures are reported to
//! the parent as a fixed-size (step, index, errno) record on a pipe, which
//! the parent turns into a message. The status pipe is close-on-exec, so a
//! successful exec shows up as EOF.

use super::plan::LaunchPlan;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::signal::{sigprocmask, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::stat::Mode;
use nix::unistd::{self, AccessFlags};
use std::ffi::CStr;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;

/// What the child was doing when it failed (or that it is ready).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Step {
    Created = 0,
    Stdio,
    Setsid,
    JoinNamespace,
    Cgroup,
    MountPrivate,
    BindRoot,
    Mount,
    Device,
    DeviceNode,
    Hostname,
    PivotRoot,
    ReadonlyRoot,
    MaskPath,
    ReadonlyPath,
    Sysctl,
    Rlimit,
    Cwd,
    Lookup,
    WaitStart,
    User,
    Capabilities,
    NoNewPrivs,
    Seccomp,
    Terminal,
    Exec,
}

impl Step {
    /// Every step in discriminant order (a test keeps this complete).
    const ALL: [Step; 26] = {
        use Step::*;
        [
            Created,
            Stdio,
            Setsid,
            JoinNamespace,
            Cgroup,
            MountPrivate,
            BindRoot,
            Mount,
            Device,
            DeviceNode,
            Hostname,
            PivotRoot,
            ReadonlyRoot,
            MaskPath,
            ReadonlyPath,
            Sysctl,
            Rlimit,
            Cwd,
            Lookup,
            WaitStart,
            User,
            Capabilities,
            NoNewPrivs,
            Seccomp,
            Terminal,
            Exec,
        ]
    };

    pub fn from_u16(v: u16) -> Option<Step> {
        Self::ALL.get(v as usize).copied()
    }
}

/// The record the child writes: step, index (which mount, ...), errno.
pub const REPORT_LEN: usize = 8;

pub fn encode(step: Step, index: u16, errno: i32) -> [u8; REPORT_LEN] {
    let mut out = [0u8; REPORT_LEN];
    out[0..2].copy_from_slice(&(step as u16).to_le_bytes());
    out[2..4].copy_from_slice(&index.to_le_bytes());
    out[4..8].copy_from_slice(&errno.to_le_bytes());
    out
}

pub fn decode(buf: &[u8; REPORT_LEN]) -> (Option<Step>, u16, Errno) {
    let step = Step::from_u16(u16::from_le_bytes([buf[0], buf[1]]));
    let index = u16::from_le_bytes([buf[2], buf[3]]);
    let errno = Errno::from_raw(i32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]));
    (step, index, errno)
}

/// File descriptors the child uses; all close-on-exec except after dup2.
pub struct ChildFds {
    pub stdin: RawFd,
    pub stdout: RawFd,
    pub stderr: RawFd,
    pub status: RawFd,
    pub start: RawFd,
    /// Socket to send a terminal's master on; -1 without a terminal.
    pub console: RawFd,
}

/// Runs in the child; never returns.
pub fn child_main(plan: &LaunchPlan, fds: &ChildFds) -> isize {
    let fail = |step: Step, index: usize, errno: Errno| -> ! {
        let _ = unistd::write(
            borrow(fds.status),
            &encode(step, index as u16, errno as i32),
        );
        unsafe { nix::libc::_exit(127) }
    };
    macro_rules! step {
        ($step:expr, $index:expr, $e:expr) => {
            if let Err(errno) = $e {
                fail($step, $index, errno)
            }
        };
    }

    // Signals: the agent's runtime ignores SIGPIPE; a container must not
    // inherit that (exec keeps ignored signals ignored) or a blocked mask.
    step!(
        Step::Stdio,
        0,
        unsafe { nix::sys::signal::signal(Signal::SIGPIPE, SigHandler::SigDfl) }.map(drop)
    );
    step!(
        Step::Stdio,
        0,
        sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
    );
    for (i, (fd, target)) in [(fds.stdin, 0), (fds.stdout, 1), (fds.stderr, 2)]
        .into_iter()
        .enumerate()
    {
        step!(Step::Stdio, i, unistd::dup2(fd, target).map(drop));
    }
    step!(Step::Setsid, 0, unistd::setsid().map(drop));

    if let Some(join) = &plan.join {
        // An exec: enter the container's namespaces (its PID namespace was
        // entered by the thread that cloned us).
        if let Err((i, e)) = enter_namespaces(&join.namespaces) {
            fail(Step::JoinNamespace, i, e)
        }
    } else {
        // A pod's shared namespaces, named by path, before any mount.
        if let Err((i, e)) = enter_namespaces(&plan.enter) {
            fail(Step::JoinNamespace, i, e)
        }
        // Join the container's cgroup ourselves, then make the cgroup
        // namespace, so that its root is that cgroup (as under runc).
        if let Some(procs) = &plan.cgroup_procs {
            let fd = match nix::fcntl::open(
                procs.as_c_str(),
                OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => fd,
                Err(e) => fail(Step::Cgroup, 0, e),
            };
            step!(Step::Cgroup, 0, unistd::write(borrow(fd), b"0").map(drop));
            let _ = unistd::close(fd);
        }
        if plan.unshare_cgroup_ns {
            step!(
                Step::Cgroup,
                1,
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP)
            );
        }
        // Nothing mounted here may reach the agent's mount namespace.
        step!(
            Step::MountPrivate,
            0,
            mount(
                None::<&CStr>,
                c"/",
                None::<&CStr>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&CStr>
            )
        );
        step!(
            Step::BindRoot,
            0,
            mount(
                Some(plan.rootfs.as_c_str()),
                plan.rootfs.as_c_str(),
                None::<&CStr>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&CStr>
            )
        );

        for (i, m) in plan.mounts.iter().enumerate() {
            step!(Step::Mount, i, make_target(&m.target, m.target_is_file));
            step!(
                Step::Mount,
                i,
                mount(
                    m.source.as_deref(),
                    m.target.as_c_str(),
                    m.fstype.as_deref(),
                    m.flags,
                    m.data.as_deref()
                )
            );
            if let Some(bits) = m.remount_flags {
                step!(
                    Step::Mount,
                    i,
                    mount(
                        None::<&CStr>,
                        m.target.as_c_str(),
                        None::<&CStr>,
                        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | bits,
                        None::<&CStr>
                    )
                );
            }
            if let Some(p) = m.propagation {
                step!(
                    Step::Mount,
                    i,
                    mount(
                        None::<&CStr>,
                        m.target.as_c_str(),
                        None::<&CStr>,
                        p,
                        None::<&CStr>
                    )
                );
            }
        }

        // The guest's own device nodes, bound over empty files (runc does the
        // same in user namespaces; here it saves a mknod per device).
        for (i, (source, target)) in plan.devices.iter().enumerate() {
            step!(Step::Device, i, make_target(target, true));
            step!(
                Step::Device,
                i,
                mount(
                    Some(source.as_c_str()),
                    target.as_c_str(),
                    None::<&CStr>,
                    MsFlags::MS_BIND,
                    None::<&CStr>
                )
            );
        }

        // linux.devices, with umask 0 as runc does so that fileMode is exact.
        let old_mask = nix::sys::stat::umask(Mode::empty());
        for (i, d) in plan.device_nodes.iter().enumerate() {
            step!(Step::DeviceNode, i, make_path(&d.target, Last::Skip));
            match unistd::unlink(d.target.as_c_str()) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => fail(Step::DeviceNode, i, e),
            }
            step!(
                Step::DeviceNode,
                i,
                nix::sys::stat::mknod(
                    d.target.as_c_str(),
                    nix::sys::stat::SFlag::from_bits_truncate(d.mode & nix::libc::S_IFMT),
                    Mode::from_bits_truncate(d.mode & 0o7777),
                    nix::sys::stat::makedev(d.major, d.minor)
                )
            );
            step!(
                Step::DeviceNode,
                i,
                unistd::chown(
                    d.target.as_c_str(),
                    Some(unistd::Uid::from_raw(d.uid)),
                    Some(unistd::Gid::from_raw(d.gid))
                )
            );
        }
        nix::sys::stat::umask(old_mask);

        if let Some(h) = &plan.hostname {
            step!(
                Step::Hostname,
                0,
                unistd::sethostname(std::ffi::OsStr::from_bytes(h.to_bytes()))
            );
        }

        // Enter the rootfs: pivot_root(".", ".") stacks the old root under the
        // new one, and the detach removes it.
        step!(Step::PivotRoot, 0, unistd::chdir(plan.rootfs.as_c_str()));
        step!(Step::PivotRoot, 0, unistd::pivot_root(c".", c"."));
        step!(Step::PivotRoot, 0, umount2(c".", MntFlags::MNT_DETACH));
        step!(Step::PivotRoot, 0, unistd::chdir(c"/"));

        for (i, (target, link)) in plan.dev_links.iter().enumerate() {
            match unistd::symlinkat(target.as_c_str(), None, link.as_c_str()) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => fail(Step::Device, i, e),
            }
        }

        // Before /proc/sys becomes read-only (it is in readonlyPaths).
        for (i, (path, value)) in plan.sysctls.iter().enumerate() {
            let fd = match nix::fcntl::open(
                path.as_c_str(),
                OFlag::O_WRONLY | OFlag::O_TRUNC | OFlag::O_CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => fd,
                Err(e) => fail(Step::Sysctl, i, e),
            };
            step!(
                Step::Sysctl,
                i,
                unistd::write(borrow(fd), value.to_bytes()).map(drop)
            );
            let _ = unistd::close(fd);
        }

        for (i, p) in plan.masked_paths.iter().enumerate() {
            match nix::sys::stat::stat(p.as_c_str()) {
                Err(Errno::ENOENT) => continue,
                Err(e) => fail(Step::MaskPath, i, e),
                Ok(st) if st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFDIR => {
                    step!(
                        Step::MaskPath,
                        i,
                        mount(
                            Some(c"tmpfs"),
                            p.as_c_str(),
                            Some(c"tmpfs"),
                            MsFlags::MS_RDONLY,
                            None::<&CStr>
                        )
                    );
                }
                Ok(_) => step!(
                    Step::MaskPath,
                    i,
                    mount(
                        Some(c"/dev/null"),
                        p.as_c_str(),
                        None::<&CStr>,
                        MsFlags::MS_BIND,
                        None::<&CStr>
                    )
                ),
            }
        }
        for (i, p) in plan.readonly_paths.iter().enumerate() {
            match mount(
                Some(p.as_c_str()),
                p.as_c_str(),
                None::<&CStr>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&CStr>,
            ) {
                Err(Errno::ENOENT) => continue,
                Err(e) => fail(Step::ReadonlyPath, i, e),
                Ok(()) => step!(
                    Step::ReadonlyPath,
                    i,
                    mount(
                        None::<&CStr>,
                        p.as_c_str(),
                        None::<&CStr>,
                        MsFlags::MS_REMOUNT
                            | MsFlags::MS_BIND
                            | MsFlags::MS_RDONLY
                            | MsFlags::MS_REC,
                        None::<&CStr>
                    )
                ),
            }
        }
        if plan.readonly_rootfs {
            step!(
                Step::ReadonlyRoot,
                0,
                mount(
                    None::<&CStr>,
                    c"/",
                    None::<&CStr>,
                    MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
                    None::<&CStr>
                )
            );
        }
    }

    if plan.terminal {
        // Now that /dev/ptmx is the container's (see `stdio`).
        step!(Step::Terminal, 0, make_terminal(fds.console));
    }

    for (i, r) in plan.rlimits.iter().enumerate() {
        step!(
            Step::Rlimit,
            i,
            nix::sys::resource::setrlimit(r.resource, r.soft, r.hard)
        );
    }
    step!(Step::Cwd, 0, unistd::chdir(plan.cwd.as_c_str()));

    let program = plan
        .exec_candidates
        .iter()
        .find(|c| unistd::access(c.as_c_str(), AccessFlags::X_OK).is_ok() && is_regular(c))
        .unwrap_or_else(|| fail(Step::Lookup, 0, Errno::ENOENT));

    // Created: tell the parent, then wait for Start (EOF means removed).
    step!(
        Step::Created,
        0,
        unistd::write(borrow(fds.status), &encode(Step::Created, 0, 0)).map(drop)
    );
    let mut byte = [0u8; 1];
    match unistd::read(fds.start, &mut byte) {
        Ok(1) => {}
        Ok(_) => unsafe { nix::libc::_exit(0) },
        Err(e) => fail(Step::WaitStart, 0, e),
    }

    // Seccomp, where runc puts it: without NoNewPrivs only a privileged
    // process may load a filter, so it goes in before the privileges go;
    // with it, last, so the filter sees as few of our own calls as it can.
    if let (Some(prog), false) = (&plan.seccomp, plan.no_new_privileges) {
        step!(Step::Seccomp, 0, load_seccomp(prog));
    }

    // Capabilities, in runc's order: shrink the bounding set while still
    // privileged, keep the permitted set across the uid change, then set
    // the sets and raise the ambient ones.
    if let Some(c) = &plan.capabilities {
        for cap in 0..=c.last_cap {
            if c.bounding & (1u64 << cap) == 0 {
                step!(
                    Step::Capabilities,
                    cap as usize,
                    raw_syscall(unsafe {
                        nix::libc::prctl(
                            nix::libc::PR_CAPBSET_DROP,
                            cap as nix::libc::c_ulong,
                            0,
                            0,
                            0,
                        )
                    } as nix::libc::c_long)
                );
            }
        }
        step!(
            Step::Capabilities,
            0,
            raw_syscall(
                unsafe { nix::libc::prctl(nix::libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) }
                    as nix::libc::c_long
            )
        );
    }
    // Raw system calls: glibc's set*id wrappers broadcast the change to
    // every thread it knows of, and in this clone those threads are gone,
    // so the wrappers would wait for them forever.
    let (uid, gid) = (plan.uid as nix::libc::c_long, plan.gid as nix::libc::c_long);
    let groups = &plan.additional_gids;
    step!(
        Step::User,
        0,
        raw_syscall(unsafe {
            nix::libc::syscall(nix::libc::SYS_setgroups, groups.len(), groups.as_ptr())
        })
    );
    step!(
        Step::User,
        1,
        raw_syscall(unsafe { nix::libc::syscall(nix::libc::SYS_setresgid, gid, gid, gid) })
    );
    step!(
        Step::User,
        2,
        raw_syscall(unsafe { nix::libc::syscall(nix::libc::SYS_setresuid, uid, uid, uid) })
    );
    if let Some(c) = &plan.capabilities {
        step!(
            Step::Capabilities,
            0,
            raw_syscall(
                unsafe { nix::libc::prctl(nix::libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) }
                    as nix::libc::c_long
            )
        );
        let header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let split = |m: u64| (m as u32, (m >> 32) as u32);
        let (e0, e1) = split(c.effective);
        let (p0, p1) = split(c.permitted);
        let (i0, i1) = split(c.inheritable);
        let data = [
            CapData {
                effective: e0,
                permitted: p0,
                inheritable: i0,
            },
            CapData {
                effective: e1,
                permitted: p1,
                inheritable: i1,
            },
        ];
        step!(
            Step::Capabilities,
            0,
            raw_syscall(unsafe {
                nix::libc::syscall(
                    nix::libc::SYS_capset,
                    &header as *const CapHeader,
                    data.as_ptr(),
                )
            })
        );
        for &cap in &c.ambient {
            step!(
                Step::Capabilities,
                cap as usize,
                raw_syscall(unsafe {
                    nix::libc::prctl(
                        nix::libc::PR_CAP_AMBIENT,
                        nix::libc::PR_CAP_AMBIENT_RAISE as nix::libc::c_ulong,
                        cap as nix::libc::c_ulong,
                        0,
                        0,
                    )
                } as nix::libc::c_long)
            );
        }
    }
    if plan.no_new_privileges {
        step!(Step::NoNewPrivs, 0, nix::sys::prctl::set_no_new_privs());
    }
    if let Some(mask) = plan.umask {
        nix::sys::stat::umask(Mode::from_bits_truncate(mask as nix::libc::mode_t));
    }
    if let (Some(prog), true) = (&plan.seccomp, plan.no_new_privileges) {
        step!(Step::Seccomp, 0, load_seccomp(prog));
    }
    let Err(e) = unistd::execve(program.as_c_str(), &plan.args, &plan.env);
    fail(Step::Exec, 0, e)
}

/// setns into each (namespace file, kind); on failure, which one and why.
fn enter_namespaces(
    namespaces: &[(std::ffi::CString, nix::sched::CloneFlags)],
) -> Result<(), (usize, Errno)> {
    for (i, (path, flag)) in namespaces.iter().enumerate() {
        let fd = nix::fcntl::open(
            path.as_c_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| (i, e))?;
        let joined = nix::sched::setns(borrow(fd), *flag);
        let _ = unistd::close(fd);
        joined.map_err(|e| (i, e))?;
    }
    Ok(())
}

/// What `make_path` makes of the last component of a path.
#[derive(Clone, Copy, PartialEq)]
enum Last {
    Dir,
    File,
    /// Only the parent directories (for mknod).
    Skip,
}

fn make_target(path: &CStr, is_file: bool) -> Result<(), Errno> {
    make_path(path, if is_file { Last::File } else { Last::Dir })
}

/// mkdir -p for a directory target, or create an empty file for a file
/// bind mount. Works on the precomputed C string by walking its slashes
/// into a stack buffer: no allocation.
fn make_path(path: &CStr, last_as: Last) -> Result<(), Errno> {
    let bytes = path.to_bytes();
    let mut buf = [0u8; 4096];
    if bytes.len() >= buf.len() {
        return Err(Errno::ENAMETOOLONG);
    }
    for end in (1..=bytes.len()).filter(|&e| e == bytes.len() || bytes[e] == b'/') {
        buf[..end].copy_from_slice(&bytes[..end]);
        buf[end] = 0;
        let part = CStr::from_bytes_until_nul(&buf[..=end]).map_err(|_| Errno::EINVAL)?;
        let last = end == bytes.len();
        if last && last_as == Last::Skip {
            break;
        }
        if last && last_as == Last::File {
            match nix::fcntl::open(
                part,
                OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o644),
            ) {
                Ok(fd) => {
                    let _ = unistd::close(fd);
                }
                Err(Errno::EISDIR) => {}
                Err(e) => return Err(e),
            }
        } else {
            match unistd::mkdir(part, Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

fn is_regular(path: &CStr) -> bool {
    nix::sys::stat::stat(path).is_ok_and(|st| st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFREG)
}

/// capset(2)'s header and data for _LINUX_CAPABILITY_VERSION_3 (64-bit sets
/// as two 32-bit halves).
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Opens a pseudo-terminal from /dev/ptmx, makes its slave our stdio and
/// controlling terminal, and sends the master to the agent over `socket`.
/// Only system calls on stack memory.
fn make_terminal(socket: RawFd) -> Result<(), Errno> {
    use nix::libc;
    let master = nix::fcntl::open(
        c"/dev/ptmx",
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let unlock: libc::c_int = 0;
    raw_syscall(unsafe { libc::ioctl(master, libc::TIOCSPTLCK, &unlock) } as libc::c_long)?;
    // TIOCGPTPEER opens the slave through the master, with no path lookup.
    let slave = unsafe { libc::ioctl(master, libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY) };
    raw_syscall(slave as libc::c_long)?;
    for target in 0..3 {
        unistd::dup2(slave, target)?;
    }
    if slave > 2 {
        let _ = unistd::close(slave);
    }
    // The session leader (setsid above) takes its controlling terminal.
    raw_syscall(unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } as libc::c_long)?;

    // One byte with the master attached as SCM_RIGHTS.
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut control = [0u64; 8];
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
    // SAFETY: msghdr is plain data; zero is a valid start.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: control is 64 bytes, aligned, larger than CMSG_SPACE(4).
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), master);
    }
    raw_syscall(unsafe { libc::sendmsg(socket, &msg, 0) } as libc::c_long)?;
    let _ = unistd::close(master);
    Ok(())
}

/// seccomp(SECCOMP_SET_MODE_FILTER, flags, &prog) on the precompiled BPF.
fn load_seccomp(prog: &super::seccomp::SeccompProgram) -> Result<(), Errno> {
    const SECCOMP_SET_MODE_FILTER: nix::libc::c_ulong = 1;
    let fprog = nix::libc::sock_fprog {
        len: prog.filter.len() as u16,
        filter: prog.filter.as_ptr() as *mut nix::libc::sock_filter,
    };
    raw_syscall(unsafe {
        nix::libc::syscall(
            nix::libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            prog.flags as nix::libc::c_ulong,
            &fprog as *const nix::libc::sock_fprog,
        )
    })
}

fn raw_syscall(ret: nix::libc::c_long) -> Result<(), Errno> {
    if ret == -1 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

fn borrow(fd: RawFd) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: the fd stays open for the child's whole life (until exec or _exit).
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_decodes_to_itself() {
        for (i, step) in Step::ALL.iter().enumerate() {
            assert_eq!(*step as usize, i, "{step:?} out of order in Step::ALL");
        }
        assert_eq!(
            Step::ALL.len(),
            Step::Exec as usize + 1,
            "Step::ALL misses a step"
        );
    }

    #[test]
    fn reports_round_trip() {
        let buf = encode(Step::Mount, 3, Errno::EPERM as i32);
        assert_eq!(decode(&buf), (Some(Step::Mount), 3, Errno::EPERM));
        assert_eq!(decode(&encode(Step::Exec, 0, 2)).0, Some(Step::Exec));
    }

    #[test]
    fn make_target_creates_directories_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = std::ffi::CString::new(dir.path().join("a/b/c").to_str().unwrap()).unwrap();
        make_target(&d, false).unwrap();
        assert!(dir.path().join("a/b/c").is_dir());
        let f = std::ffi::CString::new(dir.path().join("x/y/file").to_str().unwrap()).unwrap();
        make_target(&f, true).unwrap();
        assert!(dir.path().join("x/y/file").is_file());
    }
}
