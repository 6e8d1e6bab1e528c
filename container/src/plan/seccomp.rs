//! `linux.seccomp` (runtime-spec config-linux.md, "Seccomp") to a BPF
//! program. libseccomp compiles the profile in the agent, before the clone;
//! the child only loads the finished program with one seccomp(2) call (it
//! may not allocate, see `child::seccomp`).
//!
//! Semantics follow runc: unknown syscall names are skipped (profiles list
//! syscalls of newer kernels), a rule whose action is the default action is
//! dropped, and argument conditions on the same argument index become
//! separate rules (OR) while different indexes combine (AND).

use super::error::{bad, SpecError};
use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
    LinuxSyscall,
};
use std::io::{Read, Seek};

/// seccomp(2) flags we can pass through (linux/seccomp.h).
const FILTER_FLAG_LOG: u32 = 1 << 1;
const FILTER_FLAG_SPEC_ALLOW: u32 = 1 << 2;

/// A compiled filter: the BPF instructions and the seccomp(2) flags.
#[derive(Debug)]
pub(crate) struct SeccompProgram {
    pub filter: Vec<nix::libc::sock_filter>,
    pub flags: u32,
}

fn action(
    field: &str,
    action: LinuxSeccompAction,
    errno: Option<u32>,
) -> Result<ScmpAction, SpecError> {
    let errno = errno.map_or(nix::libc::EPERM, |e| e as i32);
    Ok(match action {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(errno),
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(errno as u16),
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(bad(
                field,
                "SCMP_ACT_NOTIFY needs a seccomp agent, which husk does not run",
            ))
        }
    })
}

fn compare(op: LinuxSeccompOperator, value: u64, value_two: Option<u64>) -> (ScmpCompareOp, u64) {
    match op {
        LinuxSeccompOperator::ScmpCmpNe => (ScmpCompareOp::NotEqual, value),
        LinuxSeccompOperator::ScmpCmpLt => (ScmpCompareOp::Less, value),
        LinuxSeccompOperator::ScmpCmpLe => (ScmpCompareOp::LessOrEqual, value),
        LinuxSeccompOperator::ScmpCmpEq => (ScmpCompareOp::Equal, value),
        LinuxSeccompOperator::ScmpCmpGe => (ScmpCompareOp::GreaterEqual, value),
        LinuxSeccompOperator::ScmpCmpGt => (ScmpCompareOp::Greater, value),
        // OCI: value is the mask, valueTwo the datum.
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            (ScmpCompareOp::MaskedEqual(value), value_two.unwrap_or(0))
        }
    }
}

fn arch(a: Arch) -> Option<ScmpArch> {
    match a {
        Arch::ScmpArchNative => Some(ScmpArch::Native),
        Arch::ScmpArchX86_64 => Some(ScmpArch::X8664),
        Arch::ScmpArchX86 => Some(ScmpArch::X86),
        Arch::ScmpArchX32 => Some(ScmpArch::X32),
        // Other architectures cannot run in this x86_64 guest.
        _ => None,
    }
}

/// Compiles `profile` for the guest.
pub(crate) fn compile(profile: &LinuxSeccomp) -> Result<SeccompProgram, SpecError> {
    let lib = |source| SpecError::Seccomp {
        field: "linux.seccomp".into(),
        source,
    };
    let default = action(
        "linux.seccomp.defaultAction",
        profile.default_action(),
        profile.default_errno_ret(),
    )?;
    let flags = filter_flags(profile)?;
    let mut ctx = ScmpFilterContext::new_filter(default).map_err(lib)?;
    for a in profile
        .architectures()
        .iter()
        .flatten()
        .filter_map(|a| arch(*a))
    {
        ctx.add_arch(a).map_err(lib)?;
    }
    for (i, rule) in profile.syscalls().iter().flatten().enumerate() {
        add_rule(&mut ctx, i, rule, default)?;
    }
    Ok(SeccompProgram {
        filter: export(&ctx)?,
        flags,
    })
}

/// linux.seccomp.flags as seccomp(2) flags.
fn filter_flags(profile: &LinuxSeccomp) -> Result<u32, SpecError> {
    let mut flags = 0;
    for f in profile.flags().iter().flatten() {
        flags |= match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => FILTER_FLAG_SPEC_ALLOW,
            // The child is single-threaded: there is nothing to synchronise,
            // and asking for it would be a profile we do not understand.
            other => {
                return Err(bad(
                    "linux.seccomp.flags",
                    format!("{other} is not supported"),
                ))
            }
        };
    }
    Ok(flags)
}

