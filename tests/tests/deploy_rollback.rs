//! deploy/husk-deploy.sh's rollback: when containerd does not answer
//! after the restart that follows a configuration change, the script puts
//! containerd's config.toml and husk's drop-in back byte for byte,
//! restarts containerd again, says so loudly and does not label the node
//! (install) or keeps husk's files for the config put back (cleanup); in
//! `run` it then waits, not ready, instead of exiting into a restart loop.
//!
//! No containerd runs: a node root in a temp dir, a stand-in for
//! containerd-config.sh (adds or takes out one marked line and husk's
//! drop-in), a stand-in restart command whose containerd "comes back" or
//! not depending on the config it finds, and tests/node/fake-api.py for
//! the API server. What containerd-config.sh itself checks before a swap
//! is tests/tests/containerd_config.rs's. Run under busybox sh, the deploy
//! image's shell.

use husk_tests::ctr::text;
use husk_tests::repo_root;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const NODE_CONFIG: &str = "version = 2\n# the node's own settings\n";
const HUSK_LINE: &str = "# husk handler (stand-in)";

/// The stand-in API server, killed when dropped.
struct FakeApi {
    child: Child,
    url: String,
    log: PathBuf,
}

impl FakeApi {
    fn start(dir: &Path) -> FakeApi {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = dir.join("api.log");
        std::fs::write(&log, "").unwrap();
        let child = Command::new("python3")
            .arg(repo_root().join("tests/node/fake-api.py"))
            .arg(port.to_string())
            .arg(&log)
            .arg("containerd://1.7.24")
            .spawn()
            .expect("python3 fake-api.py");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "fake-api.py did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        FakeApi {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    fn requests(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node (its root, husk-deploy's payload, the stand-ins) in a temp dir.
struct Node {
    dir: tempfile::TempDir,
    api: FakeApi,
}

/// When the stand-in containerd does not come back after a restart.
#[derive(Clone, Copy)]
enum Fails {
    Never,
    WithHusk,
    WithoutHusk,
    Always,
}

const CONFIG_SH: &str = r#"#!/bin/sh
# containerd-config.sh stand-in: install adds a marked line and husk's
# drop-in, remove takes them out.
set -eu
cmd=$1; shift; root=
while [ $# -gt 0 ]; do case $1 in --root) root=$2; shift 2 ;; *) shift ;; esac; done
etc=$root/etc/containerd
case $cmd in
    install) echo "$HUSK_LINE" >> "$etc/config.toml"; mkdir -p "$etc/conf.d"; echo husk > "$etc/conf.d/husk.toml" ;;
    remove) grep -vxF "$HUSK_LINE" "$etc/config.toml" > "$etc/.new" || true; cat "$etc/.new" > "$etc/config.toml"; rm -f "$etc/.new" "$etc/conf.d/husk.toml" ;;
esac
"#;

const RESTART_SH: &str = r#"#!/bin/sh
# `systemctl restart containerd` stand-in: counts restarts; containerd is
# up or down after it by the mode in ./fails and the config it finds.
t=$(dirname "$0")
echo restart >> "$t/restarts"
if grep -qxF "$HUSK_LINE" "$t/host/etc/containerd/config.toml"; then husk=1; else husk=0; fi
case $(cat "$t/fails"):$husk in
    always:*|with-husk:1|without-husk:0) echo down > "$t/state" ;;
    *) echo up > "$t/state" ;;
