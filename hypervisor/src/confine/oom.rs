//! A VM's standing with the OOM killer: each of its host processes gets
//! the `oom_score_adj` its pod's containers would get under runc (runc
//! writes the spec's `process.oomScoreAdj` for the container's process;
//! kubelet derives it from the pod's QoS class: BestEffort 1000,
//! Guaranteed -997, Burstable in between; the sandbox's is -998). A VM
//! takes the highest of its containers': it holds all of their memory, so
//! it must not outlive a pod the kernel would kill first.
//!
//! Two ways in: between fork and exec as a [`Confinement`]'s first step
//! ([`Score::write_own`], while the child's `/proc` is still the host's),
//! and from the launcher for processes already running
//! ([`set`]: a pooled VM handed to a pod, a pod's later containers).
//!
//! Lowering a score below the one a process was given takes
//! CAP_SYS_RESOURCE (`proc(5)`, `oom_score_adj_min`); where the launcher
//! lacks it (this project's build hosts, like containerd's
//! `restrict_oom_score_adj`), such a write fails and is reported.
//!
//! [`Confinement`]: super::Confinement

use crate::Error;

/// The kernel's range for `oom_score_adj`.
pub const MIN: i32 = -1000;
pub const MAX: i32 = 1000;

/// A checked score, formatted before the fork.
#[derive(Debug, Clone)]
pub struct Score {
    value: i32,
    text: [u8; 8],
    len: usize,
}

impl Score {
    pub fn new(value: i32) -> Result<Self, Error> {
        if !(MIN..=MAX).contains(&value) {
            return Err(Error::InvalidSpec {
                field: "oom_score_adj",
                message: format!("{value} is outside {MIN}..={MAX}"),
            });
        }
        let s = value.to_string();
        let mut text = [0u8; 8];
        text[..s.len()].copy_from_slice(s.as_bytes());
        Ok(Self {
            value,
            text,
            len: s.len(),
        })
    }

    pub fn value(&self) -> i32 {
        self.value
    }

    /// Writes the score as the calling process's own. System calls only:
    /// safe between fork and exec.
    pub(crate) fn write_own(&self) -> std::io::Result<()> {
        const PATH: &[u8] = b"/proc/self/oom_score_adj\0";
        // SAFETY: open of a static NUL-terminated path, write of a buffer
        // owned by self, close of the descriptor just opened.
        unsafe {
            let fd = libc::open(PATH.as_ptr().cast(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let n = libc::write(fd, self.text.as_ptr().cast(), self.len);
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            if n != self.len as isize {
                return Err(e);
            }
        }
        Ok(())
    }
}

/// Sets `score` on each process of `pids` (a VM's, parents first). A
/// process that is gone is skipped; the first other failure is returned
/// after every process was tried.
pub fn set(pids: &[u32], score: &Score) -> Result<(), Error> {
    let mut first = None;
    for &pid in pids {
        let path = format!("/proc/{pid}/oom_score_adj");
        match std::fs::write(&path, &score.text[..score.len]) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                first.get_or_insert(Error::io(format!("setting {path} to {}", score.value), e));
            }
        }
    }
    first.map_or(Ok(()), Err)
}

/// The score of `pid` (None when it is gone or unreadable).
pub fn get(pid: u32) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_outside_the_kernels_range_are_refused_by_name() {
        for bad in [-1001, 1001, i32::MIN, i32::MAX] {
            let e = Score::new(bad).unwrap_err().to_string();
            assert!(
                e.contains("oom_score_adj") && e.contains(&bad.to_string()),
                "{e}"
            );
        }
        assert_eq!(Score::new(-1000).unwrap().value(), -1000);
        assert_eq!(&Score::new(-997).unwrap().text[..4], b"-997");
    }

    #[test]
    fn a_child_raises_its_own_score_before_exec_and_the_parent_can_raise_it_again() {
        let score = Score::new(900).unwrap();
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("30");
        use std::os::unix::process::CommandExt;
        let s = score.clone();
        // SAFETY: write_own makes system calls only.
        unsafe {
            cmd.pre_exec(move || s.write_own());
        }
        let mut child = cmd.spawn().unwrap();
        let pid = child.id();
        assert_eq!(get(pid), Some(900));
        set(&[pid, u32::MAX - 1], &Score::new(950).unwrap()).unwrap();
        assert_eq!(get(pid), Some(950));
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(get(u32::MAX - 1), None);
    }
}
