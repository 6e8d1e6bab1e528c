//! A QMP client (QEMU Machine Protocol, QEMU's docs/interop/qmp-spec):
//! one connection for the VM's life, commands matched to their replies by
//! `id`, events read as they come. Only the events husk acts on are kept:
//! GUEST_PANICKED (pvpanic) and whether the guest powered itself down.
//! QMP is QEMU's, and QEMU runs a guest: its lines are bounded and parsed
//! into typed messages (results stay raw text until the caller's type
//! reads them), and every command has a deadline, so a wedged or
//! taken-over QEMU cannot hang the shim or make it hold an untyped tree.
//! A command may carry a descriptor (SCM_RIGHTS on its first byte), as
//! `getfd` and `add-fd` take them (qmp-spec, "file descriptor passing").

use super::json_lines::{from_object, printable, read_message, LineError, Message, Outcome};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::oneshot;

/// Longest QMP message taken (query replies are a few KiB).
const MAX_MESSAGE: usize = 1 << 20;
/// How often connect looks again for QEMU's socket.
const CONNECT_POLL: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP socket {0} did not appear in time")]
    NoSocket(PathBuf),
    #[error("QMP")]
    Line(#[from] LineError),
    #[error("QMP: writing")]
    Write(#[source] std::io::Error),
    #[error("QMP greeting was not {{\"QMP\": ...}}: {0}")]
    Greeting(String),
    #[error("QMP {command}: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("QMP {0}: no answer in time")]
    Timeout(String),
    #[error("QMP {0}: the connection closed before the answer")]
    Closed(String),
    #[error("QMP {command}: an answer husk cannot read: {what}")]
    BadReply { command: String, what: String },
}

/// What QMP events told about the guest so far.
#[derive(Debug)]
pub struct GuestEvents {
    panicked: AtomicBool,
    shutdown_by_guest: AtomicBool,
    /// Becomes true when QEMU closed the connection (it exited): every
    /// event it sent has been recorded by then.
    closed: tokio::sync::watch::Sender<bool>,
    /// Told at each JOB_STATUS_CHANGE (a block job moved on), so a
    /// caller waiting for a job need not poll on a timer alone.
    job_changed: tokio::sync::Notify,
}

impl Default for GuestEvents {
    fn default() -> Self {
        Self {
            panicked: AtomicBool::new(false),
            shutdown_by_guest: AtomicBool::new(false),
            closed: tokio::sync::watch::channel(false).0,
            job_changed: tokio::sync::Notify::new(),
        }
    }
}

impl GuestEvents {
    /// Waits (up to `timeout`) until QEMU's connection has closed, so
    /// that the events of its last moments are in.
    pub async fn wait_closed(&self, timeout: Duration) {
        let mut rx = self.closed.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|c| *c)).await;
    }

    /// Waits until a block job's status changes (one that changed since
    /// the last wait counts) or `timeout` passes, whichever is first.
    pub async fn job_changed(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.job_changed.notified()).await;
    }

    /// GUEST_PANICKED came (the guest kernel reported a panic by pvpanic).
    pub fn panicked(&self) -> bool {
        self.panicked.load(Ordering::SeqCst)
    }

    /// SHUTDOWN came with `guest: true`: the guest powered off (or asked
    /// to reset) by itself.
    pub fn shutdown_by_guest(&self) -> bool {
        self.shutdown_by_guest.load(Ordering::SeqCst)
    }
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Box<RawValue>, (String, String)>>>>>;

pub struct Qmp {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    next_id: AtomicU64,
    events: Arc<GuestEvents>,
    reader: tokio::task::JoinHandle<()>,
}

