//! A private containerd for end-to-end tests: its own root, state, sockets
//! and config, with the husk shim from this build on its PATH and a husk
//! configuration whose runtime directory is private too. Any release line
//! runs (tests/src/release.rs): the config is written in the schema that
//! line reads (version 2 for 1.x, 3 for 2.x). It can be restarted on the
//! same directories, as a node restarts containerd under running pods.
//! Dropping it stops containerd, ends shims it left, and unmounts what is
//! left under it.

use crate::release::Release;
use nix::sys::signal::Signal;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Containerd {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    /// The husk runtime directory the shims use (VM dirs, shared dirs).
    pub husk_runtime: PathBuf,
    /// The husk log directory the shims use (`logs.dir`: VM logs).
    pub husk_logs: PathBuf,
    /// The containerd binaries (and their `ctr`) this one runs.
    pub release: Release,
    config: PathBuf,
    husk_config: PathBuf,
    /// None while containerd is down (between `stop` and `start_again`).
    child: Option<Child>,
}

/// The directory holding this build's binaries (containerd-shim-husk-v2).
pub fn build_bin_dir() -> PathBuf {
    // target/debug/deps/<test binary> -> target/debug
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("deps dir");
    deps.parent().unwrap_or(deps).to_owned()
}

/// `containerd-shim-husk-vm-v2` beside this build's shim: a link to it, as
/// setup.sh installs one, so containerd runs the husk-vm mode of the shim
/// under test (by `runtime_path`, and for `ctr --runtime
/// io.containerd.husk-vm.v2` on its PATH). Made once per process, by
/// renaming a new link over it, so parallel tests never see it missing.
pub fn vm_shim_link() -> PathBuf {
    static LINK: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    LINK.get_or_init(|| {
        let dir = build_bin_dir();
        let link = dir.join("containerd-shim-husk-vm-v2");
        let tmp = dir.join(format!(
            ".containerd-shim-husk-vm-v2.{}",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink("containerd-shim-husk-v2", &tmp)
            .unwrap_or_else(|e| panic!("linking {}: {e}", tmp.display()));
        std::fs::rename(&tmp, &link)
            .unwrap_or_else(|e| panic!("renaming to {}: {e}", link.display()));
        link
    })
    .clone()
}

/// The CRI plugins of each config schema: containerd 2.x split the one
/// `io.containerd.grpc.v1.cri` of 1.x into the server and two services.
const CRI_PLUGINS_V2: &[&str] = &["io.containerd.grpc.v1.cri"];
const CRI_PLUGINS_V3: &[&str] = &[
    "io.containerd.grpc.v1.cri",
    "io.containerd.cri.v1.runtime",
    "io.containerd.cri.v1.images",
];

impl Containerd {
    /// containerd for `ctr`, of the release `HUSK_CONTAINERD` selects: its
    /// CRI plugin disabled, as the ctr tests need nothing of it.
    pub fn start() -> Self {
        Self::start_release(&Release::selected())
    }

    /// containerd for `ctr`, of `release`.
    pub fn start_release(release: &Release) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("husk-ctrd-")
            .tempdir()
            .unwrap();
        Self::start_in(dir, release, None)
    }

    /// containerd `release` with its root, state and sockets in `dir`.
    /// With `cri`, the CRI plugin stays enabled and `cri` (TOML tables in
    /// the schema of `release.config_version()`) is appended to the config,
    /// which for version 3 also imports `<dir>/conf.d/*.toml` (drop-ins, as
    /// 2.x nodes take them); without, the CRI plugins are disabled.
    pub fn start_in(dir: tempfile::TempDir, release: &Release, cri: Option<&str>) -> Self {
        let d = dir.path();
        let socket = d.join("containerd.sock");
        let husk_runtime = d.join("husk");
        let husk_logs = d.join("husk-logs");
        let husk_config = d.join("husk.toml");
        let mut config = husk_config::Config::load_default().expect("husk configuration");
        config.hypervisor.runtime_dir = husk_runtime.clone();
        config.logs.dir = husk_logs.clone();
        println!("{}", crate::backend_line(&config));
        println!("containerd: {release}");
        std::fs::write(&husk_config, config.to_toml()).unwrap();
        let cfg = d.join("config.toml");
        std::fs::write(&cfg, config_text(d, release, cri)).unwrap();
        let mut ctrd = Containerd {
            dir,
            socket,
            husk_runtime,
            husk_logs,
            release: release.clone(),
            config: cfg,
            husk_config,
            child: None,
        };
        ctrd.start_again();
        ctrd
    }

    /// Starts containerd on this one's config, root, state and sockets
    /// (after `stop`), and returns once it answers.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "containerd is already running");
        vm_shim_link();
        let path = format!(
            "{}:{}:{}",
            build_bin_dir().display(),
            self.release.bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        // Appended to: a restarted containerd's log follows the first's.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("containerd.log"))
            .unwrap();
        let child = Command::new(self.release.containerd())
            .arg("--config")
            .arg(&self.config)
            .env("PATH", path)
            .env(husk_config::CONFIG_ENV, &self.husk_config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.release));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.ctr(&["version"]).status.success() {
            // A config it rejects ends it at once: say so, do not wait.
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
                .is_some();
            assert!(
                Instant::now() < deadline && !exited,
                "{} did not answer; log:\n{}",
                self.release,
                std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends `signal` to containerd and waits for it to exit (SIGKILL after
    /// 30 s); its shims keep running, as they do when a node's containerd
    /// stops or crashes.
    pub fn stop(&mut self, signal: Signal) -> ExitStatus {
        let mut child = self.child.take().expect("containerd is not running");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal);
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        child.wait().expect("waiting for containerd")
    }

    /// `stop(signal)` then `start_again()`: a restart on the same root,
    /// state and sockets.
    pub fn restart(&mut self, signal: Signal) {
        println!("restarting {} with {signal}", self.release);
        self.stop(signal);
        self.start_again();
    }

    /// The pool members (shims waiting with a booted VM, docs/pool.md) this
    /// containerd's shims started: they run in a directory under its own.
    /// A member's PID-namespace monitor (a fork that never execs, so it
    /// shows the member's command line) is its VM's, not a member.
    pub fn pool_members(&self) -> Vec<u32> {
        processes_mentioning("pool-member")
            .into_iter()
            .filter(|p| {
                std::fs::read_link(format!("/proc/{p}/cwd"))
                    .is_ok_and(|cwd| cwd.starts_with(self.dir.path()))
            })
            .filter(|p| !is_monitor(*p))
            .collect()
    }

    /// The shims of `binary` (e.g. `containerd-shim-husk-v2`) serving this
    /// containerd: their command line names its socket. A PID-namespace
    /// monitor (a fork of the shim that never execs, so it shows the
    /// shim's command line) is not one.
    pub fn shims(&self, binary: &str) -> Vec<Shim> {
        let socket = self.socket.display().to_string();
        processes_mentioning(binary)
            .into_iter()
            .filter(|pid| !is_monitor(*pid))
            .filter_map(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                let args: Vec<String> = cmdline
                    .split(|&b| b == 0)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                if !args.contains(&socket) {
                    return None;
                }
                let flag = |name: &str| {
                    let i = args.iter().position(|a| a == name)?;
                    args.get(i + 1).cloned()
                };
                Some(Shim {
                    pid,
                    namespace: flag("-namespace")?,
                    id: flag("-id")?,
                })
            })
            .collect()
    }

    /// The socket of the shim serving task `id` of namespace `ns`.
    pub fn shim_socket(&self, ns: &str, id: &str) -> PathBuf {
        shim_socket(&self.socket, ns, id)
    }

    /// The husk configuration its shims read (HUSK_CONFIG): a test may
    /// rewrite it; shims started afterwards read the new one.
    pub fn husk_config_path(&self) -> &Path {
        &self.husk_config
    }

    /// containerd's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `ctr --address <socket>`, this release's ctr, ready for arguments.
    pub fn ctr_command(&self) -> Command {
        let mut cmd = Command::new(self.release.ctr());
        cmd.arg("--address").arg(&self.socket);
        cmd
    }

    /// Runs `ctr --address <socket> args...` and returns its output.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_with_stdin(args, None)
    }

    /// Like `ctr`, feeding `stdin` (then EOF). A ctr that does not return
    /// within five minutes is killed and the test fails, naming it.
    pub fn ctr_with_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut cmd = self.ctr_command();
        cmd.args(args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = cmd.spawn().expect("running ctr");
        let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut p) = pipe {
                    let _ = p.read_to_end(&mut buf);
                }
                buf
            })
        };
        let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
        let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
        if let Some(input) = stdin {
            use std::io::Write;
            let mut s = child.stdin.take().unwrap();
            s.write_all(input).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(300);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("ctr {args:?} did not return within 5 minutes");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Output {
            status,
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
        }
    }

    /// Imports an OCI image archive; returns nothing, panics on failure.
    pub fn import(&self, archive: &Path) {
        let out = self.ctr(&["images", "import", archive.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }
}

/// containerd's config for `release`: private root, state and sockets;
/// the CRI plugins disabled without `cri`; NRI off (from 1.7 it listens on
/// a host-wide socket, /var/run/nri/nri.sock, that two harnesses would
/// share).
fn config_text(dir: &Path, release: &Release, cri: Option<&str>) -> String {
    let version = release.config_version();
    let (cri_plugins, nri) = if version >= 3 {
        (
            CRI_PLUGINS_V3,
            "[plugins.'io.containerd.nri.v1.nri']\n  disable = true\n",
        )
    } else if release.at_least(1, 7) {
        (
            CRI_PLUGINS_V2,
            "[plugins.\"io.containerd.nri.v1.nri\"]\n  disable = true\n",
        )
    } else {
        (CRI_PLUGINS_V2, "")
    };
    let mut top = String::new();
    match cri {
        None => top += &format!("disabled_plugins = {cri_plugins:?}\n"),
        Some(_) if version >= 3 => {
            top += &format!("imports = [{:?}]\n", dir.join("conf.d/*.toml"));
        }
        Some(_) => {}
    }
    format!(
        "version = {version}\nroot = {root:?}\nstate = {state:?}\n{top}\
         [grpc]\n  address = {sock:?}\n[ttrpc]\n  address = {ttrpc:?}\n{nri}{cri}",
        root = dir.join("root"),
        state = dir.join("state"),
        sock = dir.join("containerd.sock"),
        ttrpc = dir.join("containerd.sock.ttrpc"),
        cri = cri.unwrap_or_default(),
    )
}

/// A shim process: its pid, and the task it was started for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shim {
    pub pid: u32,
    pub namespace: String,
    pub id: String,
}

