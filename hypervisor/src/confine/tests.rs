//! Confinements applied to real processes (a shell), read back from the
//! inside (what it can do) and from /proc (what it holds). They need root
//! (namespaces, mounts, set*id) and print SKIPPED without it.

use super::*;
use std::path::Path;
use std::process::Stdio;

const ID: Identity = Identity {
    uid: 1_879_048_100,
    gid: 1_879_048_101,
};

fn root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    println!("SKIPPED: confining a process needs root");
    false
}

/// Runs `sh -c script` under `c`; (status, stdout, stderr).
async fn run_in(c: &Confinement, script: &str) -> (std::process::ExitStatus, String, String) {
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c.apply(&mut cmd).unwrap();
    let out = cmd.output().await.unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The vsock daemon's confinement, on a shell: PID 1 of its own
/// namespace, the VM's ids, a root with /usr and its directory only, the
/// directory writable and /usr not, no network but loopback.
#[tokio::test]
async fn a_jailed_helper_sees_only_what_it_is_given() {
    if !root() {
        return;
    }
    let stage = tempfile::tempdir().unwrap();
    let own = stage.path().join("vsock");
    std::fs::create_dir(&own).unwrap();
    std::os::unix::fs::chown(&own, Some(ID.uid), Some(ID.gid)).unwrap();
    std::fs::write(stage.path().join("secret"), "host").unwrap();
    let c =
        policy::vsock_backend(Path::new("/bin/sh"), stage.path(), &own, Some(ID), None).unwrap();
    let script = format!(
        "echo pid=$$; id -u; id -g; id -G; ls -a /; touch {own}/made && echo wrote; \
         touch /usr/x 2>/dev/null || echo usr-ro; \
         cat {secret} 2>/dev/null || echo no-secret; \
         ls /sys/class/net 2>/dev/null || echo no-sys",
        own = own.display(),
        secret = stage.path().join("secret").display()
    );
    let (status, out, err) = run_in(&c, &script).await;
    assert!(status.success(), "{status}: {out}\n{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "pid=1", "{out}");
    assert_eq!(lines[1], ID.uid.to_string());
    assert_eq!(lines[2], ID.gid.to_string());
    assert_eq!(lines[3], ID.gid.to_string(), "no supplementary group");
    // The root: ., .., the /usr links and /usr, and the first component
    // of the directory's path (/tmp); nothing of the host's /.
    let top = stage
        .path()
        .components()
        .nth(1)
        .unwrap()
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    let listing: Vec<&str> = lines[4..lines.len() - 4].to_vec();
    for name in &listing {
        assert!(
            [".", "..", "usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", &top]
                .contains(name),
            "{name} in the jail's root: {listing:?}"
        );
    }
    assert!(!listing.contains(&"etc") && !listing.contains(&"proc"));
    assert_eq!(
        &lines[lines.len() - 4..],
        ["wrote", "usr-ro", "no-secret", "no-sys"]
    );
    assert!(own.join("made").exists());
}

/// From /proc, as the least-privilege suite reads a pod's helpers: no
/// capability (bounding set included), no_new_privs, a filter, IPC, UTS
/// and network namespaces of its own.
#[tokio::test]
async fn a_confined_helper_holds_no_privilege() {
    if !root() {
        return;
    }
    let c = Confinement {
        identity: Some(ID),
        drop_capabilities: true,
        namespaces: CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWNET,
        seccomp: Some(super::seccomp::Filter::DenyList),
        ..Confinement::default()
    };
    let script = "grep -E '^(Uid|Gid|Groups|CapEff|CapPrm|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status; \
                  readlink /proc/self/ns/ipc /proc/self/ns/uts /proc/self/ns/net";
    let (status, out, err) = run_in(&c, script).await;
    assert!(status.success(), "{out}\n{err}");
    for want in [
        format!("Uid:\t{0}\t{0}\t{0}\t{0}", ID.uid),
        format!("Gid:\t{0}\t{0}\t{0}\t{0}", ID.gid),
        "CapEff:\t0000000000000000".into(),
        "CapPrm:\t0000000000000000".into(),
        "CapBnd:\t0000000000000000".into(),
        "CapAmb:\t0000000000000000".into(),
        "NoNewPrivs:\t1".into(),
        "Seccomp:\t2".into(),
    ] {
        assert!(out.lines().any(|l| l == want), "{want:?} missing:\n{out}");
    }
    for ns in ["ipc", "uts", "net"] {
        let mine = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        let mine = mine.to_string_lossy();
        assert!(
            out.lines().any(|l| l.starts_with(ns)) && !out.contains(&*mine),
            "{ns}: shares {mine}:\n{out}"
        );
    }
}

/// The monitor of a PID namespace is the pid the launcher holds: named
/// husk-ns-monitor, unprivileged, it turns SIGTERM into the helper's end
/// (a PID 1 would ignore it) and exits with the helper's status.
#[tokio::test]
async fn the_pid_namespace_monitor_ends_its_helper_on_sigterm() {
    if !root() {
        return;
    }
    let c = Confinement {
        identity: Some(ID),
        drop_capabilities: true,
        pid_namespace: true,
        seccomp: Some(super::seccomp::Filter::DenyList),
        ..Confinement::default()
    };
    let mut cmd = Command::new("/bin/sleep");
    cmd.arg("100").stdout(Stdio::null()).stderr(Stdio::null());
    c.apply(&mut cmd).unwrap();
    let mut child = cmd.spawn().unwrap();
    let pid = child.id().unwrap();
    let comm = || std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert_eq!(comm().trim(), "husk-ns-monitor");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains("CapEff:\t0000000000000000"), "{status}");
    assert!(
        status.contains(&format!("Uid:\t{0}\t{0}\t{0}\t{0}", ID.uid)),
        "{status}"
    );
    // Its one child is the helper, sleep.
    let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let helper: u32 = kids.trim().parse().unwrap();
    let helper_comm = std::fs::read_to_string(format!("/proc/{helper}/comm")).unwrap();
    assert_eq!(helper_comm.trim(), "sleep");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(std::time::Duration::from_secs(5), child.wait())
        .await
        .expect("the monitor did not end on SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGKILL), "{status}");
    assert!(!Path::new(&format!("/proc/{helper}")).exists());
}

/// A jail that cannot be planned fails before anything is spawned,
/// naming the program and the path.
#[test]
fn a_bad_jail_path_is_refused_before_the_spawn() {
    let mut jail = Jail::new(Path::new("/run/x"));
    jail.read_only(Path::new("/nonexistent/husk-jail-test"));
    let c = Confinement {
        jail: Some(jail),
        ..Confinement::default()
    };
    let mut cmd = Command::new("/bin/true");
    let e = c.apply(&mut cmd).unwrap_err().to_string();
    assert!(e.contains("/bin/true") && e.contains("No such file"), "{e}");
}

/// QEMU's kind of jail: a read-only directory with one writable file in
/// it (a console log, as QEMU is given one outside MicroVm), a device node, no privilege; the ancestors of
/// the directory are passable whatever their host modes (here a 0700
/// temporary directory).
#[tokio::test]
async fn a_writable_file_in_a_read_only_directory_and_a_device() {
    if !root() {
        return;
    }
    let stage = tempfile::tempdir().unwrap();
    let run = stage.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::os::unix::fs::chown(&run, Some(0), Some(ID.gid)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o710)).unwrap();
    let console = run.join("console.log");
    std::fs::write(&console, "").unwrap();
    std::os::unix::fs::chown(&console, Some(ID.uid), Some(ID.gid)).unwrap();
    let mut jail = Jail::new(&run);
    jail.system(Path::new("/bin/sh"))
        .unwrap()
        .read_only(&run)
        .writable(&console)
        .device(Path::new("/dev/urandom"));
    let c = Confinement {
        identity: Some(ID),
        drop_capabilities: true,
        jail: Some(jail),
        seccomp: Some(super::seccomp::Filter::DenyList),
        ..Confinement::default()
    };
    let script = format!(
        "echo guest >> {console}; touch {run}/new 2>/dev/null || echo ro; \
         head -c 4 /dev/urandom | wc -c",
        console = console.display(),
        run = run.display()
    );
    let (status, out, err) = run_in(&c, &script).await;
    assert!(status.success(), "{out}\n{err}");
    assert_eq!(out, "ro\n4\n");
    assert_eq!(std::fs::read_to_string(&console).unwrap(), "guest\n");
    assert!(!run.join("new").exists());
}

/// The contract with the hooks a launcher adds after the confinement
/// (Daemon::spawn's cgroup placement writes "0" to a cgroup.procs it
/// opened as root): they run in the confined helper, after the switch to
/// the VM's user, and the kernel checks the opener's credentials, so the
/// helper still lands in the cgroup; its PID-namespace monitor does not
/// (it stays in the launcher's).
#[tokio::test]
async fn a_later_hook_still_places_the_confined_helper_in_a_cgroup() {
    if !root() {
        return;
    }
    let pids = Path::new("/sys/fs/cgroup/pids");
    if !pids.join("cgroup.procs").exists() {
        println!("SKIPPED: no cgroup v1 pids hierarchy here");
        return;
    }
    let cg = pids.join(format!("husk-confine-test-{}", std::process::id()));
    std::fs::create_dir(&cg).unwrap();
    struct Rm(std::path::PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let _rm = Rm(cg.clone());
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(cg.join("cgroup.procs"))
        .unwrap();
    let c = Confinement {
        identity: Some(ID),
        drop_capabilities: true,
        pid_namespace: true,
        seccomp: Some(super::seccomp::Filter::DenyList),
        ..Confinement::default()
    };
    let mut cmd = Command::new("/bin/sleep");
    cmd.arg("100").stdout(Stdio::null()).stderr(Stdio::null());
    c.apply(&mut cmd).unwrap();
    use std::os::fd::AsRawFd;
    let fd = procs.as_raw_fd();
    // SAFETY: write(2) of a static byte to a descriptor open in the parent
    // until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(procs);
    let monitor = child.id().unwrap();
    let helper: u32 = std::fs::read_to_string(format!("/proc/{monitor}/task/{monitor}/children"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let members = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap();
    let members: Vec<u32> = members.lines().filter_map(|l| l.parse().ok()).collect();
    child.kill().await.unwrap();
    // The helper dies with its monitor; only then can the cgroup go.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while Path::new(&format!("/proc/{helper}")).exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(
        !Path::new(&format!("/proc/{helper}")).exists(),
        "the helper outlived its monitor"
    );
    assert_eq!(members, [helper], "monitor {monitor}");
}

/// swtpm's confinement, on a shell: the VM's ids, no capability, a root
/// with /usr, /dev/urandom and the TPM state directory at /tpm, bound
/// from the descriptor opened before the spawn: a link put in the
/// directory's place afterwards (a pod sharing the volume) changes
/// nothing.
#[tokio::test]
async fn the_tpm_state_is_bound_from_its_descriptor_not_its_name() {
    if !root() {
        return;
    }
    let stage = tempfile::tempdir().unwrap();
    let volume = tempfile::tempdir().unwrap();
    let state = volume.path().join("tpm");
    std::fs::create_dir(&state).unwrap();
    let dir = crate::swtpm::open_state_dir(&state, Some(ID)).unwrap();
    // The name now leads elsewhere; the descriptor still holds the state.
    let moved = volume.path().join("moved");
    std::fs::rename(&state, &moved).unwrap();
    let elsewhere = volume.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &state).unwrap();
    let c = policy::swtpm(
        Path::new("/bin/sh"),
        stage.path(),
        std::sync::Arc::new(dir),
        Some(ID),
        None,
    )
    .unwrap();
    let (status, out, err) = run_in(
        &c,
        "id -u; echo state > /tpm/tpm2-00.permall && echo wrote; ls /; \
         touch /usr/x 2>/dev/null || echo usr-ro",
    )
    .await;
    assert!(status.success(), "{out}\n{err}");
    assert!(out.starts_with(&format!("{}\nwrote\n", ID.uid)), "{out}");
    assert!(out.contains("tpm") && out.contains("usr-ro"), "{out}");
    assert!(!out.contains("etc"), "{out}");
    assert_eq!(
        std::fs::read_to_string(moved.join("tpm2-00.permall")).unwrap(),
        "state\n"
    );
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
}
