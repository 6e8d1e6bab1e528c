//! The last phase: execve(2) of the program found before "created". Its
//! argv and envp are arrays of pointers into the plan's strings, made
//! before the clone (`ExecArgs`): nix's execve builds them in a Vec, which
//! the child may not.

use crate::failure::{Report, Step};
use crate::plan::ProcessPlan;
use nix::errno::Errno;
use nix::libc::{self, c_char};
use std::ffi::{CStr, CString};
use std::marker::PhantomData;

/// argv and envp as execve takes them: null-terminated arrays of pointers
/// to the plan's C strings, which the lifetime keeps alive.
pub(crate) struct ExecArgs<'a> {
    argv: Vec<*const c_char>,
    envp: Vec<*const c_char>,
    plan: PhantomData<&'a ProcessPlan>,
}

impl<'a> ExecArgs<'a> {
    pub(crate) fn new(process: &'a ProcessPlan) -> Self {
        let pointers = |list: &'a [CString]| {
            list.iter()
                .map(|s| s.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect()
        };
        ExecArgs {
            argv: pointers(&process.args),
            envp: pointers(&process.env),
            plan: PhantomData,
        }
    }
}

/// Returns only on failure, with its report.
pub(super) fn exec(program: &CStr, args: &ExecArgs<'_>) -> Report {
    // SAFETY: `program` is a C string; argv and envp are null-terminated
    // arrays of pointers to C strings that `args`'s lifetime keeps alive.
    // execve only reads them, and returns only on failure.
    unsafe { libc::execve(program.as_ptr(), args.argv.as_ptr(), args.envp.as_ptr()) };
    Report::new(Step::Exec, 0, Errno::last())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_and_envp_point_at_the_plans_strings_and_end_in_null() {
        let process: oci_spec::runtime::Process = serde_json::from_value(
            serde_json::json!({"args": ["sh", "-c", "true"], "cwd": "/", "env": ["A=1"], "user": {"uid": 0, "gid": 0}}),
        )
        .unwrap();
        let plan = ProcessPlan::from_spec(&process).unwrap();
        let args = ExecArgs::new(&plan);
        assert_eq!(args.argv.len(), 4);
        assert_eq!(args.envp.len(), 2);
        assert!(args.argv[3].is_null() && args.envp[1].is_null());
        assert_eq!(args.argv[1], plan.args[1].as_ptr());
        assert_eq!(args.envp[0], plan.env[0].as_ptr());
    }
}
