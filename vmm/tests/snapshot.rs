//! VM templates on the real `/dev/kvm`: a template husk-vmm runs a
//! counting guest (`test_util::counting`), SIGUSR1 snapshots it, and
//! clones restored from a private mapping of its memory file go on
//! counting from where it stopped, each on its own, leaving the file as
//! the template left it. Clones that do not match the snapshot, and
//! damaged state files, are refused before any vCPU runs.
//! Where KVM cannot run guest code the tests print SKIPPED and return.

use husk_vmm::probe::kvm_runs_guest_code;
use husk_vmm::test_util::counting::{self, frames, COUNTER_ADDR, RNG_USED};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const HUSK_VMM: &str = env!("CARGO_BIN_EXE_husk-vmm");
/// Generous: the machine is shared, and a hung VMM must not hang the suite.
const TIMEOUT: Duration = Duration::from_secs(30);
const MIB: &str = "64";

macro_rules! require_kvm {
    () => {
        if let Err(why) = kvm_runs_guest_code() {
            println!("SKIPPED: KVM cannot run guest code here: {why}");
            return;
        }
    };
}

/// A husk-vmm child that is killed and reaped however the test ends.
struct Vmm {
    child: Option<Child>,
    console: PathBuf,
}

impl Vmm {
    fn spawn(console: PathBuf, args: &[&std::ffi::OsStr]) -> Vmm {
        let child = Command::new(HUSK_VMM)
            .arg("--console-log")
            .arg(&console)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Vmm {
            child: Some(child),
            console,
        }
    }

    fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.as_ref().unwrap().id() as i32)
    }

    fn frames(&self) -> Vec<u32> {
        frames(&std::fs::read(&self.console).unwrap_or_default())
    }

    /// Waits until the guest has reported `n` counts; fails with the
    /// VMM's stderr if it exits first or takes too long.
    fn wait_frames(&mut self, n: usize) -> Vec<u32> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let f = self.frames();
            if f.len() >= n {
                return f;
            }
            let exited = self.child.as_mut().unwrap().try_wait().unwrap();
            if exited.is_some() || Instant::now() > deadline {
                let (status, stderr) = self.finish();
                panic!("{} frames of {n} ({status:?}), stderr:\n{stderr}", f.len());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), sig).unwrap();
    }

    /// Waits for the exit (killing past [`TIMEOUT`]): status and stderr.
    fn finish(&mut self) -> (Option<ExitStatus>, String) {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + TIMEOUT;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let mut stderr = String::new();
        use std::io::Read;
        let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
        (status, stderr)
    }

    /// SIGTERM, then a clean exit.
    fn stop(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let (status, stderr) = self.finish();
        assert!(status.is_some_and(|s| s.success()), "{status:?}\n{stderr}");
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A directory for a template's files, on tmpfs (/dev/shm) as templates
/// are meant to be, else the default temporary directory.
fn template_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("husk-snapshot-test")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap()
}

/// A template's files: its kernel, memory file and state file in `dir`.
struct Files {
    kernel: PathBuf,
    memory: PathBuf,
    state: PathBuf,
}

impl Files {
    fn new(dir: &Path, kernel: &[u8]) -> Files {
        let files = Files {
            kernel: dir.join("guest.elf"),
            memory: dir.join("memory"),
            state: dir.join("state"),
        };
        std::fs::write(&files.kernel, kernel).unwrap();
        files
    }

    fn template_args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a std::ffi::OsStr> {
        let mut a: Vec<&std::ffi::OsStr> = vec![
            "--kernel".as_ref(),
            self.kernel.as_ref(),
            "--memory-mib".as_ref(),
            MIB.as_ref(),
            "--memory-file".as_ref(),
            self.memory.as_ref(),
            "--snapshot-to".as_ref(),
            self.state.as_ref(),
        ];
        a.extend(extra.iter().map(|e| std::ffi::OsStr::new(*e)));
        a
    }

    fn clone_args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a std::ffi::OsStr> {
        let mut a: Vec<&std::ffi::OsStr> = vec![
            "--memory-mib".as_ref(),
            MIB.as_ref(),
            "--memory-file".as_ref(),
            self.memory.as_ref(),
            "--restore-from".as_ref(),
            self.state.as_ref(),
        ];
        a.extend(extra.iter().map(|e| std::ffi::OsStr::new(*e)));
        a
    }

