//! [`Swtpm`]: a VM image's TPM 2.0, Debian's swtpm (`swtpm socket
//! --tpm2`), whose state lives in a directory of the pod's state volume
//! (`io.husk.vm.state`, docs/vm-pods.md) so that it survives the pod.
//!
//! swtpm is not ours, so it is confined as QEMU is ([`policy::swtpm`]):
//! the VM's user, no capability, network, IPC and UTS namespaces of its
//! own, a root holding /usr, /dev/urandom and the state directory only,
//! the deny-list filter under its own seccomp profile. It opens nothing
//! that names a host path: the state directory is bound into its root
//! from a descriptor opened here without following links (a pod sharing
//! the volume could have put a link in its place), and its control
//! channel is one end of a socket pair (`--ctrl type=unixio,clientfd=3`)
//! whose other end QEMU is handed (`-chardev socket,fd=N`). QEMU sends
//! the data channel's descriptor over it (`CMD_SET_DATAFD`), so swtpm
//! needs no socket file either. `--terminate` ends swtpm when QEMU closes
//! its end.
//!
//! The state's files are made to belong to the VM's user at each start
//! (the next pod's VM may have another uid); anything in the directory
//! but regular files is refused. swtpm locks the directory (`.lock`), so
//! a second VM on the same state fails to start rather than corrupt it.
//! Its log (`--log fd=4`) goes to the shim's log, line by line, bounded.

use crate::confine::{policy, Identity};
use crate::daemon::{prepare_spawn, spawn_error, Placement};
use crate::Error;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt};
use tokio::process::{Child, Command};

/// Where the state directory is in swtpm's root (its jail's, which the
/// policy builds).
pub use crate::confine::policy::SWTPM_STATE_IN_JAIL as STATE_IN_JAIL;
/// Most entries the state directory may hold (swtpm makes two or three).
const MAX_STATE_ENTRIES: usize = 16;
/// Longest swtpm log line passed on.
const MAX_LOG_LINE: usize = 512;

/// A running swtpm; killed when dropped.
pub struct Swtpm {
    child: Child,
    pid: u32,
}

/// What one swtpm is started with.
pub struct SwtpmSpec<'a> {
    pub program: &'a Path,
    /// The state directory (made by the caller; opened here).
    pub state_dir: &'a Path,
    /// A directory of the launcher's own to build swtpm's root over (the
    /// VM's run directory).
    pub stage: &'a Path,
    pub identity: Option<Identity>,
    pub cgroup_procs: Vec<PathBuf>,
    pub oom_score_adj: Option<i32>,
    /// The VM's id, for logs.
    pub vm_id: &'a str,
}

impl Swtpm {
    /// Starts swtpm on `spec.state_dir`; returns it and QEMU's end of its
    /// control channel.
    pub fn start(spec: &SwtpmSpec) -> Result<(Self, OwnedFd), Error> {
        crate::preflight::check_executable("vm.swtpm_path", spec.program)?;
        let dir = Arc::new(open_state_dir(spec.state_dir, spec.identity)?);
        let (ours, qemu) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| Error::io("a socket pair for the TPM", e))?;
        let (log_read, log_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::io("a pipe for swtpm's log", std::io::Error::from(e)))?;
        let mut command = Command::new(spec.program);
        command
            .args(args(crate::PASSED_FDS_START))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        policy::swtpm(
            spec.program,
            spec.stage,
            dir,
            spec.identity,
            spec.oom_score_adj,
        )?
        .apply(&mut command)?;
        let placement = Placement {
            cgroup_procs: spec.cgroup_procs.clone(),
            max_file_bytes: None,
        };
        let cgroups = prepare_spawn(
            &mut command,
            &placement,
            vec![ours.as_raw_fd(), log_write.as_raw_fd()],
        )?;
        let spawned = command.spawn();
        drop((cgroups, ours, log_write));
        let child = spawned.map_err(|source| spawn_error(spec.program, &placement, source))?;
        let pid = child.id().unwrap_or(0);
        tokio::spawn(relay_log(log_read, spec.vm_id.to_owned()));
        tracing::info!(vm_id = spec.vm_id, pid, state = %spec.state_dir.display(), "swtpm started");
        Ok((Swtpm { child, pid }, OwnedFd::from(qemu)))
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits for swtpm to end (it does when QEMU closed its end), up to
    /// `grace`, then kills it; returns once it is reaped, so the VM's
    /// user owns no process any more.
    pub async fn end(mut self, grace: Duration) {
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// swtpm's arguments, its control channel at descriptor `first` and its
/// log at `first + 1`.
fn args(first: i32) -> Vec<String> {
    [
        "socket",
        "--tpm2",
        "--tpmstate",
        &format!("dir={STATE_IN_JAIL},mode=0600"),
        "--ctrl",
        &format!("type=unixio,clientfd={first}"),
        "--log",
        &format!("fd={},level=1", first + 1),
        "--terminate",
        "--seccomp",
        "action=kill",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Opens the state directory (no link followed), checks what it holds,
/// and gives it and its files to the VM's user.
pub fn open_state_dir(path: &Path, identity: Option<Identity>) -> Result<OwnedFd, Error> {
    let io = |e| Error::io(format!("the TPM state directory {}", path.display()), e);
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io)?;
    let dir = OwnedFd::from(dir);
    let entries = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd())).map_err(io)?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io)?;
        if files.len() == MAX_STATE_ENTRIES {
            return Err(io(std::io::Error::other(format!(
                "holds more than {MAX_STATE_ENTRIES} entries; a TPM's state is two or three files"
            ))));
        }
        files.push(entry.file_name());
    }
    let Some(id) = identity else {
        return Ok(dir);
    };
    for name in files {
        let file = open_in(&dir, &name).map_err(|e| {
            io(std::io::Error::other(format!(
                "{}: {e} (the TPM state holds only regular files)",
                name.to_string_lossy()
            )))
        })?;
        nix::unistd::fchown(file.as_raw_fd(), Some(id.uid.into()), Some(id.gid.into()))
            .map_err(|e| io(e.into()))?;
    }
    nix::unistd::fchown(dir.as_raw_fd(), Some(id.uid.into()), Some(id.gid.into()))
        .map_err(|e| io(e.into()))?;
    Ok(dir)
}

