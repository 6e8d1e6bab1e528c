//! What the shim knows of one container: its bundle and stdio, its state
//! as containerd sees it, and the output relays to drain before its exit
//! is reported.

use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use std::path::PathBuf;
use std::sync::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, Clone, PartialEq)]
pub enum State {
    Created,
    Running,
    Stopped {
        exit_status: u32,
        exited_at: Timestamp,
    },
}

pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    pub pid: u32,
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    /// The rootfs bind in the shared directory.
    pub share_at: PathBuf,
    /// Whether the shim mounted `<bundle>/rootfs` (and must unmount it).
    pub mounted_bundle_rootfs: bool,
    state: watch::Sender<State>,
    outputs: Mutex<Vec<JoinHandle<()>>>,
}

impl Container {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: String,
        bundle: PathBuf,
        pid: u32,
        stdin: String,
        stdout: String,
        stderr: String,
        share_at: PathBuf,
        mounted_bundle_rootfs: bool,
        outputs: Vec<JoinHandle<()>>,
    ) -> Self {
        Self {
            id,
            bundle,
            pid,
            stdin,
            stdout,
            stderr,
            share_at,
            mounted_bundle_rootfs,
            state: watch::channel(State::Created).0,
            outputs: Mutex::new(outputs),
        }
    }

    pub fn state(&self) -> State {
        self.state.borrow().clone()
    }

    pub fn set_state(&self, state: State) {
        self.state.send_replace(state);
    }

    /// Waits until the container has stopped; returns (status, time).
    pub async fn wait_stopped(&self) -> (u32, Timestamp) {
        let mut rx = self.state.subscribe();
        let state = rx
            .wait_for(|s| matches!(s, State::Stopped { .. }))
            .await
            .map(|s| s.clone());
        match state {
            Ok(State::Stopped {
                exit_status,
                exited_at,
            }) => (exit_status, exited_at),
            _ => (255, Timestamp::new()),
        }
    }

    /// Waits for every output relay to finish writing.
    pub async fn drain_outputs(&self) {
        let handles: Vec<_> =
            std::mem::take(&mut *self.outputs.lock().unwrap_or_else(|e| e.into_inner()));
        for handle in handles {
            let _ = handle.await;
        }
    }

    /// Stops relays that are still running (the container is going away).
    pub fn abort_outputs(&self) {
        crate::io::unblock_stdin(&self.stdin);
        for handle in self
            .outputs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            handle.abort();
        }
    }
}
