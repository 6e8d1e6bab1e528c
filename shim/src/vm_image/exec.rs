//! `kubectl exec` and exec probes in a husk-vm container. Without a
//! terminal or stdin, through the QEMU guest agent (`guest-exec` with
//! captured output, then `guest-exec-status` until it exited), as KubeVirt
//! runs exec probes: stdout, stderr and the exit code (128 + n after
//! signal n), the output when the command has ended (the agent holds it
//! until then). With a terminal (`-t`) or stdin (`-i`), through husk's
//! own helper on the VM's tools disk ([`super::tools`]): a PTY, streamed
//! input and output, window size, signals. Where the VM has no tools
//! disk, or its guest did not start the helper, `-t` and `-i` are refused
//! with the reason and what works instead.

use super::context::chain;
use super::guest_agent::{on_agent, GuestAgentSlot};
use super::tools::{ToolsChannel, ToolsError, ToolsSession};
use crate::task::agent::{sanitize, AgentError};
use husk_hypervisor::qemu::qga::{ExecStatus, GuestAgentError};
use husk_proto::tools::Open;
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
    /// The guest agent's polls (an exec without terminal or stdin).
    poller: Option<tokio::task::JoinHandle<()>>,
    /// The tools channel's session (an exec with a terminal or stdin).
    session: Option<ToolsSession>,
}

impl Drop for GuestExec {
    fn drop(&mut self) {
        if let Some(p) = &self.poller {
            p.abort();
        }
    }
}

/// An OCI process spec's command.
#[derive(Debug, PartialEq, Eq)]
struct Command {
    path: String,
    args: Vec<String>,
    env: Vec<String>,
    cwd: String,
    /// `terminal`, and its `consoleSize` (rows, columns; 0 0 unknown).
    terminal: Option<(u16, u16)>,
}

/// Why `-t` or `-i` cannot be had, and what works instead.
fn no_tools(what: &str, why: &str) -> AgentError {
    refused(format!(
        "exec with {what} in a husk-vm container needs husk-vm-tools in the guest, and {why}. \
         The VM's terminal is its serial console: kubectl attach -it <pod>; or exec without \
         -t and -i (the QEMU guest agent runs it), or ssh into the VM"
    ))
}

/// The command of an OCI process spec.
fn command_of(process: &Value) -> Result<Command, AgentError> {
    let terminal = (process.get("terminal").and_then(Value::as_bool) == Some(true)).then(|| {
        let size = |k: &str| {
            process
                .pointer(&format!("/consoleSize/{k}"))
                .and_then(Value::as_u64)
                .and_then(|v| u16::try_from(v).ok())
                .unwrap_or(0)
        };
        (size("height"), size("width"))
    });
    let cwd = process
        .get("cwd")
        .and_then(Value::as_str)
        .unwrap_or("/")
        .to_owned();
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
    Ok(Command {
        path,
        args,
        env: strings("env"),
        cwd,
        terminal,
    })
}

/// A VM container's exec processes, by exec id.
pub struct GuestExecs {
    /// The container's id, for logs and errors.
    container_id: String,
    agent: Arc<GuestAgentSlot>,
    /// The tools channel, where the VM has a tools disk.
    tools: Option<Arc<ToolsChannel>>,
    /// The VM's exit: an exec whose VM is gone is lost.
    vm_exit: watch::Receiver<bool>,
    call_timeout: Duration,
    execs: Mutex<HashMap<String, Arc<GuestExec>>>,
}

impl GuestExecs {
    pub fn new(
        container_id: &str,
        agent: Arc<GuestAgentSlot>,
        tools: Option<Arc<ToolsChannel>>,
        vm_exit: watch::Receiver<bool>,
        call_timeout: Duration,
    ) -> Self {
        Self {
            container_id: container_id.to_owned(),
            agent,
            tools,
            vm_exit,
            call_timeout,
            execs: Mutex::default(),
        }
    }

    fn vm_exited(&self) -> bool {
        *self.vm_exit.borrow()
    }

