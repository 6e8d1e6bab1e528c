//! husk-hypervisor's one error type: what can go wrong bringing a VM up
//! or down, each with the cause it came from.

use std::path::PathBuf;

/// Everything that can go wrong bringing a VM up or down.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] husk_config::ConfigError),
    /// The launch is outside what husk-vmm takes (its limits, checked
    /// before it is spawned).
    #[error("husk-vmm launch: {0}")]
    HuskVmm(#[from] husk_vmm_config::ConfigError),
    #[error("network device MAC {mac:?}: {source}")]
    Mac {
        mac: String,
        #[source]
        source: husk_vmm_config::MacError,
    },
    #[error("invalid VM spec: {field}: {message}")]
    InvalidSpec {
        field: &'static str,
        message: String,
    },
    #[error("{key}: {path}: {problem}")]
    Artifact {
        key: &'static str,
        path: PathBuf,
        problem: &'static str,
    },
    #[error("{key}: {path}: {source}")]
    ArtifactIo {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    /// Joining the pod's cgroup happens between fork and exec, so its
    /// failure and exec's are one error.
    #[error("cannot start {program} in the pod cgroup ({}): {source}", .cgroups.iter().map(|c| c.display().to_string()).collect::<Vec<_>>().join(", "))]
    SpawnInCgroup {
        program: PathBuf,
        cgroups: Vec<PathBuf>,
        source: std::io::Error,
    },
    #[error("{daemon} exited before its socket {socket} appeared ({status}); its log ends with:\n{log_tail}")]
    DaemonExited {
        daemon: &'static str,
        socket: PathBuf,
        status: String,
        log_tail: String,
    },
    #[error("{daemon} did not create {socket} within {secs} s")]
    DaemonTimeout {
        daemon: &'static str,
        socket: PathBuf,
        secs: u64,
    },
    #[error(
        "the VMM ({vmm}) exited during boot ({status}); console and VMM log end with:\n{log_tail}"
    )]
    VmmExited {
        vmm: &'static str,
        status: String,
        log_tail: String,
    },
    #[error("the agent did not answer within {secs} s (last error: {last_error}); console ends with:\n{log_tail}")]
    AgentTimeout {
        secs: u64,
        last_error: String,
        log_tail: String,
    },
    /// The guest's side of the handshake was not what hybrid vsock says.
    #[error("hybrid vsock {socket}: {reason}")]
    Vsock { socket: PathBuf, reason: String },
    #[error("hybrid vsock {socket}: {what}: {source}")]
    VsockIo {
        socket: PathBuf,
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// tonic's error says only "transport error"; the message carries its
    /// causes too.
    #[error("hybrid vsock {socket}: gRPC connect to port {port}: {}", error_chain(.source))]
    AgentConnect {
        socket: PathBuf,
        port: u32,
        #[source]
        source: tonic::transport::Error,
    },
    /// The confinement of a helper could not be prepared (a path of its
    /// jail); see the helper's log for a step that failed in the child.
    #[error("confining {program}: {source}")]
    Confine {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no unprivileged id left for a VM: all of {first}..{} are taken (confinement.id_count; locks in {lock_file})", .first + .count)]
    NoVmIds {
        first: u32,
        count: u32,
        lock_file: PathBuf,
    },
    /// A VM image's QEMU never answered on its monitor.
    #[error("QEMU did not start: {source}; it said: {said}")]
    QemuDidNotStart {
        #[source]
        source: crate::qemu::qmp::QmpError,
        said: String,
    },
    /// Boxed: a Status is large and would bloat every Result here.
    #[error("agent RPC failed: {0}")]
    Rpc(Box<tonic::Status>),
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        Error::Rpc(Box::new(status))
    }
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// `e` and its causes, "outer: inner: ...".
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
