//! containerd-shim-husk-v2: the containerd runtime v2 shim of husk.
//!
//! containerd starts one shim per container (`ctr run`) or per pod; the shim
//! boots a micro-VM with `husk-hypervisor` on the first Create, shares each
//! container's rootfs with the guest through virtio-fs, and drives the
//! guest agent over vsock for every Task call. Built on the `containerd-shim`
//! crate, which handles the start/delete actions and the ttrpc server.
//!
//! The crate is pinned to 0.10: it is the last with the task v2 API that
//! containerd 1.6 and 1.7 speak (0.11 moved to v3, which only 2.x serves).

mod cgroup;
mod container;
mod io;
mod metrics;
mod network;
mod portforward;
mod rootfs;
mod sandbox;
mod spec;
mod task;

use async_trait::async_trait;
use containerd_shim::asynchronous::{run, spawn, ExitSignal, Shim};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, Error, Flags, StartOpts};
use containerd_shim_protos::api::DeleteResponse;
use std::sync::Arc;

/// The runtime name users give containerd (`--runtime io.containerd.husk.v2`).
pub const RUNTIME_ID: &str = "io.containerd.husk.v2";

struct HuskShim {
    id: String,
    namespace: String,
    /// The ttrpc socket this shim serves (`unix:///run/containerd/s/...`).
    socket: String,
    exit: Arc<ExitSignal>,
}

#[async_trait]
impl Shim for HuskShim {
    type T = task::HuskTask;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        HuskShim {
            id: args.id.clone(),
            namespace: args.namespace.clone(),
            socket: args.socket.clone(),
            exit: Arc::new(ExitSignal::default()),
        }
    }

    /// One shim, and so one VM, per pod: containers name their pod's
    /// sandbox in a CRI annotation, and a shim started for the same
    /// sandbox finds the socket taken and hands back that shim's address.
    /// Without the annotation (`ctr run`) the container is its own group.
    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        let grouping = std::fs::read("config.json")
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|spec| {
                spec.pointer("/annotations/io.kubernetes.cri.sandbox-id")?
                    .as_str()
                    .filter(|s| husk_proto::is_safe_id(s, 128))
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| opts.id.clone());
        spawn(opts, &grouping, Vec::new()).await
    }

    /// Called by containerd after the shim died (or was killed): the shim
    /// process, and with it (PDEATHSIG) the VM, is gone; unmount and remove
    /// what it left, and report the task as killed, as runc's shim does.
    async fn delete_shim(&mut self) -> Result<DeleteResponse, Error> {
        let bundle = std::env::current_dir().map_err(|e| Error::Other(e.to_string()))?;
        let config = husk_config::Config::load_default().unwrap_or_default();
        sandbox::cleanup_after_crash(&config, &self.id, &bundle);
        Ok(DeleteResponse {
            exit_status: 128 + nix::libc::SIGKILL as u32,
            exited_at: Some(containerd_shim::util::timestamp()?).into(),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        init_logging();
        task::HuskTask::new(
            self.id.clone(),
            self.namespace.clone(),
            self.socket.clone(),
            publisher,
            self.exit.clone(),
        )
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{RUNTIME_ID}: cannot start the tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    runtime.block_on(serve());
    // A blocking FIFO open that never found its writer must not keep the
    // shim alive after containerd told it to go.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
}

async fn serve() {
    let config = Config {
        // tracing instead of the crate's `log` FIFO logger.
        no_setup_logger: true,
        // The VM's processes are tokio children, waited for by tokio; the
        // crate's reaper would steal their exit statuses.
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    };
    run::<HuskShim>(RUNTIME_ID, Some(config)).await;
}
