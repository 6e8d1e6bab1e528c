//! The share tree on real mounts (needs root; SKIPPED without): what the
//! guest sees is read-only where the shim works, binds carry their flags
//! from the first instant, and neither a container's removal nor a dead
//! shim's cleanup follows what was planted in the tree.

use super::*;
use crate::host::mounts::{is_mount_point, mounts_under, unmount};
use std::os::unix::fs::PermissionsExt;

fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    println!("SKIPPED {test}: mounting needs root");
    false
}

/// A tmpfs outside the tree, with a file: what an attack would unmount or
/// empty. Unmounted by Drop.
struct Victim {
    dir: tempfile::TempDir,
}

impl Victim {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        std::fs::write(dir.path().join("precious"), "data").unwrap();
        Self { dir }
    }

    fn assert_untouched(&self) {
        assert!(
            is_mount_point(self.dir.path()),
            "the host tmpfs was unmounted"
        );
        assert_eq!(
            std::fs::read_to_string(self.dir.path().join("precious")).unwrap(),
            "data"
        );
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        unmount(self.dir.path());
    }
}

/// Mount options of the mount at `path` (mountinfo's fourth field onward).
fn options(path: &Path) -> String {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    table
        .lines()
        .rfind(|l| l.split(' ').nth(4).map(Path::new) == Some(path))
        .and_then(|l| l.split(' ').nth(5))
        .unwrap_or("")
        .to_owned()
}

struct Fixture {
    runtime: tempfile::TempDir,
    tree: ShareTree,
    rootfs: tempfile::TempDir,
    data: tempfile::TempDir,
    file: PathBuf,
}

fn fixture() -> Fixture {
    let runtime = tempfile::tempdir().unwrap();
    let tree = ShareTree::new(runtime.path(), "pod1");
    tree.create().unwrap();
    let rootfs = tempfile::tempdir().unwrap();
    std::fs::write(rootfs.path().join("bin"), "image file").unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("volume-file"), "volume").unwrap();
    let file = data.path().join("single");
    std::fs::write(&file, "one file").unwrap();
    Fixture {
        runtime,
        tree,
        rootfs,
        data,
        file,
    }
}

impl Fixture {
    fn binds(&self) -> Vec<HostBind> {
        vec![
            HostBind {
                source: self.data.path().into(),
                index: 3,
                read_only: true,
                is_file: false,
            },
            HostBind {
                source: self.file.clone(),
                index: 4,
                read_only: false,
                is_file: true,
            },
        ]
    }

    fn assert_sources_whole(&self) {
        assert_eq!(
            std::fs::read_to_string(self.rootfs.path().join("bin")).unwrap(),
            "image file"
        );
        assert_eq!(
            std::fs::read_to_string(self.data.path().join("volume-file")).unwrap(),
            "volume"
        );
        assert_eq!(std::fs::read_to_string(&self.file).unwrap(), "one file");
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.tree.remove();
    }
}

