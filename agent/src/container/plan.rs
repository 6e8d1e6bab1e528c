//! Turns an OCI runtime spec into a `LaunchPlan`: everything the cloned
//! child needs, computed in advance as C strings and flags, because the
//! child of a multi-threaded process may only make system calls (no
//! allocation, no locks) until it execs.
//!
//! What the guest cannot honour yet is refused here with the field named.

use super::rootfs::resolve_in_root;
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// runc's default when the spec's env has no PATH.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

fn bad(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        message: message.into(),
    }
}

#[derive(Debug)]
pub struct MountOp {
    /// Destination as written in the spec, for error messages.
    pub destination: String,
    /// Absolute guest path below the rootfs (symlinks resolved inside it).
    pub target: CString,
    pub source: Option<CString>,
    pub fstype: Option<CString>,
    pub flags: MsFlags,
    pub data: Option<CString>,
    /// Bind mounts take ro/nosuid/... only on a remount.
    pub remount_flags: Option<MsFlags>,
    /// Propagation to set after mounting (MS_PRIVATE, MS_SLAVE, ...).
    pub propagation: Option<MsFlags>,
    /// Make the target as a file (bind of a file) rather than a directory.
    pub target_is_file: bool,
}

/// A device node from linux.devices, made with mknod below the rootfs.
#[derive(Debug)]
pub struct DeviceNode {
    pub path: String,
    pub target: CString,
    /// File type bits (S_IFCHR, S_IFBLK, S_IFIFO) and permissions.
    pub mode: u32,
    pub major: u64,
    pub minor: u64,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug)]
pub struct Rlimit {
    pub resource: nix::sys::resource::Resource,
    pub soft: u64,
    pub hard: u64,
}

/// For an exec: the namespaces of the container's init to enter. The PID
/// namespace is entered by the cloning thread, the rest by the child.
#[derive(Debug)]
pub struct JoinPlan {
    pub namespaces: Vec<(CString, CloneFlags)>,
}

impl JoinPlan {
    pub fn of(init_pid: i32, container_flags: CloneFlags) -> Self {
        let kinds = [
            (CloneFlags::CLONE_NEWIPC, "ipc"),
            (CloneFlags::CLONE_NEWUTS, "uts"),
            (CloneFlags::CLONE_NEWNET, "net"),
            (CloneFlags::CLONE_NEWCGROUP, "cgroup"),
            // Last: after it, /proc paths are the container's.
            (CloneFlags::CLONE_NEWNS, "mnt"),
        ];
        JoinPlan {
            namespaces: kinds
                .into_iter()
                .filter(|(flag, _)| container_flags.contains(*flag))
                .map(|(flag, name)| {
                    let path = CString::new(format!("/proc/{init_pid}/ns/{name}")).expect("no NUL");
                    (path, flag)
                })
                .collect(),
        }
    }
}