impl Qmp {
    /// Connects to QEMU's QMP socket at `path` (waiting up to `timeout`
    /// for QEMU to make it), reads the greeting and leaves negotiation
    /// mode.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                    ) =>
                {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(QmpError::NoSocket(path.to_owned()));
                    }
                    tokio::time::sleep(CONNECT_POLL).await;
                }
                Err(source) => {
                    return Err(QmpError::Connect {
                        path: path.to_owned(),
                        source,
                    })
                }
            }
        };
        let (read, write) = stream.into_split();
        let mut read = BufReader::new(read);
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let greeting = tokio::time::timeout(left.max(Duration::from_secs(1)), async {
            read_message(&mut read, MAX_MESSAGE).await
        })
        .await
        .map_err(|_| QmpError::Timeout("greeting".into()))??;
        check_greeting(&greeting)?;
        let pending: Pending = Arc::default();
        let events = Arc::new(GuestEvents::default());
        let reader = tokio::spawn(read_loop(read, pending.clone(), events.clone()));
        let qmp = Qmp {
            writer: tokio::sync::Mutex::new(write),
            pending,
            next_id: AtomicU64::new(1),
            events,
            reader,
        };
        qmp.execute(
            "qmp_capabilities",
            None,
            timeout.max(Duration::from_secs(1)),
        )
        .await?;
        Ok(qmp)
    }

    /// Runs `command` and returns its `return` value as `T` (`IgnoredAny`
    /// where it does not matter).
    pub async fn call<T: DeserializeOwned>(
        &self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<T, QmpError> {
        let raw = self.execute(command, arguments, timeout).await?;
        serde_json::from_str(raw.get()).map_err(|e| QmpError::BadReply {
            command: command.to_owned(),
            what: e.to_string(),
        })
    }

    /// Runs `command` and returns its `return` value, raw.
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Box<RawValue>, QmpError> {
        self.execute_passing(command, arguments, None, timeout)
            .await
    }

    /// Runs `command` with `fd` passed along (QEMU keeps it for the
    /// command: `getfd` names it), and returns its `return` value, raw.
    pub async fn execute_with_fd(
        &self,
        command: &str,
        arguments: Option<Value>,
        fd: BorrowedFd<'_>,
        timeout: Duration,
    ) -> Result<Box<RawValue>, QmpError> {
        self.execute_passing(command, arguments, Some(fd), timeout)
            .await
    }

    async fn execute_passing(
        &self,
        command: &str,
        arguments: Option<Value>,
        fd: Option<BorrowedFd<'_>>,
        timeout: Duration,
    ) -> Result<Box<RawValue>, QmpError> {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        let mut message = json!({"execute": command, "id": id});
        if let Some(a) = arguments {
            message["arguments"] = a;
        }
        let mut line = message.to_string().into_bytes();
        line.push(b'\n');
        let result = tokio::time::timeout(timeout, async {
            let mut writer = self.writer.lock().await;
            let mut sent = 0;
            if let Some(fd) = fd {
                sent = send_with_fd(writer.as_ref(), &line, fd)
                    .await
                    .map_err(QmpError::Write)?;
            }
            writer
                .write_all(&line[sent..])
                .await
                .map_err(QmpError::Write)?;
            rx.await.map_err(|_| QmpError::Closed(command.to_owned()))
        })
        .await;
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        match result {
            Err(_) => Err(QmpError::Timeout(command.to_owned())),
            Ok(Err(e)) => Err(e),
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err((class, desc)))) => Err(QmpError::Command {
                command: command.to_owned(),
                class,
                desc,
            }),
        }
    }

    /// The events so far; the handle outlives the client.
    pub fn events(&self) -> Arc<GuestEvents> {
        self.events.clone()
    }
}

