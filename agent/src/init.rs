//! PID 1 duties that must happen before the agent can serve: the pseudo file
//! systems every Linux userspace expects, the console as stdio, and the
//! directory the host shares through virtio-fs.

use nix::mount::{mount, MsFlags};
use std::path::PathBuf;

struct PseudoFs {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

const PSEUDO_FS: &[PseudoFs] = &[
    PseudoFs {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    PseudoFs {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    PseudoFs {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
    },
    PseudoFs {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("newinstance,ptmxmode=0666,mode=0620"),
    },
    PseudoFs {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: Some("mode=1777"),
    },
    PseudoFs {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    PseudoFs {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=1777"),
    },
    PseudoFs {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=0755"),
    },
];

/// Argument the agent passes to itself after moving to a tmpfs root.
pub const SWITCHED_ROOT_ARG: &str = "--switched-root";

/// The kernel starts /init on the initramfs ("rootfs"), and pivot_root(2)
/// refuses to move that mount, so containers could not pivot into their
/// rootfs. Like switch_root, move to a tmpfs root first: copy the agent
/// there, make it `/`, and exec it again. Returns only on failure.
pub fn switch_to_tmpfs_root() -> nix::Result<std::convert::Infallible> {
    use std::ffi::CString;
    let new_root = "/husk-root";
    std::fs::create_dir_all(new_root).map_err(io_errno)?;
    mount(
        Some("tmpfs"),
        new_root,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )?;
    std::fs::copy("/init", "/husk-root/init").map_err(io_errno)?;
    crate::console::carry_shell(std::path::Path::new(new_root));
    // The initramfs copy is only memory now; free it.
    let _ = std::fs::remove_file("/init");
    nix::unistd::chdir(new_root)?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)?;
    nix::unistd::chroot(".")?;
    nix::unistd::chdir("/")?;
    let init = CString::new("/init").expect("no NUL");
    let arg = CString::new(SWITCHED_ROOT_ARG).expect("no NUL");
    nix::unistd::execv(&init, &[init.clone(), arg])
}

fn io_errno(e: std::io::Error) -> nix::errno::Errno {
    nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(nix::libc::EIO))
}

/// Mounts the pseudo file systems and makes the console stdin/out/err.
/// Failures are printed and skipped: a guest without one of them can still
/// answer GuestInfo, and that is how the host learns what went wrong.
pub fn early_setup() {
    for fs in PSEUDO_FS {
        if let Err(err) = std::fs::create_dir_all(fs.target) {
            eprintln!("husk-agent: mkdir {}: {err}", fs.target);
            continue;
        }
        if let Err(err) = mount(
            Some(fs.source),
            fs.target,
            Some(fs.fstype),
            fs.flags,
            fs.data,
        ) {
            eprintln!("husk-agent: mount {} on {}: {err}", fs.fstype, fs.target);
        }
    }
    attach_console();
}

/// The kernel opens /dev/console for /init only if the initrd has that node;
/// ours does not (it carries no device nodes), so reopen it from devtmpfs.
fn attach_console() {
    use std::os::fd::AsRawFd;
    let Ok(console) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    else {
        return;
    };
    for fd in 0..=2 {
        if let Err(err) = nix::unistd::dup2(console.as_raw_fd(), fd) {
            eprintln!("husk-agent: dup2 console to fd {fd}: {err}");
        }
    }
}

/// Mounts the host's shared directory (virtio-fs). Returns where, or None
/// when the VM has no such device.
pub fn mount_shared_dir() -> Option<PathBuf> {
    let target = husk_proto::GUEST_SHARED_DIR;
    if let Err(err) = std::fs::create_dir_all(target) {
        tracing::warn!(target, %err, "cannot create the shared directory mount point");
        return None;
    }
    match mount(
        Some(husk_proto::SHARED_FS_TAG),
        target,
        Some("virtiofs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    ) {
        Ok(()) => {
            tracing::info!(
                target,
                tag = husk_proto::SHARED_FS_TAG,
                "shared directory mounted"
            );
            Some(PathBuf::from(target))
        }
        Err(err) => {
            tracing::warn!(target, tag = husk_proto::SHARED_FS_TAG, %err, "no shared directory");
            None
        }
    }
}
