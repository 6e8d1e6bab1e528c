//! Unit tests of the bounded log writer: rotation, the rate cap, the kept
//! tail, the marker scan and the text shown from guest bytes.

use super::*;
use std::os::unix::fs::PermissionsExt;

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_default()
}

#[test]
fn a_full_file_is_rotated_once_and_the_newest_bytes_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("console.log");
    std::fs::write(rotated(&path), "from an earlier VM").unwrap();
    let mut f = RotatingFile::create(&path, 10).unwrap();
    assert!(!rotated(&path).exists(), "an old .1 is removed");
    f.write_all(b"0123456789abcdefghijklmnopqrstuvwxyz")
        .unwrap();
    // 36 bytes through a 10-byte cap: the last full file and the rest.
    assert_eq!(read(&rotated(&path)), b"klmnopqrst");
    assert_eq!(read(&path), b"uvwxyz");
    for p in [&path, &rotated(&path)] {
        let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", p.display());
    }
}

#[test]
fn a_log_is_never_opened_through_a_link() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("elsewhere");
    std::fs::write(&target, "keep").unwrap();
    let path = dir.path().join("vmm.log");
    std::os::unix::fs::symlink(&target, &path).unwrap();
    let e = RotatingFile::create(&path, 100).err().unwrap();
    assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{e}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
}

#[test]
fn the_bucket_gives_a_burst_then_the_rate() {
    let t0 = Instant::now();
    let mut b = Bucket::new(1000, t0);
    assert_eq!(b.take(10_000, t0), 4000, "four seconds of burst");
    assert_eq!(b.take(10, t0), 0);
    assert_eq!(b.take(10_000, t0 + Duration::from_millis(500)), 500);
    // Idle time refills up to the burst, not beyond.
    assert_eq!(b.take(100_000, t0 + Duration::from_secs(100)), 4000);
}

#[test]
fn the_marker_is_a_whole_line_fed_in_any_pieces() {
    const M: &[u8] = b"ready";
    let scan = |pieces: &[&[u8]]| {
        let mut s = MarkerScan::new(M);
        for p in pieces {
            s.feed(p);
        }
        s.found()
    };
    assert!(scan(&[b"boot\nready\n"]));
    assert!(scan(&[b"boot\r\nre", b"ad", b"y\r", b"\n"]));
    assert!(!scan(&[b"x ready\n"]));
    assert!(!scan(&[b"ready now\n"]));
    assert!(!scan(&[b"ready"]), "not a line until it ends");
    // A long line is forgotten, not kept: the next line still counts.
    let long = vec![b'r'; 100_000];
    assert!(scan(&[&long, b"\nready\n"]));
    assert!(!scan(&[&long, b"ready\n"]));
}

#[test]
fn guest_bytes_are_shown_without_terminal_controls() {
    assert_eq!(
        printable(b"ok\r\n\x1b[2Jx\ty\xff"),
        "ok\n\\x1b[2Jx\ty\u{fffd}"
    );
}

/// Feeds a pipe as a VMM would and returns the pump's file contents.
async fn pump_through(
    limits: LogLimits,
    chunks: Vec<Vec<u8>>,
) -> (tempfile::TempDir, PathBuf, LogPump) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("console.log");
    let (rx, tx) = pipe().unwrap();
    let file = RotatingFile::create(&path, limits.max_file).unwrap();
    let mut pump = LogPump::start("test", rx, file, limits, Some(b"ready")).unwrap();
    let writer = std::thread::spawn(move || {
        let mut tx = File::from(tx);
        for c in chunks {
            tx.write_all(&c).unwrap();
        }
    });
    pump.finish(Duration::from_secs(30)).await;
    writer.join().unwrap();
    (dir, path, pump)
}

#[tokio::test]
async fn a_stream_under_the_rate_is_copied_whole() {
    let limits = LogLimits {
        max_file: 1 << 20,
        rate: 1 << 20,
    };
    let chunks = vec![b"boot\n".to_vec(), b"ready\n".to_vec(), b"bye\n".to_vec()];
    let (_d, path, pump) = pump_through(limits, chunks).await;
    assert_eq!(read(&path), b"boot\nready\nbye\n");
    assert!(pump.marker_seen());
    assert_eq!(pump.tail(), "boot\nready\nbye\n");
    assert_eq!(pump.counts(), (15, 0));
}

