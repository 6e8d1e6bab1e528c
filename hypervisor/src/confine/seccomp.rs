//! The seccomp filter a confined helper runs under: a deny list, in
//! classic BPF, of the system calls that reach kernel surface no VM helper
//! needs (mounts and namespaces, tracing another process, keys, BPF,
//! modules, io_uring, perf, userfaultfd) and of new namespaces through
//! clone. A deny list rather than an allow list because the helpers
//! (QEMU, vhost-device-vsock) are not ours: an allow list would break with
//! their next release; what they must never do is small and stable. QEMU
//! adds its own allow-list-like `-sandbox` on top.
//!
//! Hand-written (27 lines of BPF) rather than through seccompiler or
//! libseccomp, so the shim links no seccomp crate (docs/husk-vmm.md).
//! Layout (seccomp_data, linux/seccomp.h): `nr` at 0, `arch` at 4, the
//! arguments from 16, 8 bytes each (little endian: the low half first).

use libc::{
    sock_filter, BPF_ABS, BPF_JEQ, BPF_JGE, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_RET, BPF_W,
};

/// linux/audit.h: EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE.
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// x32 system calls have this bit set in `nr`.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Refused with EPERM.
pub const DENIED: [libc::c_long; 38] = [
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_open_tree,
    libc::SYS_move_mount,
    libc::SYS_mount_setattr,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_kcmp,
    libc::SYS_pidfd_getfd,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_open_by_handle_at,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_acct,
    libc::SYS_syslog,
];

/// clone(2) flags that make namespaces (CLONE_NEWTIME, NEWNS, NEWCGROUP,
/// NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET).
const CLONE_NEW_ANY: u32 = 0x0000_0080 | 0x0002_0000 | 0x0200_0000 | 0x7c00_0000;

fn stmt(code: u32, k: u32) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

fn errno(e: i32) -> u32 {
    libc::SECCOMP_RET_ERRNO | (e as u32 & libc::SECCOMP_RET_DATA)
}

/// Which filter a confined helper gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// [`deny_list`]: QEMU, vhost-device-vsock, the monitors.
    DenyList,
    /// [`file_handles`]: virtiofsd, whose own filter allows mounts and
    /// namespaces (its sandbox), under this one.
    FileHandles,
}

impl Filter {
    pub fn program(self) -> Vec<sock_filter> {
        match self {
            Filter::DenyList => deny_list(),
            Filter::FileHandles => file_handles(),
        }
    }
}

/// The two calls that turn a file handle into an open file or the other
/// way: EPERM, on this architecture only (any other is killed).
pub fn file_handles() -> Vec<sock_filter> {
    let ld = BPF_LD | BPF_W | BPF_ABS;
    let jeq = BPF_JMP | BPF_JEQ | BPF_K;
    let ret = BPF_RET | BPF_K;
    let mut p = arch_check();
    for nr in [libc::SYS_open_by_handle_at, libc::SYS_name_to_handle_at] {
        p.push(stmt(ld, 0));
        p.push(jump(jeq, nr as u32, 0, 1));
        p.push(stmt(ret, errno(libc::EPERM)));
    }
    p.push(stmt(ret, libc::SECCOMP_RET_ALLOW));
    p
}

