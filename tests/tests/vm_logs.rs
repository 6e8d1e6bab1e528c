//! What a pod's VM leaves on the host, end to end through containerd:
//! bounded logs under a guest that floods its console, private modes on
//! everything a pod has on the host, logs kept (and quoted to containerd)
//! after a failed boot, and the VM's processes starting inside the pod's
//! cgroup for both cgroup drivers' path forms.

use husk_tests::containerd::{processes_mentioning, Containerd};
use husk_tests::ctr::*;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Caps small enough that a flood of a few seconds crosses both (a TCG
/// guest's UART carries about 25 KB/s).
const MAX_FILE_KIB: u64 = 64;
const RATE_KIB: u64 = 8;

/// Sets `[logs]` of this containerd's husk configuration; the next shim
/// reads it.
fn set_logs(ctrd: &Containerd, edit: impl FnOnce(&mut husk_config::LogsConfig)) {
    let path = ctrd.dir.path().join("husk.toml");
    let mut config = husk_config::Config::load(&path).unwrap();
    edit(&mut config.logs);
    std::fs::write(&path, config.to_toml()).unwrap();
}

/// Bytes of the files under `dir` on `dir`'s own file system (as `du -x
/// --apparent-size` counts: not the container rootfs mounted below it),
/// without following links.
fn usage(dir: &Path) -> u64 {
    let dev = dir.metadata().unwrap().dev();
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = e.path().symlink_metadata() else {
                continue;
            };
            if meta.dev() != dev {
                continue;
            }
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

/// (file, size) of every file in `dir`.
fn files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut f: Vec<_> = husk_tests::entries(dir)
        .into_iter()
        .map(|p| {
            let len = p.symlink_metadata().unwrap().len();
            (p, len)
        })
        .collect();
    f.sort();
    f
}

/// The shim serving container `id` of this containerd.
fn shim_of(ctrd: &Containerd, id: &str) -> u32 {
    let shims: Vec<u32> = ctrd
        .shims("containerd-shim-husk-v2")
        .into_iter()
        .filter(|s| s.id == id)
        .map(|s| s.pid)
        .collect();
    assert_eq!(shims.len(), 1, "shims of {id}: {shims:?}");
    shims[0]
}

#[test]
fn a_console_flood_keeps_every_host_file_under_its_cap() {
    let ctrd = setup();
    set_logs(&ctrd, |l| {
        l.max_file_kib = MAX_FILE_KIB;
        l.rate_kib_per_sec = RATE_KIB;
    });
    let logs = ctrd.husk_logs.join("flood");
    // Root in a privileged container writes the guest's console (the
    // serial port) without end.
    let run = ctrd.ctr(&[
        "run",
        "-d",
        "--privileged",
        "--runtime",
        HUSK,
        IMAGE,
        "flood",
        "sh",
        "-c",
        "yes flood > /dev/ttyS0",
    ]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    wait_running(&ctrd, "flood");
    let run_before = usage(&ctrd.husk_runtime);
    let shim = shim_of(&ctrd, "flood");
    let (cpu0, t0) = (
        husk_tests::cpu_secs(shim).expect("the shim's CPU time"),
        Instant::now(),
    );
    let mut biggest = 0;
    while t0.elapsed() < Duration::from_secs(20) {
        for (f, len) in files(&logs) {
            biggest = biggest.max(len);
            assert!(
                len <= MAX_FILE_KIB << 10,
                "{} holds {len} bytes",
                f.display()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let shim_cpu = (husk_tests::cpu_secs(shim).expect("the shim's CPU time") - cpu0)
        / t0.elapsed().as_secs_f64();
    let in_files = files(&logs);
    // The guest's tty ends its lines with \r\n.
    let console = (std::fs::read_to_string(logs.join("console.log.1")).unwrap_or_default()
        + &std::fs::read_to_string(logs.join("console.log")).unwrap_or_default())
        .replace('\r', "");
    // The pod still answers while its guest floods.
    let exec = ctrd.ctr(&["task", "exec", "--exec-id", "e1", "flood", "echo", "alive"]);
    let run_after = usage(&ctrd.husk_runtime);
    println!(
        "flood: runtime dir {run_before} -> {run_after} bytes; largest log {biggest} bytes \
         (cap {} KiB, {RATE_KIB} KiB/s); shim CPU {:.1}% of a core; logs {in_files:?}",
        MAX_FILE_KIB,
        shim_cpu * 100.0
    );
    assert!(
        console.contains("flood\nflood\nflood\n"),
        "the guest did not flood its console: {}",
        &console[..console.len().min(2000)]
    );
    assert!(
        console.contains("bytes dropped, over the log rate of 8 KiB/s"),
        "no drop noted"
    );
    assert!(
        in_files.iter().any(|(f, _)| f.ends_with("console.log.1")),
        "the console log never rotated: {in_files:?}"
    );
    let total: u64 = in_files.iter().map(|(_, l)| l).sum();
    assert!(total <= 8 * (MAX_FILE_KIB << 10), "{total} bytes of logs");
    assert!(
        run_after <= run_before + (64 << 10),
        "the runtime dir grew from {run_before} to {run_after} bytes"
    );
    assert!(
        shim_cpu < 0.05,
        "the shim used {:.1}% of a core",
        shim_cpu * 100.0
    );
    assert!(exec.status.success(), "{}", text(&exec.stderr));
    assert_eq!(text(&exec.stdout).trim(), "alive");
    assert!(ctrd
        .ctr(&["task", "kill", "-s", "9", "flood"])
        .status
        .success());
    remove_task(&ctrd, "flood");
    // Stopped by the host: the logs are gone with the VM.
    assert!(!logs.exists(), "{} outlived a clean stop", logs.display());
    assert_nothing_left(&ctrd);
}

/// `path` is root's, or `vm`'s (the VM's own unprivileged id, which its
/// helpers run as), and nobody else's: no group or other bits.
fn assert_private(path: &Path, vm: u32) {
    let meta = path.symlink_metadata().unwrap();
    assert!(
        meta.uid() == 0 || meta.uid() == vm,
        "{} is uid {}",
        path.display(),
        meta.uid()
    );
    assert_eq!(
        meta.mode() & 0o077,
        0,
        "{} is mode {:o}",
        path.display(),
        meta.mode() & 0o7777
    );
}

#[test]
fn a_pods_run_directory_sockets_and_logs_are_private() {
    let ctrd = setup();
    run_detached(&ctrd, HUSK, "private", &["sleep", "1000"]);
    let vms = ctrd.husk_runtime.join("vms");
    let run_dir = vms.join("private");
    let log_dir = ctrd.husk_logs.join("private");
    // The run directory is root's and passable (search only) by the VM's
    // own group, N (docs/security.md): its helpers reach their sockets by
    // name. Everything in it is root's or N's, and no one else's.
    let meta = run_dir.symlink_metadata().unwrap();
    let vm = meta.gid();
    let first_id = husk_config::ConfinementConfig::default().first_id;
    assert!(vm >= first_id, "the run directory's group {vm} is no VM id");
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o710));
    let vsock_dir = run_dir.join("vsock");
    let mut checked = vec![vms.clone(), ctrd.husk_logs.clone(), log_dir.clone()];
    for dir in [&run_dir, &vsock_dir, &log_dir] {
        checked.extend(husk_tests::entries(dir));
    }
    let sockets = husk_tests::entries(&run_dir)
        .into_iter()
        .filter(|p| {
            use std::os::unix::fs::FileTypeExt;
            p.symlink_metadata().unwrap().file_type().is_socket()
        })
        .count();
    assert!(
        sockets >= 2,
        "the sockets: {:?}",
        husk_tests::entries(&run_dir)
    );
    for p in &checked {
        assert_private(p, vm);
    }
    for dir in [&vms, &vsock_dir, &ctrd.husk_logs, &log_dir] {
        assert_eq!(dir.symlink_metadata().unwrap().mode() & 0o777, 0o700);
    }
    for (log, _) in files(&log_dir) {
        assert_eq!(log.symlink_metadata().unwrap().mode() & 0o777, 0o600);
        assert_eq!(log.symlink_metadata().unwrap().uid(), 0);
    }
    println!(
        "private: {} paths checked, {sockets} sockets",
        checked.len()
    );
    assert!(ctrd
        .ctr(&["task", "kill", "-s", "9", "private"])
        .status
        .success());
    remove_task(&ctrd, "private");
    assert_nothing_left(&ctrd);
}

#[test]
fn a_failed_boot_keeps_its_logs_and_quotes_their_end() {
    let ctrd = setup();
    set_logs(&ctrd, |l| l.max_file_kib = MAX_FILE_KIB);
    // An initrd that is not a cpio archive: the kernel panics.
    let bad = ctrd.dir.path().join("not-a-cpio");
    std::fs::write(&bad, vec![0x5a; 4096]).unwrap();
    let path = ctrd.dir.path().join("husk.toml");
    let mut config = husk_config::Config::load(&path).unwrap();
    config.hypervisor.initrd = bad;
    std::fs::write(&path, config.to_toml()).unwrap();

    let out = ctrd.ctr(&["run", "--runtime", HUSK, IMAGE, "noboot", "true"]);
    assert!(!out.status.success(), "the VM booted with a bad initrd");
    let err = text(&out.stderr);
    println!("ctr run: {err}");
    assert!(err.contains("console and VMM log end with"), "{err}");
    // The guest's last console line, as the kernel wrote it.
    assert!(err.contains("Kernel panic"), "{err}");

    let logs = ctrd.husk_logs.join("noboot");
    let console = std::fs::read_to_string(logs.join("console.log")).unwrap();
    assert!(console.contains("Kernel panic"), "{console}");
    let kept = files(&logs);
    println!("kept: {kept:?}");
    for (f, len) in &kept {
        assert!(*len <= MAX_FILE_KIB << 10, "{}: {len}", f.display());
    }
    let names: Vec<_> = kept
        .iter()
        .map(|(f, _)| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for log in [
        "console.log",
        "vmm.log",
        "virtiofsd.log",
        "vhost-device-vsock.log",
    ] {
        assert!(names.iter().any(|n| n == log), "{log} missing: {names:?}");
    }
    // `husk logs` prints them.
    let husk = std::process::Command::new(husk_tests::containerd::build_bin_dir().join("husk"))
        .args(["logs", "noboot", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(husk.status.success(), "{}", text(&husk.stderr));
    let printed = text(&husk.stdout);
    assert!(
        printed.contains(&format!("==> {} <==", logs.join("console.log").display()))
            && printed.contains("Kernel panic"),
        "{printed}"
    );
    let unknown = std::process::Command::new(husk_tests::containerd::build_bin_dir().join("husk"))
        .args(["logs", "../etc", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!unknown.status.success());
    assert!(
        text(&unknown.stderr).contains("not a pod id"),
        "{}",
        text(&unknown.stderr)
    );
    // The shim said what happened to the VM, naming pod and container.
    let log = std::fs::read_to_string(ctrd.dir.path().join("containerd.log")).unwrap();
    for state in ["VM booting", "VM failed to boot"] {
        assert!(
            log.lines().any(|l| l.contains(state)
                && l.contains("pod_id=noboot")
                && l.contains("container_id=noboot")),
            "no {state:?} line in the containerd log"
        );
    }
    assert!(ctrd.ctr(&["container", "rm", "noboot"]).status.success());
    assert!(
        logs.join("console.log").exists(),
        "the logs outlive the container"
    );
    assert_nothing_left(&ctrd);
}

/// A cgroup path of each driver's form, the cgroup it names in every
/// hierarchy, and the top directory the test removes afterwards.
struct PodCgroup {
    spec: String,
    rel: String,
    top: String,
}

fn hierarchies() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        return vec![root.to_owned()];
    }
    ["memory", "pids", "cpu"]
        .iter()
        .map(|c| root.join(c))
        .filter(|h| h.join("cgroup.procs").exists())
        .collect()
}

/// Memory charged to cgroup `rel`: v2's memory.current, v1's
/// memory.usage_in_bytes.
fn charged(rel: &str) -> Option<u64> {
    let root = Path::new("/sys/fs/cgroup");
    [
        root.join(rel).join("memory.current"),
        root.join("memory").join(rel).join("memory.usage_in_bytes"),
    ]
    .iter()
    .find_map(|f| std::fs::read_to_string(f).ok()?.trim().parse().ok())
}

#[test]
fn the_vm_starts_inside_the_pod_cgroup_of_either_driver() {
    let ctrd = setup();
    let n = std::process::id();
    let forms = [
        PodCgroup {
            spec: format!("/husk-logs-{n}/pod1"),
            rel: format!("husk-logs-{n}/pod1"),
            top: format!("husk-logs-{n}"),
        },
        // kubeadm's systemd driver: made here as cgroupfs directories of
        // that shape, with or without systemd running.
        PodCgroup {
            spec: format!("husklogs{n}-podx.slice:cri-containerd:pod2"),
            rel: format!("husklogs{n}.slice/husklogs{n}-podx.slice/cri-containerd-pod2.scope"),
            top: format!("husklogs{n}.slice"),
        },
    ];
    let _cleanup = RemoveCgroups(forms.iter().map(|f| f.top.clone()).collect());
    let systemd = Path::new("/run/systemd/system").exists();
    println!(
        "cgroup {}, systemd {}: the systemd form is exercised as cgroupfs paths",
        if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            "v2"
        } else {
            "v1"
        },
        if systemd { "running" } else { "not running" }
    );
    for (id, form) in ["pod1", "pod2"].iter().zip(&forms) {
        let run = ctrd.ctr(&[
            "run",
            "-d",
            "--runtime",
            HUSK,
            "--cgroup",
            &form.spec,
            IMAGE,
            id,
            "sleep",
            "1000",
        ]);
        assert!(run.status.success(), "{}: {}", form.spec, text(&run.stderr));
        wait_running(&ctrd, id);
        let vm = ctrd.husk_runtime.join("vms").join(id);
        // The VMM, virtiofsd and the server it forks into its sandbox, and
        // vhost-device-vsock (whose PID-namespace monitor, a fork of the
        // shim that names no VM, stays in the shim's cgroup).
        let pids = processes_mentioning(&vm.display().to_string());
        assert_eq!(pids.len(), 4, "the processes of {id}'s VM: {pids:?}");
        for pid in &pids {
            let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
            for h in hierarchies() {
                let controller = h.file_name().unwrap().to_string_lossy().into_owned();
                let line = cgroups
                    .lines()
                    .find(|l| {
                        h == Path::new("/sys/fs/cgroup")
                            || l.split(':')
                                .nth(1)
                                .is_some_and(|c| c.split(',').any(|c| c == controller))
                    })
                    .unwrap_or_else(|| panic!("{controller} missing: {cgroups}"));
                assert!(
                    line.ends_with(&format!("/{}", form.rel)),
                    "pid {pid} of {id} is in {line}, not {}",
                    form.rel
                );
            }
        }
        // The guest's memory, loaded and touched from the VMM's start, is
        // charged to the pod: a VMM moved in after boot would have left
        // those charges behind.
        if let Some(bytes) = charged(&form.rel) {
            println!(
                "{id} ({}): {} MiB charged to {}",
                form.spec,
                bytes >> 20,
                form.rel
            );
            assert!(
                bytes > 32 << 20,
                "only {bytes} bytes charged to {}",
                form.rel
            );
        }
        assert!(ctrd.ctr(&["task", "kill", "-s", "9", id]).status.success());
        remove_task(&ctrd, id);
        for h in hierarchies() {
            assert!(
                !h.join(&form.rel).exists(),
                "{} left",
                h.join(&form.rel).display()
            );
        }
    }
    assert_nothing_left(&ctrd);
}

/// Removes, when the test ends however it ends, the cgroups above the
/// pods' (kubelet's, on a node) that the test named: `top` and what is
/// below it, in every hierarchy.
struct RemoveCgroups(Vec<String>);

impl Drop for RemoveCgroups {
    fn drop(&mut self) {
        let root = Path::new("/sys/fs/cgroup");
        for top in &self.0 {
            for h in husk_tests::entries(root)
                .into_iter()
                .chain([root.to_owned()])
            {
                remove_tree(&h.join(top));
            }
        }
    }
}

/// rmdir of a cgroup tree, deepest first (cgroup directories hold only
/// their control files, which rmdir takes along).
fn remove_tree(dir: &Path) {
    for sub in husk_tests::entries(dir) {
        if sub.symlink_metadata().is_ok_and(|m| m.is_dir()) {
            remove_tree(&sub);
        }
    }
    let _ = std::fs::remove_dir(dir);
}