/// Opens the regular file `name` in `dir` without following a link or
/// blocking on a FIFO.
fn open_in(dir: &OwnedFd, name: &std::ffi::OsStr) -> std::io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(name.as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: openat on a directory we hold, a NUL-terminated name; the
    // result is checked and owned at once.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by openat and is owned by nothing else.
    let file = unsafe { OwnedFd::from_raw_fd(fd) };
    let meta = std::fs::File::from(file.try_clone()?).metadata()?;
    if !meta.is_file() || meta.nlink() != 1 {
        return Err(std::io::Error::other(
            "not a regular file with one name".to_string(),
        ));
    }
    Ok(file)
}

/// Passes swtpm's log lines (bounded) to the shim's log until it ends.
async fn relay_log(read: OwnedFd, vm_id: String) {
    let Ok(pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(read) else {
        return;
    };
    let mut lines = tokio::io::BufReader::new(pipe.take(1 << 20)).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let line: String = line
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_LOG_LINE)
            .collect();
        tracing::info!(vm_id, "swtpm: {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swtpm_is_told_descriptors_and_its_jail_path_only() {
        let a = args(3).join(" ");
        assert_eq!(
            a,
            "socket --tpm2 --tpmstate dir=/tpm,mode=0600 --ctrl type=unixio,clientfd=3 \
             --log fd=4,level=1 --terminate --seccomp action=kill"
        );
    }

    #[test]
    fn the_state_directory_holds_regular_files_only_and_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("tpm");
        std::fs::create_dir(&state).unwrap();
        std::fs::write(state.join("tpm2-00.permall"), b"x").unwrap();
        open_state_dir(&state, None).unwrap();
        // A link in the directory's place is not followed.
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&state, &link).unwrap();
        assert!(open_state_dir(&link, None).is_err());
        if !nix::unistd::geteuid().is_root() {
            println!("SKIPPED: giving files to another user needs root");
            return;
        }
        let id = Identity {
            uid: 1_879_048_300,
            gid: 1_879_048_301,
        };
        open_state_dir(&state, Some(id)).unwrap();
        let m = std::fs::metadata(state.join("tpm2-00.permall")).unwrap();
        assert_eq!((m.uid(), m.gid()), (id.uid, id.gid));
        assert_eq!(std::fs::metadata(&state).unwrap().uid(), id.uid);
        // A link (to a host file) inside is refused, not given away.
        std::os::unix::fs::symlink("/etc/shadow", state.join(".lock")).unwrap();
        let e = open_state_dir(&state, Some(id)).unwrap_err().to_string();
        assert!(e.contains(".lock") && e.contains("regular files"), "{e}");
        assert_eq!(std::fs::metadata("/etc/shadow").unwrap().uid(), 0);
    }
}
