//! The one bounded writer every byte stream of a VM goes through on its way
//! to disk: the guest's serial console and the output of the VMM and of
//! each device daemon. The guest controls all of them (a guest writing its
//! console without end, or poking a device register the VMM warns about
//! on every write), so each is:
//!
//! - **capped in size**: a [`RotatingFile`] of at most `max_file` bytes,
//!   rotated once to `<name>.1` when full, so the newest output is kept
//!   and a log takes at most twice the cap;
//! - **capped in rate**: a token bucket ([`Bucket`]) of `rate` bytes a
//!   second with a burst of [`BURST_SECS`] seconds' worth; what comes
//!   faster is dropped, with a line saying how much, and the newest
//!   [`TAIL_BYTES`] of it are written when the stream ends, so a log
//!   always ends with what the process wrote last;
//! - **cheap to drain**: each stream has a thread of its own that polls
//!   the pipe, reads at most one 64 KiB chunk per [`BATCH`] and leaves the
//!   pipe unwatched in between, so a process writing a byte at a time
//!   (QEMU's UART does, about 25 KB/s under TCG) costs the shim a few
//!   dozen wake-ups a second, not one per byte (an edge-triggered reactor
//!   such as tokio's wakes on every write to a pipe);
//! - **never read back whole**: the last [`TAIL_BYTES`] seen are kept in
//!   memory for error messages, and the console's agent-ready marker is
//!   found by a scan of bounded state as the bytes pass ([`MarkerScan`]).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How much of the end of a stream is kept in memory (error messages) and
/// written after a drop when the stream ends.
pub const TAIL_BYTES: usize = 3000;
/// The token bucket holds this many seconds of the rate.
pub const BURST_SECS: u64 = 4;
/// Least time between two reads of a stream.
pub const BATCH: Duration = Duration::from_millis(20);
const READ_CHUNK: usize = 64 << 10;
/// How soon a pump told to stop notices.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// The bounds of one log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// Most bytes in one file before it is rotated.
    pub max_file: u64,
    /// Bytes a second written on average.
    pub rate: u64,
}

impl LogLimits {
    pub fn from_config(logs: &husk_config::LogsConfig) -> Self {
        Self {
            max_file: logs.max_file_kib << 10,
            rate: logs.rate_kib_per_sec << 10,
        }
    }
}

/// A log file of at most `max` bytes, rotated once: when full it becomes
/// `<path>.1` (replacing the previous one) and `<path>` starts again.
/// Files are created 0600, and never through a symbolic link.
pub struct RotatingFile {
    path: PathBuf,
    max: u64,
    file: File,
    len: u64,
}