    /// Boots the template with `extra` arguments, lets it count to `n`
    /// and snapshots it (SIGUSR1 to `pid`'s process, the template's by
    /// default): the last count it reported.
    fn snapshot(&self, dir: &Path, extra: &[&str], n: usize) -> u32 {
        let mut t = Vmm::spawn(dir.join("template.log"), &self.template_args(extra));
        t.wait_frames(n);
        t.signal(nix::sys::signal::Signal::SIGUSR1);
        let (status, stderr) = t.finish();
        assert!(status.is_some_and(|s| s.success()), "{status:?}\n{stderr}");
        assert!(stderr.contains("snapshot written"), "{stderr}");
        let counts = frames(&std::fs::read(dir.join("template.log")).unwrap());
        assert_consecutive(&counts, "template");
        *counts.last().unwrap()
    }
}

fn assert_consecutive(counts: &[u32], who: &str) {
    for w in counts.windows(2) {
        assert_eq!(w[1], w[0] + 1, "{who} skipped or repeated: {counts:?}");
    }
}

fn counter_in(memory: &Path) -> u32 {
    let bytes = std::fs::read(memory).unwrap();
    let at = COUNTER_ADDR as usize;
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

#[test]
fn clones_go_on_counting_where_the_template_stopped_each_on_its_own() {
    require_kvm!();
    let dir = template_dir();
    let files = Files::new(dir.path(), &counting::timer_counter(200));
    let last = files.snapshot(dir.path(), &[], 5);
    // The count in RAM is the last one reported, or one more when the
    // snapshot came between the handler's increment and its output.
    let in_ram = counter_in(&files.memory);
    assert!((last..=last + 1).contains(&in_ram), "{last} vs {in_ram}");
    let template_memory = std::fs::read(&files.memory).unwrap();

    let mut a = Vmm::spawn(dir.path().join("a.log"), &files.clone_args(&[]));
    let mut b = Vmm::spawn(dir.path().join("b.log"), &files.clone_args(&[]));
    for (clone, name) in [(&mut a, "clone a"), (&mut b, "clone b")] {
        let counts = clone.wait_frames(10);
        assert_consecutive(&counts, name);
        // On from the template's count, not from 1.
        let first = counts[0];
        assert!(
            first > last && first <= in_ram + 1,
            "{name} starts at {first}; the template stopped at {last} ({in_ram} in RAM)"
        );
    }
    // One clone ending does not end the other, which keeps counting.
    a.stop();
    let seen = b.frames().len();
    let counts = b.wait_frames(seen + 5);
    assert_consecutive(&counts, "clone b");
    b.stop();
    // Each clone wrote its counts into its own copy of the page.
    assert_eq!(counter_in(&files.memory), in_ram);
    assert!(
        std::fs::read(&files.memory).unwrap() == template_memory,
        "a clone changed the template's memory file"
    );
}

#[test]
fn a_clone_goes_on_with_the_rng_queue_where_the_template_left_it() {
    require_kvm!();
    let dir = template_dir();
    let files = Files::new(dir.path(), &counting::rng_counter());
    let last = files.snapshot(dir.path(), &["--rng"], 20);
    // The used index in RAM: the last completion reported, or one more
    // when the snapshot fell while its frame was half written (the clone
    // finishes that frame, which no parser sees whole, then goes on).
    let bytes = std::fs::read(&files.memory).unwrap();
    let at = RNG_USED as usize + 2;
    let in_ram = u32::from(u16::from_le_bytes([bytes[at], bytes[at + 1]]));
    assert!((last..=last + 1).contains(&in_ram), "{last} vs {in_ram}");
    let mut clone = Vmm::spawn(dir.path().join("clone.log"), &files.clone_args(&["--rng"]));
    // Each count is a request the device completed; a device that started
    // its queue over would complete none of the guest's next ones.
    let counts = clone.wait_frames(20);
    assert_consecutive(&counts, "clone");
    assert!(
        counts[0] >= last && counts[0] <= in_ram + 1,
        "the clone's rng completes {} after the template's {last} ({in_ram} in RAM)",
        counts[0]
    );
    clone.stop();
}

#[test]
fn a_clone_unlike_its_snapshot_or_a_damaged_state_is_refused_before_any_vcpu() {
    require_kvm!();
    let dir = template_dir();
    let files = Files::new(dir.path(), &counting::timer_counter(200));
    files.snapshot(dir.path(), &[], 1);
    let refused = |args: &[&std::ffi::OsStr], want: &str| {
        let console = dir.path().join("refused.log");
        let mut v = Vmm::spawn(console.clone(), args);
        let (status, stderr) = v.finish();
        assert_eq!(status.and_then(|s| s.code()), Some(1), "{stderr}");
        assert!(stderr.contains(want), "wanted {want:?} in:\n{stderr}");
        assert!(!console.exists(), "a vCPU ran: the console log exists");
    };
    let with = |flag: &str, value: &str| {
        let mut a = files.clone_args(&[]);
        let i = a.iter().position(|x| *x == flag).unwrap();
        a[i + 1] = std::ffi::OsStr::new(value).to_owned().leak();
        a
    };
    refused(
        &[
            files.clone_args(&[]),
            vec!["--vcpus".as_ref(), "2".as_ref()],
        ]
        .concat(),
        "vCPUs (--vcpus): the snapshot has 1, this VM 2",
    );
    refused(
        &with("--memory-mib", "128"),
        "guest RAM (--memory-mib): the snapshot has 64 MiB, this VM 128 MiB",
    );
    refused(
        &files.clone_args(&["--rng"]),
        "virtio devices: the snapshot has [], this VM [rng]",
    );
    let good = std::fs::read(&files.state).unwrap();
    let mut bad = good.clone();
    bad[8] = 9; // the version
    std::fs::write(&files.state, &bad).unwrap();
    refused(
        &files.clone_args(&[]),
        "version at byte 8: format version 9",
    );
    std::fs::write(&files.state, &good[..good.len() - 100]).unwrap();
    refused(&files.clone_args(&[]), "the header declares");
    std::fs::write(&files.state, &good).unwrap();
    let other = dir.path().join("other-memory");
    std::fs::write(&other, vec![0u8; 32 << 20]).unwrap();
    refused(
        &with("--memory-file", other.to_str().unwrap()),
        "33554432 bytes, the VM's RAM is 67108864",
    );
    // A template does not overwrite files: they must be new.
    let mut t = Vmm::spawn(dir.path().join("t2.log"), &files.template_args(&[]));
    let (status, stderr) = t.finish();
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{stderr}");
    assert!(stderr.contains("it must not exist"), "{stderr}");
}

#[test]
fn a_jailed_two_vcpu_template_is_snapshotted_through_its_pid_namespaces_parent() {
    require_kvm!();
    if !nix::unistd::geteuid().is_root() {
        println!("SKIPPED: --jail and --new-pid-ns need root");
        return;
    }
    // As the launcher would run both: jailed to their run directory (the
    // state file is in the template's, created before the jail made it
    // read-only), PID 1 of a namespace of their own, seccomp kill, with
    // virtio-rng, and here with an application processor that is still
    // waiting for its start-up IPI.
    let dir = template_dir();
    let files = Files::new(dir.path(), &counting::timer_counter(200));
    let run_dir = dir.path().to_str().unwrap();
    let hardened = ["--vcpus", "2", "--rng", "--new-pid-ns", "--jail"];
    let template: Vec<&str> = hardened.iter().copied().chain([run_dir]).collect();
    // SIGUSR1 goes to the pid the launcher knows: the namespace's parent,
    // which passes it on.
    let last = files.snapshot(dir.path(), &template, 5);
    let clone_dir = tempfile::tempdir().unwrap();
    let clone_run = clone_dir.path().to_str().unwrap();
    let clone: Vec<&str> = hardened.iter().copied().chain([clone_run]).collect();
    let mut c = Vmm::spawn(
        clone_dir.path().join("clone.log"),
        &files.clone_args(&clone),
    );
    let counts = c.wait_frames(10);
    assert_consecutive(&counts, "clone");
    assert!(
        counts[0] > last && counts[0] <= last + 2,
        "{counts:?} after {last}"
    );
    c.stop();
}
