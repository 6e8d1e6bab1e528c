//! Mount points as the host keeps them, for code that must never follow
//! what a guest or an image could have planted: unmount without following
//! a link at the target, and find mount points from the mount table
//! (`/proc/self/mountinfo`, proc(5)) rather than by walking directories.

use nix::mount::{umount2, MntFlags};
use std::path::{Path, PathBuf};

/// Lazily unmounts everything stacked at `target`, never following a
/// symlink there.
pub fn unmount(target: &Path) {
    for _ in 0..16 {
        match umount2(target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) => continue,
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => return,
            Err(e) => {
                tracing::warn!(target = %target.display(), %e, "umount failed");
                return;
            }
        }
    }
}

/// Whether `path` is a mount point in this mount namespace.
pub fn is_mount_point(path: &Path) -> bool {
    mounts_under(path).first().is_some_and(|m| m == path)
}

/// Mount points at or below `dir`, deepest first, from the mount table.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    // `is_mount_point` looks at the first: the shallowest is `dir` itself
    // when it is one, so put an exact match first.
    if let Some(i) = found.iter().position(|p| p == dir) {
        let exact = found.remove(i);
        found.insert(0, exact);
    }
    found
}

/// mountinfo writes space, tab, newline and backslash as \ooo.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(r"/run/a\040b\134c"), "/run/a b\\c");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/x\04"), r"/x\04");
    }
}
