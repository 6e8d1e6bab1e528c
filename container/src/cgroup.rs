//! One cgroup v2 directory per container below /sys/fs/cgroup/husk: made,
//! limited, frozen, read for stats and removed by the agent; joined by the
//! container's processes (an init joins by itself, see `child::cgroup`).

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";
const CONTROLLERS: &str = "+cpu +memory +pids";

/// Delegates the controllers to the husk subtree; best effort, as a guest
/// kernel without one of them can still run containers.
pub fn enable_controllers() {
    let husk = PathBuf::from(ROOT).join("husk");
    let _ = std::fs::write(
        PathBuf::from(ROOT).join("cgroup.subtree_control"),
        CONTROLLERS,
    );
    if std::fs::create_dir_all(&husk).is_ok() {
        let _ = std::fs::write(husk.join("cgroup.subtree_control"), CONTROLLERS);
    }
}

/// A cgroup's figures, read from its v2 files; missing files read as
/// empty (a guest kernel without that controller).
#[derive(Debug, Default, PartialEq)]
pub struct Stats {
    pub cpu_stat: HashMap<String, u64>,
    pub memory_stat: HashMap<String, u64>,
    pub memory_events: HashMap<String, u64>,
    pub memory_current: u64,
    /// None for "max".
    pub memory_max: Option<u64>,
    pub memory_peak: u64,
    pub pids_current: u64,
    pub pids_max: Option<u64>,
    /// io.stat per device: (major, minor, rbytes, wbytes, rios, wios).
    pub io: Vec<(u32, u32, u64, u64, u64, u64)>,
}

/// "key value" lines (cpu.stat, memory.stat, memory.events).
fn parse_flat_keyed(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

/// A single number, or None for "max" (memory.max, pids.max).
fn parse_limit(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// io.stat: "MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. dbytes=.. dios=..".
fn parse_io_stat(text: &str) -> Vec<(u32, u32, u64, u64, u64, u64)> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let (major, minor) = parts.next()?.split_once(':')?;
            let kv: HashMap<&str, u64> = parts
                .filter_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    Some((k, v.parse().ok()?))
                })
                .collect();
            let get = |k: &str| kv.get(k).copied().unwrap_or(0);
            Some((
                major.parse().ok()?,
                minor.parse().ok()?,
                get("rbytes"),
                get("wbytes"),
                get("rios"),
                get("wios"),
            ))
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("creating {}: {source}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{file} = {value}: {source}")]
    Write {
        file: String,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("adding process {pid}: {source}")]
    Add {
        pid: i32,
        #[source]
        source: io::Error,
    },
    #[error("cgroup.freeze: {0}")]
    Freeze(#[source] io::Error),
    #[error("cgroup did not reach '{0}' within 1 s")]
    FreezeTimeout(&'static str),
}

pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// The cgroup of container `id` (an id already checked to be a safe
    /// file name).
    pub fn create(id: &str) -> Result<Self, CgroupError> {
        let path = PathBuf::from(ROOT).join("husk").join(id);
        std::fs::create_dir_all(&path).map_err(|source| CgroupError::Create {
            path: path.clone(),
            source,
        })?;
        Ok(Self { path })
    }

    /// Writes (file, value) pairs such as ("memory.max", "67108864").
    pub fn apply(&self, limits: &[(&str, String)]) -> Result<(), CgroupError> {
        for (file, value) in limits {
            std::fs::write(self.path.join(file), value).map_err(|source| CgroupError::Write {
                file: (*file).to_owned(),
                value: value.clone(),
                source,
            })?;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn procs_path(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    pub fn add(&self, pid: i32) -> Result<(), CgroupError> {
        std::fs::write(self.procs_path(), pid.to_string())
            .map_err(|source| CgroupError::Add { pid, source })
    }

    /// Freezes (true) or thaws the group and waits until the kernel says
    /// it is done: `frozen` in cgroup.events follows cgroup.freeze once
    /// every task has stopped.
    pub fn freeze(&self, frozen: bool) -> Result<(), CgroupError> {
        std::fs::write(
            self.path.join("cgroup.freeze"),
            if frozen { "1" } else { "0" },
        )
        .map_err(CgroupError::Freeze)?;
        let want = if frozen { "frozen 1" } else { "frozen 0" };
        for _ in 0..500 {
            let events = std::fs::read_to_string(self.path.join("cgroup.events"))
                .map_err(CgroupError::Freeze)?;
            if events.lines().any(|l| l.trim() == want) {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        Err(CgroupError::FreezeTimeout(want))
    }

    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.path.join(file)).unwrap_or_default()
    }

    pub fn stats(&self) -> Stats {
        Stats {
            cpu_stat: parse_flat_keyed(&self.read("cpu.stat")),
            memory_stat: parse_flat_keyed(&self.read("memory.stat")),
            memory_events: self.memory_events(),
            memory_current: parse_limit(&self.read("memory.current")).unwrap_or(0),
            memory_max: parse_limit(&self.read("memory.max")),
            memory_peak: parse_limit(&self.read("memory.peak")).unwrap_or(0),
            pids_current: parse_limit(&self.read("pids.current")).unwrap_or(0),
            pids_max: parse_limit(&self.read("pids.max")),
            io: parse_io_stat(&self.read("io.stat")),
        }
    }

    pub fn memory_events(&self) -> HashMap<String, u64> {
        parse_flat_keyed(&self.read("memory.events"))
    }

    /// rmdir succeeds only once the cgroup is empty; a leftover is logged.
    pub fn remove(&self) {
        if let Err(e) = std::fs::remove_dir(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), %e, "cannot remove cgroup");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_files_parse() {
        let cpu = parse_flat_keyed("usage_usec 1234\nuser_usec 1000\nsystem_usec 234\n");
        assert_eq!(cpu["usage_usec"], 1234);
        assert_eq!(cpu["system_usec"], 234);
        let io = parse_io_stat("254:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n");
        assert_eq!(io, vec![(254, 0, 4096, 8192, 1, 2)]);
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("33554432\n"), Some(33_554_432));
    }
}