#[derive(Debug)]
pub struct LaunchPlan {
    /// Set for an exec process: enter these instead of making a container.
    pub join: Option<JoinPlan>,
    pub clone_flags: CloneFlags,
    /// Namespaces the spec names by path (a pod's shared IPC and UTS
    /// namespaces): entered by the child before it mounts anything.
    pub enter: Vec<(CString, CloneFlags)>,
    /// A PID namespace named by path: the cloning thread enters it.
    pub enter_pid_ns: Option<String>,
    pub rootfs: CString,
    pub readonly_rootfs: bool,
    pub hostname: Option<CString>,
    pub mounts: Vec<MountOp>,
    /// Device nodes bind-mounted from the agent's /dev: (source, target
    /// below the rootfs).
    pub devices: Vec<(CString, CString)>,
    /// linux.devices: nodes made with mknod (after the defaults, which a
    /// node of the same path replaces).
    pub device_nodes: Vec<DeviceNode>,
    /// /dev symlinks: (link target, link path relative to the new root).
    pub dev_links: Vec<(CString, CString)>,
    pub masked_paths: Vec<CString>,
    pub readonly_paths: Vec<CString>,
    /// linux.sysctl as (/proc/sys path, value), written inside the
    /// container's namespaces before /proc/sys is made read-only.
    pub sysctls: Vec<(CString, CString)>,
    /// process.terminal: stdio is a new pseudo-terminal, the process its
    /// session leader with the terminal as its controlling tty.
    pub terminal: bool,
    /// process.consoleSize as (rows, columns).
    pub console_size: Option<(u16, u16)>,
    pub seccomp: Option<super::seccomp::SeccompProgram>,
    pub rlimits: Vec<Rlimit>,
    pub cwd: CString,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub umask: Option<u32>,
    pub no_new_privileges: bool,
    /// cgroup v2 files and values from linux.resources.
    pub cgroup_limits: Vec<(&'static str, String)>,
    /// The container cgroup's cgroup.procs: an init moves itself there
    /// before unsharing its cgroup namespace, so that the namespace's root
    /// is the container's cgroup, as under runc. Set by the registry.
    pub cgroup_procs: Option<CString>,
    /// The spec asks for a cgroup namespace (made by unshare in the child,
    /// after the move, not by clone).
    pub unshare_cgroup_ns: bool,
    /// None: the spec sets no capabilities and the process keeps its own.
    pub capabilities: Option<super::caps::CapSets>,
    pub args: Vec<CString>,
    pub env: Vec<CString>,
    /// Paths to try for args[0], in order (PATH lookup done ahead of time).
    pub exec_candidates: Vec<CString>,
    /// args[0] as given, for the "not found" message.
    pub program: String,
}

const DEFAULT_DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];
const DEV_LINKS: &[(&str, &str)] = &[
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
    ("pts/ptmx", "/dev/ptmx"),
];

impl LaunchPlan {
    /// Without a cgroup namespace, a cgroup mount shows the container its
    /// own cgroup directory, bound read-only as runc binds it on a cgroup
    /// v2 host, rather than the whole guest hierarchy.
    pub fn bind_cgroup_mounts(&mut self, cgroup_dir: &Path) -> Result<(), SpecError> {
        if self.unshare_cgroup_ns {
            return Ok(());
        }
        for m in &mut self.mounts {
            if m.fstype.as_deref() == Some(c"cgroup2") {
                let ro = m.flags.contains(MsFlags::MS_RDONLY);
                m.source = Some(path_cstring("cgroup", cgroup_dir)?);
                m.fstype = None;
                m.data = None;
                m.flags = MsFlags::MS_BIND | MsFlags::MS_REC;
                let bits = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
                m.remount_flags = Some(
                    bits | if ro {
                        MsFlags::MS_RDONLY
                    } else {
                        MsFlags::empty()
                    },
                );
            }
        }
        Ok(())
    }

