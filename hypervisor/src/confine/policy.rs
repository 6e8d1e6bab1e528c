//! What each helper of a VM is left with (docs/security.md has the table),
//! and the run directory laid out so that the VM's own user reaches what
//! it must and nothing else:
//!
//! ```text
//! <runtime_dir>/vms/<id>/   root:<vm gid> 0710  the VM's user may pass, not list or write
//!     vhost-fs.sock         virtiofsd's; given to the VM's user (the VMM connects)
//!     agent.vsock           a hard link the launcher made to vsock/agent.sock
//!     vsock/                <vm uid> 0700       vhost-device-vsock's, all it sees
//!         vhost.sock
//!         agent.sock
//! ```
//!
//! The names in `vsock/` are short so that `vsock/vhost.sock` is no
//! longer than the `vhost-vsock.sock` it replaces: a CRI pod's VM id is 64
//! characters, and a socket path must fit 107 bytes.
//!
//! The launcher connects to the agent through its own hard link, made
//! before the guest runs: whatever the VM's user later does in `vsock/`
//! (a link to some host socket in place of agent.vsock), the launcher
//! never resolves a name the VM's user can change. The link moves with
//! the directory when a pooled VM is renamed (`MicroVm::rename`); the
//! helpers keep the directory they were given, bound into their jails.
//!
//! The logs are elsewhere (`<logs.dir>/<id>/`, root's, 0700): the VMM
//! writes the console to a pipe it gets at `CONSOLE_FD`, and every helper
//! writes its output to a pipe; the launcher writes the files.

use super::seccomp::Filter;
use super::{Confinement, Identity, Jail};
use crate::Error;
use nix::sched::CloneFlags;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// vhost-device-vsock's directory in the run directory, and its sockets
/// there: the vhost-user one (the VMM's) and the hybrid vsock one.
pub const VSOCK_DIR: &str = "vsock";
pub const VSOCK_VHOST_SOCKET: &str = "vhost.sock";
pub const VSOCK_AGENT_SOCKET: &str = "agent.sock";

/// The namespaces every confined helper gets that costs it nothing.
fn own_namespaces() -> CloneFlags {
    CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS
}

/// Opens the run directory to the VM's group: search only (0710), so the
/// VM's processes can reach the sockets they are given by name.
pub fn share_run_dir(dir: &Path, identity: Option<Identity>) -> Result<(), Error> {
    let Some(id) = identity else {
        return Ok(());
    };
    let io = |e| Error::io(format!("giving {} to the VM's group", dir.display()), e);
    std::os::unix::fs::lchown(dir, Some(0), Some(id.gid)).map_err(io)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o710)).map_err(io)
}

/// Makes vhost-device-vsock's directory, owned by the VM's user.
pub fn vsock_dir(run_dir: &Path, identity: Option<Identity>) -> Result<PathBuf, Error> {
    let dir = run_dir.join(VSOCK_DIR);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    give(&dir, identity)?;
    Ok(dir)
}

/// Gives `path` (made by the launcher or a root daemon in a directory only
/// root writes) to the VM's user; a link is changed, not followed.
pub fn give(path: &Path, identity: Option<Identity>) -> Result<(), Error> {
    let Some(id) = identity else {
        return Ok(());
    };
    std::os::unix::fs::lchown(path, Some(id.uid), Some(id.gid))
        .map_err(|e| Error::io(format!("giving {} to the VM's user", path.display()), e))
}

/// Links `link` (in the run directory, root's) to the socket `socket`
/// made by vhost-device-vsock in its directory, after checking it is a
/// socket (no guest has run yet: nothing can have replaced it).
pub fn link_socket(socket: &Path, link: &Path) -> Result<(), Error> {
    use std::os::unix::fs::FileTypeExt;
    let io = |e| {
        Error::io(
            format!("linking {} to {}", link.display(), socket.display()),
            e,
        )
    };
    let meta = std::fs::symlink_metadata(socket).map_err(io)?;
    if !meta.file_type().is_socket() {
        return Err(io(std::io::Error::other("not a socket")));
    }
    std::fs::hard_link(socket, link).map_err(io)
}

/// virtiofsd: its own sandbox (`--sandbox namespace`: new mount, PID and
/// network namespaces, the share as its root) and seccomp filter
/// (`--seccomp kill`); from here, new IPC and UTS namespaces and a filter
/// under its own that refuses `open_by_handle_at` and
/// `name_to_handle_at`. It stays root with the capabilities serving files
/// of every uid takes (virtiofsd's own list: chown, dac_override, fowner,
/// fsetid, setgid, setuid, mknod, setfcap) but not dac_read_search
/// (`--modcaps=-dac_read_search`): with it, and a file handle guessed or
/// made up, `open_by_handle_at` opens any file of the file system a
/// shared bind lives on (the host's root for `/etc/hosts`, emptyDir,
/// hostPath) whatever directory it is in. virtiofsd needs neither: it
/// references inodes by O_PATH descriptors (`--inode-file-handles=never`,
/// its default, said explicitly).
pub fn virtiofsd(oom_score_adj: Option<i32>) -> (Vec<&'static str>, Confinement) {
    (
        vec![
            "--sandbox",
            "namespace",
            "--seccomp",
            "kill",
            "--modcaps=-dac_read_search",
            "--inode-file-handles=never",
        ],
        Confinement {
            namespaces: own_namespaces(),
            seccomp: Some(Filter::FileHandles),
            oom_score_adj,
            ..Confinement::default()
        },
    )
}

