//! What the shim knows of one container: its bundle, its init process and
//! its exec processes, each with its stdio, its state as containerd sees it, and the output relays to drain
//! before its exit is reported.

use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, Clone, PartialEq)]
pub enum State {
    Created,
    Running,
    Paused,
    Stopped {
        exit_status: u32,
        exited_at: Timestamp,
    },
}

/// A process of the container: the init (exec id "") or an exec.
pub struct Process {
    pub exec_id: String,
    pub pid: u32,
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    /// stdio is a terminal in the guest (stdout carries both streams).
    pub terminal: bool,
    state: watch::Sender<State>,
    outputs: Mutex<Vec<JoinHandle<()>>>,
}

impl Process {
    pub fn new(
        exec_id: String,
        pid: u32,
        stdio: [String; 3],
        terminal: bool,
        outputs: Vec<JoinHandle<()>>,
    ) -> Self {
        let [stdin, stdout, stderr] = stdio;
        Self {
            exec_id,
            pid,
            stdin,
            stdout,
            stderr,
            terminal,
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

    /// Waits until the process has stopped; returns (status, time).
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

    /// Stops relays that are still running (the process is going away).
    pub fn abort_outputs(&self) {
        crate::task::relay::unblock_stdin(&self.stdin);
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

pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    pub init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
}

impl Container {
    pub fn new(id: String, bundle: PathBuf, init: Process) -> Self {
        Self {
            id,
            bundle,
            init: Arc::new(init),
            execs: Mutex::default(),
        }
    }

    fn execs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Process>>> {
        self.execs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The init for an empty exec id, else that exec.
    pub fn process(&self, exec_id: &str) -> Option<Arc<Process>> {
        if exec_id.is_empty() {
            Some(self.init.clone())
        } else {
            self.execs().get(exec_id).cloned()
        }
    }

    pub fn has_exec(&self, exec_id: &str) -> bool {
        self.execs().contains_key(exec_id)
    }

    pub fn add_exec(&self, proc: Process) {
        self.execs().insert(proc.exec_id.clone(), Arc::new(proc));
    }

    pub fn remove_exec(&self, exec_id: &str) -> Option<Arc<Process>> {
        self.execs().remove(exec_id)
    }

    pub fn all_execs(&self) -> Vec<Arc<Process>> {
        self.execs().values().cloned().collect()
    }
}