    pub fn from_spec(spec: &Spec) -> Result<Self, SpecError> {
        let root = spec.root().as_ref().ok_or_else(|| bad("root", "missing"))?;
        let rootfs = root.path().clone();
        if !rootfs.is_absolute() || !rootfs.is_dir() {
            return Err(bad(
                "root.path",
                format!("{} is not a directory in the guest", rootfs.display()),
            ));
        }
        let process = spec
            .process()
            .as_ref()
            .ok_or_else(|| bad("process", "missing"))?;
        let capabilities = match process.capabilities() {
            None => None,
            Some(c) => {
                let names = |set: &Option<oci_spec::runtime::Capabilities>| {
                    set.as_ref().map(|s| {
                        s.iter()
                            .filter_map(|cap| {
                                serde_json::to_value(cap).ok()?.as_str().map(str::to_owned)
                            })
                            .collect::<Vec<_>>()
                    })
                };
                Some(super::caps::CapSets::from_names(
                    [
                        names(c.bounding()),
                        names(c.effective()),
                        names(c.permitted()),
                        names(c.inheritable()),
                        names(c.ambient()),
                    ],
                    super::caps::kernel_last_cap(),
                )?)
            }
        };
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

        let linux = spec.linux().as_ref();
        let mut clone_flags = CloneFlags::empty();
        let mut enter = Vec::new();
        let mut enter_pid_ns = None;
        for (i, ns) in linux
            .and_then(|l| l.namespaces().as_ref())
            .into_iter()
            .flatten()
            .enumerate()
        {
            if let Some(path) = ns.path() {
                let field = format!("linux.namespaces[{i}].path");
                let (flag, name) = match ns.typ() {
                    LinuxNamespaceType::Ipc => (CloneFlags::CLONE_NEWIPC, "ipc"),
                    LinuxNamespaceType::Uts => (CloneFlags::CLONE_NEWUTS, "uts"),
                    LinuxNamespaceType::Network => (CloneFlags::CLONE_NEWNET, "net"),
                    LinuxNamespaceType::Pid => (CloneFlags::CLONE_NEWPID, "pid"),
                    other => {
                        return Err(bad(
                            field,
                            format!("joining an existing {other:?} namespace is not supported"),
                        ))
                    }
                };
                // Only another guest process's namespace: /proc/<pid>/ns/<name>.
                if !is_proc_ns_path(path, name) {
                    return Err(bad(
                        field,
                        format!(
                            "{} is not /proc/<pid>/ns/{name} of a guest process",
                            path.display()
                        ),
                    ));
                }
                if flag == CloneFlags::CLONE_NEWPID {
                    enter_pid_ns = Some(path.display().to_string());
                } else {
                    enter.push((path_cstring(&field, path)?, flag));
                }
                continue;
            }
            clone_flags |= match ns.typ() {
                LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
                LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
                LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
                LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
                LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
                LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
                other => {
                    return Err(bad(
                        "linux.namespaces",
                        format!("{other:?} namespaces are not supported in the guest"),
                    ))
                }
            };
        }
        let unshare_cgroup_ns = clone_flags.contains(CloneFlags::CLONE_NEWCGROUP);
        clone_flags.remove(CloneFlags::CLONE_NEWCGROUP);
        if !clone_flags.contains(CloneFlags::CLONE_NEWNS) {
            return Err(bad("linux.namespaces", "a mount namespace is required"));
        }

        let mut mounts = Vec::new();
        for (i, m) in spec.mounts().iter().flatten().enumerate() {
            mounts.push(mount_op(&rootfs, i, m)?);
        }

        let mut rlimits = Vec::new();
        for (i, r) in process.rlimits().iter().flatten().enumerate() {
            rlimits.push(Rlimit {
                resource: rlimit_resource(r.typ()).ok_or_else(|| {
                    bad(
                        format!("process.rlimits[{i}].type"),
                        format!("{:?} is unknown", r.typ()),
                    )
                })?,
                soft: r.soft(),
                hard: r.hard(),
            });
        }

        let path_var = env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH);
        let exec_candidates = if program.contains('/') {
            vec![cstring("process.args[0]", &program)?]
        } else {
            path_var
                .split(':')
                .filter(|d| !d.is_empty())
                .map(|d| cstring("process.env PATH", &format!("{d}/{program}")))
                .collect::<Result<_, _>>()?
        };

        let paths = |field: &str, list: Option<&Vec<String>>| -> Result<Vec<CString>, SpecError> {
            list.into_iter()
                .flatten()
                .map(|p| cstring(field, p))
                .collect()
        };

        let device_nodes = device_nodes(&rootfs, linux.and_then(|l| l.devices().as_ref()))?;
        // As runc: a namespace joined by path isolates a sysctl as a new
        // one does (a pod's network namespace is joined by path; in the
        // guest that is the guest's own, which holds the pod's network).
        let own_namespaces = enter.iter().fold(clone_flags, |f, (_, flag)| f | *flag);
        let sysctls = sysctls(linux.and_then(|l| l.sysctl().as_ref()), own_namespaces)?;
        let seccomp = linux
            .and_then(|l| l.seccomp().as_ref())
            .map(super::seccomp::compile)
            .transpose()?;