/// vhost-device-vsock: the VM's user, no capability, its own PID, IPC,
/// UTS and network namespaces (it serves Unix sockets only), a root
/// holding /usr and its directory, the deny-list filter.
pub fn vsock_backend(
    program: &Path,
    run_dir: &Path,
    vsock_dir: &Path,
    identity: Option<Identity>,
    oom_score_adj: Option<i32>,
) -> Result<Confinement, Error> {
    let mut jail = Jail::new(run_dir);
    jail.system(program)
        .map_err(|source| Error::Confine {
            program: program.to_owned(),
            source,
        })?
        .writable(vsock_dir);
    Ok(Confinement {
        identity,
        groups: Vec::new(),
        drop_capabilities: true,
        namespaces: own_namespaces() | CloneFlags::CLONE_NEWNET,
        pid_namespace: true,
        jail: Some(jail),
        seccomp: Some(Filter::DenyList),
        oom_score_adj,
    })
}

/// QEMU: the VM's user (under KVM with /dev/kvm's group too; where
/// /dev/kvm is no group's, uid 0 without capabilities: see
/// [`kvm_group`]), no capability, its own mount, IPC, UTS and network
/// namespaces (the TAP comes as a descriptor, the daemons over Unix
/// sockets), a root holding /usr, the kernel and initrd, the run
/// directory (read-only but for the console log), /dev/urandom (and
/// /dev/kvm), and the deny-list filter under its own `-sandbox`. The
/// jail also makes the run directory reachable whatever the modes of its
/// host ancestors: in the jail they are the tmpfs's.
pub fn qemu(program: &Path, l: &crate::VmLaunch) -> Result<Confinement, Error> {
    let kvm = l.accelerator == crate::Accelerator::Kvm;
    let (identity, groups) = kvm_identity(&l.id, l.identity, kvm);
    let mut jail = Jail::new(&l.run_dir);
    jail.system(program)
        .map_err(|source| Error::Confine {
            program: program.to_owned(),
            source,
        })?
        .read_only(&l.kernel)
        .read_only(&l.initrd)
        .read_only(&l.run_dir)
        .device(Path::new("/dev/urandom"));
    // A console file is bound writable; one passed as a descriptor
    // (/proc/self/fd/N) needs nothing in the jail (see qemu.rs).
    if !l.console_log.starts_with("/proc") {
        jail.writable(&l.console_log);
    }
    Ok(qemu_confinement(
        identity,
        groups,
        jail,
        kvm,
        l.oom_score_adj,
    ))
}

/// A VM image's QEMU (VM-image pods): as a micro-VM's QEMU — the VM's
/// user (with /dev/kvm's group under KVM), no capability, its own mount,
/// IPC, UTS and network namespaces (the TAP and its sockets come as
/// descriptors), the deny-list filter under its own `-sandbox` — with a
/// root holding /usr, /dev/urandom (and /dev/kvm) and, for a direct
/// kernel boot, the image's kernel and initrd, read-only. Every disk and
/// the firmware come as descriptors ([`crate::qemu::vm_image`]), so
/// nothing of the VM's is writable in its root. `stage` is the VM's run
/// directory (root's), over which the root is built.
pub fn vm_image(
    program: &Path,
    l: &crate::qemu::vm_image::VmImageLaunch,
    stage: &Path,
    identity: Option<Identity>,
    oom_score_adj: Option<i32>,
) -> Result<Confinement, Error> {
    let kvm = l.accelerator == crate::Accelerator::Kvm;
    let (identity, groups) = kvm_identity(&l.id, identity, kvm);
    let mut jail = Jail::new(stage);
    jail.system(program)
        .map_err(|source| Error::Confine {
            program: program.to_owned(),
            source,
        })?
        .device(Path::new("/dev/urandom"));
    if let crate::qemu::vm_image::ImageBoot::Kernel { kernel, initrd, .. } = &l.boot {
        jail.read_only(kernel).read_only(initrd);
    }
    Ok(qemu_confinement(identity, groups, jail, kvm, oom_score_adj))
}