impl Drop for Qmp {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Sends the start of `line` with `fd` attached (SCM_RIGHTS); returns how
/// many bytes went (at least one: the descriptor travels with them).
async fn send_with_fd(
    stream: &UnixStream,
    line: &[u8],
    fd: BorrowedFd<'_>,
) -> std::io::Result<usize> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let fds = [fd.as_raw_fd()];
    loop {
        stream.writable().await?;
        let sent = stream.try_io(tokio::io::Interest::WRITABLE, || {
            let iov = [std::io::IoSlice::new(line)];
            let cmsg = [ControlMessage::ScmRights(&fds)];
            sendmsg::<()>(
                stream.as_raw_fd(),
                &iov,
                &cmsg,
                MsgFlags::MSG_NOSIGNAL,
                None,
            )
            .map_err(std::io::Error::from)
        });
        match sent {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Delivers replies to their waiters and records events, until QEMU closes
/// the socket (it exited) or sends something that is not QMP.
async fn read_loop(
    mut read: BufReader<tokio::net::unix::OwnedReadHalf>,
    pending: Pending,
    events: Arc<GuestEvents>,
) {
    loop {
        let message = match read_message(&mut read, MAX_MESSAGE).await {
            Ok(m) => m,
            Err(LineError::Closed) => break,
            Err(e) => {
                tracing::warn!("QMP: {e}; closing the connection");
                break;
            }
        };
        match Incoming::of(message) {
            Incoming::Event(Some(event)) => events.record(event),
            Incoming::Event(None) | Incoming::Other => {}
            Incoming::Reply { id, result } => {
                let waiter = pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                if let Some(tx) = waiter {
                    let _ = tx.send(result);
                }
            }
        }
    }
    // Waiters left see their sender dropped: "closed before the answer".
    pending.lock().unwrap_or_else(|e| e.into_inner()).clear();
    events.closed.send_replace(true);
}

/// SHUTDOWN's data (qapi/run-state.json): whether the guest asked.
#[derive(Deserialize)]
struct ShutdownData {
    #[serde(default)]
    guest: bool,
}

/// An event husk acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestEvent {
    /// GUEST_PANICKED (pvpanic).
    Panicked,
    /// SHUTDOWN with `guest: true`.
    ShutdownByGuest,
    /// JOB_STATUS_CHANGE: a block job (an import's) moved on.
    JobStatusChanged,
}

/// What the client makes of one message from QEMU after the greeting.
#[derive(Debug)]
pub enum Incoming {
    /// An event, with what it tells of the guest (None: an event husk
    /// does not act on).
    Event(Option<GuestEvent>),
    /// The answer to command `id`: its `return`, or its error's class and
    /// description, printable.
    Reply {
        id: u64,
        result: Result<Box<RawValue>, (String, String)>,
    },
    /// Neither (no `event`, no `id`): dropped.
    Other,
}

impl Incoming {
    /// The reader's decision for `message`, apart from its socket (so a
    /// fuzz target and the tests reach it).
    pub fn of(message: Message) -> Self {
        if message.event.is_some() {
            return Incoming::Event(guest_event(&message));
        }
        match message.id {
            Some(id) => Incoming::Reply {
                id,
                result: reply(message),
            },
            None => Incoming::Other,
        }
    }
}

impl GuestEvents {
    fn record(&self, event: GuestEvent) {
        match event {
            GuestEvent::Panicked => {
                tracing::warn!("QMP: GUEST_PANICKED");
                self.panicked.store(true, Ordering::SeqCst);
            }
            GuestEvent::ShutdownByGuest => self.shutdown_by_guest.store(true, Ordering::SeqCst),
            // notify_one keeps a permit when no one waits yet.
            GuestEvent::JobStatusChanged => self.job_changed.notify_one(),
        }
    }
}

fn guest_event(message: &Message) -> Option<GuestEvent> {
    match message.event.as_deref() {
        Some("GUEST_PANICKED") => Some(GuestEvent::Panicked),
        Some("JOB_STATUS_CHANGE") => Some(GuestEvent::JobStatusChanged),
        Some("SHUTDOWN") => message
            .data
            .as_ref()
            .and_then(|d| from_object::<ShutdownData>(d.get().as_bytes()).ok())
            .is_some_and(|d| d.guest)
            .then_some(GuestEvent::ShutdownByGuest),
        _ => None,
    }
}

/// A reply's `return`, or its error's class and description.
fn reply(message: Message) -> Result<Box<RawValue>, (String, String)> {
    match message.outcome() {
        Outcome::Return(r) => Ok(r),
        Outcome::Error(e) => Err(e.printable()),
        Outcome::Neither => Err(("?".into(), "neither return nor error".into())),
    }
}

/// QMP's first message must be its greeting (`{"QMP": ...}`); what came
/// instead is named in the error, bounded and without control characters
/// (a raw value's text is kept as it came, tabs and newlines included).
pub fn check_greeting(message: &Message) -> Result<(), QmpError> {
    if message.greeting.is_some() {
        return Ok(());
    }
    Err(QmpError::Greeting(printable(&format!("{message:?}"), 300)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;
    use tokio::net::UnixListener;

    /// A fake QEMU: greets, answers each command in order, and sends an
    /// event before the answer to `system_powerdown`.
    async fn fake_qemu(listener: UnixListener) {
        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        write
            .write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
            .await
            .unwrap();
        let mut lines = BufReader::new(read).lines();
        while let Some(line) = lines.next_line().await.unwrap() {
            let cmd: Value = serde_json::from_str(&line).unwrap();
            let id = cmd["id"].clone();
            let answer = match cmd["execute"].as_str().unwrap() {
                "system_powerdown" => {
                    write
                        .write_all(b"{\"event\": \"GUEST_PANICKED\", \"data\": {}}\n")
                        .await
                        .unwrap();
                    json!({"return": {}, "id": id})
                }
                "blockdev-backup" => {
                    write
                        .write_all(b"{\"event\": \"JOB_STATUS_CHANGE\", \"data\": {\"id\": \"j\", \"status\": \"concluded\"}}\n")
                        .await
                        .unwrap();
                    json!({"return": {}, "id": id})
                }
                "nope" => {
                    json!({"error": {"class": "CommandNotFound", "desc": "no nope"}, "id": id})
                }
                "hang" => continue,
                _ => json!({"return": {"ok": true}, "id": id}),
            };
            write
                .write_all(format!("{answer}\n").as_bytes())
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn commands_get_their_answers_and_events_are_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let server = tokio::spawn(fake_qemu(UnixListener::bind(&path).unwrap()));
        let qmp = Qmp::connect(&path, Duration::from_secs(5)).await.unwrap();
        let t = Duration::from_secs(5);
        let stopped: Value = qmp.call("stop", None, t).await.unwrap();
        assert_eq!(stopped["ok"], true);
        assert!(!qmp.events().panicked());
        qmp.execute("system_powerdown", None, t).await.unwrap();
        assert!(qmp.events().panicked());
        let e = qmp.execute("nope", None, t).await.unwrap_err().to_string();
        assert!(
            e.contains("CommandNotFound") && e.contains("no nope"),
            "{e}"
        );
        let e = qmp
            .execute("hang", None, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(e, QmpError::Timeout(_)), "{e}");
        drop(qmp);
        server.abort();
    }

    /// A descriptor sent with a command arrives with its line.
    #[tokio::test]
    async fn a_descriptor_travels_with_its_command() {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            use std::io::Write;
            s.write_all(b"{\"QMP\": {}}\n{\"return\": {}, \"id\": 1}\n")
                .unwrap();
            let mut got = Vec::new();
            let mut fds = Vec::new();
            while !got.ends_with(b"}\n") || got.iter().filter(|&&b| b == b'\n').count() < 2 {
                let mut buf = [0u8; 256];
                let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
                let mut iov = [std::io::IoSliceMut::new(&mut buf)];
                let m = recvmsg::<()>(s.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::empty())
                    .unwrap();
                for c in m.cmsgs().unwrap() {
                    if let ControlMessageOwned::ScmRights(r) = c {
                        fds.extend(r);
                    }
                }
                let n = m.bytes;
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"{\"return\": {}, \"id\": 2}\n").unwrap();
            (String::from_utf8(got).unwrap(), fds)
        });
        let qmp = Qmp::connect(&path, Duration::from_secs(5)).await.unwrap();
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        use std::os::fd::AsFd;
        qmp.execute_with_fd(
            "getfd",
            Some(json!({"fdname": "vnc-1"})),
            a.as_fd(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let (lines, fds) = server.join().unwrap();
        assert!(
            lines.contains("\"getfd\"") && lines.contains("vnc-1"),
            "{lines}"
        );
        assert_eq!(fds.len(), 1, "{lines}");
    }

    #[tokio::test]
    async fn a_block_job_change_wakes_its_waiter_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let server = tokio::spawn(fake_qemu(UnixListener::bind(&path).unwrap()));
        let qmp = Qmp::connect(&path, Duration::from_secs(5)).await.unwrap();
        let t = Duration::from_secs(5);
        // No change yet: the wait lasts its timeout.
        let began = std::time::Instant::now();
        qmp.events().job_changed(Duration::from_millis(100)).await;
        assert!(began.elapsed() >= Duration::from_millis(100));
        // A change that came before the wait began is not missed.
        qmp.execute("blockdev-backup", None, t).await.unwrap();
        let began = std::time::Instant::now();
        qmp.events().job_changed(Duration::from_secs(30)).await;
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "{:?}",
            began.elapsed()
        );
        drop(qmp);
        server.abort();
    }

    #[tokio::test]
    async fn a_missing_socket_is_named_after_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none.sock");
        let e = Qmp::connect(&path, Duration::from_millis(50))
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("none.sock"), "{e}");
    }

    fn message(line: &str) -> Message {
        crate::qemu::json_lines::parse_message(line.as_bytes())
            .unwrap()
            .unwrap()
    }

    #[test]
    fn messages_are_events_replies_or_neither() {
        assert!(matches!(
            Incoming::of(message(r#"{"event": "SHUTDOWN", "data": {"guest": true}}"#)),
            Incoming::Event(Some(GuestEvent::ShutdownByGuest))
        ));
        for data in [r#"{"guest": false}"#, "[true]"] {
            assert!(matches!(
                Incoming::of(message(&format!(
                    r#"{{"event": "SHUTDOWN", "data": {data}}}"#
                ))),
                Incoming::Event(None)
            ));
        }
        assert!(matches!(
            Incoming::of(message(r#"{"event": "GUEST_PANICKED", "id": 3}"#)),
            Incoming::Event(Some(GuestEvent::Panicked))
        ));
        assert!(matches!(
            Incoming::of(message(r#"{"event": "JOB_STATUS_CHANGE", "data": {}}"#)),
            Incoming::Event(Some(GuestEvent::JobStatusChanged))
        ));
        match Incoming::of(message(
            r#"{"id": 4, "error": {"class": "C", "desc": "d\u001b"}}"#,
        )) {
            Incoming::Reply { id: 4, result } => {
                assert_eq!(result.unwrap_err(), ("C".into(), "d?".into()))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Incoming::of(message(r#"{"return": {}}"#)),
            Incoming::Other
        ));
    }

    #[test]
    fn what_came_instead_of_the_greeting_is_named_printably() {
        assert!(check_greeting(&message(r#"{"QMP": {"version": {}}}"#)).is_ok());
        let line = format!("{{\"return\": {{\"a\":\t[{}]}}}}", "1,".repeat(5000) + "1");
        let e = check_greeting(&message(&line)).unwrap_err().to_string();
        assert!(e.len() < 400 && !e.contains('\t'), "{e}");
    }
}
