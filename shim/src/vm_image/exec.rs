//! `kubectl exec` and exec probes in a husk-vm container, through the QEMU
//! guest agent (`guest-exec` with captured output, then
//! `guest-exec-status` until it exited), as KubeVirt runs exec probes.
//! What the agent gives is what a container's exec gives: stdout, stderr
//! and the exit code (128 + n after signal n). What it cannot give is
//! refused with the reason: a terminal (`-t`: the serial console is the
//! VM's terminal, `kubectl attach -it`) and stdin (`-i`). The output comes
//! when the command has ended (the agent holds it until then).

use super::context::chain;
use super::guest_agent::{on_agent, GuestAgentSlot};
use crate::task::agent::{sanitize, AgentError};
use husk_hypervisor::qemu::qga::{ExecStatus, GuestAgentError};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// First pause between two `guest-exec-status` polls; it doubles up to
/// [`POLL_MAX`], so a quick probe is answered quickly and a long command
/// costs the guest little.
const POLL_FIRST: Duration = Duration::from_millis(50);
const POLL_MAX: Duration = Duration::from_secs(1);
/// Polls that may fail in a row (the agent restarting) before the exec is
/// given up as lost.
const POLL_FAILURES: u32 = 5;
/// The exit status of an exec whose outcome is unknown (the VM or its
/// agent went away), as for a process whose VM died.
const LOST: u32 = crate::task::manager::LOST;

fn refused(message: String) -> AgentError {
    AgentError::Status {
        code: tonic::Code::FailedPrecondition,
        message,
    }
}

fn unavailable(e: GuestAgentError) -> AgentError {
    AgentError::Status {
        code: tonic::Code::Unavailable,
        message: sanitize(&format!(
            "the VM's QEMU guest agent: {} (exec into a husk-vm container needs \
             qemu-guest-agent running in the image; the serial console, kubectl attach, \
             works without it)",
            chain(e)
        )),
    }
}

/// One exec process in the guest.
pub struct GuestExec {
    /// The guest's pid of the command.
    pub pid: i64,
    /// [stdout, stderr] until read_output takes them.
    outputs: Mutex<[Option<mpsc::Receiver<Vec<u8>>>; 2]>,
    exit: watch::Receiver<Option<u32>>,
    poller: tokio::task::JoinHandle<()>,
}

