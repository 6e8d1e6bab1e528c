//! A root of its own for a confined helper: a small read-only tmpfs
//! holding the directories and files the helper is given, each a bind
//! mount at its host path, and nothing else (no /etc, /proc, /sys, /dev,
//! no other VM). Paths read the same inside and out, so the helper's
//! arguments need no translation.
//!
//! Built between fork and exec (the helper is not ours to change), in
//! the child's new mount namespace, by system calls only: everything that
//! allocates (paths, the order of steps) is planned in the parent
//! ([`Jail::plan`]). Sources are cloned with `open_tree` before the stage
//! directory is covered by the tmpfs, and their flags are set on the
//! detached clone before it is attached (as shim/src/share.rs does).
//!
//! A directory a user can change (a pod's volume) is bound from a
//! descriptor the launcher opened and checked ([`Jail::writable_dir_fd`]),
//! not by name: a link swapped in after the check is never followed.
//! Such a source is cloned before the child leaves the launcher's mount
//! namespace ([`JailPlan::clone_held`]): open_tree refuses to clone a
//! mount of another namespace, and the descriptor's is the launcher's.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

/// One thing the helper sees.
#[derive(Debug, Clone)]
enum Entry {
    Bind {
        path: PathBuf,
        access: Access,
    },
    /// The directory open at `dir`, attached at `path` in the jail.
    BindFd {
        dir: Arc<OwnedFd>,
        path: PathBuf,
        access: Access,
    },
    Link {
        path: PathBuf,
        target: PathBuf,
    },
}

impl Entry {
    /// Where it is in the jail.
    fn path(&self) -> &Path {
        match self {
            Entry::Bind { path, .. } | Entry::BindFd { path, .. } | Entry::Link { path, .. } => {
                path
            }
        }
    }
}

/// How a bind is mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Read-only, nosuid, nodev.
    ReadOnly,
    /// Writable, nosuid, nodev, noexec.
    Writable,
    /// A device node: read-only, nosuid, noexec (opening a device for
    /// writing is not writing to the file system).
    Device,
}

impl Access {
    fn attr(self) -> u64 {
        let base = libc::MOUNT_ATTR_NOSUID;
        match self {
            Access::ReadOnly => base | libc::MOUNT_ATTR_NODEV | libc::MOUNT_ATTR_RDONLY,
            Access::Writable => base | libc::MOUNT_ATTR_NODEV | libc::MOUNT_ATTR_NOEXEC,
            Access::Device => base | libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOEXEC,
        }
    }
}

/// The root a helper gets, described in the parent.
#[derive(Debug, Clone)]
pub struct Jail {
    /// A directory of the launcher's own that the tmpfs is mounted on in
    /// the child's namespace before it becomes the root (the VM's run
    /// directory); its contents are not visible inside unless bound.
    stage: PathBuf,
    entries: Vec<Entry>,
}

impl Jail {
    pub fn new(stage: &Path) -> Self {
        Self {
            stage: stage.to_owned(),
            entries: Vec::new(),
        }
    }

