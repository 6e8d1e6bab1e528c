//! Child processes of a VM (device daemons and the VMM itself): spawned
//! inside the pod's cgroup, with a private umask, their output through a
//! bounded [`LogPump`], bound to die with their parent, and ended with
//! SIGTERM then SIGKILL.

use crate::log_pump::{LogLimits, LogPump, RotatingFile};
use crate::Error;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::process::{Child, Command};

/// How often socket and exit polls look again.
const POLL: Duration = Duration::from_millis(5);
/// How long an exited process's last output may take to reach its log.
pub const DRAIN: Duration = Duration::from_secs(2);

pub struct Daemon {
    pub name: &'static str,
    child: Child,
    pid: u32,
    pub log: LogPump,
    exit: Option<ExitStatus>,
}

/// Where a VM's processes start: the `cgroup.procs` files of the pod's
/// cgroup (one per hierarchy on cgroup v1; none to stay in the shim's),
/// and how large a file they may write.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    pub cgroup_procs: Vec<PathBuf>,
    /// RLIMIT_FSIZE: no file the process writes grows past it (a write
    /// beyond fails with EFBIG; SIGXFSZ is ignored, so the process lives
    /// on). None: no limit of husk's.
    pub max_file_bytes: Option<u64>,
}

/// Most TAPs one VMM process takes.
pub const MAX_PASSED_FDS: usize = 16;