#[test]
fn the_guest_view_is_read_only_and_binds_carry_their_flags() {
    if !root_or_skip("the_guest_view_is_read_only_and_binds_carry_their_flags") {
        return;
    }
    let f = fixture();
    let record = f
        .tree
        .share_container("c1", f.rootfs.path(), &f.binds())
        .unwrap();
    let shared = f.tree.shared_dir();
    // What virtiofsd serves: nothing can be made at its top or in the
    // shim's directories, but the rootfs is the container's to write.
    for planted in [shared.join("evil"), shared.join("c1/mounts/x")] {
        let e = std::os::unix::fs::symlink("/proc", &planted).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{}", planted.display());
    }
    std::fs::write(shared.join("c1/rootfs/new"), "guest").unwrap();
    assert_eq!(
        std::fs::read_to_string(f.rootfs.path().join("new")).unwrap(),
        "guest"
    );
    // The read-only volume is read-only in the guest's view too.
    let e = std::fs::write(shared.join("c1/mounts/3/x"), "no").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    assert_eq!(
        std::fs::read_to_string(shared.join("c1/mounts/4")).unwrap(),
        "one file"
    );
    for m in [
        f.tree.mounts().join("c1/rootfs"),
        shared.join("c1/rootfs"),
        shared.join("c1/mounts/3"),
        shared.join("c1/mounts/4"),
    ] {
        let o = options(&m);
        assert!(
            o.contains("nosuid") && o.contains("nodev"),
            "{}: {o}",
            m.display()
        );
    }
    assert!(options(&shared.join("c1/mounts/3")).starts_with("ro"));
    // Host files of the pod are root's alone.
    for d in [
        f.tree.root().to_owned(),
        f.tree.mounts(),
        f.tree.mounts().join("c1"),
    ] {
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", d.display());
    }
    f.tree.unshare(record);
    assert!(mounts_under(&f.tree.mounts().join("c1")).is_empty());
    assert!(!f.tree.mounts().join("c1").exists());
    f.assert_sources_whole();
    assert!(std::fs::read_to_string(f.rootfs.path().join("new")).is_ok());
}

#[test]
fn planted_symlinks_are_neither_followed_nor_unmounted() {
    if !root_or_skip("planted_symlinks_are_neither_followed_nor_unmounted") {
        return;
    }
    let victim = Victim::new();
    let f = fixture();
    let record = f
        .tree
        .share_container("c1", f.rootfs.path(), &f.binds())
        .unwrap();
    // As the old layout let a guest do: symlinks where the shim unmounts
    // and removes, pointing at a host mount and a host file. (The guest
    // cannot make these any more; a corrupted tree must still be safe.)
    let mounts = f.tree.mounts();
    std::fs::create_dir_all(mounts.join("evil/mounts")).unwrap();
    std::os::unix::fs::symlink(victim.dir.path(), mounts.join("evil/mounts/x")).unwrap();
    std::os::unix::fs::symlink(victim.dir.path(), mounts.join("evil/rootfs")).unwrap();
    std::os::unix::fs::symlink(
        victim.dir.path().join("precious"),
        mounts.join("c1/mounts/9"),
    )
    .unwrap();
    f.tree.unshare(record);
    // What a dead shim's `delete` does for a container, then for the pod.
    f.tree.remove_container("evil");
    f.tree.remove_container("c1");
    f.tree.remove();
    victim.assert_untouched();
    f.assert_sources_whole();
    assert!(!f.tree.root().exists(), "the tree is gone");
    assert!(mounts_under(f.runtime.path()).is_empty());
}

#[test]
fn a_dead_shims_tree_is_cleaned_from_the_mount_table() {
    if !root_or_skip("a_dead_shims_tree_is_cleaned_from_the_mount_table") {
        return;
    }
    let f = fixture();
    // The record dies with the shim.
    let record = f
        .tree
        .share_container("c1", f.rootfs.path(), &f.binds())
        .unwrap();
    std::mem::forget(record);
    assert!(!mounts_under(f.tree.root()).is_empty());
    ShareTree::new(f.runtime.path(), "pod1").remove();
    assert!(mounts_under(f.runtime.path()).is_empty());
    assert!(!f.tree.root().exists());
    f.assert_sources_whole();
}

#[test]
fn a_failed_share_leaves_nothing_and_deletes_nothing() {
    if !root_or_skip("a_failed_share_leaves_nothing_and_deletes_nothing") {
        return;
    }
    let f = fixture();
    let mut binds = f.binds();
    binds.push(HostBind {
        source: "/nonexistent/husk-source".into(),
        index: 5,
        read_only: false,
        is_file: false,
    });
    let e = f
        .tree
        .share_container("c1", f.rootfs.path(), &binds)
        .unwrap_err();
    assert!(e.to_string().contains("/nonexistent/husk-source"), "{e}");
    assert!(mounts_under(&f.tree.mounts().join("c1")).is_empty());
    assert!(!f.tree.mounts().join("c1").exists());
    f.assert_sources_whole();
}
