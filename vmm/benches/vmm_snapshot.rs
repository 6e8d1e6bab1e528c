//! husk-vmm template benchmark: how long a snapshot takes, how long from
//! spawning a clone until its guest runs its first instruction, and what
//! a clone costs in memory next to its template. Not a test: it measures
//! and prints tables.
//!
//!   cargo bench -p husk-vmm --bench vmm_snapshot   (HUSK_BENCH_RUNS=N, default 20)
//!
//! Each run boots a template (128 MiB, 1 vCPU, seccomp kill) whose RAM is
//! a file in /dev/shm, with a 32 MiB initrd so that the file holds data
//! the way a booted guest's does; the guest (`counting::ticker`) writes
//! bytes to COM1 in a two-instruction loop. Once it runs, SIGUSR1: the
//! snapshot time is from the signal until husk-vmm has exited (state and
//! memory files complete), and husk-vmm's own "snapshot written" time
//! (vCPUs stopped, state read, written and synced). Then a clone is
//! spawned from it: "first guest instruction" is spawn until the clone's
//! first COM1 byte is in its console log (polled every 20 µs; one loop
//! turn of the guest is an `out` exit, about 30 µs on PVM). Memory is read
//! from /proc/PID/smaps 50 ms later: the guest-RAM mapping's resident
//! pages and, of those, the clone's own copies (Anonymous); the template's
//! is the memory file's allocated size on tmpfs, shared by every clone.

use husk_vmm::probe::kvm_runs_guest_code;
use husk_vmm::test_util::counting;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const HUSK_VMM: &str = env!("CARGO_BIN_EXE_husk-vmm");
const GUEST_MIB: u64 = 128;
const INITRD_MIB: usize = 32;

/// From /proc/PID/smaps, in KiB: (Rss of the mappings of `file`, their
/// Anonymous, Rss of everything else).
fn smaps_kib(pid: u32, file: &Path) -> (u64, u64, u64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let file = file.to_string_lossy();
    let (mut rss, mut anon, mut other, mut in_file) = (0, 0, 0, false);
    let kib = |v: &str| -> u64 { v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0) };
    for line in smaps.lines() {
        if let Some(v) = line.strip_prefix("Rss:") {
            if in_file {
                rss += kib(v);
            } else {
                other += kib(v);
            }
        } else if let Some(v) = line.strip_prefix("Anonymous:") {
            if in_file {
                anon += kib(v);
            }
        } else if is_mapping_header(line) {
            in_file = line.ends_with(file.as_ref());
        }
    }
    (rss, anon, other)
}

/// "start-end perms offset dev inode [path]", as opposed to "Key: value".
fn is_mapping_header(line: &str) -> bool {
    line.split_whitespace()
        .next()
        .is_some_and(|range| range.contains('-') && !range.ends_with(':'))
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn spawn(args: &[&std::ffi::OsStr]) -> Child {
    Command::new(HUSK_VMM)
        .args(args)
        .env("HUSK_VMM_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Polls `log` every 20 µs until it has a byte: the time since `t0`.
fn first_byte(log: &Path, t0: Instant, child: &mut Child) -> f64 {
    let deadline = t0 + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::fs::metadata(log).map(|m| m.len() > 0).unwrap_or(false) {
            return t0.elapsed().as_secs_f64() * 1e3;
        }
        std::thread::sleep(Duration::from_micros(20));
    }
    let _ = child.kill();
    panic!("no guest output in {} within 30 s", log.display());
}

fn stderr_of(child: &mut Child) -> String {
    use std::io::Read;
    let mut s = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut s);
    s
}

fn sig(child: &Child, s: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), s);
}

/// One sample of every metric, in the order of [`METRICS`].
type Sample = [f64; 9];
const METRICS: [(&str, &str); 9] = [
    (
        "template: spawn to first guest instruction (32 MiB initrd)",
        "ms",
    ),
    ("snapshot: SIGUSR1 to husk-vmm exited", "ms"),
    ("snapshot: husk-vmm's own (stop, read, write, sync)", "ms"),
    ("snapshot: state file", "KiB"),
    ("template: memory file on tmpfs (shared by clones)", "KiB"),
    ("clone: spawn to first guest instruction", "ms"),
    ("clone: guest RAM resident", "KiB"),
    (
        "clone: guest RAM of its own (Anonymous, copy on write)",
        "KiB",
    ),
    ("clone: VMM RSS without guest RAM", "KiB"),
];

