//! husk-vmm start benchmark: how long from spawning the VMM process until
//! the guest's first instruction runs, and what the VMM process costs in
//! memory besides guest RAM. Not a test: it measures and prints a row.
//!
//!   cargo bench -p husk-vmm --bench vmm_start   (HUSK_BENCH_RUNS=N, default 20)
//!
//! The guest's first instruction writes a byte to COM1; the VMM writes it
//! to the console log unbuffered, and the bench polls the log's size every
//! 20 µs, so "first instruction" is the spawn-to-first-byte time (an upper
//! bound by the poll period). RSS is read from /proc/PID/smaps while the
//! guest idles in `hlt`, summing every mapping except the guest-RAM memfd.

use husk_vmm::probe::kvm_runs_guest_code;
use husk_vmm::test_util::guest_image::{self, Asm};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const HUSK_VMM: &str = env!("CARGO_BIN_EXE_husk-vmm");
const GUEST_MIB: u64 = 128;
const RSS_BUDGET_KIB: u64 = 5 * 1024;

/// (RSS of everything but guest RAM, RSS of guest RAM) in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let (mut other, mut guest, mut in_guest) = (0, 0, false);
    for line in smaps.lines() {
        if let Some(kib) = line.strip_prefix("Rss:") {
            let kib: u64 = kib
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or(0);
            if in_guest {
                guest += kib;
            } else {
                other += kib;
            }
        } else if is_mapping_header(line) {
            in_guest = line.contains("/memfd:husk-guest-ram");
        }
    }
    (other, guest)
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

fn main() {
    if let Err(why) = kvm_runs_guest_code() {
        println!("SKIPPED: KVM cannot run guest code here: {why}");
        return;
    }
    let runs: usize = std::env::var("HUSK_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let mut a = Asm::long_mode();
    // First instruction is the out; interrupts stay off, so the vCPU then
    // sleeps in KVM and the process is idle for the RSS reading.
    a.dx_com1().out_byte(b'!').hlt_loop();
    let kernel = dir.path().join("first.elf");
    std::fs::write(&kernel, guest_image::elf(&a.code, 0, false)).unwrap();

    let plain = measure("plain", &kernel, dir.path(), runs, &[]);
    print_table("husk-vmm alone", runs, plain);
    // As the shim starts it, less the daemons: with virtio-rng and jailed.
    if nix::unistd::geteuid().is_root() {
        let jail = dir.path().to_str().unwrap().to_owned();
        let hardened = measure(
            "jailed",
            &kernel,
            dir.path(),
            runs,
            &["--rng", "--jail", &jail],
        );
        print_table("husk-vmm --rng --jail", runs, hardened);
    } else {
        println!("SKIPPED (--jail row): --jail needs root");
    }
}

/// `runs` starts of husk-vmm with `extra` arguments (`tag` names the
/// console logs): (ms from spawn to the
/// guest's first instruction, VMM RSS without guest RAM, guest RAM
/// resident), one sample per run.
fn measure(tag: &str, kernel: &Path, dir: &Path, runs: usize, extra: &[&str]) -> [Vec<f64>; 3] {
    let (mut start_ms, mut rss, mut guest) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        // A fresh name per configuration: an old log would read as output.
        let log = dir.join(format!("console-{tag}-{i}.log"));
        let t0 = Instant::now();
        let mut child = Command::new(HUSK_VMM)
            .arg("--kernel")
            .arg(kernel)
            .arg("--console-log")
            .arg(&log)
            .args(["--memory-mib", &GUEST_MIB.to_string()])
            .args(extra)
            .env("HUSK_VMM_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = t0 + Duration::from_secs(10);
        let mut ok = false;
        while Instant::now() < deadline {
            if std::fs::metadata(&log)
                .map(|m| m.len() > 0)
                .unwrap_or(false)
            {
                start_ms.push(t0.elapsed().as_secs_f64() * 1e3);
                ok = true;
                break;
            }
            std::thread::sleep(Duration::from_micros(20));
        }
        if ok {
            // Let the VMM settle (threads started, page faults done).
            std::thread::sleep(Duration::from_millis(50));
            let (o, g) = rss_kib(child.id());
            rss.push(o as f64);
            guest.push(g as f64);
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let status = child.wait().unwrap();
        assert!(ok, "run {i}: no guest output within 10 s (exit {status:?})");
        assert!(status.success(), "run {i}: husk-vmm exited {status:?}");
    }

    [start_ms, rss, guest]
}

fn print_table(what: &str, runs: usize, [mut start_ms, mut rss, mut guest]: [Vec<f64>; 3]) {
    println!("{what}, {runs} runs, guest {GUEST_MIB} MiB, 1 vCPU:");
    println!("| metric | min | median | max |");
    println!("|---|---|---|---|");
    let row = |name: &str, v: &mut [f64], unit: &str| {
        let (min, med, max) = (percentile(v, 0.0), percentile(v, 0.5), percentile(v, 1.0));
        println!("| {name} ({unit}) | {min:.2} | {med:.2} | {max:.2} |");
        med
    };
    row("spawn to first guest instruction", &mut start_ms, "ms");
    let rss_med = row("VMM RSS without guest RAM", &mut rss, "KiB");
    row("guest RAM resident", &mut guest, "KiB");
    println!(
        "RSS budget {} KiB: {}",
        RSS_BUDGET_KIB,
        if rss_med < RSS_BUDGET_KIB as f64 {
            "within"
        } else {
            "OVER"
        }
    );
}
