//! Node-wide counters that outlive any one shim: VM boots and failed
//! boots. Each is a file under `<runtime_dir>/node/` holding a decimal
//! number, bumped under an exclusive `flock` by the shim that booted (or
//! failed to boot) a VM, and read by `husk metrics`. The runtime directory
//! is on tmpfs (`/run/husk`), so the counters start again at zero with the
//! node, as Prometheus counters may.

use super::text::{Exposition, Kind};
use super::TelemetryError;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// VMs that booted to a ready agent.
pub const BOOTS: &str = "vm-boots";
/// VMs that failed to boot (any error from preflight to agent ready).
pub const BOOT_FAILURES: &str = "vm-boot-failures";

/// Longest counter file read: a u64 in decimal is at most 20 digits.
const MAX_COUNTER_BYTES: u64 = 32;

/// `<runtime_dir>/node`.
pub fn dir(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("node")
}

/// Adds one to counter `name` and returns its new value.
pub fn bump(runtime_dir: &Path, name: &str) -> Result<u64, TelemetryError> {
    let dir = dir(runtime_dir);
    let io = |what, path: &Path| {
        let path = path.to_owned();
        move |source| TelemetryError::Io { what, path, source }
    };
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
    {
        Ok(()) => {}
        Err(e) => return Err(io("creating", &dir)(e)),
    }
    let path = dir.join(name);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(io("opening", &path))?;
    // Held until `locked` drops: the read-modify-write is one shim's.
    let mut locked = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| io("locking", &path)(e.into()))?;
    let value = read_value(&mut locked).map_err(io("reading", &path))? + 1;
    locked
        .set_len(0)
        .and_then(|()| locked.rewind())
        .and_then(|()| locked.write_all(format!("{value}\n").as_bytes()))
        .map_err(io("writing", &path))?;
    Ok(value)
}

/// The value of counter `name`; 0 when it was never bumped.
pub fn read(runtime_dir: &Path, name: &str) -> u64 {
    let path = dir(runtime_dir).join(name);
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
    {
        Ok(mut f) => read_value(&mut f).unwrap_or(0),
        Err(_) => 0,
    }
}

fn read_value(file: &mut std::fs::File) -> std::io::Result<u64> {
    let mut text = String::new();
    file.take(MAX_COUNTER_BYTES).read_to_string(&mut text)?;
    Ok(text.trim().parse().unwrap_or(0))
}

/// Counts a boot, logging (not failing) when the counter cannot be written.
pub fn record_boot(runtime_dir: &Path, pod_id: &str, ok: bool) {
    let name = if ok { BOOTS } else { BOOT_FAILURES };
    if let Err(e) = bump(runtime_dir, name) {
        tracing::warn!(pod_id, %e, "cannot count the VM boot in the node's metrics");
    }
}

/// The node counters as a family.
pub fn add_to(exp: &mut Exposition, runtime_dir: &Path) {
    exp.family(
        "husk_node_vm_boots_total",
        "VM boots on this node since it started, by result (ok: the agent answered; \
         failed: any error before that).",
        Kind::Counter,
    )
    .sample(&[("result", "ok")], read(runtime_dir, BOOTS) as f64)
    .sample(
        &[("result", "failed")],
        read(runtime_dir, BOOT_FAILURES) as f64,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_start_at_zero_and_count_across_threads() {
        let dir = tempfile::tempdir().unwrap();
        let rt = dir.path().join("run");
        assert_eq!(read(&rt, BOOTS), 0);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let rt = rt.clone();
                std::thread::spawn(move || {
                    for _ in 0..25 {
                        bump(&rt, BOOTS).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(read(&rt, BOOTS), 200);
        assert_eq!(read(&rt, BOOT_FAILURES), 0);
        record_boot(&rt, "p", false);
        let mut exp = Exposition::default();
        add_to(&mut exp, &rt);
        assert_eq!(
            exp.find("husk_node_vm_boots_total", &[("result", "ok")]),
            vec![200.0]
        );
        assert_eq!(
            exp.find("husk_node_vm_boots_total", &[("result", "failed")]),
            vec![1.0]
        );
    }

    #[test]
    fn a_symlinked_counter_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let rt = dir.path();
        std::fs::create_dir_all(super::dir(rt)).unwrap();
        let target = rt.join("elsewhere");
        std::fs::write(&target, "41\n").unwrap();
        std::os::unix::fs::symlink(&target, super::dir(rt).join(BOOTS)).unwrap();
        assert!(bump(rt, BOOTS).is_err());
        assert_eq!(read(rt, BOOTS), 0);
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "41\n");
    }
}