fn run_once(dir: &Path, kernel: &Path, initrd: &Path, i: usize) -> Sample {
    let (memory, state) = (
        dir.join(format!("memory-{i}")),
        dir.join(format!("state-{i}")),
    );
    let (tlog, clog) = (
        dir.join(format!("t-{i}.log")),
        dir.join(format!("c-{i}.log")),
    );
    let mib = GUEST_MIB.to_string();
    let t0 = Instant::now();
    let mut t = spawn(&[
        "--kernel".as_ref(),
        kernel.as_os_str(),
        "--initrd".as_ref(),
        initrd.as_os_str(),
        "--memory-mib".as_ref(),
        mib.as_ref(),
        "--console-log".as_ref(),
        tlog.as_os_str(),
        "--memory-file".as_ref(),
        memory.as_os_str(),
        "--snapshot-to".as_ref(),
        state.as_os_str(),
    ]);
    let boot_ms = first_byte(&tlog, t0, &mut t);
    std::thread::sleep(Duration::from_millis(20));
    let t1 = Instant::now();
    sig(&t, nix::sys::signal::Signal::SIGUSR1);
    let status = t.wait().unwrap();
    let snapshot_ms = t1.elapsed().as_secs_f64() * 1e3;
    let stderr = stderr_of(&mut t);
    assert!(status.success(), "template {i}: {status:?}\n{stderr}");
    // "... snapshot written bytes=.. vcpus=.. devices=.. ms=1.23"
    let own_ms: f64 = stderr
        .lines()
        .find(|l| l.contains("snapshot written"))
        .and_then(|l| l.split("ms=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no snapshot time in:\n{stderr}"));
    let state_kib = std::fs::metadata(&state).unwrap().len() as f64 / 1024.0;
    let file_kib = std::fs::metadata(&memory).unwrap().blocks() as f64 / 2.0;

    let t2 = Instant::now();
    let mut c = spawn(&[
        "--memory-mib".as_ref(),
        mib.as_ref(),
        "--console-log".as_ref(),
        clog.as_os_str(),
        "--memory-file".as_ref(),
        memory.as_os_str(),
        "--restore-from".as_ref(),
        state.as_os_str(),
    ]);
    let restore_ms = first_byte(&clog, t2, &mut c);
    std::thread::sleep(Duration::from_millis(50));
    let (rss, anon, other) = smaps_kib(c.id(), &memory);
    sig(&c, nix::sys::signal::Signal::SIGTERM);
    let status = c.wait().unwrap();
    assert!(
        status.success(),
        "clone {i}: {status:?}\n{}",
        stderr_of(&mut c)
    );
    for f in [&memory, &state, &tlog, &clog] {
        let _ = std::fs::remove_file(f);
    }
    [
        boot_ms,
        snapshot_ms,
        own_ms,
        state_kib,
        file_kib,
        restore_ms,
        rss as f64,
        anon as f64,
        other as f64,
    ]
}

fn main() {
    if let Err(why) = kvm_runs_guest_code() {
        println!("SKIPPED: KVM cannot run guest code here: {why}");
        return;
    }
    let runs: usize = std::env::var("HUSK_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::Builder::new()
        .prefix("husk-bench-snapshot")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let kernel = dir.path().join("ticker.elf");
    std::fs::write(&kernel, counting::ticker(0)).unwrap();
    let initrd = dir.path().join("initrd");
    let data: Vec<u8> = (0..INITRD_MIB << 20).map(|i| (i * 7 + 1) as u8).collect();
    std::fs::write(&initrd, data).unwrap();

    let samples: Vec<Sample> = (0..runs)
        .map(|i| run_once(dir.path(), &kernel, &initrd, i))
        .collect();
    println!("husk-vmm templates, {runs} runs, guest {GUEST_MIB} MiB, 1 vCPU, seccomp kill:");
    println!("| metric | min | median | max |");
    println!("|---|---|---|---|");
    for (m, (name, unit)) in METRICS.iter().enumerate() {
        let mut v: Vec<f64> = samples.iter().map(|s| s[m]).collect();
        let (min, med, max) = (
            percentile(&mut v, 0.0),
            percentile(&mut v, 0.5),
            percentile(&mut v, 1.0),
        );
        println!("| {name} ({unit}) | {min:.2} | {med:.2} | {max:.2} |");
    }
}