        Ok(LaunchPlan {
            join: None,
            clone_flags,
            enter,
            enter_pid_ns,
            rootfs: path_cstring("root.path", &rootfs)?,
            readonly_rootfs: root.readonly().unwrap_or(false),
            hostname: match spec.hostname() {
                Some(h) if !h.is_empty() => Some(cstring("hostname", h)?),
                _ => None,
            },
            mounts,
            devices: DEFAULT_DEVICES
                .iter()
                .filter(|d| !device_nodes.iter().any(|n| n.path == format!("/dev/{d}")))
                .map(|d| {
                    let dev = format!("/dev/{d}");
                    let target = resolve_in_root(&rootfs, Path::new(&dev))
                        .map_err(|e| bad("devices", e.to_string()))?;
                    Ok((cstring("devices", &dev)?, path_cstring("devices", &target)?))
                })
                .collect::<Result<_, SpecError>>()?,
            device_nodes,
            dev_links: DEV_LINKS
                .iter()
                .map(|(t, l)| Ok((cstring("devices", t)?, cstring("devices", l)?)))
                .collect::<Result<_, SpecError>>()?,
            masked_paths: paths(
                "linux.maskedPaths",
                linux.and_then(|l| l.masked_paths().as_ref()),
            )?,
            readonly_paths: paths(
                "linux.readonlyPaths",
                linux.and_then(|l| l.readonly_paths().as_ref()),
            )?,
            sysctls,
            terminal: process.terminal().unwrap_or(false),
            console_size: process.console_size().as_ref().map(|b| {
                (
                    b.height().min(u16::MAX as u64) as u16,
                    b.width().min(u16::MAX as u64) as u16,
                )
            }),
            seccomp,
            rlimits,
            cwd: path_cstring("process.cwd", cwd)?,
            uid: user.uid(),
            gid: user.gid(),
            additional_gids: user.additional_gids().clone().unwrap_or_default(),
            umask: user.umask(),
            no_new_privileges: process.no_new_privileges().unwrap_or(false),
            capabilities,
            cgroup_limits: cgroup_limits(linux.and_then(|l| l.resources().as_ref()))?,
            cgroup_procs: None,
            unshare_cgroup_ns,
            args: args
                .iter()
                .map(|a| cstring("process.args", a))
                .collect::<Result<_, _>>()?,
            env: env
                .iter()
                .map(|e| cstring("process.env", e))
                .collect::<Result<_, _>>()?,
            exec_candidates,
            program,
        })
    }
}

