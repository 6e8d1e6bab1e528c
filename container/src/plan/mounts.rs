//! The container's file system view: `root` (runtime-spec config.md,
//! "Root"), `mounts` ("Mounts": options split into mount(2) flags and
//! data, bind mounts' flags left for a remount), and `linux.maskedPaths`
//! and `linux.readonlyPaths` (config-linux.md).

use super::error::{bad, cstring, path_cstring, SpecError};
use super::rootfs::resolve_in_root;
use nix::mount::MsFlags;
use oci_spec::runtime::{Linux, Mount};
use std::ffi::CString;
use std::path::{Path, PathBuf};

/// The rootfs: where it is in the guest, and whether it is read-only.
#[derive(Debug)]
pub(crate) struct Root {
    pub path: CString,
    pub readonly: bool,
}

impl Root {
    /// The spec's root, checked to be a directory in the guest; also its
    /// path, which every other path of the plan is resolved under.
    pub fn from_spec(root: Option<&oci_spec::runtime::Root>) -> Result<(Root, PathBuf), SpecError> {
        let root = root.ok_or_else(|| bad("root", "missing"))?;
        let path = root.path().clone();
        if !path.is_absolute() || !path.is_dir() {
            return Err(bad(
                "root.path",
                format!("{} is not a directory in the guest", path.display()),
            ));
        }
        let plan = Root {
            path: path_cstring("root.path", &path)?,
            readonly: root.readonly().unwrap_or(false),
        };
        Ok((plan, path))
    }
}

#[derive(Debug)]
pub(crate) struct MountOp {
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

/// The spec's mounts, in order, below `rootfs`.
pub(crate) fn from_spec(
    rootfs: &Path,
    mounts: Option<&Vec<Mount>>,
) -> Result<Vec<MountOp>, SpecError> {
    mounts
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, m)| mount_op(rootfs, i, m))
        .collect()
}

fn mount_op(rootfs: &Path, i: usize, m: &Mount) -> Result<MountOp, SpecError> {
    let field = format!("mounts[{i}]");
    let destination = m.destination();
    if !destination.is_absolute() {
        return Err(bad(
            format!("{field}.destination"),
            format!("{} is not absolute", destination.display()),
        ));
    }
    let target = resolve_in_root(rootfs, destination).map_err(|source| SpecError::Resolve {
        field: format!("{field}.destination"),
        source,
    })?;
    let mut fstype = m.typ().clone().filter(|t| !t.is_empty());
    // The guest runs cgroup v2 only, as runc does on a v2 host.
    if fstype.as_deref() == Some("cgroup") {
        fstype = Some("cgroup2".into());
    }
    let options = Options::parse(m.options().iter().flatten());
    let flags = options.flags;
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
        data: (!options.data.is_empty())
            .then(|| cstring(&format!("{field}.options"), &options.data.join(",")))
            .transpose()?,
        remount_flags,
        propagation: options.propagation,
        target_is_file,
    })
}

/// A mount's options: flags for mount(2), a propagation to set after it,
/// and the rest, which goes to the file system as data.
struct Options {
    flags: MsFlags,
    propagation: Option<MsFlags>,
    data: Vec<String>,
}

impl Options {
    fn parse<'a>(options: impl Iterator<Item = &'a String>) -> Options {
        let mut flags = MsFlags::empty();
        let mut clear = MsFlags::empty();
        let mut propagation = None;
        let mut data = Vec::new();
        for opt in options {
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
        Options {
            flags: flags & !clear,
            propagation,
            data,
        }
    }
}

/// Without a cgroup namespace, a cgroup mount shows the container its own
/// cgroup directory, bound read-only as runc binds it on a cgroup v2 host,
/// rather than the whole guest hierarchy.
pub(crate) fn bind_cgroup_mounts(
    mounts: &mut [MountOp],
    cgroup_dir: &Path,
) -> Result<(), SpecError> {
    for m in mounts {
        if m.fstype.as_deref() == Some(c"cgroup2") {
            let ro = m.flags.contains(MsFlags::MS_RDONLY);
            m.source = Some(path_cstring("cgroup", cgroup_dir)?);
            m.fstype = None;
            m.data = None;
            m.flags = MsFlags::MS_BIND | MsFlags::MS_REC;
            let bits = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
            m.remount_flags = Some(if ro { bits | MsFlags::MS_RDONLY } else { bits });
        }
    }
    Ok(())
}

