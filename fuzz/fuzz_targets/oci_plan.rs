//! The agent's planner (husk-container's `Plan`): an OCI runtime spec, as
//! the agent decodes it from CreateContainer's JSON, turned into a
//! container's launch plan; and an exec's process JSON into the plan of a
//! process joining it. A spec the guest cannot honour must be refused with
//! the field named, never panic; every path the plan makes is below the
//! rootfs however the image's symlinks point. The spec's root.path is
//! replaced by a rootfs made once per process with hostile symlinks
//! (absolute, climbing, looping), and bind sources in the guest's shared
//! directory (/run/husk/shared/c1/..., where the shim puts them) by a
//! directory of the same shape. Input: the spec's JSON, optionally
//! followed by a NUL and an exec process's JSON.

#![no_main]

use husk_container::Plan;
use libfuzzer_sys::fuzz_target;
use oci_spec::runtime::{Process, Spec};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Where the shim shares files with the guest (husk_proto::GUEST_SHARED_DIR).
const GUEST_SHARED: &str = "/run/husk/shared/";

/// The guest's shared directory for the target: container c1's bind
/// sources mounts/0..7 (directories) and mounts/8..15 (files), and hosts.
fn shared() -> &'static Path {
    static SHARED: OnceLock<PathBuf> = OnceLock::new();
    SHARED.get_or_init(|| {
        let dir = std::env::temp_dir().join("husk-fuzz-shared");
        std::fs::create_dir_all(dir.join("c1/mounts")).unwrap();
        for i in 0..16 {
            let p = dir.join(format!("c1/mounts/{i}"));
            if i < 8 {
                std::fs::create_dir_all(p).unwrap();
            } else {
                std::fs::write(p, "").unwrap();
            }
        }
        std::fs::write(dir.join("c1/hosts"), "").unwrap();
        dir
    })
}

/// A rootfs with the links an image can carry, in $TMPDIR (tests/tools/fuzz.sh
/// points it at a directory it removes); made the same by every process.
fn rootfs() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = std::env::temp_dir().join("husk-fuzz-rootfs");
        for d in ["etc", "dev", "proc", "sys", "tmp", "usr/bin", "var/run"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("etc/hosts"), "").unwrap();
        for (link, target) in [
            ("abs", "/"),
            ("etc/up", "../../../../.."),
            ("escape", "../../../../../../etc"),
            ("host-passwd", "/etc/passwd"),
            ("loop", "loop"),
            ("ping", "pong"),
            ("pong", "ping"),
            ("bin", "usr/bin"),
            ("var/run/link", "/tmp"),
            ("dev/ptmx", "pts/ptmx"),
        ] {
            match symlink(target, root.join(link)) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => panic!("{link}: {e}"),
                _ => {}
            }
        }
        root
    })
}

/// The paths a plan will create or mount on: each below the rootfs.
fn check_targets(plan: &Plan, root: &Path) {
    let text = format!("{plan:?}");
    let root = root.to_str().unwrap();
    for (i, _) in text.match_indices("target: \"") {
        let path = &text[i + "target: \"".len()..];
        assert!(
            path.starts_with(root) && path[root.len()..].starts_with(['/', '"']),
            "a target outside the rootfs: {}",
            &path[..path.find('"').unwrap_or(path.len()).min(200)]
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let (spec_json, process_json) = match data.iter().position(|b| *b == 0) {
        Some(n) => (&data[..n], Some(&data[n + 1..])),
        None => (data, None),
    };
    let Ok(mut spec) = serde_json::from_slice::<Spec>(spec_json) else {
        return;
    };
    let root = rootfs();
    if let Some(mut r) = spec.root().clone() {
        r.set_path(root.to_owned());
        spec.set_root(Some(r));
    }
    if let Some(mounts) = spec.mounts().clone() {
        let mounts = mounts
            .into_iter()
            .map(|mut m| {
                let source = m.source().as_ref().and_then(|s| s.to_str());
                if let Some(rest) = source.and_then(|s| s.strip_prefix(GUEST_SHARED)) {
                    m.set_source(Some(shared().join(rest)));
                }
                m
            })
            .collect();
        spec.set_mounts(Some(mounts));
    }
    match Plan::from_spec(&spec) {
        Ok(plan) => {
            check_targets(&plan, root);
            for (file, value) in plan.cgroup_limits() {
                assert!(!value.contains('\n'), "{file}: {value:?}");
            }
        }
        Err(e) => assert!(!e.field().is_empty(), "a refusal without its field: {e}"),
    }
    if let Some(process) = process_json.and_then(|j| serde_json::from_slice::<Process>(j).ok()) {
        match Plan::for_exec(&spec, process, 4242) {
            Ok(plan) => check_targets(&plan, root),
            Err(e) => assert!(!e.field().is_empty(), "a refusal without its field: {e}"),
        }
    }
});