esac
"#;

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let etc = d.join("host/etc/containerd");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(etc.join("config.toml"), NODE_CONFIG).unwrap();
        std::fs::set_permissions(etc.join("config.toml"), PermissionsExt::from_mode(0o640))
            .unwrap();
        let share = d.join("payload/usr/local/share/husk");
        std::fs::create_dir_all(&share).unwrap();
        std::fs::write(share.join("containerd-config.sh"), CONFIG_SH).unwrap();
        std::fs::create_dir_all(d.join("payload/usr/local/bin")).unwrap();
        std::fs::write(d.join("payload/usr/local/bin/husk"), "husk\n").unwrap();
        std::fs::write(d.join("restart.sh"), RESTART_SH).unwrap();
        std::fs::write(d.join("state"), "up\n").unwrap();
        let api = FakeApi::start(d);
        Node { dir, api }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn config(&self) -> String {
        std::fs::read_to_string(self.path("host/etc/containerd/config.toml")).unwrap()
    }

    fn restarts(&self) -> usize {
        std::fs::read_to_string(self.path("restarts"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    fn set_fails(&self, fails: Fails) {
        let mode = match fails {
            Fails::Never => "never",
            Fails::WithHusk => "with-husk",
            Fails::WithoutHusk => "without-husk",
            Fails::Always => "always",
        };
        std::fs::write(self.path("fails"), mode).unwrap();
        let _ = std::fs::remove_file(self.path("restarts"));
    }

    /// husk-deploy.sh `verb` under busybox sh, with the stand-ins.
    fn command(&self, verb: &str) -> Command {
        let d = self.dir.path();
        let mut cmd = Command::new("busybox");
        cmd.arg("sh")
            .arg(repo_root().join("deploy/husk-deploy.sh"))
            .arg(verb)
            .env("HUSK_LINE", HUSK_LINE)
            .env("NODE_NAME", "test-node")
            .env("HUSK_HOST_ROOT", d.join("host"))
            .env("HUSK_PAYLOAD", d.join("payload"))
            .env("HUSK_KUBE_API", &self.api.url)
            .env("HUSK_CONTAINERD_VERSION", "1.7.24")
            .env("HUSK_CONTAINERD_WAIT", "1")
            .env("HUSK_READY_FILE", d.join("ready"))
            .env(
                "HUSK_RESTART_CONTAINERD",
                format!("sh {}", d.join("restart.sh").display()),
            )
            .env(
                "HUSK_CONTAINERD_READY",
                format!("grep -qx up {}", d.join("state").display()),
            );
        cmd
    }

    fn run(&self, verb: &str) -> Output {
        let out = self.command(verb).output().expect("busybox sh");
        println!(
            "$ husk-deploy.sh {verb}\n{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        out
    }

    fn labelled(&self, value: &str) -> bool {
        let patch = format!(
            "PATCH /api/v1/nodes/test-node application/merge-patch+json \
             {{\"metadata\":{{\"labels\":{{\"husk.io/runtime\":{value}}}}}}}"
        );
        self.api.requests().lines().any(|l| l == patch)
    }
}

#[test]
fn install_rolls_back_when_containerd_does_not_come_back() {
    let node = Node::new();
    node.set_fails(Fails::WithHusk);
    let out = node.run("install");
    assert!(!out.status.success(), "install succeeded");
    let err = text(&out.stderr);
    for says in ["ROLLING BACK", "ROLLED BACK", "NOT INSTALLED"] {
        assert!(err.contains(says), "no {says:?} in {err}");
    }
    assert_eq!(
        node.config(),
        NODE_CONFIG,
        "config.toml is not the node's again"
    );
    let meta = std::fs::metadata(node.path("host/etc/containerd/config.toml")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    assert!(!node.path("host/etc/containerd/conf.d/husk.toml").exists());
    assert_eq!(
        node.restarts(),
        2,
        "one restart on husk's config, one on the node's"
    );
    assert!(!node.labelled("\"true\""), "{}", node.api.requests());
    assert!(!node.path("ready").exists());
}

#[test]
fn install_labels_once_containerd_answers_and_cleanup_takes_it_back() {
    let node = Node::new();
    node.set_fails(Fails::Never);
    assert!(node.run("install").status.success());
    assert!(node.config().contains(HUSK_LINE));
    assert_eq!(node.restarts(), 1);
    assert!(node.labelled("\"true\""), "{}", node.api.requests());
    assert!(node.path("ready").exists());
    assert!(node.run("cleanup").status.success());
    assert_eq!(node.config(), NODE_CONFIG);
    assert!(node.labelled("null"));
    assert!(!node.path("host/usr/local/bin/husk").exists());
}

#[test]
fn cleanup_puts_husk_back_when_containerd_does_not_come_back_without_it() {
    let node = Node::new();
    node.set_fails(Fails::Never);
    assert!(node.run("install").status.success());
    let installed = node.config();
    node.set_fails(Fails::WithoutHusk);
    let out = node.run("cleanup");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    for says in ["ROLLING BACK", "ROLLED BACK", "NOT REMOVED"] {
        assert!(err.contains(says), "no {says:?} in {err}");
    }
    assert_eq!(node.config(), installed);
    assert!(node.path("host/etc/containerd/conf.d/husk.toml").exists());
    // The config put back names husk's shim: its files stay.
    assert!(node.path("host/usr/local/bin/husk").exists());
    assert_eq!(node.restarts(), 2);
}

#[test]
fn a_rollback_that_does_not_bring_containerd_back_says_so() {
    let node = Node::new();
    node.set_fails(Fails::Always);
    let out = node.run("install");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("ROLLBACK FAILED"), "{err}");
    assert!(!err.contains("ROLLED BACK:"), "{err}");
    assert_eq!(node.config(), NODE_CONFIG);
    assert!(!node.labelled("\"true\""));
}

#[test]
fn run_waits_not_ready_after_a_rollback_and_cleans_up_on_sigterm() {
    let node = Node::new();
    node.set_fails(Fails::WithHusk);
    let mut child = node
        .command("run")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while node.restarts() < 2 || node.config() != NODE_CONFIG {
        assert!(Instant::now() < deadline, "no rollback within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "run exited after the rollback"
    );
    assert!(!node.path("ready").exists());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    println!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "cleanup after SIGTERM failed");
    assert!(text(&out.stdout).contains("waiting, not ready"));
    assert_eq!(node.config(), NODE_CONFIG);
    assert!(!node.path("host/usr/local/bin/husk").exists());
    assert!(node.labelled("null"));
}
