//! The one connection to a VM image's QEMU guest agent (qemu-guest-agent
//! on virtio-serial `org.qemu.guest_agent.0`, reached through QEMU's
//! socket), made when first needed: QEMU's socket chardev takes one client,
//! so exec, its polls and the shutdown share it. A call that fails drops
//! it, so the next one starts clean with a fresh `guest-sync-delimited`.

use husk_hypervisor::qemu::qga::{GuestAgent, GuestAgentError};
use std::path::PathBuf;
use std::time::Duration;

pub struct GuestAgentSlot {
    pub socket: PathBuf,
    pub conn: tokio::sync::Mutex<Option<GuestAgent>>,
}

impl GuestAgentSlot {
    pub fn new(socket: PathBuf) -> Self {
        Self {
            socket,
            conn: tokio::sync::Mutex::new(None),
        }
    }

    /// The connection, connected and synced first when there is none.
    pub async fn connected(
        &self,
        timeout: Duration,
    ) -> Result<tokio::sync::MutexGuard<'_, Option<GuestAgent>>, GuestAgentError> {
        let mut conn = self.conn.lock().await;
        if conn.is_none() {
            let mut agent = GuestAgent::connect(&self.socket).await?;
            agent.sync(timeout).await?;
            *conn = Some(agent);
        }
        Ok(conn)
    }
}

/// Runs one call on a slot's connection: `$call` is a method of
/// `GuestAgent` on `$a`. A failed call drops the connection.
macro_rules! on_agent {
    ($slot:expr, $timeout:expr, |$a:ident| $call:expr) => {{
        match $slot.connected($timeout).await {
            Err(e) => Err(e),
            Ok(mut conn) => match conn.as_mut() {
                None => Err(husk_hypervisor::qemu::qga::GuestAgentError::Timeout(
                    "connect",
                )),
                Some($a) => {
                    let result = $call.await;
                    if result.is_err() {
                        *conn = None;
                    }
                    result
                }
            },
        }
    }};
}
pub(super) use on_agent;