/// linux.seccomp.syscalls[i], unless its action is the default one.
fn add_rule(
    ctx: &mut ScmpFilterContext,
    i: usize,
    rule: &LinuxSyscall,
    default: ScmpAction,
) -> Result<(), SpecError> {
    let field = format!("linux.seccomp.syscalls[{i}]");
    let act = action(&format!("{field}.action"), rule.action(), rule.errno_ret())?;
    if act == default {
        return Ok(());
    }
    let args = rule.args().clone().unwrap_or_default();
    let conditions: Vec<ScmpArgCompare> = args
        .iter()
        .map(|a| {
            let (op, datum) = compare(a.op(), a.value(), a.value_two());
            ScmpArgCompare::new(a.index() as u32, op, datum)
        })
        .collect();
    let mut indexes: Vec<usize> = args.iter().map(|a| a.index()).collect();
    indexes.sort_unstable();
    indexes.dedup();
    let one_rule = indexes.len() == args.len();
    for name in rule.names() {
        let Ok(syscall) = ScmpSyscall::from_name(name) else {
            tracing::debug!(syscall = %name, "seccomp: unknown syscall skipped");
            continue;
        };
        let result = if conditions.is_empty() {
            ctx.add_rule(act, syscall)
        } else if one_rule {
            ctx.add_rule_conditional(act, syscall, &conditions)
        } else {
            conditions
                .iter()
                .try_for_each(|c| ctx.add_rule_conditional(act, syscall, &[*c]))
        };
        result.map_err(|source| SpecError::Seccomp {
            field: format!("{field} ({name})"),
            source,
        })?;
    }
    Ok(())
}

/// The filter as BPF instructions (libseccomp writes them to an fd).
fn export(ctx: &ScmpFilterContext) -> Result<Vec<nix::libc::sock_filter>, SpecError> {
    let io = SpecError::SeccompExport;
    let mut file = tempfile_in_memory().map_err(io)?;
    ctx.export_bpf(&mut file)
        .map_err(|source| SpecError::Seccomp {
            field: "linux.seccomp".into(),
            source,
        })?;
    let mut bytes = Vec::new();
    file.rewind().map_err(io)?;
    file.read_to_end(&mut bytes).map_err(io)?;
    const INSN: usize = std::mem::size_of::<nix::libc::sock_filter>();
    if bytes.is_empty() || bytes.len() % INSN != 0 || bytes.len() / INSN > u16::MAX as usize {
        return Err(bad(
            "linux.seccomp",
            format!("libseccomp wrote {} bytes of BPF", bytes.len()),
        ));
    }
    Ok(bytes
        .chunks_exact(INSN)
        .map(|c| nix::libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect())
}

fn tempfile_in_memory() -> std::io::Result<std::fs::File> {
    let fd = nix::sys::memfd::memfd_create(
        c"husk-seccomp",
        nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
    )?;
    Ok(std::fs::File::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(v: serde_json::Value) -> LinuxSeccomp {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_profile_compiles_to_bpf_that_checks_the_architecture_first() {
        let p = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
            "syscalls": [
                {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
                {"names": ["no_such_syscall_anywhere"], "action": "SCMP_ACT_KILL"},
                {"names": ["getpid"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["personality"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_NE"}]}
            ]
        }));
        let prog = compile(&p).unwrap();
        // BPF_LD|BPF_W|BPF_ABS of seccomp_data.arch (offset 4) comes first.
        assert_eq!((prog.filter[0].code, prog.filter[0].k), (0x20, 4));
        // An errno return of 1 (EPERM) for mkdir: SECCOMP_RET_ERRNO | 1.
        assert!(prog
            .filter
            .iter()
            .any(|i| i.code == 0x06 && i.k == 0x0005_0001));
        assert_eq!(prog.flags, 0);
    }

    #[test]
    fn notify_and_unknown_flags_are_refused_with_the_field() {
        let notify = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]
        }));
        let e = compile(&notify).unwrap_err().to_string();
        assert!(e.starts_with("linux.seccomp.syscalls[0].action"), "{e}");
        let tsync = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "flags": ["SECCOMP_FILTER_FLAG_TSYNC"]
        }));
        let e = compile(&tsync).unwrap_err().to_string();
        assert!(e.starts_with("linux.seccomp.flags"), "{e}");
    }
}
