//! Path resolution inside a container's root file system. The image is
//! untrusted: an absolute symlink in it means a path inside the rootfs, not
//! in the guest, and `..` never climbs above the rootfs.

use std::io;
use std::path::{Component, Path, PathBuf};

/// Symlink hops allowed before giving up (Linux's own limit is 40).
const MAX_LINKS: usize = 40;

/// Resolves `path` (absolute, as seen by the container) to a host path
/// below `root`, following symlinks as if `root` were `/`. Components that
/// do not exist yet are kept as they are.
pub fn resolve_in_root(root: &Path, path: &Path) -> io::Result<PathBuf> {
    let mut resolved = PathBuf::new(); // relative to root
    let mut pending: Vec<PathBuf> = path
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(PathBuf::from(n)),
            Component::ParentDir => Some(PathBuf::from("..")),
            _ => None,
        })
        .collect();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part.as_os_str() == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        match std::fs::symlink_metadata(root.join(&candidate)) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(io::Error::other(format!(
                        "too many symlinks resolving {}",
                        path.display()
                    )));
                }
                let target = std::fs::read_link(root.join(&candidate))?;
                if target.is_absolute() {
                    resolved.clear();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => pending.push(PathBuf::from(n)),
                        Component::ParentDir => pending.push(PathBuf::from("..")),
                        _ => {}
                    }
                }
            }
            _ => resolved = candidate,
        }
    }
    Ok(root.join(resolved))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn absolute_symlinks_stay_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("run")).unwrap();
        std::fs::create_dir_all(r.join("var")).unwrap();
        symlink("/run", r.join("var/run")).unwrap();
        symlink("/etc", r.join("escape")).unwrap();
        assert_eq!(
            resolve_in_root(r, Path::new("/var/run/x")).unwrap(),
            r.join("run/x")
        );
        assert_eq!(
            resolve_in_root(r, Path::new("/escape/passwd")).unwrap(),
            r.join("etc/passwd")
        );
    }

    #[test]
    fn dotdot_never_leaves_the_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        symlink("../../../../etc", r.join("up")).unwrap();
        assert_eq!(
            resolve_in_root(r, Path::new("/../../x")).unwrap(),
            r.join("x")
        );
        assert_eq!(
            resolve_in_root(r, Path::new("/up/shadow")).unwrap(),
            r.join("etc/shadow")
        );
    }

    #[test]
    fn symlink_loops_are_an_error() {
        let root = tempfile::tempdir().unwrap();
        symlink("/b", root.path().join("a")).unwrap();
        symlink("/a", root.path().join("b")).unwrap();
        assert!(resolve_in_root(root.path(), Path::new("/a/x")).is_err());
    }
}