    /// Starts `process_json` (an OCI process) in the guest; returns its
    /// guest pid. With a terminal or `stdin`, through the tools channel.
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
        let command = command_of(&process)?;
        if self.vm_exited() {
            return Err(refused("the VM has exited".into()));
        }
        if command.terminal.is_some() || stdin {
            return self.exec_with_tools(exec_id, command, stdin).await;
        }
        let Command {
            path, args, env, ..
        } = command;
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
            poller: Some(poller),
            session: None,
        });
        self.execs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(exec_id.to_owned(), exec);
        tracing::info!(container_id = %self.container_id, exec_id, guest_pid = pid, command = %path, "exec started in the guest");
        Ok(u32::try_from(pid).unwrap_or(0))
    }

    /// Starts `command` through the tools channel (`-t`, `-i`).
    async fn exec_with_tools(
        &self,
        exec_id: &str,
        command: Command,
        stdin: bool,
    ) -> Result<u32, AgentError> {
        let what = match (command.terminal.is_some(), stdin) {
            (true, true) => "a terminal and stdin (kubectl exec -it)",
            (true, false) => "a terminal (kubectl exec -t)",
            _ => "stdin (kubectl exec -i)",
        };
        let Some(tools) = &self.tools else {
            return Err(no_tools(
                what,
                "this VM has no tools disk (io.husk.vm.tools: \"false\", or the node has no \
                 vm.tools_disk)",
            ));
        };
        let open = Open {
            tty: command.terminal,
            cwd: command.cwd,
            args: std::iter::once(command.path.clone())
                .chain(command.args)
                .collect(),
            env: command.env,
        };
        let started = tools
            .open(&open, self.call_timeout)
            .await
            .map_err(|e| match e {
                ToolsError::NoHelper(_) => no_tools(what, &e.to_string()),
                ToolsError::Guest(why) => AgentError::Status {
                    code: tonic::Code::FailedPrecondition,
                    message: sanitize(&format!("exec {}: {why}", command.path)),
                },
                other => AgentError::Status {
                    code: tonic::Code::Unavailable,
                    message: sanitize(&other.to_string()),
                },
            })?;
        let [out, err] = started.outputs;
        let pid = started.pid;
        let exec = Arc::new(GuestExec {
            pid: i64::from(pid),
            outputs: Mutex::new([Some(out), Some(err)]),
            exit: started.exit,
            poller: None,
            session: Some(started.session),
        });
        self.execs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(exec_id.to_owned(), exec);
        tracing::info!(container_id = %self.container_id, exec_id, guest_pid = pid, command = %command.path, terminal = command.terminal.is_some(), stdin, "exec started in the guest through husk-vm-tools");
        Ok(pid)
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

    /// Sends `signal` to the exec's command: to its process group through
    /// the tools channel, or with the guest's kill(1).
    pub async fn signal_exec(&self, exec_id: &str, signal: u32) -> Result<(), AgentError> {
        let exec = self.guest_exec(exec_id)?;
        if exec.exit.borrow().is_some() {
            return Ok(());
        }
        if let Some(session) = &exec.session {
            return session
                .signal(signal)
                .await
                .map_err(|e| AgentError::Status {
                    code: tonic::Code::Unavailable,
                    message: sanitize(&e.to_string()),
                });
        }
        let args = vec![format!("-{signal}"), exec.pid.to_string()];
        let t = self.call_timeout;
        on_agent!(self.agent, t, |a| a.exec("kill", &args, &[], None, t))
            .map(drop)
            .map_err(unavailable)
    }
}

impl GuestExec {
    /// The tools channel's session (an exec with a terminal or stdin).
    pub fn session(&self) -> Option<&ToolsSession> {
        self.session.as_ref()
    }

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
    fn a_terminal_and_its_size_are_read() {
        let c = command_of(&json!({
            "terminal": true, "args": ["sh"], "consoleSize": {"height": 33, "width": 101}
        }))
        .unwrap();
        assert_eq!((c.terminal, c.cwd.as_str()), (Some((33, 101)), "/"));
        let c = command_of(&json!({"terminal": true, "args": ["sh"], "cwd": "/root"})).unwrap();
        assert_eq!((c.terminal, c.cwd.as_str()), (Some((0, 0)), "/root"));
        let text = no_tools("a terminal (kubectl exec -t)", "why").to_string();
        assert!(
            text.contains("kubectl attach -it") && text.contains("serial"),
            "{text}"
        );
    }

    #[test]
    fn the_command_is_args_and_env() {
        let c = command_of(&json!({
            "args": ["ip", "addr"], "env": ["PATH=/usr/bin", 5], "cwd": "/"
        }))
        .unwrap();
        assert_eq!(c.terminal, None);
        assert_eq!(
            (c.path.as_str(), c.args, c.env),
            (
                "ip",
                vec!["addr".to_string()],
                vec!["PATH=/usr/bin".to_string()]
            )
        );
        assert!(command_of(&json!({"args": []})).is_err());
    }
}