/// linux.maskedPaths and linux.readonlyPaths, as paths inside the new
/// root (they are applied after pivot_root).
#[derive(Debug)]
pub(crate) struct Masks {
    pub masked: Vec<CString>,
    pub readonly: Vec<CString>,
}

impl Masks {
    pub fn from_spec(linux: Option<&Linux>) -> Result<Masks, SpecError> {
        let paths = |field: &str, list: Option<&Vec<String>>| -> Result<Vec<CString>, SpecError> {
            list.into_iter()
                .flatten()
                .map(|p| cstring(field, p))
                .collect()
        };
        Ok(Masks {
            masked: paths(
                "linux.maskedPaths",
                linux.and_then(|l| l.masked_paths().as_ref()),
            )?,
            readonly: paths(
                "linux.readonlyPaths",
                linux.and_then(|l| l.readonly_paths().as_ref()),
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounts(root: &Path, v: serde_json::Value) -> Result<Vec<MountOp>, SpecError> {
        let list: Vec<Mount> = serde_json::from_value(v).unwrap();
        from_spec(root, Some(&list))
    }

    #[test]
    fn cgroup_mounts_become_cgroup2_and_options_split_into_flags_and_data() {
        let root = tempfile::tempdir().unwrap();
        let mut plan = mounts(
            root.path(),
            serde_json::json!([
                {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro", "nosuid"]},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755", "size=65536k"]}
            ]),
        )
        .unwrap();
        assert_eq!(plan[0].fstype.as_deref(), Some(c"cgroup2"));
        assert!(plan[0]
            .flags
            .contains(MsFlags::MS_RDONLY | MsFlags::MS_NOSUID));
        assert_eq!(plan[1].data.as_deref(), Some(c"mode=755,size=65536k"));
        assert_eq!(plan[1].remount_flags, None);
        assert_eq!(
            plan[1].target.to_bytes(),
            root.path().join("dev").as_os_str().as_encoded_bytes()
        );

        // Without a cgroup namespace the mount becomes a read-only bind of
        // the container's own cgroup.
        bind_cgroup_mounts(&mut plan, Path::new("/sys/fs/cgroup/husk/c1")).unwrap();
        assert_eq!(plan[0].source.as_deref(), Some(c"/sys/fs/cgroup/husk/c1"));
        assert_eq!(plan[0].fstype, None);
        assert!(plan[0].flags.contains(MsFlags::MS_BIND));
        assert!(plan[0]
            .remount_flags
            .is_some_and(|f| f.contains(MsFlags::MS_RDONLY)));
    }

    #[test]
    fn read_only_bind_mounts_need_a_remount() {
        let root = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        let file = src.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let plan = mounts(
            root.path(),
            serde_json::json!([
                {"destination": "/data", "type": "bind", "source": src.path(), "options": ["rbind", "ro"]},
                {"destination": "/etc/f", "type": "bind", "source": file, "options": ["bind", "rw", "rprivate"]}
            ]),
        )
        .unwrap();
        assert_eq!(plan[0].remount_flags, Some(MsFlags::MS_RDONLY));
        assert!(!plan[0].target_is_file);
        assert_eq!(plan[1].remount_flags, None);
        assert!(plan[1].target_is_file);
        assert_eq!(
            plan[1].propagation,
            Some(MsFlags::MS_PRIVATE | MsFlags::MS_REC)
        );
    }

    #[test]
    fn later_options_clear_earlier_flags() {
        let o = Options::parse(
            ["ro", "nosuid", "rw", "noexec", "exec", "size=1m"]
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .iter(),
        );
        assert_eq!(o.flags, MsFlags::MS_NOSUID);
        assert_eq!(o.data, ["size=1m"]);
        assert_eq!(o.propagation, None);
    }

    #[test]
    fn mount_errors_name_the_field() {
        let root = tempfile::tempdir().unwrap();
        let e = mounts(
            root.path(),
            serde_json::json!([{"destination": "/x", "type": "bind", "source": "/nonexistent/src", "options": ["bind"]}]),
        )
        .unwrap_err();
        assert_eq!(e.field(), "mounts[0].source");
        assert!(e.to_string().contains("/nonexistent/src"), "{e}");
        let e = mounts(
            root.path(),
            serde_json::json!([{"destination": "rel", "type": "tmpfs"}]),
        )
        .unwrap_err();
        assert_eq!(e.field(), "mounts[0].destination");
    }
}
