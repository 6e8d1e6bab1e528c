//! scripts/containerd-config.sh as a node runs it, without touching this
//! machine's containerd configuration: in a private mount namespace where
//! a test's own directory is bind-mounted on /etc/containerd (the paths in
//! containerd's config files are absolute), with a given containerd first
//! on PATH (the script has it dump the staged configuration) and this
//! build's `husk` as HUSK_BIN (the script's TOML reader), under busybox's
//! sh, the deploy image's shell.

use crate::release::Release;
use crate::repo_root;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A node's /etc/containerd, in a temp dir, and the containerd it runs.
pub struct NodeEtc {
    dir: tempfile::TempDir,
    /// The directory whose `containerd` the script runs.
    pub bin_dir: PathBuf,
}

/// None, with the reason, where this cannot run: no /etc/containerd to
/// mount on, or no husk built beside the tests.
pub fn unavailable() -> Option<String> {
    if !Path::new("/etc/containerd").is_dir() {
        return Some("no /etc/containerd to mount a test's directory on".into());
    }
    let husk = husk_bin();
    (!husk.exists()).then(|| {
        format!(
            "{} is not built (cargo build -p husk-shim --bin husk)",
            husk.display()
        )
    })
}

/// This build's `husk` (target/debug).
pub fn husk_bin() -> PathBuf {
    crate::containerd::build_bin_dir().join("husk")
}

impl NodeEtc {
    /// An empty /etc/containerd for `release`'s containerd.
    pub fn new(release: &Release) -> Self {
        Self::with_bin_dir(release.bin_dir.clone())
    }

    /// An empty /etc/containerd whose containerd is `bin_dir`'s.
    pub fn with_bin_dir(bin_dir: PathBuf) -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            bin_dir,
        }
    }

    /// This machine's path of the node's /etc/containerd/`rel`.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes the node's /etc/containerd/`rel`.
    pub fn write(&self, rel: &str, text: &str) {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    pub fn read(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.path(rel)).ok()
    }

    /// Every file under /etc/containerd (hidden ones too) with its text.
    pub fn snapshot(&self) -> Vec<(PathBuf, String)> {
        fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
            let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let p = e.path();
                if p.is_dir() {
                    out.push((p.clone(), String::new()));
                    walk(&p, out);
                } else {
                    out.push((p.clone(), std::fs::read_to_string(&p).unwrap_or_default()));
                }
            }
        }
        let mut out = Vec::new();
        walk(self.dir.path(), &mut out);
        out
    }

    /// `containerd-config.sh ARGS` on this node (root /), printed.
    pub fn run(&self, args: &[&str]) -> Output {
        let script = format!(
            "mount --bind \"$1\" /etc/containerd && shift && exec busybox sh {} \"$@\"",
            repo_root().join("scripts/containerd-config.sh").display()
        );
        let path = format!(
            "{}:{}",
            self.bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script, "sh"])
            .arg(self.dir.path())
            .args(args)
            .env("PATH", path)
            .env("HUSK_BIN", husk_bin())
            .output()
            .expect("unshare");
        println!(
            "$ containerd-config.sh {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `containerd config dump` of this node's configuration.
    pub fn dump(&self) -> String {
        let script = format!(
            "mount --bind \"$1\" /etc/containerd && exec {} config dump",
            self.bin_dir.join("containerd").display()
        );
        let out = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script, "sh"])
            .arg(self.dir.path())
            .output()
            .expect("unshare");
        assert!(
            out.status.success(),
            "config dump: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
