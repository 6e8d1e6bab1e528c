//! Hands VNC clients to QEMU (`getfd` with the connected socket as
//! SCM_RIGHTS, then `add_client`, as libvirt does): the plain VNC
//! listener's connections and the WebSocket bridge's socket pairs. QEMU
//! asks the password itself.

use husk_hypervisor::qemu::qmp::QmpError;
use husk_hypervisor::VmImage;
use serde_json::json;
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// Hands connections to QEMU's VNC server.
pub(crate) struct Handoff {
    vm: Arc<VmImage>,
    call_timeout: Duration,
    next: AtomicU64,
}

impl Handoff {
    pub(crate) fn new(vm: Arc<VmImage>, call_timeout: Duration) -> Self {
        Self {
            vm,
            call_timeout,
            next: AtomicU64::new(1),
        }
    }

    /// Gives QEMU the connected socket `fd` as a VNC client (QEMU asks
    /// for the password itself).
    pub(crate) async fn hand_over(&self, fd: BorrowedFd<'_>) -> Result<(), QmpError> {
        let name = format!("vnc-{}", self.next.fetch_add(1, Ordering::Relaxed));
        let qmp = self.vm.qmp();
        qmp.execute_with_fd(
            "getfd",
            Some(json!({ "fdname": name })),
            fd,
            self.call_timeout,
        )
        .await?;
        let added = qmp
            .execute(
                "add_client",
                Some(json!({"protocol": "vnc", "fdname": name, "skipauth": false})),
                self.call_timeout,
            )
            .await;
        if added.is_err() {
            let _ = qmp
                .execute(
                    "closefd",
                    Some(json!({ "fdname": name })),
                    self.call_timeout,
                )
                .await;
        }
        added.map(drop)
    }

    /// The next client of `listener` (`what` names it in logs), or None
    /// once the VM has exited; a failed accept is logged and retried.
    pub(crate) async fn next_client(
        &self,
        listener: &TcpListener,
        what: &str,
    ) -> Option<(TcpStream, SocketAddr)> {
        loop {
            let accepted = tokio::select! {
                _ = self.vm_exited() => return None,
                a = listener.accept() => a,
            };
            match accepted {
                Ok(a) => return Some(a),
                Err(e) => {
                    tracing::warn!(%e, "{what}: accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Resolves when the VM has exited.
    pub(crate) async fn vm_exited(&self) {
        self.vm.wait().await;
    }
}

/// Hands each plain VNC connection to QEMU, one at a time, until the VM
/// exits.
pub(crate) async fn accept_vnc(listener: TcpListener, handoff: Arc<Handoff>) {
    use std::os::fd::AsFd;
    while let Some((stream, peer)) = handoff.next_client(&listener, "VNC").await {
        match handoff.hand_over(stream.as_fd()).await {
            Ok(()) => tracing::info!(%peer, "VNC client handed to QEMU"),
            Err(e) => tracing::warn!(%peer, "VNC: handing the client to QEMU: {e}"),
        }
    }
}
