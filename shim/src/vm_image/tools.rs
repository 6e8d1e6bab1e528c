//! `kubectl exec -it` into a husk-vm VM without sshd or a guest agent
//! (docs/vm-pods.md, "Interactive exec"): the host end of the tools
//! channel (husk-proto's `tools`). Every VM gets, where the node has it
//! (`vm.tools_disk`, built by scripts/build-vm-tools.sh) and unless
//! `io.husk.vm.tools: "false"`, a read-only disk holding husk-vm-tools and
//! a virtio-serial port; the seed's vendor-data
//! ([`super::cloud_init::VENDOR_DATA`]) has
//! cloud-init mount the disk and start the helper at every boot. A guest
//! without cloud-init, or whose cloud-init refuses vendor-data, does not
//! start it: its exec -it is refused once the helper has not answered
//! within [`HELLO_TIMEOUT`], naming why.
//!
//! One connection to QEMU's socket per VM (it takes one client), made at
//! the first exec -it and kept; its sessions are multiplexed by id. The
//! guest is hostile: frames are bounded by the format, a stream that
//! breaks it ends the connection (every open session then reads as lost),
//! output waits for its reader (bounded queues, no buffer grows), exit
//! codes are checked, error texts sanitized.

use crate::task::agent::sanitize;
use husk_proto::tools::{decode_u32, encode, Decoder, Frame, Kind, Open, MAX_PAYLOAD};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot, watch};

/// `"false"`: no tools disk, no exec -it.
pub const TOOLS_ANNOTATION: &str = "io.husk.vm.tools";
/// How long the helper has to answer a new connection.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Output chunks held for a reader that is behind.
const OUTPUT_QUEUE: usize = 16;
/// The exit of a session whose connection or VM went away.
const LOST: u32 = crate::task::manager::LOST;

/// The tools disk the container's VM gets: the node's (`vm.tools_disk`)
/// where it exists, unless `io.husk.vm.tools: "false"`; `"true"` insists.
pub fn disk(
    bundle: &crate::bundle::BundleSpec,
    vm: &husk_config::VmConfig,
) -> Result<Option<PathBuf>, super::error::VmError> {
    let there = vm.tools_disk.is_file();
    match bundle.annotation(TOOLS_ANNOTATION) {
        Some("false") => Ok(None),
        None => Ok(there.then(|| vm.tools_disk.clone())),
        Some("true") if there => Ok(Some(vm.tools_disk.clone())),
        Some("true") => Err(super::error::VmError::Invalid(format!(
            "{TOOLS_ANNOTATION}: \"true\", and vm.tools_disk ({}) is not there \
             (scripts/install.sh builds it)",
            vm.tools_disk.display()
        ))),
        Some(other) => Err(super::error::VmError::Invalid(format!(
            "{TOOLS_ANNOTATION}: {other:?} is neither \"true\" nor \"false\""
        ))),
    }
}

/// Why a session could not start.
#[derive(Debug, thiserror::Error)]
pub enum ToolsError {
    #[error(
        "the VM's husk-vm-tools did not answer within {0:?}: the guest has not started it (it \
         is still booting, or its cloud-init does not run the seed's vendor-data, or it has \
         no cloud-init)"
    )]
    NoHelper(Duration),
    #[error("the tools channel: {0}")]
    Channel(String),
    #[error("in the guest: {0}")]
    Guest(String),
}

/// What a session's reader task delivers.
struct SessionTx {
    started: Option<oneshot::Sender<Result<u32, String>>>,
    out: [Option<mpsc::Sender<Vec<u8>>>; 2],
    exit: watch::Sender<Option<u32>>,
}

