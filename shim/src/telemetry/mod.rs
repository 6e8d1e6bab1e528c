//! Operator metrics of husk in Prometheus' text exposition format
//! (version 0.0.4, prometheus.io/docs/instrumenting/exposition_formats),
//! the way Kata serves them: every shim serves its own pod's metrics on a
//! Unix socket in the pod's host-only directory, and `husk metrics` /
//! `husk serve-metrics` read every pod's socket and add the node's own.
//!
//! - [`calls`]: agent call latencies and errors, recorded by the manager's
//!   one `call` helper (process-wide: one shim serves one pod);
//! - [`pod`]: what one pod reports (boot phases, size, host RSS of its
//!   processes, the calls) and the socket server that reports it;
//! - [`node`]: counters every shim of a node bumps (VM boots and failed
//!   boots), kept as files under `<runtime_dir>/node/`;
//! - [`text`]: writing, reading and merging expositions;
//! - [`http`]: the few bytes of HTTP/1 a scrape needs, bounded both ways;
//! - [`scrape`]: the node's whole exposition, for the `husk` commands.
//!
//! Nothing here grows with a pod's lifetime: histograms have fixed buckets,
//! and the label sets are fixed by the code (call names, process names).
//! docs/operations.md lists every metric.

pub mod calls;
pub mod http;
pub mod node;
pub mod pod;
pub mod scrape;
pub mod text;

use std::path::{Path, PathBuf};

/// The socket a pod's shim serves its metrics on, in the pod's host-only
/// directory (mode 0700, `share`'s tree), removed with it.
pub const POD_SOCKET: &str = "metrics.sock";

/// `<runtime_dir>/pods/<pod>/metrics.sock`.
pub fn pod_socket(runtime_dir: &Path, pod_id: &str) -> PathBuf {
    runtime_dir.join("pods").join(pod_id).join(POD_SOCKET)
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Http(#[from] http::HttpError),
    #[error(transparent)]
    Text(#[from] text::TextError),
}