fn mount_op(rootfs: &Path, i: usize, m: &oci_spec::runtime::Mount) -> Result<MountOp, SpecError> {
    let field = format!("mounts[{i}]");
    let destination = m.destination();
    if !destination.is_absolute() {
        return Err(bad(
            format!("{field}.destination"),
            format!("{} is not absolute", destination.display()),
        ));
    }
    let target: PathBuf = resolve_in_root(rootfs, destination)
        .map_err(|e| bad(format!("{field}.destination"), e.to_string()))?;
    let mut fstype = m.typ().clone().filter(|t| !t.is_empty());
    // The guest runs cgroup v2 only, as runc does on a v2 host.
    if fstype.as_deref() == Some("cgroup") {
        fstype = Some("cgroup2".into());
    }
    let mut flags = MsFlags::empty();
    let mut clear = MsFlags::empty();
    let mut propagation = None;
    let mut data = Vec::new();
    for opt in m.options().iter().flatten() {
        match opt.as_str() {
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => clear |= MsFlags::MS_RDONLY,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "suid" => clear |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "dev" => clear |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "exec" => clear |= MsFlags::MS_NOEXEC,
            "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
            "async" => clear |= MsFlags::MS_SYNCHRONOUS,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "atime" => clear |= MsFlags::MS_NOATIME,
            "nodiratime" => flags |= MsFlags::MS_NODIRATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "strictatime" => flags |= MsFlags::MS_STRICTATIME,
            "private" => propagation = Some(MsFlags::MS_PRIVATE),
            "rprivate" => propagation = Some(MsFlags::MS_PRIVATE | MsFlags::MS_REC),
            "slave" => propagation = Some(MsFlags::MS_SLAVE),
            "rslave" => propagation = Some(MsFlags::MS_SLAVE | MsFlags::MS_REC),
            "shared" => propagation = Some(MsFlags::MS_SHARED),
            "rshared" => propagation = Some(MsFlags::MS_SHARED | MsFlags::MS_REC),
            "unbindable" => propagation = Some(MsFlags::MS_UNBINDABLE),
            "runbindable" => propagation = Some(MsFlags::MS_UNBINDABLE | MsFlags::MS_REC),
            other => data.push(other.to_owned()),
        }
    }
    flags &= !clear;
    let is_bind = flags.contains(MsFlags::MS_BIND);
    let source = m.source().as_ref();
    let target_is_file = is_bind && source.is_some_and(|s| s.is_file());
    if is_bind {
        let s =
            source.ok_or_else(|| bad(format!("{field}.source"), "a bind mount needs a source"))?;
        if !s.exists() {
            return Err(bad(
                format!("{field}.source"),
                format!("{} does not exist in the guest", s.display()),
            ));
        }
    }
    // A bind mount ignores these flags on the first mount(2); they need a remount.
    let remount_bits =
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let remount_flags = (is_bind && flags.intersects(remount_bits)).then_some(flags & remount_bits);
    Ok(MountOp {
        destination: destination.display().to_string(),
        target: path_cstring(&format!("{field}.destination"), &target)?,
        source: source
            .map(|s| path_cstring(&format!("{field}.source"), s))
            .transpose()?,
        fstype: fstype
            .map(|t| cstring(&format!("{field}.type"), &t))
            .transpose()?,
        flags,
        data: (!data.is_empty())
            .then(|| cstring(&format!("{field}.options"), &data.join(",")))
            .transpose()?,
        remount_flags,
        propagation,
        target_is_file,
    })
}

/// linux.devices as mknod calls. Paths must be below /dev, as runc asks.
fn device_nodes(
    rootfs: &Path,
    devices: Option<&Vec<oci_spec::runtime::LinuxDevice>>,
) -> Result<Vec<DeviceNode>, SpecError> {
    use oci_spec::runtime::LinuxDeviceType as T;
    let mut out = Vec::new();
    for (i, d) in devices.into_iter().flatten().enumerate() {
        let field = format!("linux.devices[{i}]");
        let path = d.path();
        if !path.starts_with("/dev/") || path.components().any(|c| c.as_os_str() == "..") {
            return Err(bad(
                format!("{field}.path"),
                format!("{} is not below /dev", path.display()),
            ));
        }
        let kind = match d.typ() {
            T::C | T::U => nix::libc::S_IFCHR,
            T::B => nix::libc::S_IFBLK,
            T::P => nix::libc::S_IFIFO,
            T::A => {
                return Err(bad(
                    format!("{field}.type"),
                    "\"a\" is for device cgroup rules, not for a node",
                ))
            }
        };
        let perm = d.file_mode().unwrap_or(0o666) & 0o7777;
        let target = resolve_in_root(rootfs, path)
            .map_err(|e| bad(format!("{field}.path"), e.to_string()))?;
        out.push(DeviceNode {
            path: path.display().to_string(),
            target: path_cstring(&format!("{field}.path"), &target)?,
            mode: kind | perm,
            major: d.major().max(0) as u64,
            minor: d.minor().max(0) as u64,
            uid: d.uid().unwrap_or(0),
            gid: d.gid().unwrap_or(0),
        });
    }
    Ok(out)
}

/// linux.sysctl, limited as runc limits it to what the container's own
/// namespaces (made or joined: `flags`) isolate: writing anything else
/// would change the whole VM, which other containers of the pod share.
fn sysctls(
    map: Option<&std::collections::HashMap<String, String>>,
    flags: CloneFlags,
) -> Result<Vec<(CString, CString)>, SpecError> {
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
        if !flags.contains(needs) {
            return Err(bad(
                field,
                format!("needs a new {ns_name} namespace, which the spec does not ask for"),
            ));
        }
        if key.contains("..") || key.contains('/') {
            return Err(bad(field, "not a sysctl name"));
        }
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        out.push((cstring(&field, &path)?, cstring(&field, value)?));
    }
    Ok(out)
}