/// Kills a foreign architecture's or an x32 call; leaves `nr` loaded.
fn arch_check() -> Vec<sock_filter> {
    let ld = BPF_LD | BPF_W | BPF_ABS;
    let jeq = BPF_JMP | BPF_JEQ | BPF_K;
    let ret = BPF_RET | BPF_K;
    vec![
        stmt(ld, 4),
        jump(jeq, AUDIT_ARCH_X86_64, 1, 0),
        stmt(ret, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(ld, 0),
        jump(BPF_JMP | BPF_JGE | BPF_K, X32_SYSCALL_BIT, 0, 1),
        stmt(ret, libc::SECCOMP_RET_KILL_PROCESS),
    ]
}

/// The filter program. clone3 answers ENOSYS (its flags sit in memory a
/// filter cannot read, and glibc then falls back to clone, whose flags it
/// can); clone with a namespace flag answers EPERM.
pub fn deny_list() -> Vec<sock_filter> {
    let ld = BPF_LD | BPF_W | BPF_ABS;
    let jeq = BPF_JMP | BPF_JEQ | BPF_K;
    let ret = BPF_RET | BPF_K;
    let mut p = arch_check();
    for nr in DENIED {
        p.push(jump(jeq, nr as u32, 0, 1));
        p.push(stmt(ret, errno(libc::EPERM)));
    }
    p.push(jump(jeq, libc::SYS_clone3 as u32, 0, 1));
    p.push(stmt(ret, errno(libc::ENOSYS)));
    p.push(jump(jeq, libc::SYS_clone as u32, 0, 3));
    p.push(stmt(ld, 16));
    p.push(jump(BPF_JMP | BPF_JSET | BPF_K, CLONE_NEW_ANY, 0, 1));
    p.push(stmt(ret, errno(libc::EPERM)));
    p.push(stmt(ret, libc::SECCOMP_RET_ALLOW));
    p
}

/// Installs `program` on the calling thread (and what it execs). Needs
/// no_new_privs or CAP_SYS_ADMIN. Async-signal-safe: it only reads the
/// program and makes one system call.
pub fn install(program: &[sock_filter]) -> std::io::Result<()> {
    let prog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr() as *mut sock_filter,
    };
    // SAFETY: seccomp reads `prog`, which points at `program` for the
    // length given; both outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &prog as *const libc::sock_fprog,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    /// Runs `sh -c script` under the filter (with no_new_privs, as a
    /// confined helper has it); its exit status and stderr.
    fn under_filter(script: &str) -> (std::process::ExitStatus, String) {
        let program = deny_list();
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", script]);
        // SAFETY: prctl and seccomp are async-signal-safe; the closure
        // reads the program built before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                install(&program)
            });
        }
        let out = cmd.output().unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    #[test]
    fn the_program_jumps_stay_inside_it() {
        let p = deny_list();
        assert!(p.len() < 200);
        for (i, ins) in p.iter().enumerate() {
            if ins.code as u32 & 0x07 == BPF_JMP {
                let last = i + 1 + ins.jt.max(ins.jf) as usize;
                assert!(last < p.len(), "instruction {i} jumps out");
            }
        }
        assert_eq!(p.last().unwrap().k, libc::SECCOMP_RET_ALLOW);
    }

    /// What it refuses, seen from a real process: a user namespace (no
    /// privilege needed without the filter) and a mount; what it allows:
    /// ordinary work, threads and fork.
    #[test]
    fn namespaces_and_mounts_are_refused_and_ordinary_work_is_not() {
        let userns = "exec unshare --user true";
        assert!(
            Command::new("/bin/sh")
                .args(["-c", userns])
                .status()
                .unwrap()
                .success(),
            "unshare --user works without the filter here"
        );
        let (status, err) = under_filter(userns);
        assert!(!status.success(), "unshare under the filter");
        assert!(err.contains("Operation not permitted"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let (status, err) = under_filter(&format!(
            "exec mount -t tmpfs none {}",
            dir.path().display()
        ));
        assert!(!status.success(), "mount under the filter");
        assert!(err.contains("permission denied"), "{err}");
        // Pipes, fork (clone without namespace flags), exec, files.
        let (status, err) = under_filter("echo x | cat >/dev/null && (true) && ls / >/dev/null");
        assert!(status.success(), "{err}");
    }

    /// The errno of `name_to_handle_at` on "/" in a child, under `filter`
    /// when given (a zero-sized handle: EOVERFLOW where file handles work).
    fn name_to_handle_errno(filter: Option<Vec<sock_filter>>) -> i32 {
        let mut cmd = Command::new("/bin/true");
        // SAFETY: prctl, seccomp and name_to_handle_at are system calls on
        // data prepared before the fork; nothing is allocated.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(program) = &filter {
                    if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    install(program)?;
                }
                let mut handle = [0u32; 4];
                let mut mount_id = 0i32;
                libc::syscall(
                    libc::SYS_name_to_handle_at,
                    libc::AT_FDCWD,
                    c"/".as_ptr(),
                    handle.as_mut_ptr(),
                    &mut mount_id as *mut i32,
                    0,
                );
                Err(std::io::Error::last_os_error())
            });
        }
        cmd.spawn().unwrap_err().raw_os_error().unwrap()
    }

    #[test]
    fn virtiofsds_filter_refuses_file_handles_only() {
        assert_eq!(name_to_handle_errno(None), libc::EOVERFLOW);
        assert_eq!(name_to_handle_errno(Some(file_handles())), libc::EPERM);
        let p = file_handles();
        assert_eq!(p.last().unwrap().k, libc::SECCOMP_RET_ALLOW);
    }
}
