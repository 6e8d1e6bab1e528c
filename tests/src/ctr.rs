//! `ctr` against a private containerd: the image, runs under a runtime,
//! detached tasks, terminals, and the check that nothing of a VM is left.
//! Shared by the end-to-end tests and benchmarks.

use crate::containerd::{mounts_under, processes_mentioning, Containerd};
use crate::*;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const IMAGE: &str = "docker.io/husk/busybox:test";
pub const HUSK: &str = "io.containerd.husk.v2";
pub const RUNC: &str = "io.containerd.runc.v2";

/// The test image archive built by scripts/setup.sh.
pub fn image_archive() -> PathBuf {
    crate::installed_archive("HUSK_TEST_IMAGE", "/usr/local/share/husk/busybox-oci.tar")
}

pub fn setup() -> Containerd {
    let runtime = tempfile::tempdir().unwrap();
    require_guest_artifacts(&test_config(runtime.path()));
    let ctrd = Containerd::start();
    ctrd.import(&image_archive());
    ctrd
}

pub fn run(
    ctrd: &Containerd,
    runtime: &str,
    id: &str,
    cmd: &[&str],
    stdin: Option<&[u8]>,
) -> Output {
    run_with(ctrd, runtime, &[], id, cmd, stdin)
}

pub fn run_with(
    ctrd: &Containerd,
    runtime: &str,
    flags: &[&str],
    id: &str,
    cmd: &[&str],
    stdin: Option<&[u8]>,
) -> Output {
    // ctr 1.6 always attaches its stdin (it has no -i flag).
    let mut args = vec!["run", "--rm", "--runtime", runtime];
    args.extend(flags);
    args.extend([IMAGE, id]);
    args.extend(cmd);
    ctrd.ctr_with_stdin(&args, stdin)
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Nothing of any husk VM remains: no processes, mounts or directories.
pub fn assert_nothing_left(ctrd: &Containerd) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let procs = processes_mentioning(&ctrd.husk_runtime.display().to_string());
        let shims: Vec<u32> = processes_mentioning("containerd-shim-husk-v2")
            .into_iter()
            .filter(|p| {
                std::fs::read(format!("/proc/{p}/cmdline"))
                    .map(|c| text(&c).contains(&ctrd.socket.display().to_string()))
                    .unwrap_or(false)
            })
            .collect();
        let mounts = mounts_under(&ctrd.husk_runtime);
        if procs.is_empty() && shims.is_empty() && mounts.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: VM processes {procs:?}, shims {shims:?}, mounts {mounts:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for sub in ["vms", "pods", "shared"] {
        let left = entries(&ctrd.husk_runtime.join(sub));
        assert!(left.is_empty(), "{sub}/ still holds {left:?}");
    }
    let bundle_mounts: Vec<_> = mounts_under(ctrd.dir.path())
        .into_iter()
        .filter(|m| m.ends_with("rootfs"))
        .collect();
    assert!(
        bundle_mounts.is_empty(),
        "rootfs mounts left: {bundle_mounts:?}"
    );
}

/// `ctr run --rm <image> <id> sleep 1000` in the background, as a user's
/// foreground `ctr run` would be.
pub fn spawn_sleeper(ctrd: &Containerd, runtime: &str, id: &str) -> std::process::Child {
    ctrd.ctr_command()
        .args([
            "run",
            "--rm",
            "--runtime",
            runtime,
            IMAGE,
            id,
            "sleep",
            "1000",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// `ctr run -d` of `cmd` as container `id`, returning once it runs.
pub fn run_detached(ctrd: &Containerd, runtime: &str, id: &str, cmd: &[&str]) {
    let mut args = vec!["run", "-d", "--runtime", runtime, IMAGE, id];
    args.extend(cmd);
    let run = ctrd.ctr(&args);
    assert!(run.status.success(), "{}", text(&run.stderr));
    wait_running(ctrd, id);
}

pub fn wait_running(ctrd: &Containerd, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ls = text(&ctrd.ctr(&["task", "ls"]).stdout);
        if ls
            .lines()
            .any(|l| l.starts_with(id) && l.contains("RUNNING"))
        {
            return;
        }
        assert!(Instant::now() < deadline, "{id} never ran: {ls}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits up to a minute for `child` to exit; fails with `hang` otherwise.
pub fn wait_exit(child: &mut std::process::Child, hang: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "{hang}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `ctr task rm` once the (killed) task has stopped, then `ctr container rm`.
pub fn remove_task(ctrd: &Containerd, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ctrd.ctr(&["task", "rm", id]).status.success() {
        assert!(Instant::now() < deadline, "task {id} could not be removed");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(ctrd.ctr(&["container", "rm", id]).status.success());
}

pub fn task_status(ctrd: &Containerd, id: &str) -> String {
    let ls = text(&ctrd.ctr(&["task", "ls"]).stdout);
    ls.lines()
        .find(|l| l.starts_with(id))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or("")
        .to_owned()
}

/// What a scenario shows: stdout, stderr and exit status.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub stdout: String,
    pub stderr: String,
    pub status: Option<i32>,
}

impl Outcome {
    pub fn of(out: &Output) -> Self {
        Outcome {
            stdout: text(&out.stdout),
            stderr: text(&out.stderr),
            status: out.status.code(),
        }
    }
}

/// `ctr` on a pseudo-terminal, as a user at a terminal runs `ctr run -t`
/// (ctr refuses -t without one). Output is collected from the master.
pub struct PtyCtr {
    child: std::process::Child,
    master: std::os::fd::OwnedFd,
    output: Arc<Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

fn set_size(fd: &impl AsRawFd, rows: u16, cols: u16) {
    let size = nix::libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize.
    let ret = unsafe { nix::libc::ioctl(fd.as_raw_fd(), nix::libc::TIOCSWINSZ, &size) };
    assert_eq!(ret, 0, "TIOCSWINSZ");
}

impl PtyCtr {
    pub fn spawn(ctrd: &Containerd, args: &[&str], rows: u16, cols: u16) -> Self {
        let pty = nix::pty::openpty(None, None).expect("openpty");
        set_size(&pty.slave, rows, cols);
        let slave = std::fs::File::from(pty.slave);
        let child = ctrd
            .ctr_command()
            .args(args)
            .stdin(slave.try_clone().unwrap())
            .stdout(slave.try_clone().unwrap())
            .stderr(slave)
            .spawn()
            .expect("running ctr");
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut reader_file = std::fs::File::from(pty.master.try_clone().unwrap());
        let sink = output.clone();
        let reader = std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            // EIO once ctr (the last holder of the slave) is gone.
            while let Ok(n) = reader_file.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        PtyCtr {
            child,
            master: pty.master,
            output,
            reader: Some(reader),
        }
    }

    pub fn output(&self) -> String {
        text(&self.output.lock().unwrap())
    }

    /// Waits until the output contains `needle`.
    pub fn wait_for(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !self.output().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in {:?}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Resizes the terminal and tells ctr, as the terminal would.
    pub fn resize(&self, rows: u16, cols: u16) {
        set_size(&self.master, rows, cols);
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGWINCH,
        );
    }

    pub fn write(&self, bytes: &[u8]) {
        nix::unistd::write(&self.master, bytes).expect("writing to the terminal");
    }

    /// Waits for ctr to exit; returns everything it wrote and its status.
    pub fn finish(mut self) -> Outcome {
        let status = wait_exit(&mut self.child, "ctr on a terminal did not exit");
        // The reader ends with EIO after ctr's exit; give it the last bytes.
        if let Some(r) = self.reader.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !r.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Outcome {
            stdout: self.output(),
            stderr: String::new(),
            status: status.code(),
        }
    }
}

/// ctr's default spec (`ctr oci spec`) on the host rootfs `rootfs`,
/// running `cmd`: the base of `ctr run --config` runs.
pub fn default_spec(
    ctrd: &Containerd,
    rootfs: &std::path::Path,
    cmd: &[&str],
) -> serde_json::Value {
    let out = ctrd.ctr(&["oci", "spec"]);
    let mut spec: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ctr oci spec");
    spec["root"] = serde_json::json!({"path": rootfs, "readonly": true});
    spec["process"]["args"] = serde_json::json!(cmd);
    spec["process"]["env"] = serde_json::json!(["PATH=/bin"]);
    spec
}

/// `ctr run --rm --config <spec> <id>` under `runtime`.
pub fn run_config(ctrd: &Containerd, runtime: &str, id: &str, spec: &serde_json::Value) -> Output {
    let path = ctrd.dir.path().join(format!("{id}.json"));
    std::fs::write(&path, serde_json::to_vec(spec).unwrap()).unwrap();
    let out = ctrd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        runtime,
        "--config",
        path.to_str().unwrap(),
        id,
    ]);
    let _ = std::fs::remove_file(path);
    out
}
