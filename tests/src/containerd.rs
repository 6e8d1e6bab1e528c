//! A private containerd for end-to-end tests: its own root, state, sockets
//! and config, with the husk shim from this build on its PATH and a husk
//! configuration whose runtime directory is private too. Dropping it stops
//! containerd, ends shims it left, and unmounts what is left under it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Containerd {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    /// The husk runtime directory the shims use (VM dirs, shared dirs).
    pub husk_runtime: PathBuf,
    child: Child,
}

/// The directory holding this build's binaries (containerd-shim-husk-v2).
pub fn build_bin_dir() -> PathBuf {
    // target/debug/deps/<test binary> -> target/debug
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("deps dir");
    deps.parent().unwrap_or(deps).to_owned()
}

impl Containerd {
    /// containerd for `ctr`: its CRI plugin disabled, as the ctr tests need
    /// nothing of it.
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("husk-ctrd-")
            .tempdir()
            .unwrap();
        Self::start_in(dir, None)
    }

    /// containerd with its root, state and sockets in `dir`. With `cri`, the
    /// CRI plugin stays enabled and `cri` (TOML tables, e.g. those of
    /// `[plugins."io.containerd.grpc.v1.cri"]`) is appended to the config;
    /// without, the plugin is disabled.
    pub fn start_in(dir: tempfile::TempDir, cri: Option<&str>) -> Self {
        let d = dir.path();
        let socket = d.join("containerd.sock");
        let husk_runtime = d.join("husk");
        let husk_config = d.join("husk.toml");
        let mut config = husk_config::Config::load_default().expect("husk configuration");
        config.hypervisor.runtime_dir = husk_runtime.clone();
        println!("{}", crate::backend_line(&config));
        std::fs::write(&husk_config, config.to_toml()).unwrap();
        let cfg = d.join("config.toml");
        let plugins = match cri {
            None => "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n",
            Some(_) => "",
        };
        std::fs::write(
            &cfg,
            format!(
                "version = 2\nroot = {root:?}\nstate = {state:?}\n{plugins}\
                 [grpc]\n  address = {sock:?}\n[ttrpc]\n  address = {ttrpc:?}\n{cri}",
                root = d.join("root"),
                state = d.join("state"),
                sock = socket,
                ttrpc = d.join("containerd.sock.ttrpc"),
                cri = cri.unwrap_or_default(),
            ),
        )
        .unwrap();
        let path = format!(
            "{}:{}",
            build_bin_dir().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&cfg)
            .env("PATH", path)
            .env(husk_config::CONFIG_ENV, &husk_config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting containerd (apt-get install containerd)");
        let mut ctrd = Containerd {
            dir,
            socket,
            husk_runtime,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ctrd.ctr(&["version"]).status.success() {
            // A config it rejects ends it at once: say so, do not wait.
            let exited = ctrd.child.try_wait().ok().flatten().is_some();
            assert!(
                Instant::now() < deadline && !exited,
                "containerd did not answer; log:\n{}",
                std::fs::read_to_string(ctrd.dir.path().join("containerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        ctrd
    }

    /// Runs `ctr --address <socket> args...` and returns its output.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_with_stdin(args, None)
    }

    /// Like `ctr`, feeding `stdin` (then EOF). A ctr that does not return
    /// within five minutes is killed and the test fails, naming it.
    pub fn ctr_with_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(&self.socket).args(args);
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
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Shims outlive containerd by design; ours must not outlive the test.
        for pid in processes_mentioning(&root.display().to_string()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        for m in mounts_under(&root) {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}
