//! What the host reads of a VM besides its protocols: the guest's console
//! as husk-hypervisor's log pump takes it (`log_pump::MarkerScan` looking
//! for the agent's ready line, `log_pump::Bucket` capping the rate,
//! `log_pump::printable` for error messages), and the `/proc/<pid>/stat`
//! and `status` of a VMM whose command name a guest that took it over
//! may set (`proc_stats::parse`: `kubectl top` of a VM-image pod).
//! Nothing may panic; besides:
//!
//! - the marker is found exactly when a whole line of the stream (a
//!   trailing `\r` allowed) is the marker, however the stream is cut;
//! - the bucket passes no more than it was asked, and no more than its
//!   burst plus its rate over the time that passed;
//! - printable text has no control characters but newline and tab, and
//!   at most four characters a byte;
//! - a command name (any 15 bytes but NUL, as prctl(PR_SET_NAME) takes
//!   it) shifts no figure: what is read is what the kernel wrote.
//!
//! Input: byte 0 bit 0 picks. Console: a byte of cut count, a u16 per
//! cut, a u16 of ms between pieces, then the stream. /proc: the command
//! name (a length byte, up to 15 bytes), clock ticks (u16), utime, stime
//! (u64 each), threads (u16), VmRSS, VmHWM, RssAnon, RssFile, RssShmem
//! in kB (u32 each); with bit 1 also, the rest is the two files as they
//! are, split at the first NUL.

#![no_main]

use husk_fuzz::Input;
use husk_hypervisor::log_pump::{printable, Bucket, MarkerScan, BURST_SECS};
use husk_hypervisor::proc_stats::{parse, ProcStats};
use husk_proto::AGENT_LISTENING_MARKER;
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};

/// The console's rate in the fuzzed bucket, bytes a second.
const RATE: u64 = 4096;

fn marker_line(stream: &[u8]) -> bool {
    stream
        .split(|&b| b == b'\n')
        .rev()
        .skip(1) // the last piece has no newline yet
        .any(|l| l.strip_suffix(b"\r").unwrap_or(l) == AGENT_LISTENING_MARKER.as_bytes())
}

fn console(input: &mut Input) {
    let cuts = input.u8() % 16;
    let mut cuts: Vec<usize> = (0..cuts).map(|_| usize::from(input.u16())).collect();
    let gap = Duration::from_millis(u64::from(input.u16()));
    let stream = input.rest();
    for c in &mut cuts {
        *c %= stream.len() + 1;
    }
    cuts.sort_unstable();
    let mut scan = MarkerScan::new(AGENT_LISTENING_MARKER.as_bytes());
    let t0 = Instant::now();
    let mut bucket = Bucket::new(RATE, t0);
    let (mut passed, mut at, mut now) = (0u64, 0, t0);
    for cut in cuts.into_iter().chain([stream.len()]) {
        let piece = &stream[at..cut];
        scan.feed(piece);
        assert_eq!(
            scan.found(),
            marker_line(&stream[..cut]),
            "after {cut} bytes"
        );
        let got = bucket.take(piece.len(), now);
        assert!(got <= piece.len());
        passed += got as u64;
        let elapsed = now.duration_since(t0).as_secs_f64();
        assert!(passed as f64 <= (RATE * BURST_SECS) as f64 + RATE as f64 * elapsed + 1e-6);
        let text = printable(piece);
        assert!(text.len() <= 4 * piece.len());
        assert!(
            !text
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t'),
            "{text:?}"
        );
        at = cut;
        now += gap;
    }
}

/// The files as the kernel writes them (fs/proc/array.c): `stat` with
/// the name as it is, `status` with it escaped.
fn proc_files(comm: &[u8], v: &[u64; 9]) -> (Vec<u8>, Vec<u8>) {
    let [_, utime, stime, threads, rss, hwm, anon, file, shmem] = *v;
    let mut stat = b"4242 (".to_vec();
    stat.extend_from_slice(comm);
    stat.extend_from_slice(
        format!(
            ") S 1 4242 4242 0 -1 4194560 8816 0 12 0 {utime} {stime} 0 0 20 0 {threads} 0 1234 \
             3215142912 {} 18446744073709551615 1 1 0 0 0 0 0 4096 1073 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n",
            rss / 4
        )
        .as_bytes(),
    );
    let mut status = b"Name:\t".to_vec();
    for &b in comm {
        match b {
            b'\n' => status.extend_from_slice(b"\\n"),
            b'\\' => status.extend_from_slice(b"\\\\"),
            b => status.push(b),
        }
    }
    status.extend_from_slice(
        format!(
            "\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\nNgid:\t0\nPid:\t4242\nPPid:\t1\n\
             VmPeak:\t 3215144 kB\nVmSize:\t 3139812 kB\nVmLck:\t       0 kB\nVmPin:\t       0 kB\n\
             VmHWM:\t{hwm:8} kB\nVmRSS:\t{rss:8} kB\nRssAnon:\t{anon:8} kB\nRssFile:\t{file:8} kB\n\
             RssShmem:\t{shmem:8} kB\nVmData:\t  812248 kB\nThreads:\t{threads}\n"
        )
        .as_bytes(),
    );
    (stat, status)
}

fn proc(input: &mut Input, raw: bool) {
    let n = usize::from(input.u8() % 16);
    let comm: Vec<u8> = input.bytes(n).iter().copied().filter(|&b| b != 0).collect();
    let ticks = u64::from(input.u16().max(1));
    let v = [
        0,
        input.u64(),
        input.u64(),
        u64::from(input.u16()),
        u64::from(input.u32()),
        u64::from(input.u32()),
        u64::from(input.u32()),
        u64::from(input.u32()),
        u64::from(input.u32()),
    ];
    if raw {
        let rest = input.rest();
        let (stat, status) = rest.split_at(rest.iter().position(|&b| b == 0).unwrap_or(rest.len()));
        let _ = parse(stat, status, ticks);
        return;
    }
    let (stat, status) = proc_files(&comm, &v);
    let usec = |t: u64| t.saturating_mul(1_000_000) / ticks;
    let want = ProcStats {
        user_usec: usec(v[1]),
        system_usec: usec(v[2]),
        threads: v[3],
        rss: v[4] * 1024,
        rss_peak: v[5] * 1024,
        anon: v[6] * 1024,
        file: (v[7] + v[8]) * 1024,
    };
    assert_eq!(parse(&stat, &status, ticks), want, "command name {comm:?}");
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mode = input.u8();
    if mode & 1 == 0 {
        console(&mut input);
    } else {
        proc(&mut input, mode & 2 != 0);
    }
});
