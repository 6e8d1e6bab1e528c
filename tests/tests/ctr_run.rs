//! End to end through a real containerd: what is particular to a VM (the
//! guest's kernel, a VM that dies, checkpoint) and bulk I/O. The behaviour
//! shared with runc is compared scenario by scenario in `parity.rs`. Each
//! test starts its own containerd and checks that nothing of the VM is left.

use husk_tests::containerd::{processes_mentioning, Containerd};
use husk_tests::ctr::*;
use husk_tests::*;
use std::process::{Command, Stdio};

#[test]
fn stdout_stderr_and_exit_status_match_runc() {
    let ctrd = setup();
    let script = ["sh", "-c", "uname -r; echo out; echo err >&2; exit 3"];
    let husk = run(&ctrd, HUSK, "diff-husk", &script, None);
    let runc = run(&ctrd, RUNC, "diff-runc", &script, None);
    let guest_release = kernel_release_of(&test_config(ctrd.dir.path()).hypervisor.kernel).unwrap();

    let husk_out = text(&husk.stdout);
    let runc_out = text(&runc.stdout);
    let (husk_kernel, husk_rest) = husk_out.split_once('\n').expect("a kernel line");
    let (runc_kernel, runc_rest) = runc_out.split_once('\n').expect("a kernel line");
    assert_eq!(husk_kernel, guest_release, "stderr: {}", text(&husk.stderr));
    assert_eq!(runc_kernel, host_kernel_release());
    assert_ne!(husk_kernel, runc_kernel);
    assert_eq!(husk_rest, "out\n");
    assert_eq!(husk_rest, runc_rest);
    assert_eq!(text(&husk.stderr), "err\n");
    assert_eq!(husk.stderr, runc.stderr);
    assert_eq!(husk.status.code(), Some(3));
    assert_eq!(husk.status.code(), runc.status.code());
    assert_nothing_left(&ctrd);
}

#[test]
fn stdin_reaches_the_process_and_ten_mib_of_stdout_arrive_whole() {
    let ctrd = setup();
    let out = run(&ctrd, HUSK, "stdin", &["cat"], Some(b"hello\n"));
    assert_eq!(
        text(&out.stdout),
        "hello\n",
        "stderr: {}",
        text(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0));

    // 10 MiB of random bytes, the container's own checksum on stderr.
    let script = "dd if=/dev/urandom of=/tmp/d bs=1048576 count=10 2>/dev/null; \
                  sha256sum /tmp/d | cut -d' ' -f1 >&2; cat /tmp/d";
    let out = run(&ctrd, HUSK, "bulk", &["sh", "-c", script], None);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(out.stdout.len(), 10 << 20);
    let mut sha = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(sha.stdin.as_mut().unwrap(), &out.stdout).unwrap();
    let host_sum = text(&sha.wait_with_output().unwrap().stdout);
    assert_eq!(
        host_sum.split_whitespace().next(),
        Some(text(&out.stderr).trim())
    );
    assert_nothing_left(&ctrd);
}

#[test]
fn missing_entrypoint_fails_like_runc_and_leaves_nothing() {
    let ctrd = setup();
    let husk = run(&ctrd, HUSK, "noent-husk", &["/nonexistent"], None);
    let runc = run(&ctrd, RUNC, "noent-runc", &["/nonexistent"], None);
    println!("husk: {}\nrunc: {}", text(&husk.stderr), text(&runc.stderr));
    assert!(!husk.status.success());
    assert_eq!(husk.status.code(), runc.status.code());
    for out in [&husk, &runc] {
        let err = text(&out.stderr);
        assert!(
            err.contains("/nonexistent") && err.contains("no such file or directory"),
            "{err}"
        );
    }
    assert_nothing_left(&ctrd);
}

