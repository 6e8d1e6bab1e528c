//! husk-agent: the guest side of husk. The kernel runs it as `/init` from the
//! initrd; it does PID 1's duties (mounts, console, reaping orphans) and then
//! serves the agent API (`husk-proto`) over vsock to the shim on the host.
//!
//! It is linked statically so the initrd needs nothing else. Run outside a VM
//! (not as PID 1) it skips the init duties and serves on its vsock ports;
//! there too it serves only peers with the host's CID (host_only.rs), so
//! not a client on the same machine through vsock loopback.

// Helpers of RPC handlers return tonic::Status, the type the handlers must
// return; boxing it only to unbox it at the boundary would buy nothing.
#![allow(clippy::result_large_err)]

mod console;
mod containers;
mod forward;
mod guest;
mod host_only;
mod init;
mod network;
mod reaper;
mod service;

use anyhow::Context;
use husk_proto::agent::agent_server::AgentServer;

fn main() {
    let is_init = std::process::id() == 1;
    let started_ms = guest::boottime_ms();
    let mut switch_error = None;
    if is_init {
        if std::env::args().nth(1).as_deref() != Some(init::SWITCHED_ROOT_ARG) {
            // Returns only on failure; the agent then runs on, without
            // containers able to pivot_root, and says why below.
            switch_error = init::switch_to_tmpfs_root().err();
        }
        // Before anything logs: the console is only reachable after /dev is mounted.
        init::early_setup();
    }
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    if let Some(err) = switch_error {
        tracing::error!(%err, "cannot move to a tmpfs root; containers will fail to pivot_root");
    }
    if let Err(err) = run(is_init, started_ms) {
        tracing::error!("agent failed: {err:#}");
        // PID 1 exiting panics the kernel; with `panic=-1` on the command
        // line the guest then resets and the VMM exits, which is what the
        // host watches for. Give the console a moment to drain first.
        std::thread::sleep(std::time::Duration::from_millis(100));
        std::process::exit(1);
    }
}

fn run(is_init: bool, started_ms: u64) -> anyhow::Result<()> {
    let shared_dir = if is_init {
        init::mount_shared_dir()
    } else {
        None
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(async move {
        // Every child of the agent is reaped here, container or orphan.
        let reaper = reaper::Reaper::start().context("installing the SIGCHLD reaper")?;
        let containers = containers::Containers::new(reaper);
        let port = husk_proto::AGENT_VSOCK_PORT;
        // Only the host's connections reach tonic (host_only.rs).
        let listener =
            host_only::bind(port).with_context(|| format!("binding vsock port {port}"))?;
        if is_init {
            if let Err(e) = network::loopback_up().await {
                tracing::warn!("loopback: {e}");
            }
        }
        forward::serve().context("binding the port-forward vsock port")?;
        console::serve().context("binding the debug console's vsock port")?;
        let service = service::AgentService::new(is_init, started_ms, shared_dir, containers);
        tracing::info!(port, version = env!("CARGO_PKG_VERSION"), "agent serving");
        // Plain text, not a log line: the host waits for exactly this.
        eprintln!("{}", husk_proto::AGENT_LISTENING_MARKER);
        tonic::transport::Server::builder()
            .add_service(AgentServer::new(service))
            .serve_with_incoming(listener)
            .await
            .context("serving gRPC")
    })
}
