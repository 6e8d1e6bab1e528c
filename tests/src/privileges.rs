//! What a host process may do, read from /proc: its uid and gid, its
//! capabilities, no_new_privs, seccomp, and which namespaces it shares
//! with a reference process (the shim). The least-privilege suite asserts
//! on it and prints it as the table docs/security.md carries.

use std::collections::BTreeSet;
use std::path::Path;

/// The namespaces compared, as /proc/<pid>/ns names them.
pub const NAMESPACES: [&str; 7] = ["mnt", "pid", "net", "ipc", "uts", "user", "cgroup"];

/// Capability names by bit (include/uapi/linux/capability.h).
const CAPS: [&str; 41] = [
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
];

/// One process's privileges.
#[derive(Debug, Clone)]
pub struct Privileges {
    pub pid: u32,
    pub comm: String,
    /// Real, effective, saved and filesystem uid.
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    pub groups: Vec<u32>,
    pub cap_eff: u64,
    pub cap_prm: u64,
    pub cap_bnd: u64,
    pub no_new_privs: bool,
    /// 0 none, 1 strict, 2 filter.
    pub seccomp: u8,
    /// `NAMESPACES[i]`'s link target ("mnt:[4026531841]").
    pub namespaces: Vec<String>,
}

impl Privileges {
    /// Reads `pid`'s; None when it is gone.
    pub fn of(pid: u32) -> Option<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| -> Option<&str> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        let ids = |name: &str| -> Option<[u32; 4]> {
            let v: Vec<u32> = field(name)?
                .split_whitespace()
                .filter_map(|s| s.parse().ok())
                .collect();
            v.try_into().ok()
        };
        let hex = |name: &str| u64::from_str_radix(field(name).unwrap_or("0"), 16).unwrap_or(0);
        let namespaces = NAMESPACES
            .iter()
            .map(|ns| {
                std::fs::read_link(format!("/proc/{pid}/ns/{ns}"))
                    .map(|t| t.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .collect();
        Some(Self {
            pid,
            comm: std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .ok()?
                .trim()
                .to_owned(),
            uids: ids("Uid")?,
            gids: ids("Gid")?,
            groups: field("Groups")?
                .split_whitespace()
                .filter_map(|s| s.parse().ok())
                .collect(),
            cap_eff: hex("CapEff"),
            cap_prm: hex("CapPrm"),
            cap_bnd: hex("CapBnd"),
            no_new_privs: field("NoNewPrivs") == Some("1"),
            seccomp: field("Seccomp").and_then(|s| s.parse().ok()).unwrap_or(0),
            namespaces,
        })
    }

    /// The namespaces in which this process differs from `other`.
    pub fn own_namespaces(&self, other: &Privileges) -> BTreeSet<&'static str> {
        NAMESPACES
            .iter()
            .zip(self.namespaces.iter().zip(&other.namespaces))
            .filter(|(_, (a, b))| a != b)
            .map(|(ns, _)| *ns)
            .collect()
    }

    /// The effective capabilities by name.
    pub fn effective(&self) -> Vec<&'static str> {
        cap_names(self.cap_eff)
    }
}

/// The names of the bits set in `mask`.
pub fn cap_names(mask: u64) -> Vec<&'static str> {
    CAPS.iter()
        .enumerate()
        .filter(|(bit, _)| mask & (1 << bit) != 0)
        .map(|(_, name)| *name)
        .collect()
}

/// `pid`'s descendants, parents before their children.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut queue = vec![pid];
    while let Some(p) = queue.pop() {
        let tasks = std::fs::read_dir(format!("/proc/{p}/task"));
        let mut children = Vec::new();
        for task in tasks.into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            children.extend(
                text.split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
        out.extend(&children);
        queue.extend(children);
    }
    out
}

/// What a process sees as its root directory's entries, through
/// /proc/<pid>/root (sorted names; None when it cannot be read).
pub fn root_entries(pid: u32) -> Option<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(Path::new(&format!("/proc/{pid}/root")))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    Some(names)
}

/// A markdown table of `rows` (role, privileges), namespaces relative to
/// `reference` (the shim).
pub fn table(rows: &[(String, Privileges)], reference: &Privileges) -> String {
    let mut out = String::from(
        "| process | uid/gid (groups) | effective capabilities | no_new_privs | seccomp | namespaces of its own |\n|---|---|---|---|---|---|\n",
    );
    for (role, p) in rows {
        let caps = if p.cap_eff == 0 {
            "none".to_owned()
        } else if p.cap_eff == reference.cap_eff && p.cap_eff.count_ones() > 20 {
            format!("all ({} of them)", p.cap_eff.count_ones())
        } else {
            p.effective().join(", ")
        };
        let own = p.own_namespaces(reference);
        let own = if own.is_empty() {
            "none (the host's)".to_owned()
        } else {
            own.into_iter().collect::<Vec<_>>().join(", ")
        };
        let groups = if p.groups.is_empty() {
            String::new()
        } else {
            format!(
                " ({})",
                p.groups
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            )
        };
        out.push_str(&format!(
            "| {role} | {}/{}{groups} | {caps} | {} | {} | {own} |\n",
            p.uids[1],
            p.gids[1],
            if p.no_new_privs { "yes" } else { "no" },
            match p.seccomp {
                0 => "off",
                1 => "strict",
                _ => "filter",
            },
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_reads_back_and_shares_every_namespace_with_itself() {
        let me = Privileges::of(std::process::id()).unwrap();
        assert!(me.own_namespaces(&me).is_empty());
        assert_eq!(me.uids[0], nix::unistd::getuid().as_raw());
        assert!(me.namespaces.iter().any(|n| n.starts_with("mnt:[")));
        assert_eq!(cap_names(1 << 21 | 1), vec!["chown", "sys_admin"]);
    }

    #[test]
    fn a_child_is_a_descendant() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let found = descendants(std::process::id()).contains(&child.id());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(found);
    }
}