impl Drop for GuestExec {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

/// The command of an OCI process spec: (path, args, env).
fn command_of(process: &Value) -> Result<(String, Vec<String>, Vec<String>), AgentError> {
    if process.get("terminal").and_then(Value::as_bool) == Some(true) {
        return Err(refused(
            "exec with a terminal (kubectl exec -t) is not available in a husk-vm container: \
             the QEMU guest agent runs commands without one. The VM's terminal is its serial \
             console: kubectl attach -it <pod>; or exec without -t, or ssh into the VM"
                .into(),
        ));
    }
    let strings = |k: &str| -> Vec<String> {
        process
            .get(k)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    let mut args = strings("args");
    if args.is_empty() {
        return Err(AgentError::Status {
            code: tonic::Code::InvalidArgument,
            message: "exec: process.args is empty".into(),
        });
    }
    let path = args.remove(0);
    Ok((path, args, strings("env")))
}

/// A VM container's exec processes, by exec id.
pub struct GuestExecs {
    /// The container's id, for logs and errors.
    container_id: String,
    agent: Arc<GuestAgentSlot>,
    /// The VM's exit: an exec whose VM is gone is lost.
    vm_exit: watch::Receiver<bool>,
    call_timeout: Duration,
    execs: Mutex<HashMap<String, Arc<GuestExec>>>,
}

impl GuestExecs {
    pub fn new(
        container_id: &str,
        agent: Arc<GuestAgentSlot>,
        vm_exit: watch::Receiver<bool>,
        call_timeout: Duration,
    ) -> Self {
        Self {
            container_id: container_id.to_owned(),
            agent,
            vm_exit,
            call_timeout,
            execs: Mutex::default(),
        }
    }

    fn vm_exited(&self) -> bool {
        *self.vm_exit.borrow()
    }

    /// Starts `process_json` (an OCI process) in the guest; returns its
    /// guest pid. With `stdin`, refused.
    pub async fn exec(
        &self,
        exec_id: &str,
        process_json: &[u8],
        stdin: bool,
    ) -> Result<u32, AgentError> {
        let process: Value =
            serde_json::from_slice(process_json).map_err(|e| AgentError::Status {
                code: tonic::Code::InvalidArgument,
                message: format!("exec: the process spec is not JSON: {e}"),
            })?;
        let (path, args, env) = command_of(&process)?;
        if stdin {
            return Err(refused(
                "exec with stdin (kubectl exec -i) is not available in a husk-vm container: the \
                 QEMU guest agent takes a command's input only whole, before it starts. Pass the \
                 input in the command, use kubectl attach for the console, or ssh into the VM"
                    .into(),
            ));
        }
        if self.vm_exited() {
            return Err(refused("the VM has exited".into()));
        }
        // The agent may still be booting: a short sync tells that apart
        // from a command that takes long.
        let sync = (self.call_timeout / 3).max(Duration::from_secs(2));
        let pid = on_agent!(self.agent, sync, |a| a.exec(&path, &args, &env, None, sync))
            .map_err(unavailable)?;
        let (out_tx, out_rx) = mpsc::channel(2);
        let (err_tx, err_rx) = mpsc::channel(2);
        let (exit_tx, exit_rx) = watch::channel(None);
        let poller = tokio::spawn(poll(
            self.agent.clone(),
            self.vm_exit.clone(),
            pid,
            sync,
            [out_tx, err_tx],
            exit_tx,
        ));
        let exec = Arc::new(GuestExec {
            pid,
            outputs: Mutex::new([Some(out_rx), Some(err_rx)]),
            exit: exit_rx,
            poller,
        });
        self.execs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(exec_id.to_owned(), exec);
        tracing::info!(container_id = %self.container_id, exec_id, guest_pid = pid, command = %path, "exec started in the guest");
        Ok(u32::try_from(pid).unwrap_or(0))
    }

    pub fn guest_exec(&self, exec_id: &str) -> Result<Arc<GuestExec>, AgentError> {
        self.execs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(exec_id)
            .cloned()
            .ok_or_else(|| AgentError::Status {
                code: tonic::Code::NotFound,
                message: format!("exec {exec_id} of {} not found", self.container_id),
            })
    }

    pub fn remove_exec(&self, exec_id: &str) {
        self.execs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(exec_id);
    }

    /// Sends `signal` to the exec's command, with the guest's kill(1).
    pub async fn signal_exec(&self, exec_id: &str, signal: u32) -> Result<(), AgentError> {
        let exec = self.guest_exec(exec_id)?;
        if exec.exit.borrow().is_some() {
            return Ok(());
        }
        let args = vec![format!("-{signal}"), exec.pid.to_string()];
        let t = self.call_timeout;
        on_agent!(self.agent, t, |a| a.exec("kill", &args, &[], None, t))
            .map(drop)
            .map_err(unavailable)
    }
}

impl GuestExec {
    pub fn take_output(&self, which: usize) -> Option<mpsc::Receiver<Vec<u8>>> {
        self.outputs.lock().unwrap_or_else(|e| e.into_inner())[which].take()
    }

    pub async fn wait(&self) -> u32 {
        let mut rx = self.exit.clone();
        let status = rx
            .wait_for(Option::is_some)
            .await
            .map(|s| s.unwrap_or(LOST));
        status.unwrap_or(LOST)
    }
}

/// Polls the command until it exits, then hands out its output and status;
/// gives up (LOST) when the VM exits or the agent stays away.
async fn poll(
    agent: Arc<GuestAgentSlot>,
    mut vm_exit: watch::Receiver<bool>,
    pid: i64,
    timeout: Duration,
    [out, err]: [mpsc::Sender<Vec<u8>>; 2],
    exit: watch::Sender<Option<u32>>,
) {
    let mut pause = POLL_FIRST;
    let mut failures = 0;
    let status: Option<ExecStatus> = loop {
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = vm_exit.wait_for(|exited| *exited) => break None,
        }
        pause = (pause * 2).min(POLL_MAX);
        match on_agent!(agent, timeout, |a| a.exec_status(pid, timeout)) {
            Ok(s) if s.exited => break Some(s),
            Ok(_) => failures = 0,
            Err(e) => {
                failures += 1;
                tracing::debug!(guest_pid = pid, %e, "guest-exec-status");
                if failures >= POLL_FAILURES {
                    break None;
                }
            }
        }
    };
    let Some(s) = status else {
        exit.send_replace(Some(LOST));
        return;
    };
    for (tx, mut data) in [(out, s.stdout), (err, s.stderr)] {
        if s.truncated && !data.is_empty() {
            data.extend_from_slice(b"\n[husk-vm: the guest agent cut this output at 16 MiB]\n");
        }
        for chunk in data.chunks(husk_proto::IO_CHUNK_BYTES) {
            if tx.send(chunk.to_vec()).await.is_err() {
                break;
            }
        }
    }
    let code = match (s.exit_code, s.signal) {
        (_, Some(sig)) if (1..128).contains(&sig) => 128 + sig as u32,
        (Some(c), _) => (c & 0xff) as u32,
        _ => LOST,
    };
    exit.send_replace(Some(code));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_terminal_is_refused_naming_the_console() {
        let e = command_of(&json!({"terminal": true, "args": ["sh"]})).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("kubectl attach -it") && text.contains("serial"),
            "{text}"
        );
    }

    #[test]
    fn the_command_is_args_and_env() {
        let (path, args, env) = command_of(&json!({
            "args": ["ip", "addr"], "env": ["PATH=/usr/bin", 5], "cwd": "/"
        }))
        .unwrap();
        assert_eq!(
            (path.as_str(), args, env),
            (
                "ip",
                vec!["addr".to_string()],
                vec!["PATH=/usr/bin".to_string()]
            )
        );
        assert!(command_of(&json!({"args": []})).is_err());
    }
}