impl RotatingFile {
    /// Creates (truncates) `path` and removes an old `<path>.1`.
    pub fn create(path: &Path, max: u64) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(rotated(path));
        Ok(Self {
            file: open_log(path)?,
            path: path.to_owned(),
            max: max.max(1),
            len: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write_all(&mut self, mut buf: &[u8]) -> std::io::Result<()> {
        while !buf.is_empty() {
            if self.len >= self.max {
                std::fs::rename(&self.path, rotated(&self.path))?;
                self.file = open_log(&self.path)?;
                self.len = 0;
            }
            let n = buf.len().min((self.max - self.len) as usize);
            self.file.write_all(&buf[..n])?;
            self.len += n as u64;
            buf = &buf[n..];
        }
        Ok(())
    }
}

/// `<path>.1`, where a full log goes.
pub fn rotated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

fn open_log(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// A token bucket of bytes.
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// Full at first: `rate` bytes a second, [`BURST_SECS`] of burst.
    pub fn new(rate: u64, now: Instant) -> Self {
        let burst = (rate.max(1) * BURST_SECS) as f64;
        Self {
            rate: rate.max(1) as f64,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// How many of `want` bytes may be written at `now`.
    pub fn take(&mut self, want: usize, now: Instant) -> usize {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        let got = (self.tokens.floor() as usize).min(want);
        self.tokens -= got as f64;
        got
    }
}

/// Finds a line equal to a marker (a trailing `\r` allowed) in a stream
/// fed in pieces, holding at most the marker's length of it.
pub struct MarkerScan {
    marker: &'static [u8],
    line: Vec<u8>,
    /// The current line is already longer than a marker line can be.
    long: bool,
    found: bool,
}

impl MarkerScan {
    pub fn new(marker: &'static [u8]) -> Self {
        Self {
            marker,
            line: Vec::with_capacity(marker.len() + 1),
            long: false,
            found: false,
        }
    }

    pub fn found(&self) -> bool {
        self.found
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        if self.found {
            return;
        }
        for piece in bytes.split_inclusive(|&b| b == b'\n') {
            let (body, ends) = match piece.strip_suffix(b"\n") {
                Some(body) => (body, true),
                None => (piece, false),
            };
            if !self.long {
                if self.line.len() + body.len() > self.marker.len() + 1 {
                    self.long = true;
                    self.line.clear();
                } else {
                    self.line.extend_from_slice(body);
                }
            }
            if ends {
                let line = self.line.strip_suffix(b"\r").unwrap_or(&self.line);
                if !self.long && line == self.marker {
                    self.found = true;
                    return;
                }
                self.line.clear();
                self.long = false;
            }
        }
    }
}

/// What the rest of the host may see of a stream while it is pumped.
#[derive(Default)]
struct Seen {
    tail: VecDeque<u8>,
    marker: bool,
    written: u64,
    dropped: u64,
    reads: u64,
}

/// Guest bytes as text for a log line or an error message: invalid UTF-8
/// replaced, `\r` removed, other control characters (terminal escapes)
/// shown as `\xNN`; newlines and tabs kept.
pub fn printable(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for c in String::from_utf8_lossy(bytes).chars() {
        match c {
            '\n' | '\t' => out.push(c),
            '\r' => {}
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// A pipe for a stream to pump: (read end, write end), both close-on-exec.
pub fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)
}

/// One stream being copied into its bounded file by a thread.
pub struct LogPump {
    name: &'static str,
    path: PathBuf,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    done: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl LogPump {
    /// Copies the pipe `input` (a read end) into `file` under `limits`
    /// until every writer has closed it; with a `marker`, notes when a
    /// line equal to it passes.
    pub fn start(
        name: &'static str,
        input: OwnedFd,
        file: RotatingFile,
        limits: LogLimits,
        marker: Option<&'static [u8]>,
    ) -> std::io::Result<Self> {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let path = file.path().to_owned();
        let sink = Sink::new(name, file, limits, marker, seen.clone(), Instant::now());
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let stopping = stop.clone();
        std::thread::Builder::new()
            .name(format!("log-{name}"))
            .stack_size(256 << 10)
            .spawn(move || {
                pump(File::from(input), sink, &stopping);
                let _ = done_tx.send(());
            })?;
        Ok(Self {
            name,
            path,
            seen,
            stop,
            done: Some(done),
        })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The file the stream goes to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a line equal to the marker has passed.
    pub fn marker_seen(&self) -> bool {
        self.seen.lock().is_ok_and(|s| s.marker)
    }

    /// The last [`TAIL_BYTES`] of the stream, as [`printable`] text.
    pub fn tail(&self) -> String {
        match self.seen.lock() {
            Ok(s) => {
                let (a, b) = s.tail.as_slices();
                printable(&[a, b].concat())
            }
            Err(_) => String::new(),
        }
    }

    /// How many reads of the stream the pump has made.
    pub fn reads(&self) -> u64 {
        self.seen.lock().map(|s| s.reads).unwrap_or_default()
    }

    /// Bytes written to the files, and dropped over the rate, so far.
    pub fn counts(&self) -> (u64, u64) {
        self.seen
            .lock()
            .map(|s| (s.written, s.dropped))
            .unwrap_or_default()
    }

    /// Waits until the stream has ended (every writer closed it) and all of
    /// it is on disk, at most `timeout`; then stops the copy.
    pub async fn finish(&mut self, timeout: Duration) {
        let Some(done) = self.done.take() else {
            return;
        };
        if tokio::time::timeout(timeout, done).await.is_err() {
            tracing::warn!(log = %self.path.display(), "the log's writer did not close it; stopped copying");
            self.stop.store(true, Ordering::Relaxed);
        }
    }
}

impl Drop for LogPump {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The writing half of a pump, owned by its task.
struct Sink {
    name: &'static str,
    file: RotatingFile,
    bucket: Bucket,
    rate: u64,
    marker: Option<MarkerScan>,
    /// Bytes dropped since the last write, and the newest of them.
    dropped_run: u64,
    dropped_tail: VecDeque<u8>,
    /// A write failed (disk full?): said once, then the stream is drained
    /// and dropped.
    failed: bool,
    seen: Arc<Mutex<Seen>>,
}

fn pump(mut input: File, mut sink: Sink, stop: &AtomicBool) {
    let mut buf = vec![0; READ_CHUNK];
    while !stop.load(Ordering::Relaxed) {
        match readable(&input, STOP_CHECK) {
            Ok(false) => continue,
            Ok(true) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(log = %sink.file.path().display(), %e, "polling {}'s output", sink.name);
                break;
            }
        }
        match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => sink.take(&buf[..n], Instant::now()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(log = %sink.file.path().display(), %e, "reading {}'s output", sink.name);
                break;
            }
        }
        std::thread::sleep(BATCH);
    }
    sink.finish();
}

/// Whether `f` has something to read (or its writers are gone) within
/// `timeout`.
fn readable(f: &File, timeout: Duration) -> std::io::Result<bool> {
    let mut fds = [libc::pollfd {
        fd: f.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: one valid pollfd, for a file that stays open during the call.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, timeout.as_millis() as libc::c_int) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n > 0)
}

impl Sink {
    fn new(
        name: &'static str,
        file: RotatingFile,
        limits: LogLimits,
        marker: Option<&'static [u8]>,
        seen: Arc<Mutex<Seen>>,
        now: Instant,
    ) -> Self {
        Self {
            name,
            file,
            bucket: Bucket::new(limits.rate, now),
            rate: limits.rate,
            marker: marker.map(MarkerScan::new),
            dropped_run: 0,
            dropped_tail: VecDeque::new(),
            failed: false,
            seen,
        }
    }

    fn take(&mut self, bytes: &[u8], now: Instant) {
        if let Some(m) = &mut self.marker {
            m.feed(bytes);
        }
        let allowed = self.bucket.take(bytes.len(), now);
        if allowed > 0 && self.dropped_run > 0 {
            let note = self.drop_note("");
            self.write(note.as_bytes());
            self.dropped_run = 0;
            self.dropped_tail.clear();
        }
        self.write(&bytes[..allowed]);
        let rest = &bytes[allowed..];
        self.dropped_run += rest.len() as u64;
        push_tail(&mut self.dropped_tail, rest);
        if let Ok(mut s) = self.seen.lock() {
            push_tail(&mut s.tail, bytes);
            s.marker = self.marker.as_ref().is_some_and(MarkerScan::found);
            s.written += allowed as u64;
            s.dropped += rest.len() as u64;
            s.reads += 1;
        }
    }

    /// At the end of the stream: the newest bytes, if they were dropped.
    fn finish(&mut self) {
        if self.dropped_run == 0 {
            return;
        }
        let tail: Vec<u8> = self.dropped_tail.drain(..).collect();
        let note = self.drop_note(&format!("; its last {} bytes:", tail.len()));
        self.write(note.as_bytes());
        self.write(&tail);
        if let Ok(mut s) = self.seen.lock() {
            s.written += tail.len() as u64;
        }
    }

    fn drop_note(&self, more: &str) -> String {
        format!(
            "\n[husk: {} bytes dropped, over the log rate of {} KiB/s{more}]\n",
            self.dropped_run,
            self.rate >> 10
        )
    }

    fn write(&mut self, bytes: &[u8]) {
        if bytes.is_empty() || self.failed {
            return;
        }
        if let Err(e) = self.file.write_all(bytes) {
            tracing::warn!(log = %self.file.path().display(), %e, "cannot write {}'s log; dropping it from here on", self.name);
            self.failed = true;
        }
    }
}

fn push_tail(tail: &mut VecDeque<u8>, bytes: &[u8]) {
    let bytes = &bytes[bytes.len().saturating_sub(TAIL_BYTES)..];
    let over = (tail.len() + bytes.len()).saturating_sub(TAIL_BYTES);
    tail.drain(..over);
    tail.extend(bytes);
}

#[cfg(test)]
mod tests;
