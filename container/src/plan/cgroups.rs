//! The container's cgroup: `linux.resources` (runtime-spec
//! config-linux.md, "Control groups") as cgroup v2 writes, converted as runc
//! converts them, and the cgroup.procs file an init joins by itself.
//! Device rules are not applied: the VM is the device boundary, and the
//! guest has no devices beyond the defaults.

use super::error::{bad, SpecError};
use oci_spec::runtime::LinuxResources;
use std::ffi::CString;

#[derive(Debug, Default)]
pub(crate) struct CgroupPlan {
    /// (file, value) writes from linux.resources, made by the agent.
    pub limits: Vec<(&'static str, String)>,
    /// The container cgroup's cgroup.procs: an init moves itself there
    /// before unsharing its cgroup namespace. Set by `Plan::place_in`.
    pub procs: Option<CString>,
}

/// linux.resources as (cgroup v2 file, value) writes.
pub fn cgroup_limits(
    res: Option<&LinuxResources>,
) -> Result<Vec<(&'static str, String)>, SpecError> {
    let mut out = Vec::new();
    let Some(res) = res else { return Ok(out) };
    if let Some(limit) = res.memory().as_ref().and_then(|m| m.limit()) {
        match limit {
            -1 => out.push(("memory.max", "max".to_owned())),
            // runc reads 0 as "not set".
            0 => {}
            l if l > 0 => out.push(("memory.max", l.to_string())),
            l => {
                return Err(bad(
                    "linux.resources.memory.limit",
                    format!("must be positive or -1 (unlimited), got {l}"),
                ))
            }
        }
    }
    if let Some(cpu) = res.cpu() {
        if let Some(shares) = cpu.shares().filter(|&s| s > 0) {
            let weight = 1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142;
            out.push(("cpu.weight", weight.to_string()));
        }
        let period = cpu.period().unwrap_or(100_000);
        match cpu.quota() {
            Some(q) if q > 0 => out.push(("cpu.max", format!("{q} {period}"))),
            Some(q) if q != -1 && q != 0 => {
                return Err(bad(
                    "linux.resources.cpu.quota",
                    format!("must be positive or -1, got {q}"),
                ))
            }
            _ => {}
        }
    }
    if let Some(limit) = res.pids().as_ref().map(|p| p.limit()) {
        out.push((
            "pids.max",
            if limit > 0 {
                limit.to_string()
            } else {
                "max".to_owned()
            },
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(v: serde_json::Value) -> Result<Vec<(&'static str, String)>, SpecError> {
        cgroup_limits(Some(&serde_json::from_value(v).unwrap()))
    }

    #[test]
    fn resources_convert_as_runc_converts_them() {
        let l = limits(serde_json::json!({
            "memory": {"limit": 67108864},
            "cpu": {"shares": 1024, "quota": 50000},
            "pids": {"limit": 0}
        }))
        .unwrap();
        assert_eq!(
            l,
            [
                ("memory.max", "67108864".to_owned()),
                ("cpu.weight", "39".to_owned()),
                ("cpu.max", "50000 100000".to_owned()),
                ("pids.max", "max".to_owned())
            ]
        );
        let unlimited = limits(serde_json::json!({"memory": {"limit": -1}})).unwrap();
        assert_eq!(unlimited, [("memory.max", "max".to_owned())]);
        assert!(cgroup_limits(None).unwrap().is_empty());
    }

    #[test]
    fn negative_limits_name_the_field() {
        let e = limits(serde_json::json!({"memory": {"limit": -2}})).unwrap_err();
        assert_eq!(e.field(), "linux.resources.memory.limit");
        let e = limits(serde_json::json!({"cpu": {"quota": -5}})).unwrap_err();
        assert_eq!(e.field(), "linux.resources.cpu.quota");
    }
}
