//! `linux.sysctl` (runtime-spec config-linux.md, "Sysctl"), limited as
//! runc limits it to what the container's own namespaces isolate: writing
//! anything else would change the whole VM, which the pod's other
//! containers share.

use super::error::{bad, cstring, SpecError};
use nix::sched::CloneFlags;
use std::collections::HashMap;
use std::ffi::CString;

/// The IPC namespace's sysctls besides `fs.mqueue.*`.
const IPC: &[&str] = &[
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];

/// One write, inside the container's namespaces, before /proc/sys is
/// made read-only.
#[derive(Debug, PartialEq)]
pub(crate) struct Sysctl {
    /// The file below /proc/sys.
    pub path: CString,
    pub value: CString,
}

/// The spec's sysctls in name order; `namespaces` are the container's own
/// (made, or joined by path).
pub(crate) fn from_spec(
    map: Option<&HashMap<String, String>>,
    namespaces: CloneFlags,
) -> Result<Vec<Sysctl>, SpecError> {
    let mut keys: Vec<_> = map.into_iter().flatten().collect();
    keys.sort();
    let mut out = Vec::new();
    for (key, value) in keys {
        let field = format!("linux.sysctl[{key}]");
        let (needs, ns_name) = if IPC.contains(&key.as_str()) || key.starts_with("fs.mqueue.") {
            (CloneFlags::CLONE_NEWIPC, "IPC")
        } else if key.starts_with("net.") {
            (CloneFlags::CLONE_NEWNET, "network")
        } else if key == "kernel.hostname" || key == "kernel.domainname" {
            (CloneFlags::CLONE_NEWUTS, "UTS")
        } else {
            return Err(bad(
                field,
                "not a namespaced sysctl: it would change the whole VM",
            ));
        };
        if !namespaces.contains(needs) {
            return Err(bad(
                field,
                format!("needs a new {ns_name} namespace, which the spec does not ask for"),
            ));
        }
        if key.contains("..") || key.contains('/') {
            return Err(bad(field, "not a sysctl name"));
        }
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        out.push(Sysctl {
            path: cstring(&field, &path)?,
            value: cstring(&field, value)?,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sysctls(pairs: &[(&str, &str)], ns: CloneFlags) -> Result<Vec<Sysctl>, SpecError> {
        let map = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        from_spec(Some(&map), ns)
    }

    #[test]
    fn namespaced_sysctls_become_proc_sys_writes_in_name_order() {
        let ns = CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWNET;
        let plan = sysctls(
            &[
                ("net.ipv4.ip_local_port_range", "1024 2048"),
                ("kernel.shmmni", "1000"),
                ("fs.mqueue.msg_max", "20"),
            ],
            ns,
        )
        .unwrap();
        let paths: Vec<_> = plan.iter().map(|s| s.path.as_c_str()).collect();
        assert_eq!(
            paths,
            [
                c"/proc/sys/fs/mqueue/msg_max",
                c"/proc/sys/kernel/shmmni",
                c"/proc/sys/net/ipv4/ip_local_port_range"
            ]
        );
        assert_eq!(plan[2].value.as_c_str(), c"1024 2048");
    }

    #[test]
    fn sysctls_of_the_whole_vm_or_a_shared_namespace_are_refused() {
        let e = sysctls(&[("vm.swappiness", "1")], CloneFlags::all()).unwrap_err();
        assert_eq!(e.field(), "linux.sysctl[vm.swappiness]");
        let e = sysctls(&[("net.ipv4.ip_forward", "1")], CloneFlags::CLONE_NEWNS).unwrap_err();
        assert!(e.to_string().contains("network namespace"), "{e}");
        let e = sysctls(&[("net.../x", "1")], CloneFlags::all()).unwrap_err();
        assert!(e.to_string().contains("not a sysctl name"), "{e}");
    }
}
