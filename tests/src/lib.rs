//! Helpers shared by husk's integration tests and benchmarks: the
//! configuration they run with, where the guest artifacts are, and process
//! and file checks for "nothing leaks" assertions.

use husk_config::Config;
use std::path::{Path, PathBuf};

/// The repository's root (the tests crate is one level below it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the repository")
        .to_owned()
}

/// The configuration for a test: `HUSK_CONFIG` or the defaults (which point
/// at what scripts/setup.sh installs), with a private runtime directory so
/// that a test can check it is empty afterwards, and the VM logs in its
/// `logs/` (a test never writes the host's /var/log).
pub fn test_config(runtime_dir: &Path) -> Config {
    let mut config = Config::load_default().expect("loading the husk configuration");
    config.hypervisor.runtime_dir = runtime_dir.to_owned();
    config.logs.dir = runtime_dir.join("logs");
    config
}

/// The VMM the end-to-end suites get on this host, resolved as the shim
/// resolves it, as one line for their output. Where `auto` cannot take
/// husk-vmm (no vmx/svm, as on PVM) the suite's run on it is SKIPPED, and
/// the line says why.
pub fn backend_line(config: &Config) -> String {
    let accel = husk_hypervisor::detect_accelerator();
    let d = husk_hypervisor::resolve_backend(
        config.hypervisor.backend,
        &accel,
        config.hypervisor.vmm_path.exists(),
    );
    match d.backend {
        husk_config::Backend::HuskVmm => format!("VMM: husk-vmm ({})", d.reason),
        _ => format!("VMM: QEMU. SKIPPED on husk-vmm: {}", d.reason),
    }
}

/// Fails the test with the fix when the guest artifacts are missing: they are
/// built here, so their absence is a setup error, not a reason to skip.
pub fn require_guest_artifacts(config: &Config) {
    for (key, path) in [
        ("hypervisor.kernel", &config.hypervisor.kernel),
        ("hypervisor.initrd", &config.hypervisor.initrd),
        ("hypervisor.qemu_path", &config.hypervisor.qemu_path),
        (
            "hypervisor.virtiofsd_path",
            &config.hypervisor.virtiofsd_path,
        ),
        (
            "hypervisor.vsock_backend_path",
            &config.hypervisor.vsock_backend_path,
        ),
    ] {
        assert!(
            path.exists(),
            "{key} = {} does not exist: run `sudo bash scripts/setup.sh` first",
            path.display()
        );
    }
}

/// The kernel release baked into a vmlinux or bzImage, read from its
/// `Linux version <release> (` banner.
pub fn kernel_release_of(image: &Path) -> Option<String> {
    let bytes = std::fs::read(image).ok()?;
    let needle = b"Linux version ";
    let start = bytes.windows(needle.len()).position(|w| w == needle)? + needle.len();
    let rest = &bytes[start..];
    let end = rest.iter().position(|&b| b == b' ')?;
    Some(String::from_utf8_lossy(&rest[..end]).into_owned())
}

pub fn host_kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .expect("reading /proc/sys/kernel/osrelease")
        .trim()
        .to_owned()
}

/// True while `pid` is a live process (a zombie counts as gone).
pub fn process_alive(pid: u32) -> bool {
    stat_fields(pid)
        .first()
        .is_some_and(|state| state != "Z" && state != "X")
}

/// The fields of `/proc/<pid>/stat` after the parenthesised command name
/// (which may itself hold spaces and ')'), from 0: 0 is the state (field 3
/// in proc(5)), 1 the parent, 11 and 12 user and system time in ticks, 16
/// the niceness, 19 the start time in ticks since boot. A thread id works
/// as `pid` (the thread's own values). Empty when it is gone.
pub fn stat_fields(pid: u32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, rest) = stat.rsplit_once(')')?;
            Some(rest.split_whitespace().map(str::to_owned).collect())
        })
        .unwrap_or_default()
}

/// The parent of `pid` (0 when it is gone).
pub fn parent_pid(pid: u32) -> u32 {
    stat_fields(pid)
        .get(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

/// The command name of `pid` (`/proc/<pid>/comm`; empty when it is gone).
pub fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim_end()
        .to_owned()
}

/// Clock ticks per second, the unit of `/proc/<pid>/stat`'s times.
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) as f64 }
}

/// CPU seconds `pid` has used, user and system (None when it is gone).
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let f = stat_fields(pid);
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks())
}

/// Entries directly below `dir` (empty when it does not exist).
pub fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

/// Resident memory of a process from /proc/<pid>/status, in KiB:
/// (VmRSS, RssShmem). Guest RAM is a shared memfd, so it shows up in the
/// VMM's RssShmem; VmRSS minus RssShmem is the VMM's own footprint.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some((field("VmRSS:")?, field("RssShmem:").unwrap_or(0)))
}

/// A minimal root file system from Debian's busybox-static: /bin/busybox
/// and a symlink per applet, plus the empty directories a container needs.
pub fn busybox_rootfs(root: &Path) {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "busybox-static is not installed (scripts/setup.sh installs it)"
    );
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    let list = std::process::Command::new(busybox)
        .arg("--list")
        .output()
        .unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let link = root.join("bin").join(applet);
        if applet != "busybox" && !link.exists() {
            std::os::unix::fs::symlink("busybox", link).unwrap();
        }
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
}

/// An OCI runtime spec like the one `ctr run` generates, for a rootfs at
/// `guest_rootfs` inside the guest.
pub fn oci_spec(guest_rootfs: &str, args: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.1.0",
        "root": {"path": guest_rootfs, "readonly": false},
        "hostname": "husk-test",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banner_release_is_extracted() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("vmlinux");
        std::fs::write(
            &f,
            b"\x7fELF...\0Linux version 6.1.99-husk (root@x) #1 SMP\0",
        )
        .unwrap();
        assert_eq!(kernel_release_of(&f).as_deref(), Some("6.1.99-husk"));
        std::fs::write(&f, b"no banner").unwrap();
        assert_eq!(kernel_release_of(&f), None);
    }

    #[test]
    fn this_process_is_alive_and_a_bogus_pid_is_not() {
        assert!(process_alive(std::process::id()));
        assert!(!process_alive(u32::MAX - 1));
    }

    #[test]
    fn rss_of_this_process_is_positive() {
        let (rss, _) = rss_kib(std::process::id()).unwrap();
        assert!(rss > 0);
    }
}
/// An image archive that scripts/setup.sh installs at `default` (or the
/// path in `env`); fails the test with the fix when it is missing.
pub fn installed_archive(env: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    assert!(
        path.exists(),
        "{} missing: run `sudo bash scripts/setup.sh`",
        path.display()
    );
    path
}

/// Runs `ip` with `args`; fails the test with its stderr if it fails.
pub fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("running ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub mod config_sh;
pub mod containerd;
pub mod cri;
pub mod cri_config;
pub mod ctr;
pub mod privileges;
pub mod release;
pub mod rfb;
pub mod streaming;
pub mod vm_guest;
