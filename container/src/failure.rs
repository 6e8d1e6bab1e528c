//! What the child tells the agent on its status pipe: one fixed-size record
//! (step, index, errno). Step `Created` says it is ready and waits for
//! Start; any other step says where it failed, the index which item of the
//! step (the mount, the device, ...) and the errno why. A successful exec
//! closes the pipe (it is close-on-exec), which the agent reads as EOF.
//!
//! The record is defined here once, and so is its reading: `ChildFailure`
//! puts a failure in the words runc uses where runc has words for it.

use crate::plan::Plan;
use nix::errno::Errno;

/// Declares `Step` and `Step::ALL` from one list, so that decoding knows
/// every step and the list cannot fall out of step with the enum.
macro_rules! steps {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// What the child was doing when it failed (or that it is ready).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u16)]
        pub enum Step {
            $($(#[$doc])* $name,)*
        }

        impl Step {
            /// Every step, in discriminant order.
            const ALL: &'static [Step] = &[$(Step::$name,)*];
        }
    };
}

steps! {
    /// Not a failure: the child is set up and waits for Start.
    Created,
    Stdio,
    Setsid,
    JoinNamespace,
    Cgroup,
    MountPrivate,
    BindRoot,
    Mount,
    Device,
    DeviceNode,
    Hostname,
    PivotRoot,
    ReadonlyRoot,
    MaskPath,
    ReadonlyPath,
    Sysctl,
    Rlimit,
    Cwd,
    Lookup,
    WaitStart,
    User,
    Capabilities,
    NoNewPrivs,
    Seccomp,
    Terminal,
    Exec,
}

impl Step {
    fn from_u16(v: u16) -> Option<Step> {
        Self::ALL.get(usize::from(v)).copied()
    }
}

/// The size of a record on the status pipe.
pub(crate) const REPORT_LEN: usize = 8;

/// One record: the step, which item of it, and the errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Report {
    pub step: Step,
    pub index: u16,
    pub errno: Errno,
}

impl Report {
    pub(crate) fn new(step: Step, index: usize, errno: Errno) -> Self {
        Report {
            step,
            index: u16::try_from(index).unwrap_or(u16::MAX),
            errno,
        }
    }

    /// The child is set up: the record that asks for Start.
    pub(crate) const CREATED: Report = Report {
        step: Step::Created,
        index: 0,
        errno: Errno::UnknownErrno,
    };

    /// Little-endian step (2 bytes), index (2), errno (4).
    pub(crate) fn encode(&self) -> [u8; REPORT_LEN] {
        let mut out = [0u8; REPORT_LEN];
        out[0..2].copy_from_slice(&(self.step as u16).to_le_bytes());
        out[2..4].copy_from_slice(&self.index.to_le_bytes());
        out[4..8].copy_from_slice(&(self.errno as i32).to_le_bytes());
        out
    }

    /// None for a step this build does not know.
    pub(crate) fn decode(buf: &[u8; REPORT_LEN]) -> Option<Report> {
        Some(Report {
            step: Step::from_u16(u16::from_le_bytes([buf[0], buf[1]]))?,
            index: u16::from_le_bytes([buf[2], buf[3]]),
            errno: Errno::from_raw(i32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]])),
        })
    }
}

/// A failure the child reported, as the user sees it: in runc's words
/// where runc has words for it, else what failed and the errno.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ChildFailure {
    pub step: Step,
    /// Which item of the step: the mount, the device node, the sysctl...
    pub index: u16,
    pub errno: Errno,
    message: String,
}

impl ChildFailure {
    pub(crate) fn new(plan: &Plan, report: Report) -> Self {
        ChildFailure {
            step: report.step,
            index: report.index,
            errno: report.errno,
            message: describe(plan, report),
        }
    }
}

