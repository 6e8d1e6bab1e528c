//! Bad configuration fails before anything is spawned, with an error naming
//! the key, and leaves no run directory behind. These need no guest
//! artifacts except where a valid kernel must get past its own check.

use husk_hypervisor::{Error, MicroVm, VmSpec};
use husk_tests::*;
use std::path::Path;

fn spec(shared: &Path) -> VmSpec {
    VmSpec {
        id: "bad".into(),
        shared_dir: shared.to_owned(),
        nets: Vec::new(),
        cgroup_procs: Vec::new(),
        oom_score_adj: None,
    }
}

/// A file that passes the kernel check (ELF magic) without being a kernel.
fn fake_elf(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("vmlinux");
    std::fs::write(&path, b"\x7fELF\x02\x01\x01\x00").unwrap();
    path
}

async fn start_error(config: &husk_config::Config, shared: &Path) -> Error {
    match MicroVm::start(config, spec(shared)).await {
        Ok(_) => panic!("the VM started with a bad configuration"),
        Err(err) => err,
    }
}

fn assert_nothing_made(runtime: &Path) {
    assert!(
        entries(runtime).is_empty(),
        "run directory content left: {:?}",
        entries(runtime)
    );
}

#[tokio::test]
async fn missing_kernel_is_named_before_spawning() {
    let runtime = tempfile::tempdir().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let mut config = test_config(runtime.path());
    config.hypervisor.kernel = runtime.path().join("no-such-vmlinux");
    let err = start_error(&config, shared.path()).await.to_string();
    assert!(err.starts_with("hypervisor.kernel: "), "{err}");
    assert!(
        err.contains("no-such-vmlinux") && err.contains("No such file"),
        "{err}"
    );
    assert_nothing_made(runtime.path());
}

#[tokio::test]
async fn unreadable_initrd_is_named_before_spawning() {
    let runtime = tempfile::tempdir().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let mut config = test_config(runtime.path());
    config.hypervisor.kernel = fake_elf(scratch.path());
    // Root reads any file whatever its mode, so "unreadable" is a directory
    // here, and a dangling symlink below.
    config.hypervisor.initrd = scratch.path().to_owned();
    let err = start_error(&config, shared.path()).await.to_string();
    assert!(err.starts_with("hypervisor.initrd: "), "{err}");
    assert!(err.contains("not a regular file"), "{err}");

    let dangling = scratch.path().join("initrd.cpio");
    std::os::unix::fs::symlink("/nonexistent/initrd", &dangling).unwrap();
    config.hypervisor.initrd = dangling;
    let err = start_error(&config, shared.path()).await.to_string();
    assert!(
        err.starts_with("hypervisor.initrd: ") && err.contains("No such file"),
        "{err}"
    );
    assert_nothing_made(runtime.path());
}

#[tokio::test]
async fn zero_memory_is_named_before_spawning() {
    let runtime = tempfile::tempdir().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let mut config = test_config(runtime.path());
    config.hypervisor.memory_mib = 0;
    let err = start_error(&config, shared.path()).await.to_string();
    assert!(err.contains("hypervisor.memory_mib"), "{err}");
    assert!(err.contains("got 0"), "{err}");
    assert_nothing_made(runtime.path());
}

#[tokio::test]
async fn kernel_that_is_not_a_kernel_is_refused() {
    let runtime = tempfile::tempdir().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let mut config = test_config(runtime.path());
    let text = runtime.path().join("README.txt");
    std::fs::write(&text, "not a kernel").unwrap();
    config.hypervisor.kernel = text;
    let err = start_error(&config, shared.path()).await.to_string();
    assert!(
        err.contains("hypervisor.kernel") && err.contains("neither an ELF"),
        "{err}"
    );
    assert_eq!(
        entries(runtime.path()),
        vec![runtime.path().join("README.txt")]
    );
}

#[tokio::test]
async fn missing_helper_binary_is_named() {
    let runtime = tempfile::tempdir().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let mut config = test_config(runtime.path());
    config.hypervisor.kernel = fake_elf(scratch.path());
    config.hypervisor.initrd = scratch.path().join("vmlinux");
    config.hypervisor.virtiofsd_path = "/nonexistent/virtiofsd".into();
    let err = start_error(&config, shared.path()).await.to_string();
    assert!(
        err.starts_with("hypervisor.virtiofsd_path: /nonexistent/virtiofsd"),
        "{err}"
    );
    assert_nothing_made(runtime.path());
}

#[tokio::test]
async fn bad_vm_id_is_refused() {
    let runtime = tempfile::tempdir().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let config = test_config(runtime.path());
    let err = match MicroVm::start(
        &config,
        VmSpec {
            id: "../escape".into(),
            shared_dir: shared.path().to_owned(),
            nets: Vec::new(),
            cgroup_procs: Vec::new(),
            oom_score_adj: None,
        },
    )
    .await
    {
        Ok(_) => panic!("started with a bad id"),
        Err(err) => err.to_string(),
    };
    assert!(err.contains("invalid VM spec: id"), "{err}");
    assert_nothing_made(runtime.path());
}