/// Makes `fds` the child's fds `first`, `first + 1`, ... (inherited
/// across exec). They are first copied out of the way, so a source that
/// already sits in the target range is not overwritten before it is used.
/// At most [`MAX_PASSED_FDS`]; the rest are not passed.
pub fn pass_fds(command: &mut Command, mut fds: Vec<std::os::fd::RawFd>, first: i32) {
    fds.truncate(MAX_PASSED_FDS);
    if fds.is_empty() {
        return;
    }
    // SAFETY: fcntl, dup2 and close are async-signal-safe, and the closure
    // reads the moved Vec and a stack array, allocating nothing.
    unsafe {
        command.pre_exec(move || {
            let mut parked = [-1; MAX_PASSED_FDS];
            for (slot, &fd) in parked.iter_mut().zip(&fds) {
                *slot = nix::libc::fcntl(fd, nix::libc::F_DUPFD, first + MAX_PASSED_FDS as i32);
                if *slot == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (i, &fd) in parked.iter().take(fds.len()).enumerate() {
                if nix::libc::dup2(fd, first + i as i32) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                nix::libc::close(fd);
            }
            Ok(())
        });
    }
}

/// What every VM process gets between fork and exec, after its
/// confinement: the pod's cgroup (joined through `cgroup.procs` files
/// opened here, before the fork; the returned descriptors are the
/// caller's to drop once spawned), `fds` at `PASSED_FDS_START`,
/// `PASSED_FDS_START + 1`, ... ([`pass_fds`]), umask 077 (its sockets and
/// files are the owner's only) and the parent-death signal: a killed
/// shim leaves no VM behind.
pub(crate) fn prepare_spawn(
    command: &mut Command,
    placement: &Placement,
    fds: Vec<std::os::fd::RawFd>,
) -> Result<Vec<OwnedFd>, Error> {
    // The cgroup is joined first: moving fds into place may reuse the
    // numbers of the cgroup.procs fds.
    let cgroups = open_cgroup_procs(&placement.cgroup_procs)?;
    join_cgroups_before_exec(command, &cgroups);
    pass_fds(command, fds, crate::PASSED_FDS_START);
    let max_file = placement.max_file_bytes;
    // SAFETY: prctl, umask, signal and setrlimit are async-signal-safe and
    // touch no memory of the parent (the limit is a copied integer).
    // PDEATHSIG ends the child if the process that spawned it dies, even
    // by SIGKILL. An ignored signal stays ignored across exec.
    unsafe {
        command.pre_exec(move || {
            nix::libc::umask(0o077);
            if let Some(bytes) = max_file {
                let limit = nix::libc::rlimit {
                    rlim_cur: bytes,
                    rlim_max: bytes,
                };
                if nix::libc::setrlimit(nix::libc::RLIMIT_FSIZE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                nix::libc::signal(nix::libc::SIGXFSZ, nix::libc::SIG_IGN);
            }
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
    Ok(cgroups)
}

/// The error of a spawn that failed, naming the cgroup when there was one
/// to join (its failure and exec's are one error).
pub(crate) fn spawn_error(program: &Path, placement: &Placement, source: std::io::Error) -> Error {
    match placement.cgroup_procs.is_empty() {
        true => Error::Spawn {
            program: program.to_owned(),
            source,
        },
        false => Error::SpawnInCgroup {
            program: program.to_owned(),
            cgroups: placement.cgroup_procs.clone(),
            source,
        },
    }
}

impl Daemon {
    /// Spawns `command` with stdin closed and stdout and stderr into
    /// `log` (bounded by `limits`), placed as [`prepare_spawn`] says.
    pub fn spawn(
        name: &'static str,
        mut command: Command,
        log: RotatingFile,
        limits: LogLimits,
        placement: &Placement,
        fds: Vec<std::os::fd::RawFd>,
    ) -> Result<Self, Error> {
        let program = PathBuf::from(command.as_std().get_program());
        let (rx, out) = crate::log_pump::pipe()
            .map_err(|e| Error::io(format!("a pipe for {name}'s output"), e))?;
        let err = out
            .try_clone()
            .map_err(|e| Error::io(format!("a pipe for {name}'s output"), e))?;
        command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        let cgroups = prepare_spawn(&mut command, placement, fds)?;
        let spawned = command.spawn();
        // The child has its copies; the pipe ends when the child (and
        // whatever it leaves running) has closed them.
        drop(command);
        drop(cgroups);
        let child = spawned.map_err(|source| spawn_error(&program, placement, source))?;
        let pid = child.id().ok_or_else(|| Error::Spawn {
            program,
            source: std::io::Error::other("exited at once"),
        })?;
        tracing::debug!(daemon = name, pid, "spawned");
        let log = LogPump::start(name, rx, log, limits, None)
            .map_err(|e| Error::io(format!("a thread for {name}'s log"), e))?;
        Ok(Self {
            name,
            child,
            pid,
            log,
            exit: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The process and what it forked, parents first: a confined helper's
    /// PID-namespace monitor and the helper under it, virtiofsd and its
    /// sandboxed server, husk-vmm and its VMM. At most
    /// [`MAX_TREE`]; empty once the process has exited.
    pub fn tree(&mut self) -> Vec<u32> {
        if self.try_exit().is_some() {
            return Vec::new();
        }
        process_tree(self.pid, MAX_TREE)
    }

    /// The exit status if the process has ended; reaps it.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Waits for the process to end.
    pub async fn wait(&mut self) -> Result<ExitStatus, Error> {
        if let Some(status) = self.exit {
            return Ok(status);
        }
        let status = self
            .child
            .wait()
            .await
            .map_err(|e| Error::io(format!("waiting for {}", self.name), e))?;
        self.exit = Some(status);
        Ok(status)
    }

    /// Waits until `socket` exists; fails early if the daemon exits.
    pub async fn wait_for_socket(&mut self, socket: &Path, timeout: Duration) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if socket.exists() {
                return Ok(());
            }
            if let Some(status) = self.try_exit() {
                self.log.finish(DRAIN).await;
                return Err(Error::DaemonExited {
                    daemon: self.name,
                    socket: socket.to_owned(),
                    status: status.to_string(),
                    log_tail: self.log.tail(),
                });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::DaemonTimeout {
                    daemon: self.name,
                    socket: socket.to_owned(),
                    secs: timeout.as_secs(),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL. Always reaps.
    pub async fn terminate(&mut self, grace: Duration) {
        if self.try_exit().is_some() {
            return;
        }
        // The child is not reaped yet, so its pid cannot have been reused.
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
        if tokio::time::timeout(grace, self.wait()).await.is_ok() {
            return;
        }
        tracing::warn!(
            daemon = self.name,
            pid = self.pid,
            "did not exit on SIGTERM, killing"
        );
        let _ = self.child.start_kill();
        let _ = self.wait().await;
    }
}

/// Most processes [`Daemon::tree`] lists: a helper forks once or twice;
/// more is a taken-over one forking, and it is not followed further.
pub const MAX_TREE: usize = 64;

/// `pid` and its descendants, parents first, at most `max`, from
/// `/proc/<pid>/task/<tid>/children` (CONFIG_PROC_CHILDREN; without it,
/// `pid` alone, logged). A child that exits meanwhile is simply missing.
fn process_tree(pid: u32, max: usize) -> Vec<u32> {
    let mut tree = vec![pid];
    let mut next = 0;
    while next < tree.len() && tree.len() < max {
        let parent = tree[next];
        next += 1;
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{parent}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let children = match std::fs::read_to_string(task.path().join("children")) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && parent == pid => {
                    tracing::warn!(pid, "no /proc/<pid>/task/<tid>/children here: the processes this one forked are not listed");
                    return tree;
                }
                Err(_) => continue,
            };
            let room = max - tree.len();
            tree.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok())
                    .take(room),
            );
        }
    }
    tree
}

/// Opens each `cgroup.procs` for writing, before the fork.
fn open_cgroup_procs(files: &[PathBuf]) -> Result<Vec<OwnedFd>, Error> {
    files
        .iter()
        .map(|f| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(f)
                .map(OwnedFd::from)
                .map_err(|e| Error::io(format!("opening the pod cgroup's {}", f.display()), e))
        })
        .collect()
}

/// Moves the child into each cgroup whose `cgroup.procs` is open in
/// `fds`, between fork and exec: "0" names the writing process (cgroup v1
/// and v2 alike), so nothing is formatted or allocated in the child, and
/// the program starts, and every byte of memory it touches is charged,
/// inside the pod's cgroup.
fn join_cgroups_before_exec(command: &mut Command, fds: &[OwnedFd]) {
    if fds.is_empty() {
        return;
    }
    let fds: Vec<i32> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    // SAFETY: write(2) is async-signal-safe; the closure reads the moved
    // Vec of fds, which stay open in the parent until spawn returns (the
    // caller drops them after), and a static byte.
    unsafe {
        command.pre_exec(move || {
            for &fd in &fds {
                if nix::libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_pump::RotatingFile;

    fn limits() -> LogLimits {
        LogLimits {
            max_file: 1 << 20,
            rate: 1 << 20,
        }
    }

    /// A file the process writes stops at the limit: the write fails
    /// (EFBIG) and the process goes on (SIGXFSZ ignored).
    #[tokio::test]
    async fn files_stop_growing_at_the_limit_and_the_process_lives_on() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("big");
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(format!(
            "head -c 3145728 /dev/zero > {}; echo status $?",
            out.display()
        ));
        let placement = Placement {
            max_file_bytes: Some(1 << 20),
            ..Placement::default()
        };
        let log = dir.path().join("d.log");
        let file = RotatingFile::create(&log, 1 << 20).unwrap();
        let mut d = Daemon::spawn("sh", cmd, file, limits(), &placement, Vec::new()).unwrap();
        assert!(d.wait().await.unwrap().success());
        d.log.finish(DRAIN).await;
        assert_eq!(std::fs::metadata(&out).unwrap().len(), 1 << 20);
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("status 1"), "{text}");
    }

    #[tokio::test]
    async fn output_goes_through_the_pump_and_the_umask_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("d.log");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; umask"]);
        let file = RotatingFile::create(&log, 1 << 20).unwrap();
        let mut d =
            Daemon::spawn("sh", cmd, file, limits(), &Placement::default(), Vec::new()).unwrap();
        assert!(d.wait().await.unwrap().success());
        d.log.finish(DRAIN).await;
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(text, "out\nerr\n0077\n");
        assert_eq!(d.log.tail(), text);
    }

    /// The console as a VMM gets it: a pipe at CONSOLE_FD, opened by path
    /// (`/proc/self/fd/3`, what both VMMs are given), pumped into its log
    /// apart from the process's own output.
    #[tokio::test]
    async fn a_pipe_passed_at_the_console_fd_is_opened_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let (rx, tx) = crate::log_pump::pipe().unwrap();
        let console_log = dir.path().join("console.log");
        let mut console = LogPump::start(
            "console",
            rx,
            RotatingFile::create(&console_log, 1 << 20).unwrap(),
            limits(),
            None,
        )
        .unwrap();
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            &format!("echo guest > /proc/self/fd/{}; echo vmm", crate::CONSOLE_FD),
        ]);
        let log = dir.path().join("vmm.log");
        let file = RotatingFile::create(&log, 1 << 20).unwrap();
        let fds = vec![std::os::fd::AsRawFd::as_raw_fd(&tx)];
        let mut d = Daemon::spawn("sh", cmd, file, limits(), &Placement::default(), fds).unwrap();
        drop(tx);
        assert!(d.wait().await.unwrap().success());
        d.log.finish(DRAIN).await;
        console.finish(DRAIN).await;
        assert_eq!(std::fs::read_to_string(&console_log).unwrap(), "guest\n");
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "vmm\n");
    }

    /// A daemon's tree holds what it forked, parents first, within the
    /// bound; an exited daemon has none.
    #[tokio::test]
    async fn a_daemons_tree_lists_what_it_forked() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("d.log");
        let mut cmd = Command::new("sh");
        // A child that forks a grandchild, each sleeping, and the daemon
        // waiting for them.
        cmd.args(["-c", "sh -c 'sleep 100 & wait' & wait"]);
        let file = RotatingFile::create(&log, 1 << 20).unwrap();
        let mut d =
            Daemon::spawn("sh", cmd, file, limits(), &Placement::default(), Vec::new()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let tree = loop {
            let tree = d.tree();
            if tree.len() == 3 || std::time::Instant::now() > deadline {
                break tree;
            }
            tokio::time::sleep(POLL).await;
        };
        assert_eq!(tree.len(), 3, "{tree:?}");
        assert_eq!(tree[0], d.pid());
        let parent_of = |p: u32| -> u32 {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap();
            let (_, rest) = stat.rsplit_once(')').unwrap();
            rest.split_whitespace().nth(1).unwrap().parse().unwrap()
        };
        assert_eq!(parent_of(tree[1]), tree[0]);
        assert_eq!(parent_of(tree[2]), tree[1]);
        assert_eq!(process_tree(d.pid(), 2), tree[..2]);
        for p in tree[1..].iter().rev() {
            let _ = kill(Pid::from_raw(*p as i32), Signal::SIGKILL);
        }
        d.terminate(Duration::from_secs(2)).await;
        assert!(d.tree().is_empty());
    }

    /// A process placed in a cgroup is in it when its program starts: it
    /// reads its own /proc/self/cgroup as its first act.
    #[tokio::test]
    async fn a_placed_process_starts_inside_the_cgroup() {
        let Some(cg) = TestCgroup::new() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("d.log");
        let mut cmd = Command::new("cat");
        cmd.arg("/proc/self/cgroup");
        let file = RotatingFile::create(&log, 1 << 20).unwrap();
        let placement = Placement {
            cgroup_procs: vec![cg.dir.join("cgroup.procs")],
            max_file_bytes: None,
        };
        let mut d = Daemon::spawn("cat", cmd, file, limits(), &placement, Vec::new()).unwrap();
        assert!(d.wait().await.unwrap().success());
        d.log.finish(DRAIN).await;
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.lines().any(|l| l.ends_with(&cg.rel)),
            "not in {}: {text}",
            cg.rel
        );
        // A cgroup that cannot be joined fails the spawn, naming it.
        let placement = Placement {
            cgroup_procs: vec![cg.dir.join("missing/cgroup.procs")],
            max_file_bytes: None,
        };
        let file = RotatingFile::create(&log, 1 << 20).unwrap();
        let e = Daemon::spawn(
            "true",
            Command::new("true"),
            file,
            limits(),
            &placement,
            Vec::new(),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("missing/cgroup.procs"), "{e}");
    }

    /// A cgroup of this test's own in the pids hierarchy (v1) or the
    /// unified one (v2); None, with SKIPPED printed, where none can be made.
    struct TestCgroup {
        dir: PathBuf,
        rel: String,
    }

    impl TestCgroup {
        fn new() -> Option<Self> {
            let root = Path::new("/sys/fs/cgroup");
            let base = if root.join("cgroup.controllers").exists() {
                root.to_owned()
            } else {
                root.join("pids")
            };
            let rel = format!("/husk-daemon-test-{}", std::process::id());
            let dir = base.join(&rel[1..]);
            match std::fs::create_dir(&dir) {
                Ok(()) => Some(Self { dir, rel }),
                Err(e) => {
                    println!("SKIPPED: cannot make a cgroup in {}: {e}", base.display());
                    None
                }
            }
        }
    }

    impl Drop for TestCgroup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}