/// The socket of the shim serving task `id` of namespace `ns` under the
/// containerd listening on `containerd_socket`: containerd 1.6 to 2.1 and
/// both shim libraries put it at /run/containerd/s/<sha256 of
/// "<containerd address>/<ns>/<id>">, outside any private directory, so a
/// shim that dies without removing it leaves it behind.
pub fn shim_socket(containerd_socket: &Path, ns: &str, id: &str) -> PathBuf {
    use sha2::Digest;
    let key = containerd_socket.join(ns).join(id);
    let digest = sha2::Sha256::digest(key.as_os_str().as_encoded_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Path::new("/run/containerd/s").join(hex)
}

/// Mount points at or below `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

/// Whether `pid` is a PID-namespace monitor (a fork of a shim or pool
/// member that never execs, so it shows their command line; it is its VM's).
/// A process that is gone counts as one: it is nobody's to list.
fn is_monitor(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).map_or(true, |c| {
        c.trim_end() == husk_hypervisor::confine::MONITOR_NAME.to_string_lossy()
    })
}

/// Pids of processes whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) && crate::process_alive(pid) {
            pids.push(pid);
        }
    }
    pids
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let root = self.root().to_owned();
        if std::thread::panicking() {
            // containerd's log carries the shims' logs too: the one place
            // that says why an end-to-end test failed.
            let log = std::fs::read_to_string(root.join("containerd.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            eprintln!("--- containerd.log (last 80 lines) ---");
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Shims outlive containerd by design; ours must not outlive the
        // test, nor the sockets of those killed here.
        let sockets: Vec<PathBuf> = [
            "containerd-shim-husk-v2",
            "containerd-shim-husk-vm-v2",
            "containerd-shim-runc-v2",
        ]
        .into_iter()
        .flat_map(|b| self.shims(b))
        .map(|s| self.shim_socket(&s.namespace, &s.id))
        .collect();
        for pid in processes_mentioning(&root.display().to_string()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        for socket in sockets {
            let _ = std::fs::remove_file(socket);
        }
        for m in mounts_under(&root) {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}