/// linux.resources as cgroup v2 writes, converted as runc converts them.
/// Device rules are not applied: the VM is the device boundary, and the
/// guest has no devices beyond the defaults.
pub(super) fn cgroup_limits(
    res: Option<&oci_spec::runtime::LinuxResources>,
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

/// `/proc/<digits>/ns/<name>`, nothing else.
fn is_proc_ns_path(path: &Path, name: &str) -> bool {
    let parts: Vec<_> = path.components().map(|c| c.as_os_str()).collect();
    parts.len() == 5
        && parts[0] == "/"
        && parts[1] == "proc"
        && parts[2]
            .to_str()
            .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        && parts[3] == "ns"
        && parts[4] == name
}

fn rlimit_resource(
    typ: oci_spec::runtime::PosixRlimitType,
) -> Option<nix::sys::resource::Resource> {
    use nix::sys::resource::Resource as R;
    use oci_spec::runtime::PosixRlimitType as T;
    Some(match typ {
        T::RlimitCpu => R::RLIMIT_CPU,
        T::RlimitFsize => R::RLIMIT_FSIZE,
        T::RlimitData => R::RLIMIT_DATA,
        T::RlimitStack => R::RLIMIT_STACK,
        T::RlimitCore => R::RLIMIT_CORE,
        T::RlimitRss => R::RLIMIT_RSS,
        T::RlimitNproc => R::RLIMIT_NPROC,
        T::RlimitNofile => R::RLIMIT_NOFILE,
        T::RlimitMemlock => R::RLIMIT_MEMLOCK,
        T::RlimitAs => R::RLIMIT_AS,
        T::RlimitLocks => R::RLIMIT_LOCKS,
        T::RlimitSigpending => R::RLIMIT_SIGPENDING,
        T::RlimitMsgqueue => R::RLIMIT_MSGQUEUE,
        T::RlimitNice => R::RLIMIT_NICE,
        T::RlimitRtprio => R::RLIMIT_RTPRIO,
        T::RlimitRttime => R::RLIMIT_RTTIME,
        #[allow(unreachable_patterns)]
        _ => return None,
    })
}

fn cstring(field: &str, s: &str) -> Result<CString, SpecError> {
    CString::new(s).map_err(|_| bad(field, format!("{s:?} contains a NUL byte")))
}

fn path_cstring(field: &str, p: &Path) -> Result<CString, SpecError> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| bad(field, format!("{} contains a NUL byte", p.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(root: &Path, extra: serde_json::Value) -> Spec {
        let mut v = serde_json::json!({
            "ociVersion": "1.1.0",
            "root": {"path": root},
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 1000, "gid": 1000, "additionalGids": [10]},
                        "env": ["PATH=/bin:/usr/bin"]},
            "linux": {"namespaces": [{"type": "mount"}, {"type": "pid"}]}
        });
        merge(&mut v, extra);
        serde_json::from_value(v).unwrap()
    }

    fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
        if let (Some(a), serde_json::Value::Object(b)) = (a.as_object_mut(), b) {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(slot) if slot.is_object() && v.is_object() => merge(slot, v),
                    _ => {
                        a.insert(k, v);
                    }
                }
            }
        }
    }

    fn err(root: &Path, extra: serde_json::Value) -> String {
        LaunchPlan::from_spec(&spec(root, extra))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn plan_carries_user_path_lookup_and_namespaces() {
        let root = tempfile::tempdir().unwrap();
        let plan = LaunchPlan::from_spec(&spec(root.path(), serde_json::json!({}))).unwrap();
        assert_eq!(
            (plan.uid, plan.gid, plan.additional_gids.clone()),
            (1000, 1000, vec![10])
        );
        assert_eq!(
            plan.exec_candidates,
            vec![c"/bin/sh".to_owned(), c"/usr/bin/sh".to_owned()]
        );
        assert!(plan
            .clone_flags
            .contains(CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS));
        assert!(!plan.clone_flags.contains(CloneFlags::CLONE_NEWNET));
    }

    #[test]
    fn cgroup_mounts_become_cgroup2_and_options_split_into_flags_and_data() {
        let root = tempfile::tempdir().unwrap();
        let plan = LaunchPlan::from_spec(&spec(
            root.path(),
            serde_json::json!({"mounts": [
                {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro", "nosuid"]},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755", "size=65536k"]}
            ]}),
        ))
        .unwrap();
        assert_eq!(plan.mounts[0].fstype.as_deref(), Some(c"cgroup2"));
        assert!(plan.mounts[0]
            .flags
            .contains(MsFlags::MS_RDONLY | MsFlags::MS_NOSUID));
        assert_eq!(
            plan.mounts[1].data.as_deref(),
            Some(c"mode=755,size=65536k")
        );
        assert_eq!(plan.mounts[1].remount_flags, None);

        // No cgroup namespace in this spec: the mount becomes a read-only
        // bind of the container's own cgroup.
        let mut plan = plan;
        plan.bind_cgroup_mounts(Path::new("/sys/fs/cgroup/husk/c1"))
            .unwrap();
        assert_eq!(
            plan.mounts[0].source.as_deref(),
            Some(c"/sys/fs/cgroup/husk/c1")
        );
        assert!(plan.mounts[0].flags.contains(MsFlags::MS_BIND));
        assert!(plan.mounts[0]
            .remount_flags
            .is_some_and(|f| f.contains(MsFlags::MS_RDONLY)));
    }

    #[test]
    fn read_only_bind_mounts_need_a_remount() {
        let root = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        let plan = LaunchPlan::from_spec(&spec(
            root.path(),
            serde_json::json!({"mounts": [{"destination": "/data", "type": "bind", "source": src.path(), "options": ["rbind", "ro"]}]}),
        ))
        .unwrap();
        assert_eq!(plan.mounts[0].remount_flags, Some(MsFlags::MS_RDONLY));
        assert!(!plan.mounts[0].target_is_file);
    }

    #[test]
    fn a_pods_namespaces_are_entered_by_path() {
        let root = tempfile::tempdir().unwrap();
        let plan = LaunchPlan::from_spec(&spec(
            root.path(),
            serde_json::json!({"linux": {"namespaces": [
                {"type": "mount"},
                {"type": "ipc", "path": "/proc/12/ns/ipc"},
                {"type": "uts", "path": "/proc/12/ns/uts"},
                {"type": "pid", "path": "/proc/12/ns/pid"}
            ]}}),
        ))
        .unwrap();
        assert_eq!(
            plan.enter,
            vec![
                (c"/proc/12/ns/ipc".to_owned(), CloneFlags::CLONE_NEWIPC),
                (c"/proc/12/ns/uts".to_owned(), CloneFlags::CLONE_NEWUTS)
            ]
        );
        assert_eq!(plan.enter_pid_ns.as_deref(), Some("/proc/12/ns/pid"));
        assert_eq!(plan.clone_flags, CloneFlags::CLONE_NEWNS);
        assert!(!is_proc_ns_path(Path::new("/proc/12/ns/../ns/ipc"), "ipc"));
        assert!(!is_proc_ns_path(Path::new("/proc/self/ns/ipc"), "ipc"));
    }

    /// A pod's sandbox joins its network namespace by path (in the guest:
    /// the guest's own, /proc/1/ns/net); its net.* sysctls go there, as
    /// runc writes them into the pod's namespace it joined.
    #[test]
    fn net_sysctls_are_allowed_in_a_joined_network_namespace() {
        let root = tempfile::tempdir().unwrap();
        let plan = LaunchPlan::from_spec(&spec(
            root.path(),
            serde_json::json!({"linux": {
                "namespaces": [{"type": "mount"}, {"type": "network", "path": "/proc/1/ns/net"}],
                "sysctl": {"net.ipv4.ip_unprivileged_port_start": "0"}
            }}),
        ))
        .unwrap();
        assert_eq!(
            plan.sysctls,
            vec![(
                c"/proc/sys/net/ipv4/ip_unprivileged_port_start".to_owned(),
                c"0".to_owned()
            )]
        );
        assert!(!plan.clone_flags.contains(CloneFlags::CLONE_NEWNET));
    }

    #[test]
    fn sysctls_devices_and_terminal_reach_the_plan() {
        let root = tempfile::tempdir().unwrap();
        let plan = LaunchPlan::from_spec(&spec(
            root.path(),
            serde_json::json!({
                "process": {"terminal": true, "consoleSize": {"height": 40, "width": 120}},
                "linux": {
                    "namespaces": [{"type": "mount"}, {"type": "ipc"}, {"type": "network"}],
                    "sysctl": {"kernel.shmmni": "1000", "net.ipv4.ip_local_port_range": "1024 2048"},
                    "devices": [{"path": "/dev/null", "type": "c", "major": 1, "minor": 3, "fileMode": 432, "uid": 5}]
                }
            }),
        ))
        .unwrap();
        assert!(plan.terminal);
        assert_eq!(plan.console_size, Some((40, 120)));
        assert_eq!(
            plan.sysctls,
            vec![
                (c"/proc/sys/kernel/shmmni".to_owned(), c"1000".to_owned()),
                (
                    c"/proc/sys/net/ipv4/ip_local_port_range".to_owned(),
                    c"1024 2048".to_owned()
                )
            ]
        );
        let node = &plan.device_nodes[0];
        assert_eq!(node.mode, nix::libc::S_IFCHR | 0o660);
        assert_eq!((node.major, node.minor, node.uid), (1, 3, 5));
        // The spec's /dev/null replaces the default bind of the guest's.
        assert!(!plan
            .devices
            .iter()
            .any(|(src, _)| src.as_c_str() == c"/dev/null"));
    }

    #[test]
    fn bad_specs_name_the_field() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        assert!(err(r, serde_json::json!({"process": {"cwd": "rel"}})).starts_with("process.cwd"));
        assert!(err(r, serde_json::json!({"process": {"args": []}})).starts_with("process.args"));
        assert!(err(
            r,
            serde_json::json!({"root": {"path": "/nonexistent/rootfs"}})
        )
        .starts_with("root.path"));
        let user_ns =
            serde_json::json!({"linux": {"namespaces": [{"type": "mount"}, {"type": "user"}]}});
        assert!(err(r, user_ns).starts_with("linux.namespaces"));
        let joined = serde_json::json!({"linux": {"namespaces": [{"type": "mount"}, {"type": "network", "path": "/var/run/netns/cni-1"}]}});
        assert!(err(r, joined).starts_with("linux.namespaces[1].path"));
        let mount = serde_json::json!({"linux": {"namespaces": [{"type": "mount", "path": "/proc/7/ns/mnt"}]}});
        assert!(err(r, mount).starts_with("linux.namespaces[0].path"));
        let missing = serde_json::json!({"mounts": [{"destination": "/x", "type": "bind", "source": "/nonexistent/src", "options": ["bind"]}]});
        let e = err(r, missing);
        assert!(
            e.starts_with("mounts[0].source") && e.contains("/nonexistent/src"),
            "{e}"
        );
        let sysctl = serde_json::json!({"linux": {"sysctl": {"vm.swappiness": "1"}}});
        assert!(err(r, sysctl).starts_with("linux.sysctl[vm.swappiness]"));
        let no_netns = serde_json::json!({"linux": {"sysctl": {"net.ipv4.ip_forward": "1"}}});
        let e = err(r, no_netns);
        assert!(e.contains("network namespace"), "{e}");
        let device = serde_json::json!({"linux": {"devices": [{"path": "/etc/x", "type": "c", "major": 1, "minor": 3}]}});
        assert!(err(r, device).starts_with("linux.devices[0].path"));
    }
}
