//! `process` (runtime-spec config.md, "Process"): what is exec'd and how:
//! args, env, the program's PATH lookup done ahead of time, cwd, terminal,
//! user and noNewPrivileges. Capabilities and rlimits have their own files.

use super::error::{bad, cstring, path_cstring, SpecError};
use std::ffi::CString;

/// runc's default when the spec's env has no PATH.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug)]
pub(crate) struct ProcessPlan {
    pub args: Vec<CString>,
    pub env: Vec<CString>,
    /// Paths to try for args[0], in order (the PATH lookup, done ahead).
    pub exec_candidates: Vec<CString>,
    /// args[0] as given, for the "not found" message.
    pub program: String,
    pub cwd: CString,
    /// process.terminal: stdio is a new pseudo-terminal, the process its
    /// session leader with the terminal as its controlling tty.
    pub terminal: bool,
    /// process.consoleSize as (rows, columns).
    pub console_size: Option<(u16, u16)>,
    pub user: User,
    pub no_new_privileges: bool,
}

/// process.user: the ids the process runs as, and its umask.
#[derive(Debug, PartialEq)]
pub(crate) struct User {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub umask: Option<u32>,
}

impl ProcessPlan {
    pub fn from_spec(process: &oci_spec::runtime::Process) -> Result<Self, SpecError> {
        let args = process.args().clone().unwrap_or_default();
        let program = args
            .first()
            .cloned()
            .ok_or_else(|| bad("process.args", "must name a program"))?;
        let env = process.env().clone().unwrap_or_default();
        let cwd = process.cwd();
        if !cwd.is_absolute() {
            return Err(bad(
                "process.cwd",
                format!("{} is not absolute", cwd.display()),
            ));
        }
        let user = process.user();
        Ok(ProcessPlan {
            exec_candidates: exec_candidates(&program, &env)?,
            args: args
                .iter()
                .map(|a| cstring("process.args", a))
                .collect::<Result<_, _>>()?,
            env: env
                .iter()
                .map(|e| cstring("process.env", e))
                .collect::<Result<_, _>>()?,
            program,
            cwd: path_cstring("process.cwd", cwd)?,
            terminal: process.terminal().unwrap_or(false),
            console_size: process.console_size().as_ref().map(|b| {
                (
                    b.height().min(u16::MAX as u64) as u16,
                    b.width().min(u16::MAX as u64) as u16,
                )
            }),
            user: User {
                uid: user.uid(),
                gid: user.gid(),
                additional_gids: user.additional_gids().clone().unwrap_or_default(),
                umask: user.umask(),
            },
            no_new_privileges: process.no_new_privileges().unwrap_or(false),
        })
    }
}

/// Where args[0] may be: itself if it has a slash, else each directory of
/// the spec's PATH (runc's default without one), in order.
fn exec_candidates(program: &str, env: &[String]) -> Result<Vec<CString>, SpecError> {
    if program.contains('/') {
        return Ok(vec![cstring("process.args[0]", program)?]);
    }
    env.iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH)
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| cstring("process.env PATH", &format!("{d}/{program}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(v: serde_json::Value) -> Result<ProcessPlan, SpecError> {
        let mut v = v;
        if v.get("user").is_none() {
            v["user"] = serde_json::json!({"uid": 0, "gid": 0});
        }
        ProcessPlan::from_spec(&serde_json::from_value(v).unwrap())
    }

    #[test]
    fn the_program_is_looked_up_on_the_specs_path_or_runcs() {
        let p = plan(serde_json::json!({"args": ["sh"], "cwd": "/", "env": ["PATH=/bin::/usr/bin"],
                                         "user": {"uid": 1000, "gid": 1000, "additionalGids": [10], "umask": 18}}))
        .unwrap();
        assert_eq!(p.exec_candidates, [c"/bin/sh", c"/usr/bin/sh"]);
        assert_eq!(
            p.user,
            User {
                uid: 1000,
                gid: 1000,
                additional_gids: vec![10],
                umask: Some(0o22)
            }
        );
        let p = plan(serde_json::json!({"args": ["ls"], "cwd": "/"})).unwrap();
        assert_eq!(p.exec_candidates.len(), DEFAULT_PATH.split(':').count());
        assert_eq!(p.exec_candidates[0].as_c_str(), c"/usr/local/sbin/ls");
        let p = plan(serde_json::json!({"args": ["./run", "x"], "cwd": "/"})).unwrap();
        assert_eq!(p.exec_candidates, [c"./run"]);
        assert_eq!(p.args, [c"./run", c"x"]);
    }

    #[test]
    fn terminal_and_console_size_reach_the_plan() {
        let p = plan(
            serde_json::json!({"args": ["sh"], "cwd": "/", "terminal": true,
                                         "consoleSize": {"height": 40, "width": 120}}),
        )
        .unwrap();
        assert!(p.terminal);
        assert_eq!(p.console_size, Some((40, 120)));
    }

    #[test]
    fn bad_processes_name_the_field() {
        let e = plan(serde_json::json!({"args": ["sh"], "cwd": "rel"})).unwrap_err();
        assert_eq!(e.field(), "process.cwd");
        let e = plan(serde_json::json!({"args": [], "cwd": "/"})).unwrap_err();
        assert_eq!(e.field(), "process.args");
        let e = plan(serde_json::json!({"args": ["sh", "a\u{0}b"], "cwd": "/"})).unwrap_err();
        assert_eq!(e.field(), "process.args");
    }
}
