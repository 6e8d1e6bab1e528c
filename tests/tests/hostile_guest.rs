//! A hostile guest and failed boots, end to end through containerd: a
//! hostile guest cannot reach the host, and no failure loses user data. Root in the guest tries to plant links in the share the
//! host cleans up; a VM that cannot boot must leave the container's image
//! and its host volumes whole.

use husk_tests::containerd::{mounts_under, Containerd};
use husk_tests::ctr::*;
use std::path::Path;

/// A tmpfs with a file, outside everything husk owns: what an attack
/// would unmount or empty.
struct Victim(tempfile::TempDir);

impl Victim {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        std::fs::write(dir.path().join("precious"), "data").unwrap();
        Victim(dir)
    }

    fn assert_untouched(&self) {
        assert_eq!(
            mounts_under(self.0.path()).first().map(|p| p.as_path()),
            Some(self.0.path()),
            "the host tmpfs was unmounted"
        );
        assert_eq!(
            std::fs::read_to_string(self.0.path().join("precious")).unwrap(),
            "data"
        );
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.0.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Changes this containerd's husk configuration: the next shim reads it
/// when it starts.
fn configure(ctrd: &Containerd, change: impl FnOnce(&mut husk_config::Config)) {
    let path = ctrd.dir.path().join("husk.toml");
    let mut config = husk_config::Config::load(&path).unwrap();
    change(&mut config);
    std::fs::write(&path, config.to_toml()).unwrap();
}

/// Points this containerd's husk configuration at `initrd`: the next VM
/// boots with it.
fn use_initrd(ctrd: &Containerd, initrd: &Path) {
    configure(ctrd, |c| c.hypervisor.initrd = initrd.to_owned());
}

/// The initrd of husk-fake-agent: a replaced agent that boots, takes
/// containers, then answers nothing that would give them back.
fn fake_agent_initrd() -> std::path::PathBuf {
    husk_tests::installed_archive(
        "HUSK_FAKE_AGENT_INITRD",
        "/usr/local/share/husk/husk-fake-agent-initrd.cpio",
    )
}

/// Short deadlines for the fake agent's pods (TCG's defaults are a
/// minute): the bounds these tests assert.
const CALL_SECS: u64 = 5;
const GRACE_SECS: u64 = 5;

fn with_fake_agent(config: &mut husk_config::Config) {
    config.hypervisor.initrd = fake_agent_initrd();
    for t in [&mut config.timeouts.kvm, &mut config.timeouts.tcg] {
        t.agent_call_secs = CALL_SECS;
        t.kill_grace_secs = GRACE_SECS;
        t.shutdown_secs = 3;
    }
}

/// The pod's share tree in this containerd's husk runtime directory.
fn pod_tree(ctrd: &Containerd, pod: &str) -> std::path::PathBuf {
    ctrd.husk_runtime.join("pods").join(pod)
}

#[test]
fn links_planted_where_the_shim_works_are_never_followed() {
    let ctrd = setup();
    let victim = Victim::new();
    let v = victim.0.path();
    run_detached(&ctrd, HUSK, "target", &["sleep", "1000"]);
    let tree = pod_tree(&ctrd, "target");
    // The guest's view (what virtiofsd serves) takes no new entry where
    // the shim works: not at its top, not beside a container's rootfs.
    for planted in ["shared/evil", "shared/target/mounts", "shared/next"] {
        let e = std::os::unix::fs::symlink(v, tree.join(planted)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(nix::libc::EROFS), "{planted}: {e}");
    }
    // Should the host-only tree hold links anyway (it cannot come from the
    // guest), set-up, cleanup and crash cleanup still follow none of them.
    let mounts = tree.join("mounts");
    std::fs::create_dir_all(mounts.join("evil/mounts")).unwrap();
    std::os::unix::fs::symlink(v, mounts.join("evil/mounts/x")).unwrap();
    std::os::unix::fs::symlink(v, mounts.join("evil/rootfs")).unwrap();
    std::os::unix::fs::symlink(v, mounts.join("next")).unwrap();
    // A new container of another pod is unaffected; one whose directory
    // was planted in this pod's tree is not made through the link.
    let out = ctrd.ctr(&["run", "--rm", "--runtime", HUSK, IMAGE, "other", "true"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(ctrd
        .ctr(&["task", "kill", "-s", "9", "target"])
        .status
        .success());
    remove_task(&ctrd, "target");
    victim.assert_untouched();
    assert!(!tree.exists(), "the pod's tree is gone");

    // Crash cleanup: the shim is killed, containerd runs `delete`.
    run_detached(&ctrd, HUSK, "crashed", &["sleep", "1000"]);
    let tree = pod_tree(&ctrd, "crashed");
    let mounts = tree.join("mounts");
    std::fs::create_dir_all(mounts.join("evil/mounts")).unwrap();
    std::os::unix::fs::symlink(v, mounts.join("evil/mounts/x")).unwrap();
    std::os::unix::fs::symlink(v.join("precious"), mounts.join("crashed/planted")).unwrap();
    let shims: Vec<u32> = ctrd
        .shims("containerd-shim-husk-v2")
        .into_iter()
        .filter(|s| s.id == "crashed")
        .map(|s| s.pid)
        .collect();
    assert_eq!(shims.len(), 1, "{shims:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shims[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // containerd runs the shim's `delete` and drops the task.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !task_status(&ctrd, "crashed").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the task outlived its shim"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(ctrd.ctr(&["container", "rm", "crashed"]).status.success());
    victim.assert_untouched();
    assert_nothing_left(&ctrd);
}

#[test]
fn a_failed_boot_deletes_neither_the_image_nor_a_bound_directory() {
    let ctrd = setup();
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(data.path().join("sub/deeper")).unwrap();
    for f in ["a", "sub/b", "sub/deeper/c"] {
        std::fs::write(data.path().join(f), f).unwrap();
    }
    // An initrd that is not a cpio archive: the kernel finds no /init.
    let bad = ctrd.dir.path().join("not-a-cpio");
    std::fs::write(&bad, vec![0x5a; 4096]).unwrap();
    use_initrd(&ctrd, &bad);
    let mount = format!(
        "type=bind,src={},dst=/data,options=rbind:rw",
        data.path().display()
    );
    let out = ctrd.ctr(&[
        "run",
        "--runtime",
        HUSK,
        "--mount",
        &mount,
        IMAGE,
        "noboot",
        "true",
    ]);
    assert!(!out.status.success(), "the VM booted with a bad initrd");
    let err = text(&out.stderr);
    println!("ctr run: {err}");
    assert!(err.contains("starting the VM"), "{err}");
    for f in ["a", "sub/b", "sub/deeper/c"] {
        assert_eq!(
            std::fs::read_to_string(data.path().join(f)).unwrap(),
            f,
            "{f} of the bound directory"
        );
    }
    // The container's snapshot (its image, as containerd keeps it) is
    // still whole.
    let view = tempfile::tempdir().unwrap();
    let cmd = ctrd.ctr(&[
        "snapshot",
        "mounts",
        view.path().to_str().unwrap(),
        "noboot",
    ]);
    assert!(cmd.status.success(), "{}", text(&cmd.stderr));
    let mounted = std::process::Command::new("sh")
        .arg("-c")
        .arg(text(&cmd.stdout))
        .status()
        .unwrap();
    assert!(mounted.success());
    let busybox = view.path().join("bin/busybox");
    let whole = busybox.exists();
    let _ = nix::mount::umount2(view.path(), nix::mount::MntFlags::MNT_DETACH);
    assert!(whole, "the image's files were deleted through the overlay");
    assert!(ctrd.ctr(&["container", "rm", "noboot"]).status.success());
    assert_nothing_left(&ctrd);
}

#[test]
fn an_agent_that_never_answers_cannot_keep_its_container() {
    let ctrd = setup();
    configure(&ctrd, with_fake_agent);
    run_detached(&ctrd, HUSK, "mute", &["sleep", "1000"]);
    let started = std::time::Instant::now();
    let out = ctrd.ctr(&["task", "kill", "-s", "15", "mute"]);
    let took = started.elapsed();
    let err = text(&out.stderr);
    println!("ctr task kill: {err} ({took:?})");
    assert!(
        !out.status.success(),
        "the agent never answered, yet kill succeeded"
    );
    assert!(err.contains("did not answer"), "{err}");
    assert!(
        took < std::time::Duration::from_secs(CALL_SECS + 10),
        "kill took {took:?}"
    );
    // containerd's forced delete (SIGKILL, wait, delete): the shim stops
    // the VM itself.
    let started = std::time::Instant::now();
    let out = ctrd.ctr(&["task", "delete", "--force", "mute"]);
    println!(
        "ctr task delete --force: {} ({:?})",
        text(&out.stderr),
        started.elapsed()
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(ctrd.ctr(&["container", "rm", "mute"]).status.success());
    assert_nothing_left(&ctrd);
}

#[test]
fn an_agent_that_never_answers_cannot_keep_its_pod() {
    use husk_tests::cri::{Cri, PodSpec, HUSK as HUSK_HANDLER};
    if let Some(reason) = husk_tests::cri::unsupported_reason() {
        println!("SKIPPED: {reason}");
        return;
    }
    let cri = Cri::start();
    configure(cri.containerd(), with_fake_agent);
    let pod = cri.run_pod(HUSK_HANDLER, &PodSpec::new("mute"));
    let started = std::time::Instant::now();
    cri.stop_and_remove(&pod);
    println!("StopPodSandbox + RemovePodSandbox: {:?}", started.elapsed());
}

#[test]
fn a_pod_whose_vm_cannot_boot_leaves_nothing() {
    use husk_tests::cri::{Cri, PodSpec, HUSK as HUSK_HANDLER};
    if let Some(reason) = husk_tests::cri::unsupported_reason() {
        println!("SKIPPED: {reason}");
        return;
    }
    let cri = Cri::start();
    let bad = cri.containerd().dir.path().join("not-a-cpio");
    std::fs::write(&bad, vec![0x5a; 4096]).unwrap();
    use_initrd(cri.containerd(), &bad);
    let e = cri
        .try_run_pod(HUSK_HANDLER, &PodSpec::new("noboot"))
        .err()
        .expect("the pod started with a bad initrd");
    println!("RunPodSandbox: {e}");
    assert!(e.contains("starting the VM"), "{e}");
    let runtime = cri.containerd().husk_runtime.clone();
    assert!(
        mounts_under(&runtime).is_empty(),
        "{:?}",
        mounts_under(&runtime)
    );
    for sub in ["pods", "vms"] {
        let left: Vec<_> = std::fs::read_dir(runtime.join(sub))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{sub}/ still holds {left:?}");
    }
}