    /// What a dynamically linked `program` needs to start: /usr, and the
    /// top-level directories of a system that has not merged /usr (or the
    /// links into /usr of one that has), read-only; the program's own
    /// file at its real path if it is not under /usr, and a link at the
    /// path it is named by if that differs.
    pub fn system(&mut self, program: &Path) -> std::io::Result<&mut Self> {
        self.read_only(Path::new("/usr"));
        for top in ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"] {
            let top = Path::new(top);
            match std::fs::symlink_metadata(top) {
                Ok(m) if m.file_type().is_symlink() => {
                    let target = std::fs::read_link(top)?;
                    self.entries.push(Entry::Link {
                        path: top.to_owned(),
                        target,
                    });
                }
                Ok(m) if m.is_dir() => {
                    self.read_only(top);
                }
                _ => {}
            }
        }
        let real = std::fs::canonicalize(program)?;
        if !self.covers(&real) {
            self.read_only(&real);
        }
        if real != program && !self.covers(program) {
            self.entries.push(Entry::Link {
                path: program.to_owned(),
                target: real,
            });
        }
        Ok(self)
    }

    /// `path` (a directory or file), read-only, nosuid, nodev.
    pub fn read_only(&mut self, path: &Path) -> &mut Self {
        self.bind(path, Access::ReadOnly)
    }

    /// `path`, writable, nosuid, nodev, noexec.
    pub fn writable(&mut self, path: &Path) -> &mut Self {
        self.bind(path, Access::Writable)
    }

    /// The device node `path` (e.g. /dev/urandom), nosuid, noexec.
    pub fn device(&mut self, path: &Path) -> &mut Self {
        self.bind(path, Access::Device)
    }

    /// The directory open at `dir` (opened by the launcher, checked to be
    /// a directory), writable, nosuid, nodev, noexec, at `path` in the
    /// jail, which need not exist outside.
    pub fn writable_dir_fd(&mut self, dir: Arc<OwnedFd>, path: &Path) -> &mut Self {
        self.entries.push(Entry::BindFd {
            dir,
            path: path.to_owned(),
            access: Access::Writable,
        });
        self
    }

    fn bind(&mut self, path: &Path, access: Access) -> &mut Self {
        self.entries.push(Entry::Bind {
            path: path.to_owned(),
            access,
        });
        self
    }

    /// Whether `path` is inside a directory already bound or linked (a
    /// bind of a path inside one stacks on it, in order).
    fn covers(&self, path: &Path) -> bool {
        self.entries.iter().any(|e| {
            let p = e.path();
            path != p && path.starts_with(p)
        })
    }

    /// The steps to build this root, with every path as a C string.
    pub(crate) fn plan(&self) -> std::io::Result<JailPlan> {
        let c = |p: &Path| {
            CString::new(p.as_os_str().as_bytes())
                .map_err(|_| invalid(format!("{} holds a NUL", p.display())))
        };
        let staged = |p: &Path| -> std::io::Result<CString> {
            if !p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
                return Err(invalid(format!(
                    "{}: a jail path must be absolute, without ..",
                    p.display()
                )));
            }
            c(&self.stage.join(p.strip_prefix("/").unwrap_or(p)))
        };
        let mut plan = JailPlan {
            stage: c(&self.stage)?,
            sources: Vec::new(),
            fds: Vec::new(),
            steps: Vec::new(),
            held: Vec::new(),
        };
        let mut made: Vec<PathBuf> = Vec::new();
        for entry in &self.entries {
            let path = entry.path();
            // Each missing ancestor, outermost first.
            let mut dir = PathBuf::from("/");
            for comp in path.parent().into_iter().flat_map(Path::components).skip(1) {
                dir.push(comp);
                if !made.contains(&dir) {
                    made.push(dir.clone());
                    plan.steps.push(Step::Dir(staged(&dir)?));
                }
            }
            match entry {
                Entry::Link { path, target } => plan.steps.push(Step::Link {
                    target: c(target)?,
                    path: staged(path)?,
                }),
                Entry::Bind { path, access } => {
                    let at = staged(path)?;
                    let is_dir = std::fs::metadata(path)?.is_dir();
                    plan.sources.push(Source {
                        path: c(path)?,
                        dir_fd: -1,
                        attr: access.attr(),
                    });
                    made.push(path.clone());
                    plan.steps.push(if is_dir {
                        Step::Dir(at.clone())
                    } else {
                        Step::File(at.clone())
                    });
                    plan.steps.push(Step::Attach {
                        source: plan.sources.len() - 1,
                        at,
                    });
                }
                Entry::BindFd { dir, path, access } => {
                    let at = staged(path)?;
                    plan.sources.push(Source {
                        path: CString::default(),
                        dir_fd: dir.as_raw_fd(),
                        attr: access.attr(),
                    });
                    plan.held.push(dir.clone());
                    made.push(path.clone());
                    plan.steps.push(Step::Dir(at.clone()));
                    plan.steps.push(Step::Attach {
                        source: plan.sources.len() - 1,
                        at,
                    });
                }
            }
        }
        plan.fds = vec![-1; plan.sources.len()];
        Ok(plan)
    }
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, message)
}

#[derive(Debug)]
struct Source {
    /// The source's path, or empty with `dir_fd` its open directory.
    path: CString,
    dir_fd: libc::c_int,
    attr: u64,
}

#[derive(Debug)]
enum Step {
    Dir(CString),
    File(CString),
    Link { target: CString, path: CString },
    Attach { source: usize, at: CString },
}