/// One connection to the helper.
struct Conn {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    sessions: Mutex<HashMap<u32, SessionTx>>,
    /// False once the connection broke.
    alive: watch::Receiver<bool>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Conn {
    async fn send(&self, kind: Kind, session: u32, payload: &[u8]) -> Result<(), ToolsError> {
        let mut w = self.writer.lock().await;
        for chunk in payload.chunks(MAX_PAYLOAD) {
            w.write_all(&encode(kind, session, chunk))
                .await
                .map_err(|e| ToolsError::Channel(e.to_string()))?;
        }
        if payload.is_empty() {
            w.write_all(&encode(kind, session, &[]))
                .await
                .map_err(|e| ToolsError::Channel(e.to_string()))?;
        }
        Ok(())
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<u32, SessionTx>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A VM's tools channel.
pub struct ToolsChannel {
    socket: PathBuf,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    next: AtomicU32,
}

/// A running session: its input, window and signals.
pub struct ToolsSession {
    id: u32,
    conn: Arc<Conn>,
}

/// A started session and what it gives.
pub struct Started {
    pub session: ToolsSession,
    pub pid: u32,
    /// [stdout, stderr].
    pub outputs: [mpsc::Receiver<Vec<u8>>; 2],
    pub exit: watch::Receiver<Option<u32>>,
}

impl ToolsChannel {
    pub fn new(socket: PathBuf) -> Self {
        Self {
            socket,
            conn: tokio::sync::Mutex::new(None),
            next: AtomicU32::new(1),
        }
    }

    /// The connection, made (and greeted) where there is none or it broke.
    async fn connected(&self) -> Result<Arc<Conn>, ToolsError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| *c.alive.borrow()) {
            return Ok(c.clone());
        }
        *slot = None;
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| ToolsError::Channel(format!("{}: {e}", self.socket.display())))?;
        let (read, write) = stream.into_split();
        let nonce: [u8; 8] = rand_nonce();
        let (hello_tx, hello_rx) = oneshot::channel();
        let (alive_tx, alive) = watch::channel(true);
        let conn = Arc::new_cyclic(|weak: &std::sync::Weak<Conn>| Conn {
            writer: tokio::sync::Mutex::new(write),
            sessions: Mutex::default(),
            alive,
            reader: tokio::spawn(read_frames(read, weak.clone(), nonce, hello_tx, alive_tx)),
        });
        conn.send(Kind::Hello, 0, &nonce).await?;
        match tokio::time::timeout(HELLO_TIMEOUT, hello_rx).await {
            Ok(Ok(())) => {}
            _ => return Err(ToolsError::NoHelper(HELLO_TIMEOUT)),
        }
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Starts `open` in the guest.
    pub async fn open(&self, open: &Open, timeout: Duration) -> Result<Started, ToolsError> {
        let payload = open
            .encode()
            .map_err(|e| ToolsError::Channel(e.to_string()))?;
        let conn = self.connected().await?;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (started_tx, started_rx) = oneshot::channel();
        let (out_tx, out_rx) = mpsc::channel(OUTPUT_QUEUE);
        let (err_tx, err_rx) = mpsc::channel(OUTPUT_QUEUE);
        let (exit_tx, exit) = watch::channel(None);
        conn.sessions().insert(
            id,
            SessionTx {
                started: Some(started_tx),
                out: [Some(out_tx), Some(err_tx)],
                exit: exit_tx,
            },
        );
        let session = ToolsSession {
            id,
            conn: conn.clone(),
        };
        let result = async {
            conn.send(Kind::Open, id, &payload).await?;
            match tokio::time::timeout(timeout, started_rx).await {
                Ok(Ok(Ok(pid))) => Ok(pid),
                Ok(Ok(Err(why))) => Err(ToolsError::Guest(why)),
                Ok(Err(_)) => Err(ToolsError::Channel("the connection broke".into())),
                Err(_) => Err(ToolsError::Channel(format!(
                    "the guest did not start the command within {timeout:?}"
                ))),
            }
        }
        .await;
        match result {
            Ok(pid) => Ok(Started {
                session,
                pid,
                outputs: [out_rx, err_rx],
                exit,
            }),
            Err(e) => {
                conn.sessions().remove(&id);
                Err(e)
            }
        }
    }
}

impl ToolsSession {
    /// Passes `input` until it ends, then ends the command's input.
    pub async fn pump(&self, mut input: crate::task::agent::InputStream) {
        while let Some(data) = input.recv().await {
            if data.is_empty() {
                continue;
            }
            if self.conn.send(Kind::Stdin, self.id, &data).await.is_err() {
                return;
            }
        }
        let _ = self.conn.send(Kind::Stdin, self.id, &[]).await;
    }

    pub async fn resize(&self, rows: u16, cols: u16) -> Result<(), ToolsError> {
        let size = husk_proto::tools::encode_size(rows, cols);
        self.conn.send(Kind::Resize, self.id, &size).await
    }

    pub async fn signal(&self, signal: u32) -> Result<(), ToolsError> {
        self.conn
            .send(Kind::Signal, self.id, &signal.to_be_bytes())
            .await
    }
}

/// A nonce for a connection's hello: not a secret, only told apart from
/// an earlier connection's.
fn rand_nonce() -> [u8; 8] {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    (t ^ u64::from(std::process::id()).rotate_left(32)).to_be_bytes()
}

/// Reads the helper's frames until the connection ends or breaks the
/// format; then every open session reads as lost.
async fn read_frames(
    mut read: tokio::net::unix::OwnedReadHalf,
    conn: std::sync::Weak<Conn>,
    nonce: [u8; 8],
    hello: oneshot::Sender<()>,
    alive: watch::Sender<bool>,
) {
    let mut hello = Some(hello);
    let mut decoder = Decoder::default();
    let mut buf = vec![0u8; 64 * 1024];
    'read: while let Ok(n @ 1..) = read.read(&mut buf).await {
        decoder.push(&buf[..n]);
        loop {
            let frame = match decoder.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!("the VM's tools channel: {e}; closed");
                    break 'read;
                }
            };
            if frame.kind == Kind::Hello {
                if frame.payload == nonce {
                    if let Some(h) = hello.take() {
                        let _ = h.send(());
                    }
                }
                continue;
            }
            if hello.is_some() {
                // What an earlier connection's sessions left behind.
                continue;
            }
            let Some(conn) = conn.upgrade() else {
                return;
            };
            deliver(&conn, frame).await;
        }
    }
    alive.send_replace(false);
    if let Some(conn) = conn.upgrade() {
        for (_, s) in conn.sessions().drain() {
            s.exit.send_replace(Some(LOST));
        }
    }
}

