//! The serving shim: the ttrpc Task server on the socket `start` chose,
//! until containerd's Shutdown. husk drives the `containerd-shim` crate's
//! pieces (the ttrpc server, the task service registration, the event
//! publisher) itself rather than through the crate's `run`, so that a
//! shim can also begin life as a pre-booted pool member (`pool`) and
//! become a pod's shim when one is claimed.

use crate::task::service::TaskService;
use anyhow::Context;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::ExitSignal;
use containerd_shim_protos::shim_async::{create_task, Task};
use containerd_shim_protos::ttrpc::r#async::Server;
use std::os::fd::IntoRawFd;
use std::path::PathBuf;
use std::sync::Arc;

/// Who the shim serves: what containerd passes on the command line (or,
/// to a pool member, the claim).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ServeArgs {
    pub namespace: String,
    /// The first container's id (the pod's own for a CRI pod).
    pub id: String,
    /// The socket to serve (`unix:///run/containerd/s/<hash>`).
    pub socket: String,
    /// containerd's ttrpc address, for events.
    pub ttrpc_address: String,
    /// The first container's bundle: the shim's working directory.
    pub bundle: PathBuf,
}

/// A bound listener, before serving (so `start` can learn that binding
/// failed before it answers containerd).
pub struct Bound {
    listener: std::os::unix::net::UnixListener,
    path: String,
}

/// Binds the socket of `address`, owner-only (0600: the Task API is
/// containerd's, which runs as root); EADDRINUSE when something serves it.
pub fn bind(address: &str) -> std::io::Result<Bound> {
    use std::os::unix::fs::PermissionsExt;
    let path = address
        .strip_prefix("unix://")
        .unwrap_or(address)
        .to_owned();
    if let Some(parent) = std::path::Path::new(&path).parent() {
        std::fs::create_dir_all(parent)?;
    }
    let listener = std::os::unix::net::UnixListener::bind(&path)?;
    // Before anything can connect: the listener accepts only once served.
    if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)) {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(Bound { listener, path })
}

/// Serves the Task API on `bound` with `service` until it signals exit,
/// then removes the socket.
pub async fn serve<P: crate::task::pod::Pod>(
    bound: Bound,
    service: TaskService<P>,
    exit: Arc<ExitSignal>,
) -> anyhow::Result<()> {
    let task: Box<dyn Task + Send + Sync> = Box::new(service);
    let mut server = Server::new()
        .add_listener(bound.listener.into_raw_fd())
        .context("listening")?
        .set_domain_unix()
        .register_service(create_task(Arc::from(task)));
    server.start().await.context("starting the ttrpc server")?;
    tracing::info!(socket = %bound.path, "serving");
    exit.wait().await;
    let _ = server.shutdown().await;
    let _ = std::fs::remove_file(&bound.path);
    Ok(())
}

/// Serves pod `pod_id` with `pod` (cold: not booted yet; or a pool
/// member's, booted) on `bound` until containerd's Shutdown.
pub async fn serve_pod<P: crate::task::pod::Pod>(
    args: &ServeArgs,
    pod_id: String,
    pod: P,
    bound: Bound,
) -> anyhow::Result<()> {
    ignore_signals()?;
    let events =
        crate::task::events::Publisher::start(publisher(args).await?, args.namespace.clone());
    let manager = crate::task::manager::Manager::new(pod_id, pod, Arc::new(events));
    let exit = Arc::new(ExitSignal::default());
    let service = TaskService::new(manager, args.socket.clone(), exit.clone());
    serve(bound, service, exit).await
}

/// containerd's event publisher for `args`.
pub async fn publisher(args: &ServeArgs) -> anyhow::Result<RemotePublisher> {
    RemotePublisher::new(&args.ttrpc_address)
        .await
        .with_context(|| format!("connecting to containerd's ttrpc at {}", args.ttrpc_address))
}

/// SIGTERM and SIGINT do not end a shim (containerd's Shutdown does, and
/// its VM must not die with a stray signal); SIGPIPE from a closed FIFO is
/// an error on the write, not a death.
pub fn ignore_signals() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    for kind in [
        SignalKind::terminate(),
        SignalKind::interrupt(),
        SignalKind::pipe(),
    ] {
        let mut stream = signal(kind).context("installing a signal handler")?;
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                tracing::debug!("signal ignored");
            }
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_task_socket_is_the_owners_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s/task.sock");
        let bound = bind(&format!("unix://{}", path.display())).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = bind(&format!("unix://{}", path.display())).err().unwrap();
        assert_eq!(again.kind(), std::io::ErrorKind::AddrInUse);
        drop(bound);
    }
}