/// A [`Jail`] ready to be entered between fork and exec.
#[derive(Debug)]
pub(crate) struct JailPlan {
    stage: CString,
    sources: Vec<Source>,
    /// One slot per source, filled in the child (no allocation there).
    fds: Vec<libc::c_int>,
    steps: Vec<Step>,
    /// The descriptors of [`Entry::BindFd`] sources, kept open until the
    /// child has cloned them.
    held: Vec<Arc<OwnedFd>>,
}

/// Which step failed, and how.
pub(crate) type StepError = (&'static str, std::io::Error);

fn check(what: &'static str, ret: libc::c_long) -> Result<libc::c_long, StepError> {
    if ret < 0 {
        Err((what, std::io::Error::last_os_error()))
    } else {
        Ok(ret)
    }
}

impl JailPlan {
    /// Makes the planned root this process's, in the mount namespace it
    /// has just entered with `unshare(CLONE_NEWNS)`. System calls only:
    /// safe between fork and exec.
    pub(crate) fn enter(&mut self) -> Result<(), StepError> {
        // SAFETY: mount(2) with a NUL-terminated literal path and null
        // source, type and data.
        check("making / private", unsafe {
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            )
        } as _)?;
        self.clone_sources()?;
        // SAFETY: mount(2) with NUL-terminated strings: literals and the
        // plan's stage path, which lives as long as `self`.
        check("mounting the jail's tmpfs", unsafe {
            libc::mount(
                c"husk-jail".as_ptr(),
                self.stage.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                c"mode=0755,size=64k,nr_inodes=256".as_ptr().cast(),
            )
        } as _)?;
        for step in &self.steps {
            self.take(step)?;
        }
        self.pivot()
    }

    /// Clones the sources given as descriptors, in the launcher's mount
    /// namespace (before `unshare`): a detached clone may then be attached
    /// in the child's new one. System calls only.
    pub(crate) fn clone_held(&mut self) -> Result<(), StepError> {
        self.clone_where(|s| s.dir_fd != -1)
    }

    /// Clones each source's tree (open_tree) not cloned yet into
    /// `self.fds` and sets its mount flags, before anything is attached.
    fn clone_sources(&mut self) -> Result<(), StepError> {
        self.clone_where(|_| true)
    }

    fn clone_where(&mut self, wanted: fn(&Source) -> bool) -> Result<(), StepError> {
        let empty = c"".as_ptr();
        for (slot, source) in self.fds.iter_mut().zip(&self.sources) {
            if *slot != -1 || !wanted(source) {
                continue;
            }
            // A source given as a descriptor is cloned from it (an empty
            // path), never looked up by name.
            let (at, flags) = match source.dir_fd {
                -1 => (libc::AT_FDCWD, 0),
                fd => (fd, libc::AT_EMPTY_PATH as u32),
            };
            // SAFETY: open_tree(2) with a NUL-terminated path owned by the
            // plan (empty with AT_EMPTY_PATH and a descriptor the plan
            // holds open); it returns a new descriptor or -1.
            let fd = check("cloning a source (open_tree)", unsafe {
                libc::syscall(
                    libc::SYS_open_tree,
                    at,
                    source.path.as_ptr(),
                    libc::OPEN_TREE_CLONE
                        | libc::OPEN_TREE_CLOEXEC
                        | libc::AT_RECURSIVE as u32
                        | flags,
                )
            })? as libc::c_int;
            *slot = fd;
            let attr = libc::mount_attr {
                attr_set: source.attr,
                attr_clr: 0,
                propagation: 0,
                userns_fd: 0,
            };
            // SAFETY: mount_setattr(2) on the descriptor just returned, with
            // an empty NUL-terminated path and a pointer to `attr`, which
            // lives on this stack for the call, and its size.
            check("setting a source's flags (mount_setattr)", unsafe {
                libc::syscall(
                    libc::SYS_mount_setattr,
                    fd,
                    empty,
                    libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
                    &attr as *const libc::mount_attr,
                    std::mem::size_of::<libc::mount_attr>(),
                )
            })?;
        }
        Ok(())
    }

    /// One step of building the jail in its tmpfs.
    fn take(&self, step: &Step) -> Result<(), StepError> {
        // SAFETY: every call below gets NUL-terminated paths owned by the
        // plan, and descriptors clone_sources opened; errno is read right
        // after the call that set it.
        unsafe {
            match step {
                Step::Dir(p) => {
                    if libc::mkdir(p.as_ptr(), 0o755) != 0
                        && *libc::__errno_location() != libc::EEXIST
                    {
                        return Err(("making a jail directory", std::io::Error::last_os_error()));
                    }
                }
                Step::File(p) => {
                    // mknod, not open: the file may already be there, on a
                    // read-only bind (a writable file in a read-only
                    // directory), where open would fail.
                    if libc::mknod(p.as_ptr(), libc::S_IFREG | 0o444, 0) != 0
                        && *libc::__errno_location() != libc::EEXIST
                    {
                        return Err(("making a jail mount point", std::io::Error::last_os_error()));
                    }
                }
                Step::Link { target, path } => {
                    check(
                        "making a jail link",
                        libc::symlink(target.as_ptr(), path.as_ptr()) as _,
                    )?;
                }
                Step::Attach { source, at } => {
                    check(
                        "attaching a source (move_mount)",
                        libc::syscall(
                            libc::SYS_move_mount,
                            self.fds[*source],
                            c"".as_ptr(),
                            libc::AT_FDCWD,
                            at.as_ptr(),
                            libc::MOVE_MOUNT_F_EMPTY_PATH,
                        ),
                    )?;
                }
            }
        }
        Ok(())
    }

    /// Makes the built tmpfs the root, drops the old one, makes the new
    /// one read-only and closes the source descriptors.
    fn pivot(&self) -> Result<(), StepError> {
        // SAFETY: every call below gets NUL-terminated literals or the
        // plan's stage path, null pointers where mount(2) allows them, and
        // closes only descriptors clone_sources opened.
        unsafe {
            check("chdir to the jail", libc::chdir(self.stage.as_ptr()) as _)?;
            // pivot_root(".", "."): the old root is stacked on the new one
            // and detached right after (runc's way).
            check(
                "pivot_root",
                libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()),
            )?;
            check(
                "detaching the old root",
                libc::umount2(c".".as_ptr(), libc::MNT_DETACH) as _,
            )?;
            check("chdir /", libc::chdir(c"/".as_ptr()) as _)?;
            check(
                "making the jail's root read-only",
                libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REMOUNT
                        | libc::MS_BIND
                        | libc::MS_RDONLY
                        | libc::MS_NOSUID
                        | libc::MS_NODEV
                        | libc::MS_NOEXEC,
                    std::ptr::null(),
                ) as _,
            )?;
            for fd in &self.fds {
                libc::close(*fd);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_makes_each_ancestor_once_then_the_mount_point() {
        let mut j = Jail::new(Path::new("/run/x"));
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a/b");
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join("f"), "").unwrap();
        j.writable(&sub).read_only(&sub.join("f"));
        let plan = j.plan().unwrap();
        let shown: Vec<String> = plan
            .steps
            .iter()
            .map(|s| match s {
                Step::Dir(p) => format!("dir {}", p.to_string_lossy()),
                Step::File(p) => format!("file {}", p.to_string_lossy()),
                Step::Link { path, .. } => format!("link {}", path.to_string_lossy()),
                Step::Attach { source, at } => format!("attach {source} {}", at.to_string_lossy()),
            })
            .collect::<Vec<_>>();
        let base = format!("/run/x{}", dir.path().display());
        let mut want: Vec<String> = Vec::new();
        let mut p = String::from("/run/x");
        for comp in dir.path().components().skip(1) {
            p.push('/');
            p.push_str(&comp.as_os_str().to_string_lossy());
            want.push(format!("dir {p}"));
        }
        want.extend([
            format!("dir {base}/a"),
            format!("dir {base}/a/b"),
            format!("attach 0 {base}/a/b"),
            format!("file {base}/a/b/f"),
            format!("attach 1 {base}/a/b/f"),
        ]);
        assert_eq!(shown, want);
        assert_eq!(
            plan.sources[0].attr,
            libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV | libc::MOUNT_ATTR_NOEXEC
        );
        assert_eq!(
            plan.sources[1].attr,
            libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV | libc::MOUNT_ATTR_RDONLY
        );
    }

    #[test]
    fn relative_or_dotted_paths_are_refused() {
        for bad in ["usr", "/usr/../etc"] {
            let mut j = Jail::new(Path::new("/run/x"));
            j.read_only(Path::new(bad));
            let e = j.plan().unwrap_err().to_string();
            assert!(e.contains("must be absolute"), "{bad}: {e}");
        }
    }
}