/// Hands one frame of the guest's to its session.
async fn deliver(conn: &Conn, frame: Frame) {
    let id = frame.session;
    match frame.kind {
        Kind::Started => {
            let pid = decode_u32(&frame).ok().filter(|p| *p > 0);
            let mut all = conn.sessions();
            if let (Some(s), Some(pid)) = (all.get_mut(&id), pid) {
                if let Some(tx) = s.started.take() {
                    let _ = tx.send(Ok(pid));
                }
            }
        }
        Kind::Error => {
            let text = String::from_utf8_lossy(&frame.payload);
            if let Some(mut s) = conn.sessions().remove(&id) {
                if let Some(tx) = s.started.take() {
                    let _ = tx.send(Err(sanitize(&text)));
                }
                s.exit.send_replace(Some(LOST));
            }
        }
        Kind::Stdout | Kind::Stderr => {
            let which = usize::from(frame.kind == Kind::Stderr);
            let tx = conn.sessions().get(&id).and_then(|s| s.out[which].clone());
            if let Some(tx) = tx {
                // A reader that is gone: the output is dropped.
                let _ = tx.send(frame.payload).await;
            }
        }
        Kind::Exit => {
            let code = decode_u32(&frame).ok().filter(|c| *c <= 255);
            if let Some(s) = conn.sessions().remove(&id) {
                s.exit.send_replace(Some(code.unwrap_or(LOST)));
            }
        }
        // What only the host sends.
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake helper on the other end of a socket: answers hello, starts
    /// "sessions" that echo their input, and can be told to misbehave.
    async fn fake_guest(listener: tokio::net::UnixListener, garbage_after_start: bool) {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut d = Decoder::default();
        let mut buf = vec![0u8; 4096];
        loop {
            let n = s.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            d.push(&buf[..n]);
            while let Ok(Some(f)) = d.next_frame() {
                let reply = |k: Kind, p: &[u8]| encode(k, f.session, p);
                let out = match f.kind {
                    Kind::Hello => reply(Kind::Hello, &f.payload),
                    Kind::Open if Open::decode(&f.payload).unwrap().args[0] == "missing" => {
                        reply(Kind::Error, b"missing: No such file\x1b[2J")
                    }
                    Kind::Open if garbage_after_start => [
                        reply(Kind::Started, &42u32.to_be_bytes()),
                        b"garbage!!!!!".to_vec(),
                    ]
                    .concat(),
                    Kind::Open => reply(Kind::Started, &42u32.to_be_bytes()),
                    Kind::Stdin if f.payload.is_empty() => reply(Kind::Exit, &3u32.to_be_bytes()),
                    Kind::Stdin => reply(Kind::Stdout, &f.payload),
                    _ => continue,
                };
                s.write_all(&out).await.unwrap();
            }
        }
    }

    fn open(cmd: &str) -> Open {
        Open {
            tty: Some((24, 80)),
            cwd: "/".into(),
            args: vec![cmd.into()],
            env: vec![],
        }
    }

    #[tokio::test]
    async fn a_session_passes_input_output_and_its_exit() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("tools.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        tokio::spawn(fake_guest(listener, false));
        let ch = ToolsChannel::new(socket);
        let e = ch
            .open(&open("missing"), HELLO_TIMEOUT)
            .await
            .err()
            .unwrap();
        assert!(e.to_string().contains("missing: No such file"), "{e}");
        assert!(!e.to_string().contains('\x1b'), "{e:?}");
        let mut s = ch.open(&open("sh"), HELLO_TIMEOUT).await.unwrap();
        assert_eq!(s.pid, 42);
        let (tx, rx) = mpsc::channel(4);
        tx.send(b"echo".to_vec()).await.unwrap();
        drop(tx);
        s.session.pump(rx).await;
        assert_eq!(s.outputs[0].recv().await.unwrap(), b"echo");
        let code = s.exit.wait_for(Option::is_some).await.unwrap().unwrap();
        assert_eq!(code, 3);
    }

    #[tokio::test]
    async fn a_guest_breaking_the_format_loses_its_sessions_and_no_helper_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("tools.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        tokio::spawn(fake_guest(listener, true));
        let ch = ToolsChannel::new(socket.clone());
        let mut s = ch.open(&open("sh"), HELLO_TIMEOUT).await.unwrap();
        let code = s.exit.wait_for(Option::is_some).await.unwrap().unwrap();
        assert_eq!(code, LOST);
        // A socket nobody answers on: the helper is not there.
        std::fs::remove_file(&socket).unwrap();
        let _silent = tokio::net::UnixListener::bind(&socket).unwrap();
        let t = std::time::Instant::now();
        let e = ch.open(&open("sh"), HELLO_TIMEOUT).await.err().unwrap();
        assert!(e.to_string().contains("did not answer"), "{e}");
        assert!(t.elapsed() >= HELLO_TIMEOUT);
    }
}
