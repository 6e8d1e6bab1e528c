//! containerd-shim-husk-v2: the containerd runtime v2 shim of husk; run
//! as containerd-shim-husk-vm-v2 (a link to it), the shim of husk-vm pods
//! (husk_shim::Mode).
//!
//! containerd runs it with an action: `start` (answer with the pod's shim
//! address, starting the shim), `delete` (clean up after a dead shim), or
//! none (serve the Task API on the socket `start` chose). `-v` and `-info`
//! describe it. Serving is the `containerd-shim` crate's ttrpc server over
//! husk's Task service (husk_shim::service); the actions are husk's own
//! (husk_shim::bootstrap).
//!
//! The crate is pinned to 0.10: it is the last with the task v2 API that
//! containerd 1.6 and 1.7 speak (0.11 moved to v3, which only 2.x serves).

use async_trait::async_trait;
use containerd_shim::asynchronous::{run, ExitSignal, Shim};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, Error, Flags, StartOpts};
use containerd_shim_protos::api::DeleteResponse;
use husk_shim::pod::Pod;
use husk_shim::sandbox::VmPod;
use husk_shim::vmpod::VmImagePod;
use husk_shim::{bootstrap, Mode};
use std::io::Write;
use std::marker::PhantomData;
use std::sync::Arc;

/// A pod the shim can serve: husk's or husk-vm's.
trait ShimPod: Pod {
    fn make(pod_id: String, config: Result<husk_config::Config, husk_config::ConfigError>) -> Self;
}

impl ShimPod for VmPod {
    fn make(pod_id: String, config: Result<husk_config::Config, husk_config::ConfigError>) -> Self {
        VmPod::new(pod_id, config)
    }
}

impl ShimPod for VmImagePod {
    fn make(pod_id: String, config: Result<husk_config::Config, husk_config::ConfigError>) -> Self {
        VmImagePod::new(pod_id, config)
    }
}

/// The serving shim, as the crate drives it, for pods of kind `P`.
struct HuskShim<P> {
    id: String,
    namespace: String,
    /// The ttrpc socket this shim serves (`unix:///run/containerd/s/...`).
    socket: String,
    exit: Arc<ExitSignal>,
    pod: PhantomData<fn() -> P>,
}

#[async_trait]
impl<P: ShimPod> Shim for HuskShim<P> {
    type T = husk_shim::service::TaskService<P>;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        HuskShim {
            id: args.id.clone(),
            namespace: args.namespace.clone(),
            socket: args.socket.clone(),
            exit: Arc::new(ExitSignal::default()),
            pod: PhantomData,
        }
    }

    // `start` and `delete` never reach the crate (see main).
    async fn start_shim(&mut self, _opts: StartOpts) -> Result<String, Error> {
        Err(Error::InvalidArgument("start is handled by husk".into()))
    }

    async fn delete_shim(&mut self) -> Result<DeleteResponse, Error> {
        Err(Error::InvalidArgument("delete is handled by husk".into()))
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        init_logging();
        let bundle = std::env::current_dir().unwrap_or_default();
        let pod_id = bootstrap::pod_id(&bundle, &self.id);
        let config = husk_config::Config::load_default();
        let events = husk_shim::events::Publisher::start(publisher, self.namespace.clone());
        let pod = P::make(pod_id.clone(), config);
        let manager = husk_shim::manager::Manager::new(pod_id, pod, Arc::new(events));
        husk_shim::service::TaskService::new(manager, self.socket.clone(), self.exit.clone())
    }
}

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
        "" => serve(),
        other => fail(anyhow::anyhow!(
            "unknown action {other:?}: expected start, delete or none"
        )),
    }
}

fn fail(e: anyhow::Error) -> ! {
    eprintln!("{}: {e:#}", Mode::current().runtime_id());
    std::process::exit(1);
}

fn serve() {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fail(anyhow::Error::new(e).context("starting the tokio runtime")),
    };
    let config = Config {
        // tracing instead of the crate's `log` FIFO logger.
        no_setup_logger: true,
        // The VM's processes are tokio children, waited for by tokio; the
        // crate's reaper would steal their exit statuses.
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    };
    let mode = Mode::current();
    match mode {
        Mode::Container => {
            runtime.block_on(run::<HuskShim<VmPod>>(mode.runtime_id(), Some(config)))
        }
        Mode::VmImage => {
            runtime.block_on(run::<HuskShim<VmImagePod>>(mode.runtime_id(), Some(config)))
        }
    }
    // A blocking FIFO open that never found its writer must not keep the
    // shim alive after containerd told it to go.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
}
