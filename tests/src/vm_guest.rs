//! What the husk-vm suites read of a VM container through CRI: its console
//! (stdout) and husk-vm's messages (stderr) in the CRI log, and when the
//! guest got as far as a console line or a working exec. One copy for
//! every suite that boots a VM image.

use crate::cri::{parse_log_line, ContainerSpec, Cri, Pod};
use std::time::{Duration, Instant};

/// A full Debian boot under TCG on a loaded 2-core host, two at a time.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(1200);

/// The text of every line of `stream` ("stdout", "stderr") in the
/// container's CRI log.
fn log_stream(pod: &Pod, spec: &ContainerSpec, stream: &str) -> String {
    let path = pod.log_dir.join(&spec.log_path);
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let mut out = String::new();
    for line in text.lines() {
        let (s, _, body) = parse_log_line(line).unwrap_or_else(|e| panic!("{e}"));
        if s == stream {
            out.push_str(body);
            out.push('\n');
        }
    }
    out
}

/// The console as the CRI log holds it.
pub fn console(pod: &Pod, spec: &ContainerSpec) -> String {
    log_stream(pod, spec, "stdout")
}

/// husk-vm's and QEMU's messages on the container's stderr.
pub fn stderr_log(pod: &Pod, spec: &ContainerSpec) -> String {
    log_stream(pod, spec, "stderr")
}

/// The last `n` bytes of `s` (at a character boundary).
pub fn tail(s: &str, n: usize) -> &str {
    let start = s.len().saturating_sub(n);
    let start = (start..s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len());
    &s[start..]
}

/// Waits until a console line holds every one of `needles`; returns
/// when, since `since`.
pub fn wait_console(pod: &Pod, spec: &ContainerSpec, needles: &[&str], since: Instant) -> Duration {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        let text = console(pod, spec);
        if text.lines().any(|l| needles.iter().all(|n| l.contains(n))) {
            return since.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "{needles:?} not on the console of {} after {BOOT_TIMEOUT:?}; it ends:\n{}",
            spec.name,
            tail(&text, 3000)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits until exec works (the guest booted and its agent runs); returns
/// when, since `since`.
pub fn wait_exec(cri: &Cri, id: &str, since: Instant) -> Duration {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        match cri.try_exec_sync(id, &["true"], 60) {
            Ok(r) if r.exit_code == 0 => return since.elapsed(),
            other => assert!(
                Instant::now() < deadline,
                "exec in {id} never worked: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}
