//! Task events: [`Event`], what the manager reports, and [`Publisher`],
//! which sends them to containerd in order from one queue, as runc's shim
//! does: a call never waits on containerd's event service, and an event
//! that containerd (restarting, say) does not take is retried a few times
//! before it is dropped with a warning.

use containerd_shim::publisher::RemotePublisher;
use containerd_shim_protos::api::Mount;
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::MessageDyn;
use containerd_shim_protos::topics;
use containerd_shim_protos::ttrpc::context::Context;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Create {
        container_id: String,
        bundle: String,
        rootfs: Vec<Mount>,
        /// [stdin, stdout, stderr] FIFO paths.
        stdio: [String; 3],
        terminal: bool,
        pid: u32,
    },
    Start {
        container_id: String,
        pid: u32,
    },
    ExecAdded {
        container_id: String,
        exec_id: String,
    },
    ExecStarted {
        container_id: String,
        exec_id: String,
        pid: u32,
    },
    /// `id` is the exec id, or the container id for its init.
    Exit {
        container_id: String,
        id: String,
        pid: u32,
        exit_status: u32,
        exited_at: Timestamp,
    },
    Delete {
        container_id: String,
        pid: u32,
        exit_status: u32,
        exited_at: Timestamp,
    },
    Oom {
        container_id: String,
    },
    Paused {
        container_id: String,
    },
    Resumed {
        container_id: String,
    },
}

impl Event {
    pub fn topic(&self) -> &'static str {
        match self {
            Event::Create { .. } => topics::TASK_CREATE_EVENT_TOPIC,
            Event::Start { .. } => topics::TASK_START_EVENT_TOPIC,
            Event::ExecAdded { .. } => topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Event::ExecStarted { .. } => topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            Event::Exit { .. } => topics::TASK_EXIT_EVENT_TOPIC,
            Event::Delete { .. } => topics::TASK_DELETE_EVENT_TOPIC,
            Event::Oom { .. } => topics::TASK_OOM_EVENT_TOPIC,
            Event::Paused { .. } => topics::TASK_PAUSED_EVENT_TOPIC,
            Event::Resumed { .. } => topics::TASK_RESUMED_EVENT_TOPIC,
        }
    }

    /// The containerd event message (`containerd.events.Task*`).
    pub fn to_proto(&self) -> Box<dyn MessageDyn> {
        match self.clone() {
            Event::Create {
                container_id,
                bundle,
                rootfs,
                stdio,
                terminal,
                pid,
            } => Box::new(TaskCreate {
                container_id,
                bundle,
                rootfs,
                io: Some(task_io(stdio, terminal)).into(),
                pid,
                ..Default::default()
            }),
            Event::Start { container_id, pid } => Box::new(TaskStart {
                container_id,
                pid,
                ..Default::default()
            }),
            Event::ExecAdded {
                container_id,
                exec_id,
            } => Box::new(TaskExecAdded {
                container_id,
                exec_id,
                ..Default::default()
            }),
            Event::ExecStarted {
                container_id,
                exec_id,
                pid,
            } => Box::new(TaskExecStarted {
                container_id,
                exec_id,
                pid,
                ..Default::default()
            }),
            Event::Exit {
                container_id,
                id,
                pid,
                exit_status,
                exited_at,
            } => Box::new(TaskExit {
                container_id,
                id,
                pid,
                exit_status,
                exited_at: Some(exited_at).into(),
                ..Default::default()
            }),
            Event::Delete {
                container_id,
                pid,
                exit_status,
                exited_at,
            } => Box::new(task_delete(container_id, pid, exit_status, exited_at)),
            Event::Oom { container_id } => Box::new(TaskOOM {
                container_id,
                ..Default::default()
            }),
            Event::Paused { container_id } => Box::new(TaskPaused {
                container_id,
                ..Default::default()
            }),
            Event::Resumed { container_id } => Box::new(TaskResumed {
                container_id,
                ..Default::default()
            }),
        }
    }
}

/// A TaskCreate's stdio: containerd's FIFO paths.
fn task_io([stdin, stdout, stderr]: [String; 3], terminal: bool) -> TaskIO {
    TaskIO {
        stdin,
        stdout,
        stderr,
        terminal,
        ..Default::default()
    }
}

/// A TaskDelete: its `id` is the container's (the init process).
fn task_delete(
    container_id: String,
    pid: u32,
    exit_status: u32,
    exited_at: Timestamp,
) -> TaskDelete {
    TaskDelete {
        id: container_id.clone(),
        container_id,
        pid,
        exit_status,
        exited_at: Some(exited_at).into(),
        ..Default::default()
    }
}

/// Where the manager sends its events.
pub trait EventSink: Send + Sync + 'static {
    fn send(&self, event: Event);
}

/// Attempts per event before it is dropped, and the first pause between
/// two (doubled each time: about 6 s in all).
const PUBLISH_ATTEMPTS: u32 = 5;
const FIRST_RETRY: Duration = Duration::from_millis(200);

/// Events to containerd, in order, from one task.
pub struct Publisher {
    queue: tokio::sync::mpsc::UnboundedSender<Event>,
}

impl Publisher {
    /// Starts the task that publishes to containerd in `namespace`.
    pub fn start(remote: RemotePublisher, namespace: String) -> Self {
        let (queue, mut rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                let mut pause = FIRST_RETRY;
                for attempt in 1..=PUBLISH_ATTEMPTS {
                    match remote
                        .publish(
                            Context::default(),
                            event.topic(),
                            &namespace,
                            event.to_proto(),
                        )
                        .await
                    {
                        Ok(()) => break,
                        Err(e) if attempt == PUBLISH_ATTEMPTS => {
                            tracing::warn!(topic = event.topic(), %e, "event dropped: containerd did not take it");
                        }
                        Err(_) => {
                            tokio::time::sleep(pause).await;
                            pause *= 2;
                        }
                    }
                }
            }
        });
        Self { queue }
    }
}

impl EventSink for Publisher {
    fn send(&self, event: Event) {
        // Fails only once the publishing task is gone: the shim is ending.
        let _ = self.queue.send(event);
    }
}