/// What both kinds of QEMU share: no capability, their own mount, IPC,
/// UTS and network namespaces, the deny-list filter, and /dev/kvm in the
/// jail under KVM.
fn qemu_confinement(
    identity: Option<Identity>,
    groups: Vec<u32>,
    mut jail: Jail,
    kvm: bool,
    oom_score_adj: Option<i32>,
) -> Confinement {
    if kvm {
        jail.device(Path::new(KVM));
    }
    Confinement {
        identity,
        groups,
        drop_capabilities: true,
        namespaces: own_namespaces() | CloneFlags::CLONE_NEWNET,
        pid_namespace: false,
        jail: Some(jail),
        seccomp: Some(Filter::DenyList),
        oom_score_adj,
    }
}

/// Where swtpm's state directory is in its jail.
pub const SWTPM_STATE_IN_JAIL: &str = "/tpm";

/// swtpm (a VM image's TPM, [`crate::swtpm`]): the VM's user, no
/// capability, its own mount, IPC, UTS and network namespaces (its
/// control channel comes as a descriptor), a root holding /usr,
/// /dev/urandom and the TPM state directory bound from the descriptor
/// `state` at [`SWTPM_STATE_IN_JAIL`], the deny-list filter under
/// its own seccomp profile. `stage` is the VM's run directory (root's).
pub fn swtpm(
    program: &Path,
    stage: &Path,
    state: std::sync::Arc<std::os::fd::OwnedFd>,
    identity: Option<Identity>,
    oom_score_adj: Option<i32>,
) -> Result<Confinement, Error> {
    let mut jail = Jail::new(stage);
    jail.system(program)
        .map_err(|source| Error::Confine {
            program: program.to_owned(),
            source,
        })?
        .device(Path::new("/dev/urandom"))
        .writable_dir_fd(state, Path::new(SWTPM_STATE_IN_JAIL));
    Ok(Confinement {
        identity,
        groups: Vec::new(),
        drop_capabilities: true,
        namespaces: own_namespaces() | CloneFlags::CLONE_NEWNET,
        pid_namespace: false,
        jail: Some(jail),
        seccomp: Some(Filter::DenyList),
        oom_score_adj,
    })
}

/// The identity and groups of a QEMU: the VM's user, and under KVM
/// /dev/kvm's group too; where /dev/kvm is no group's, uid 0 without
/// capabilities (see [`kvm_group`]).
fn kvm_identity(
    vm_id: &str,
    identity: Option<Identity>,
    kvm: bool,
) -> (Option<Identity>, Vec<u32>) {
    match (identity, kvm) {
        (Some(id), true) => match kvm_group(Path::new(KVM)) {
            Some(gid) => (Some(id), vec![gid]),
            None => {
                tracing::warn!(
                    vm_id,
                    "{KVM} is no group's to share: QEMU runs as uid 0, without capabilities"
                );
                (None, Vec::new())
            }
        },
        (id, _) => (id, Vec::new()),
    }
}

const KVM: &str = "/dev/kvm";

/// The group through which an unprivileged process opens `kvm` (its
/// group, when that group may read and write it, and is not root's).
pub fn kvm_group(kvm: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(kvm).ok()?;
    (m.gid() != 0 && m.mode() & 0o060 == 0o060).then_some(m.gid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_is_shared_only_through_a_group_that_may_use_it() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("kvm");
        std::fs::write(&f, "").unwrap();
        std::os::unix::fs::chown(&f, Some(0), Some(0)).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o660)).unwrap();
        assert_eq!(kvm_group(&f), None, "root's group");
        std::os::unix::fs::chown(&f, Some(0), Some(36)).unwrap();
        assert_eq!(kvm_group(&f), Some(36));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(kvm_group(&f), None, "group may not write");
        assert_eq!(kvm_group(&dir.path().join("none")), None);
    }

    #[test]
    fn the_run_directory_is_passable_by_the_vm_and_its_vsock_dir_is_its_own() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("vm");
        std::fs::create_dir(&run).unwrap();
        let id = Identity {
            uid: 1_879_000_001,
            gid: 1_879_000_001,
        };
        share_run_dir(&run, Some(id)).unwrap();
        let m = std::fs::metadata(&run).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (0, id.gid, 0o710));
        let v = vsock_dir(&run, Some(id)).unwrap();
        let m = std::fs::metadata(&v).unwrap();
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777),
            (id.uid, id.gid, 0o700)
        );
        // Without an id everything stays root's and private.
        let plain = dir.path().join("plain");
        std::fs::create_dir(&plain).unwrap();
        share_run_dir(&plain, None).unwrap();
        let v = vsock_dir(&plain, None).unwrap();
        assert_eq!(std::fs::metadata(&v).unwrap().uid(), 0);
    }

    #[test]
    fn only_a_socket_is_linked() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        link_socket(&sock, &dir.path().join("link")).unwrap();
        std::fs::write(dir.path().join("f"), "").unwrap();
        let e = link_socket(&dir.path().join("f"), &dir.path().join("l2"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a socket"), "{e}");
        std::os::unix::fs::symlink(&sock, dir.path().join("sym")).unwrap();
        assert!(link_socket(&dir.path().join("sym"), &dir.path().join("l3")).is_err());
    }
}