/// SIGKILLs the one process of VM `id` whose name starts with `name` and
/// whose parent's does not (virtiofsd serves from a child in its sandbox:
/// the process the shim started is its parent).
fn kill_vm_process(ctrd: &Containerd, id: &str, name: &str) {
    let vm_dir = ctrd.husk_runtime.join("vms").join(id).display().to_string();
    let found: Vec<u32> = processes_mentioning(&vm_dir)
        .into_iter()
        .filter(|p| comm(*p).starts_with(name))
        .filter(|p| !comm(parent_pid(*p)).starts_with(name))
        .collect();
    assert_eq!(found.len(), 1, "one {name} per VM: {found:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(found[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

#[test]
fn vm_killed_mid_run_fails_the_task_without_hanging() {
    let ctrd = setup();
    let mut child = spawn_sleeper(&ctrd, HUSK, "crash");
    wait_running(&ctrd, "crash");
    kill_vm_process(&ctrd, "crash", "qemu");
    let status = wait_exit(&mut child, "ctr run hangs after the VM died");
    assert!(!status.success(), "the task should fail when its VM dies");
    assert_nothing_left(&ctrd);
}

/// The container's root file system is virtiofsd's: when it dies the VM
/// goes down with it (nothing could reconnect it), so the task fails
/// instead of hanging on its next file access.
#[test]
fn a_dead_virtiofsd_fails_the_task_without_hanging() {
    let ctrd = setup();
    let mut child = spawn_sleeper(&ctrd, HUSK, "nofs");
    wait_running(&ctrd, "nofs");
    kill_vm_process(&ctrd, "nofs", "virtiofsd");
    let status = wait_exit(&mut child, "ctr run hangs after virtiofsd died");
    assert!(
        !status.success(),
        "the task should fail when virtiofsd dies"
    );
    assert_nothing_left(&ctrd);
}

#[test]
fn checkpoint_is_refused_with_a_reason() {
    let ctrd = setup();
    run_detached(&ctrd, HUSK, "ckpt", &["sleep", "1000"]);
    let out = ctrd.ctr(&["task", "checkpoint", "ckpt"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("checkpoint is not supported by husk"),
        "{}",
        text(&out.stderr)
    );
    assert!(ctrd
        .ctr(&["task", "kill", "-s", "SIGKILL", "ckpt"])
        .status
        .success());
    remove_task(&ctrd, "ckpt");
    assert_nothing_left(&ctrd);
}

/// A spec the guest cannot honour fails at create, naming the field, and
/// no VM is booted for it.
#[test]
fn bad_specs_fail_at_create_naming_the_field() {
    let ctrd = setup();
    let rootfs = tempfile::tempdir().unwrap();
    busybox_rootfs(rootfs.path());

    let out = run_with(
        &ctrd,
        HUSK,
        &["--cap-add", "CAP_BOGUS"],
        "bad-cap",
        &["true"],
        None,
    );
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("process.capabilities.") && err.contains("CAP_BOGUS"),
        "{err}"
    );

    let mut spec = default_spec(&ctrd, rootfs.path(), &["true"]);
    spec["linux"]["resources"]["memory"] = serde_json::json!({"limit": -5});
    let out = run_config(&ctrd, HUSK, "bad-memory", &spec);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("linux.resources.memory.limit") && err.contains("-5"),
        "{err}"
    );

    let mount = "type=bind,src=/nonexistent/husk-source,dst=/x,options=rbind";
    let out = run_with(
        &ctrd,
        HUSK,
        &["--mount", mount],
        "bad-mount",
        &["true"],
        None,
    );
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("].source") && err.contains("/nonexistent/husk-source"),
        "{err}"
    );

    // Refused before boot: no VM directory was ever made.
    assert!(
        !ctrd.husk_runtime.join("vms").exists()
            || entries(&ctrd.husk_runtime.join("vms")).is_empty(),
        "a VM was started for a bad spec"
    );
    let log = std::fs::read_to_string(ctrd.dir.path().join("containerd.log")).unwrap_or_default();
    assert!(!log.contains("VM ready"), "a VM booted for a bad spec");
    assert_nothing_left(&ctrd);
}
