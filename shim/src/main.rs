//! containerd-shim-husk-v2: the containerd runtime v2 shim of husk.
//!
//! containerd runs it with an action: `start` (answer with the pod's shim
//! address, starting the shim), `delete` (clean up after a dead shim), or
//! none (serve the Task API on the socket `start` chose). `-v` and `-info`
//! describe it. The actions are husk's own (husk_shim::bootstrap), and so
//! is serving (husk_shim::server: the crate's ttrpc server over husk's
//! Task service).
//!
//! The crate is pinned to 0.10: it is the last with the task v2 API that
//! containerd 1.6 and 1.7 speak (0.11 moved to v3, which only 2.x serves).

use anyhow::Context;
use husk_shim::server::{self, ServeArgs};
use husk_shim::{bootstrap, RUNTIME_ID};
use std::io::Write;
use std::sync::Arc;

/// Logs go to the `log` FIFO containerd opened in the bundle (containerd
/// copies them into its own log), else to stderr.
fn init_logging() {
    use std::os::unix::fs::OpenOptionsExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,h2=warn,tower=warn,hyper=warn".into());
    let fifo = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open("log");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    let result = match fifo {
        Ok(file) => {
            // Non-blocking only to not hang at open; writes may block.
            let _ = nix::fcntl::fcntl(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_WRONLY),
            );
            builder.with_writer(std::sync::Mutex::new(file)).try_init()
        }
        Err(_) => builder.with_writer(std::io::stderr).try_init(),
    };
    let _ = result;
}

fn main() {
    let args: Vec<_> = std::env::args_os().collect();
    let flags = match containerd_shim::parse(&args[1..]) {
        Ok(f) => f,
        Err(e) => fail(anyhow::anyhow!("{e}")),
    };
    let out = |bytes: &[u8]| {
        let mut stdout = std::io::stdout();
        if let Err(e) = stdout.write_all(bytes).and_then(|()| stdout.flush()) {
            fail(anyhow::Error::new(e).context("writing stdout"));
        }
    };
    if flags.version {
        return out(bootstrap::version().as_bytes());
    }
    if flags.info {
        return match bootstrap::info() {
            Ok(b) => out(&b),
            Err(e) => fail(e),
        };
    }
    match flags.action.as_str() {
        "start" => {
            if let Err(e) = bootstrap::start(&flags) {
                fail(e.context("start"));
            }
        }
        "delete" => match bootstrap::delete(&flags) {
            Ok(b) => out(&b),
            Err(e) => fail(e.context("delete")),
        },
        "" => serve(&flags),
        other => fail(anyhow::anyhow!(
            "unknown action {other:?}: expected start, delete or none"
        )),
    }
}

fn fail(e: anyhow::Error) -> ! {
    eprintln!("{RUNTIME_ID}: {e:#}");
    std::process::exit(1);
}

fn serve(flags: &containerd_shim::Flags) {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fail(anyhow::Error::new(e).context("starting the tokio runtime")),
    };
    let args = (|| {
        anyhow::Ok(ServeArgs {
            namespace: flags.namespace.clone(),
            id: flags.id.clone(),
            socket: Some(flags.socket.clone())
                .filter(|s| !s.is_empty())
                .context("-socket is required to serve")?,
            ttrpc_address: std::env::var("TTRPC_ADDRESS").context("TTRPC_ADDRESS")?,
            bundle: std::env::current_dir().context("the bundle (working directory)")?,
        })
    })();
    let args = args.unwrap_or_else(|e| fail(e));
    if let Err(e) = runtime.block_on(serve_pod(args)) {
        fail(e);
    }
    // A blocking FIFO open that never found its writer must not keep the
    // shim alive after containerd told it to go.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
}

/// The shim of one pod, started cold by `start`.
async fn serve_pod(args: ServeArgs) -> anyhow::Result<()> {
    let bound = match server::bind(&args.socket) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && bootstrap::answers(&args.socket) => {
            // Another shim serves this pod already (a race of two starts).
            signal_started();
            return Ok(());
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("binding {}", args.socket))),
    };
    // `start` waits for stdout to close: the socket accepts from now on.
    signal_started();
    server::ignore_signals()?;
    init_logging();
    let pod_id = bootstrap::pod_id(&args.bundle, &args.id);
    let publisher = server::publisher(&args).await?;
    let events = husk_shim::events::Publisher::start(publisher, args.namespace.clone());
    let pod = husk_shim::sandbox::VmPod::new(pod_id.clone(), husk_config::Config::load_default());
    let manager = husk_shim::manager::Manager::new(pod_id, pod, Arc::new(events));
    let exit = Arc::new(containerd_shim::ExitSignal::default());
    let service = husk_shim::service::TaskService::new(manager, args.socket.clone(), exit.clone());
    server::serve(bound, service, exit).await
}

/// Points stdout at stderr, closing the pipe `start` reads to EOF.
fn signal_started() {
    // SAFETY: dup2 on the process's own standard descriptors; both are
    // open (stderr is /dev/null or a file when started by `start`).
    unsafe {
        libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO);
    }
}