#[tokio::test]
async fn a_flood_stays_under_the_caps_and_ends_with_its_last_bytes() {
    let limits = LogLimits {
        max_file: 8 << 10,
        rate: 1 << 10,
    };
    // 2 MiB, far over the 4 KiB burst and 1 KiB/s, then a last line.
    let mut chunks: Vec<Vec<u8>> = (0..32).map(|_| vec![b'y'; 64 << 10]).collect();
    chunks.push(b"\nthe last line\n".to_vec());
    let (_d, path, pump) = pump_through(limits, chunks).await;
    let (written, dropped) = pump.counts();
    assert!(dropped > 2_000_000, "dropped {dropped}");
    // The burst, what the rate allowed while it ran, and the tail.
    assert!(written < 16 << 10, "wrote {written}");
    for p in [&path, &rotated(&path)] {
        let len = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        assert!(len <= limits.max_file, "{}: {len}", p.display());
    }
    let text = String::from_utf8(read(&path)).unwrap();
    assert!(
        text.contains("bytes dropped, over the log rate of 1 KiB/s"),
        "{text}"
    );
    assert!(text.ends_with("\nthe last line\n"), "{text}");
    assert!(pump.tail().ends_with("\nthe last line\n"));
    assert!(!pump.marker_seen());
}

#[test]
fn bytes_dropped_at_the_end_are_written_when_the_stream_ends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("console.log");
    let limits = LogLimits {
        max_file: 1 << 20,
        rate: 1024,
    };
    let file = RotatingFile::create(&path, limits.max_file).unwrap();
    let t0 = Instant::now();
    let mut sink = Sink::new("t", file, limits, None, Default::default(), t0);
    sink.take(&[b'a'; 5000], t0);
    let mut last = vec![b'b'; 10_000];
    last.extend(b"\nkernel panic\n");
    sink.take(&last, t0 + Duration::from_millis(1));
    sink.finish();
    let text = String::from_utf8(read(&path)).unwrap();
    // The burst (4096 a's), a note, the b the millisecond allowed, a note
    // for the rest, and the newest 3000 bytes.
    let expected_start = format!(
        "{}\n[husk: 904 bytes dropped, over the log rate of 1 KiB/s]\nb\n\
         [husk: 10013 bytes dropped, over the log rate of 1 KiB/s; its last 3000 bytes:]\n",
        "a".repeat(4096)
    );
    assert!(text.starts_with(&expected_start), "{text}");
    assert!(text.ends_with("bbb\nkernel panic\n"), "{text}");
    assert_eq!(text.len(), expected_start.len() + 3000);
}

#[tokio::test]
async fn finish_gives_up_on_a_writer_that_never_closes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vmm.log");
    let (rx, tx) = pipe().unwrap();
    let limits = LogLimits {
        max_file: 1024,
        rate: 1024,
    };
    let file = RotatingFile::create(&path, 1024).unwrap();
    let mut pump = LogPump::start("test", rx, file, limits, None).unwrap();
    let started = Instant::now();
    pump.finish(Duration::from_millis(200)).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(tx);
}

/// A writer that writes a byte at a time, as QEMU's UART does, wakes the
/// pump at most once per batch, however many writes it makes.
#[tokio::test]
async fn byte_at_a_time_writes_are_read_in_batches() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("console.log");
    let (rx, tx) = pipe().unwrap();
    let limits = LogLimits {
        max_file: 1 << 20,
        rate: 1 << 20,
    };
    let file = RotatingFile::create(&path, limits.max_file).unwrap();
    let mut pump = LogPump::start("test", rx, file, limits, None).unwrap();
    let writes = 10_000;
    let started = Instant::now();
    let writer = std::thread::spawn(move || {
        let mut tx = File::from(tx);
        for _ in 0..writes {
            tx.write_all(b"y").unwrap();
            std::thread::sleep(Duration::from_micros(50));
        }
    });
    writer.join().unwrap();
    pump.finish(Duration::from_secs(30)).await;
    let batches = started.elapsed().as_millis() / BATCH.as_millis() + 2;
    assert_eq!(read(&path).len(), writes);
    // Each read is followed by a batch's sleep: no more reads than
    // batches fit in the time, far fewer than the writes.
    let reads = pump.reads();
    println!("{writes} writes in {:?}: {reads} reads", started.elapsed());
    assert!(reads as u128 <= batches, "{reads} reads, {batches} batches");
    assert!(reads < writes as u64 / 20, "{reads} reads");
}
