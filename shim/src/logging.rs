//! The shim's own log (tracing): into the bundle's `log` FIFO, which
//! containerd copies into its own log, else stderr. A pool member logs to
//! its stderr (a file of the pool) until a pod takes it, and then to that
//! pod's FIFO: the sink can be pointed elsewhere once.

use std::io::Write;
use std::sync::{Arc, Mutex};

type Sink = Arc<Mutex<Box<dyn Write + Send>>>;

static SINK: std::sync::OnceLock<Sink> = std::sync::OnceLock::new();

struct SinkWriter(Sink);

impl Write for SinkWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).flush()
    }
}

/// The `log` FIFO in the working directory (the bundle), opened without
/// blocking (containerd may not read yet) and then made blocking.
fn bundle_fifo() -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open("log")
        .ok()?;
    let _ = nix::fcntl::fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&file),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_WRONLY),
    );
    Some(file)
}

/// Starts logging: to the bundle's FIFO when `to_bundle` and there is
/// one, else to stderr. Once per process.
pub fn init(to_bundle: bool) {
    let first: Box<dyn Write + Send> = match to_bundle.then(bundle_fifo).flatten() {
        Some(f) => Box::new(f),
        None => Box::new(std::io::stderr()),
    };
    let sink: Sink = Arc::new(Mutex::new(first));
    if SINK.set(sink.clone()).is_err() {
        return;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,h2=warn,tower=warn,hyper=warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(move || SinkWriter(sink.clone()))
        .try_init();
}

/// From now on, log into the working directory's `log` FIFO (a pool
/// member that became a pod's shim, after it moved into the bundle).
pub fn to_bundle() {
    if let (Some(sink), Some(fifo)) = (SINK.get(), bundle_fifo()) {
        *sink.lock().unwrap_or_else(|e| e.into_inner()) = Box::new(fifo);
    }
}