/// The one mapping from a record to words.
fn describe(plan: &Plan, report: Report) -> String {
    let i = usize::from(report.index);
    let program = &plan.process.program;
    let what = match report.step {
        Step::Lookup if program.contains('/') => {
            return format!("exec: \"{program}\": stat {program}: no such file or directory")
        }
        Step::Lookup => return format!("exec: \"{program}\": executable file not found in $PATH"),
        Step::Mount => plan.mounts.get(i).map_or("mounting".into(), |m| {
            format!(
                "mounting {} on {}",
                m.fstype
                    .as_ref()
                    .map_or("bind".into(), |t| t.to_string_lossy()),
                m.destination
            )
        }),
        Step::Cwd => format!("chdir to cwd ({})", plan.process.cwd.to_string_lossy()),
        Step::Exec => format!("exec {program}"),
        Step::Device => "creating device nodes".into(),
        Step::DeviceNode => plan
            .devices
            .nodes
            .get(i)
            .map_or("linux.devices".into(), |d| {
                format!("creating device {}", d.path)
            }),
        Step::Sysctl => plan.sysctls.get(i).map_or("linux.sysctl".into(), |s| {
            format!("writing sysctl {}", s.path.to_string_lossy())
        }),
        Step::Seccomp => "loading the seccomp filter".into(),
        Step::Terminal => "setting up the terminal".into(),
        step => format!("{step:?}"),
    };
    format!("{what}: {}", report.errno.desc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_decodes_to_itself() {
        for (i, step) in Step::ALL.iter().enumerate() {
            assert_eq!(*step as usize, i, "{step:?} out of order in Step::ALL");
            assert_eq!(Step::from_u16(i as u16), Some(*step));
        }
        assert_eq!(Step::from_u16(Step::ALL.len() as u16), None);
    }

    #[test]
    fn reports_round_trip() {
        let r = Report::new(Step::Mount, 3, Errno::EPERM);
        assert_eq!(Report::decode(&r.encode()), Some(r));
        let created = Report::decode(&Report::CREATED.encode()).unwrap();
        assert_eq!(created.step, Step::Created);
        // An index past u16 saturates rather than naming another item.
        assert_eq!(
            Report::new(Step::Mount, 70_000, Errno::EPERM).index,
            u16::MAX
        );
        let mut unknown = r.encode();
        unknown[0..2].copy_from_slice(&999u16.to_le_bytes());
        assert_eq!(Report::decode(&unknown), None);
    }

    fn words(extra: serde_json::Value, step: Step, index: usize, errno: Errno) -> String {
        let root = tempfile::tempdir().unwrap();
        let spec = crate::plan::tests::spec(root.path(), extra);
        let plan = Plan::from_spec(&spec).unwrap();
        ChildFailure::new(&plan, Report::new(step, index, errno)).to_string()
    }

    #[test]
    fn failures_read_in_runcs_words() {
        let none = serde_json::json!({});
        assert_eq!(
            words(none.clone(), Step::Lookup, 0, Errno::ENOENT),
            "exec: \"sh\": executable file not found in $PATH"
        );
        let path = serde_json::json!({"process": {"args": ["/nonexistent"]}});
        assert_eq!(
            words(path, Step::Lookup, 0, Errno::ENOENT),
            "exec: \"/nonexistent\": stat /nonexistent: no such file or directory"
        );
        let mounts = serde_json::json!({"mounts": [
            {"destination": "/a", "type": "tmpfs", "source": "tmpfs"},
            {"destination": "/b", "type": "proc", "source": "proc"}
        ]});
        assert_eq!(
            words(mounts, Step::Mount, 1, Errno::EPERM),
            "mounting proc on /b: Operation not permitted"
        );
        assert_eq!(
            words(none.clone(), Step::Cwd, 0, Errno::ENOTDIR),
            "chdir to cwd (/): Not a directory"
        );
        // A step with no words of its own is named.
        assert_eq!(
            words(none, Step::PivotRoot, 0, Errno::EINVAL),
            "PivotRoot: Invalid argument"
        );
    }
}
