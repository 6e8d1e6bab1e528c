//! A client of the QEMU guest agent (qemu-guest-agent in the guest, on the
//! virtio-serial port `org.qemu.guest_agent.0`; QEMU's qga/qapi-schema.json):
//! the calls husk-vm needs — `guest-sync-delimited` to find the agent and
//! skip stale replies, `guest-exec` and `guest-exec-status` for exec, and
//! `guest-shutdown` for a stop.
//!
//! Everything that comes back is the guest's: each reply line is bounded
//! ([`MAX_REPLY`]) and parsed into the typed reply of its command (fields
//! husk does not read are skipped, not kept), every call has a deadline,
//! and captured output is base64 that must decode. The agent answers only once it runs (late in
//! the guest's boot); a request sent before waits in the port, so callers
//! sync first, with a short deadline, to tell "no agent yet" apart.

use super::json_lines::{printable, read_message, LineError, Message, Outcome};
use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// Longest reply line taken: `guest-exec-status` carries the captured
/// output in base64, so an exec's output is taken up to about 6 MiB (the
/// agent itself keeps up to 16 MiB per stream; a reply longer than this
/// fails the exec, naming the bound).
pub const MAX_REPLY: usize = 8 << 20;
/// Most vCPUs or memory blocks of a guest's list acted on: more than any
/// VM husk runs has (a guest that lists more is not believed).
const MAX_GUEST_ITEMS: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum GuestAgentError {
    #[error("guest agent socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("guest agent")]
    Line(#[from] LineError),
    #[error("guest agent: writing")]
    Write(#[source] std::io::Error),
    #[error("the guest agent did not answer {0} in time")]
    Timeout(&'static str),
    #[error("guest agent {command}: {class}: {desc}")]
    Command {
        command: &'static str,
        class: String,
        desc: String,
    },
    #[error("guest agent {command}: an answer husk cannot read: {what}")]
    BadReply { command: &'static str, what: String },
}

/// What `guest-exec-status` says of a process.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecStatus {
    pub exited: bool,
    /// The exit code, when it exited normally.
    pub exit_code: Option<i64>,
    /// The signal that ended it, when one did.
    pub signal: Option<i64>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The agent cut the output (its own 16 MiB cap).
    pub truncated: bool,
}

/// One connection to the agent. QEMU's socket chardev takes one client at
/// a time: callers share one `GuestAgent` behind a lock.
pub struct GuestAgent {
    read: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
    /// Ids for guest-sync-delimited, distinct per call.
    next_sync: u64,
}

impl GuestAgent {
    pub async fn connect(path: &Path) -> Result<Self, GuestAgentError> {
        let stream =
            UnixStream::connect(path)
                .await
                .map_err(|source| GuestAgentError::Connect {
                    path: path.to_owned(),
                    source,
                })?;
        let (read, write) = stream.into_split();
        // A different start for every connection, so a reply left in the
        // port by an earlier one never matches.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            & 0x3fff_ffff_ffff;
        Ok(Self {
            read: BufReader::new(read),
            write,
            next_sync: seed,
        })
    }

    /// `guest-sync-delimited` with a fresh id; replies to anything sent
    /// before are read and dropped until ours comes.
    pub async fn sync(&mut self, timeout: Duration) -> Result<(), GuestAgentError> {
        self.next_sync += 1;
        let id = self.next_sync;
        // 0xFF first: the agent drops any partial request it holds.
        let mut line = vec![0xff];
        line.extend(
            json!({"execute": "guest-sync-delimited", "arguments": {"id": id}})
                .to_string()
                .bytes(),
        );
        line.push(b'\n');
        tokio::time::timeout(timeout, async {
            self.write
                .write_all(&line)
                .await
                .map_err(GuestAgentError::Write)?;
            loop {
                let reply = read_message(&mut self.read, MAX_REPLY).await?;
                if is_sync_reply(reply, id) {
                    return Ok(());
                }
            }
        })
        .await
        .map_err(|_| GuestAgentError::Timeout("guest-sync-delimited"))?
    }

    /// One command and its `return` value, as `T`.
    async fn call<T: DeserializeOwned>(
        &mut self,
        command: &'static str,
        arguments: Value,
        timeout: Duration,
    ) -> Result<T, GuestAgentError> {
        let mut line = json!({"execute": command, "arguments": arguments})
            .to_string()
            .into_bytes();
        line.push(b'\n');
        let reply = tokio::time::timeout(timeout, async {
            self.write
                .write_all(&line)
                .await
                .map_err(GuestAgentError::Write)?;
            Ok::<_, GuestAgentError>(read_message(&mut self.read, MAX_REPLY).await?)
        })
        .await
        .map_err(|_| GuestAgentError::Timeout(command))??;
        reply_value(command, reply)
    }

    /// `guest-exec` with output captured; returns the guest pid.
    pub async fn exec(
        &mut self,
        path: &str,
        args: &[String],
        env: &[String],
        input: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<i64, GuestAgentError> {
        let mut arguments = json!({
            "path": path,
            "arg": args,
            "env": env,
            "capture-output": true,
        });
        if let Some(data) = input {
            arguments["input-data"] = base64::engine::general_purpose::STANDARD
                .encode(data)
                .into();
        }
        let r: ExecStarted = self.call("guest-exec", arguments, timeout).await?;
        Ok(r.pid)
    }

    pub async fn exec_status(
        &mut self,
        pid: i64,
        timeout: Duration,
    ) -> Result<ExecStatus, GuestAgentError> {
        let r: ExecStatusReply = self
            .call("guest-exec-status", json!({"pid": pid}), timeout)
            .await?;
        r.decode()
    }

    /// Brings every offline vCPU online (`guest-get-vcpus`,
    /// `guest-set-vcpus`): a hot-plugged CPU stays offline until user
    /// space onlines it. Returns how many are online.
    pub async fn online_vcpus(&mut self, timeout: Duration) -> Result<u32, GuestAgentError> {
        let cpus: Vec<GuestVcpu> = self.call("guest-get-vcpus", json!({}), timeout).await?;
        let offline: Vec<Value> = cpus
            .iter()
            .take(MAX_GUEST_ITEMS)
            .filter(|c| !c.online)
            .map(|c| json!({"logical-id": c.logical_id, "online": true}))
            .collect();
        let online = cpus.iter().filter(|c| c.online).count() as u32;
        if offline.is_empty() {
            return Ok(online);
        }
        let done: u32 = self
            .call("guest-set-vcpus", json!({ "vcpus": offline }), timeout)
            .await?;
        Ok(online + done)
    }

    /// Takes vCPUs offline, the highest first, until `keep` are online;
    /// returns the logical ids taken offline.
    pub async fn offline_vcpus(
        &mut self,
        keep: u32,
        timeout: Duration,
    ) -> Result<Vec<u32>, GuestAgentError> {
        let mut cpus: Vec<GuestVcpu> = self.call("guest-get-vcpus", json!({}), timeout).await?;
        cpus.retain(|c| c.online);
        cpus.sort_by_key(|c| std::cmp::Reverse(c.logical_id));
        let extra = cpus.len().saturating_sub(keep as usize);
        let ids: Vec<u32> = cpus.iter().take(extra).map(|c| c.logical_id).collect();
        if ids.is_empty() {
            return Ok(ids);
        }
        let changes: Vec<Value> = ids
            .iter()
            .map(|id| json!({"logical-id": id, "online": false}))
            .collect();
        let done: u32 = self
            .call("guest-set-vcpus", json!({ "vcpus": changes }), timeout)
            .await?;
        if done as usize != ids.len() {
            return Err(GuestAgentError::Command {
                command: "guest-set-vcpus",
                class: "Refused".into(),
                desc: format!(
                    "took {done} of {} vCPUs offline (the guest keeps the rest busy)",
                    ids.len()
                ),
            });
        }
        Ok(ids)
    }

    /// Brings the guest's offline memory blocks online as movable memory
    /// (`online_movable` in the block's sysfs `state`, written through
    /// `guest-file-*`), so that a later shrink can give them back; where
    /// the agent does not allow files, `guest-set-memory-blocks` (the
    /// kernel's zone). Returns how many blocks were brought online.
    pub async fn online_memory(&mut self, timeout: Duration) -> Result<usize, GuestAgentError> {
        let blocks: Vec<MemoryBlock> = self
            .call("guest-get-memory-blocks", json!({}), timeout)
            .await?;
        // The guest's list: at most as many blocks as a VM may be given.
        let offline: Vec<u64> = blocks
            .iter()
            .filter(|b| !b.online)
            .map(|b| b.phys_index)
            .take(MAX_GUEST_ITEMS)
            .collect();
        for &index in &offline {
            let path = format!("/sys/devices/system/memory/memory{index}/state");
            if self
                .write_file(&path, b"online_movable", timeout)
                .await
                .is_err()
            {
                let change = json!([{"phys-index": index, "online": true}]);
                let _: serde::de::IgnoredAny = self
                    .call(
                        "guest-set-memory-blocks",
                        json!({ "mem-blks": change }),
                        timeout,
                    )
                    .await?;
            }
        }
        Ok(offline.len())
    }

    /// Writes `data` to the guest's file `path` (`guest-file-open`, `-write`,
    /// `-close`).
    async fn write_file(
        &mut self,
        path: &str,
        data: &[u8],
        timeout: Duration,
    ) -> Result<(), GuestAgentError> {
        let handle: i64 = self
            .call(
                "guest-file-open",
                json!({"path": path, "mode": "w"}),
                timeout,
            )
            .await?;
        let buf = base64::engine::general_purpose::STANDARD.encode(data);
        let written: Result<serde::de::IgnoredAny, _> = self
            .call(
                "guest-file-write",
                json!({"handle": handle, "buf-b64": buf}),
                timeout,
            )
            .await;
        let closed: Result<serde::de::IgnoredAny, _> = self
            .call("guest-file-close", json!({ "handle": handle }), timeout)
            .await;
        written.and(closed).map(drop)
    }

    /// `guest-shutdown` in mode `powerdown`: the guest's own orderly
    /// power-off (qemu-ga runs `shutdown -P`), which works where the ACPI
    /// button is ignored (no logind or acpid to take it). The agent sends
    /// no reply when it goes ahead (qga/qapi-schema.json, guest-shutdown);
    /// an error reply within `wait` says why it will not.
    pub async fn shutdown(&mut self, wait: Duration) -> Result<(), GuestAgentError> {
        let mut line = json!({"execute": "guest-shutdown", "arguments": {"mode": "powerdown"}})
            .to_string()
            .into_bytes();
        line.push(b'\n');
        self.write
            .write_all(&line)
            .await
            .map_err(GuestAgentError::Write)?;
        match tokio::time::timeout(wait, read_message(&mut self.read, MAX_REPLY)).await {
            // No answer in time, or the port closed as the guest went
            // down: it is shutting down.
            Err(_) | Ok(Err(LineError::Closed)) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
            Ok(Ok(reply)) => reply_value::<Value>("guest-shutdown", reply).map(drop),
        }
    }

    /// [`shutdown`](Self::shutdown) after a fresh sync (up to `sync`): on
    /// a connection made earlier (for an exec) the agent may have gone
    /// since, and a request to no one would read as going ahead.
    pub async fn synced_shutdown(
        &mut self,
        sync: Duration,
        wait: Duration,
    ) -> Result<(), GuestAgentError> {
        self.sync(sync).await?;
        self.shutdown(wait).await
    }
}

/// One entry of `guest-get-vcpus`.
#[derive(Debug, Deserialize)]
struct GuestVcpu {
    #[serde(rename = "logical-id")]
    logical_id: u32,
    online: bool,
}

/// One entry of `guest-get-memory-blocks`.
#[derive(Debug, Deserialize)]
struct MemoryBlock {
    #[serde(rename = "phys-index")]
    phys_index: u64,
    online: bool,
}

/// Whether `reply` is the answer to `guest-sync-delimited` `id` (an
/// integer `return` equal to it); anything else is an older reply.
pub fn is_sync_reply(reply: Message, id: u64) -> bool {
    match reply.outcome() {
        Outcome::Return(r) => serde_json::from_str::<u64>(r.get()).ok() == Some(id),
        _ => false,
    }
}

/// A reply's `return` as `T`, or its error.
pub fn reply_value<T: DeserializeOwned>(
    command: &'static str,
    reply: Message,
) -> Result<T, GuestAgentError> {
    let bad = |what: String| GuestAgentError::BadReply { command, what };
    match reply.outcome() {
        // serde's message quotes the value it refused: the guest's, of
        // any length.
        Outcome::Return(r) => {
            serde_json::from_str(r.get()).map_err(|e| bad(printable(&e.to_string(), 200)))
        }
        Outcome::Error(e) => {
            let (class, desc) = e.printable();
            Err(GuestAgentError::Command {
                command,
                class,
                desc,
            })
        }
        Outcome::Neither => Err(bad("neither return nor error".into())),
    }
}

/// `guest-exec`'s return.
#[derive(Debug, Deserialize)]
struct ExecStarted {
    pid: i64,
}

/// `guest-exec-status`'s return (qga/qapi-schema.json, GuestExecStatus).
#[derive(Debug, Deserialize)]
pub struct ExecStatusReply {
    exited: bool,
    exitcode: Option<i64>,
    signal: Option<i64>,
    #[serde(rename = "out-data")]
    out_data: Option<String>,
    #[serde(rename = "err-data")]
    err_data: Option<String>,
    #[serde(rename = "out-truncated", default)]
    out_truncated: bool,
    #[serde(rename = "err-truncated", default)]
    err_truncated: bool,
}

impl ExecStatusReply {
    /// The status with its output decoded (base64 that must decode).
    pub fn decode(self) -> Result<ExecStatus, GuestAgentError> {
        let data = |k: &str, v: Option<String>| -> Result<Vec<u8>, GuestAgentError> {
            v.map_or(Ok(Vec::new()), |text| {
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(|e| GuestAgentError::BadReply {
                        command: "guest-exec-status",
                        what: format!("`{k}` is not base64: {}", printable(&e.to_string(), 200)),
                    })
            })
        };
        Ok(ExecStatus {
            exited: self.exited,
            exit_code: self.exitcode,
            signal: self.signal,
            stdout: data("out-data", self.out_data)?,
            stderr: data("err-data", self.err_data)?,
            truncated: self.out_truncated || self.err_truncated,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;
    use tokio::net::UnixListener;

    /// A fake guest agent: a stale reply first, then answers in order; an
    /// exec of "/bin/slow" stays running once.
    async fn fake_agent(listener: UnixListener) {
        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        write.write_all(b"{\"return\": 12345}\n").await.unwrap();
        let mut lines = BufReader::new(read).split(b'\n');
        let mut polls = 0;
        while let Some(line) = lines.next_segment().await.unwrap() {
            let start = line.iter().rposition(|&b| b == 0xff).map_or(0, |i| i + 1);
            let cmd: Value = serde_json::from_slice(&line[start..]).unwrap();
            let answer = match cmd["execute"].as_str().unwrap() {
                "guest-sync-delimited" => {
                    format!("\u{ff}{}", json!({"return": cmd["arguments"]["id"]}))
                }
                "guest-exec" if cmd["arguments"]["path"] == "/nonexistent" => json!({"error": {"class": "GenericError", "desc": "Guest agent command failed, error was 'Failed to execute child process \u{1b}[31m'"}}).to_string(),
                "guest-exec" => json!({"return": {"pid": 42}}).to_string(),
                // Goes ahead: no reply (the schema's success).
                "guest-shutdown" => continue,
                "guest-exec-status" => {
                    polls += 1;
                    if polls == 1 {
                        json!({"return": {"exited": false}}).to_string()
                    } else {
                        json!({"return": {"exited": true, "exitcode": 7,
                            "out-data": "dG8tc3Rkb3V0Cg==", "err-data": "dG8tc3RkZXJyCg=="}})
                        .to_string()
                    }
                }
                _ => unreachable!(),
            };
            let mut bytes = answer.into_bytes();
            bytes.push(b'\n');
            // The sync reply starts with 0xFF as a raw byte, not as UTF-8.
            if bytes.starts_with("\u{ff}".as_bytes()) {
                bytes.splice(..2, [0xff]);
            }
            write.write_all(&bytes).await.unwrap();
        }
    }

    #[tokio::test]
    async fn sync_skips_stale_replies_and_exec_reports_output_and_code() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qga.sock");
        let server = tokio::spawn(fake_agent(UnixListener::bind(&path).unwrap()));
        let t = Duration::from_secs(5);
        let mut ga = GuestAgent::connect(&path).await.unwrap();
        ga.sync(t).await.unwrap();
        let pid = ga
            .exec("/bin/sh", &["-c".into(), "exit 7".into()], &[], None, t)
            .await
            .unwrap();
        assert_eq!(pid, 42);
        assert!(!ga.exec_status(pid, t).await.unwrap().exited);
        let done = ga.exec_status(pid, t).await.unwrap();
        assert_eq!(
            (
                done.exited,
                done.exit_code,
                done.stdout.as_slice(),
                done.stderr.as_slice()
            ),
            (true, Some(7), &b"to-stdout\n"[..], &b"to-stderr\n"[..])
        );
        let e = ga
            .exec("/nonexistent", &[], &[], None, t)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("Failed to execute child process ?[31m"), "{e}");
        server.abort();
    }

    /// A `guest-exec-status` reply line as the agent would send it.
    fn exec_status(reply: Value) -> Result<ExecStatus, GuestAgentError> {
        let line = json!({ "return": reply }).to_string();
        let message = crate::qemu::json_lines::parse_message(line.as_bytes())
            .unwrap()
            .unwrap();
        reply_value::<ExecStatusReply>("guest-exec-status", message)?.decode()
    }

    #[test]
    fn exec_status_fields_are_checked() {
        let e = exec_status(json!({"exited": "yes"})).unwrap_err();
        assert!(
            e.to_string().contains("exited") || e.to_string().contains("boolean"),
            "{e}"
        );
        let e = exec_status(json!({"exited": true, "out-data": "%%%"})).unwrap_err();
        assert!(e.to_string().contains("base64"), "{e}");
        let s =
            exec_status(json!({"exited": true, "signal": 9, "other": [[1], {"x": 2}]})).unwrap();
        assert_eq!((s.exit_code, s.signal), (None, Some(9)));
        let e = exec_status(json!({"exitcode": 1})).unwrap_err();
        assert!(e.to_string().contains("exited"), "{e}");
        // The value refused is quoted, but not at any length.
        let e = exec_status(json!({"exited": "\u{1b}".repeat(10_000)})).unwrap_err();
        assert!(e.to_string().len() < 400, "{} bytes", e.to_string().len());
    }

    #[test]
    fn only_an_integer_return_equal_to_the_id_ends_a_sync() {
        let msg = |t: &str| {
            crate::qemu::json_lines::parse_message(t.as_bytes())
                .unwrap()
                .unwrap()
        };
        assert!(is_sync_reply(msg("{\"return\": 5}"), 5));
        assert!(!is_sync_reply(msg("{\"return\": 6}"), 5));
        assert!(!is_sync_reply(msg("{\"return\": {\"pid\": 5}}"), 5));
        assert!(!is_sync_reply(
            msg("{\"error\": {\"class\": \"x\", \"desc\": \"y\"}}"),
            5
        ));
    }

    /// An agent that takes one `guest-shutdown` and then does `then`:
    /// close the port (the guest went down) or answer with an error.
    async fn shutting_agent(listener: UnixListener, refuse: bool) -> Value {
        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).split(b'\n');
        let line = lines.next_segment().await.unwrap().unwrap();
        let cmd: Value = serde_json::from_slice(&line).unwrap();
        if refuse {
            let e = json!({"error": {"class": "GenericError", "desc": "shutdown not allowed"}});
            write.write_all(format!("{e}\n").as_bytes()).await.unwrap();
        }
        cmd
    }

    #[tokio::test]
    async fn a_shutdown_to_an_agent_gone_silent_is_not_taken_as_going_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qga.sock");
        let listener = UnixListener::bind(&path).unwrap();
        // Accepts and reads, never answers: an agent that stopped.
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut lines = BufReader::new(stream).split(b'\n');
            let mut seen = Vec::new();
            while let Ok(Some(l)) = lines.next_segment().await {
                seen.push(String::from_utf8_lossy(&l).into_owned());
            }
            seen
        });
        let mut ga = GuestAgent::connect(&path).await.unwrap();
        let t = Duration::from_millis(200);
        let e = ga.synced_shutdown(t, t).await.unwrap_err();
        assert!(
            matches!(e, GuestAgentError::Timeout("guest-sync-delimited")),
            "{e}"
        );
        drop(ga);
        let seen = server.await.unwrap();
        assert!(
            seen.iter().all(|l| !l.contains("guest-shutdown")),
            "asked for a shutdown without a sync: {seen:?}"
        );
        // A live agent: synced, then the shutdown goes ahead.
        let path = dir.path().join("qga-live.sock");
        let server = tokio::spawn(fake_agent(UnixListener::bind(&path).unwrap()));
        let mut ga = GuestAgent::connect(&path).await.unwrap();
        assert!(ga.synced_shutdown(Duration::from_secs(5), t).await.is_ok());
        server.abort();
    }

    #[tokio::test]
    async fn shutdown_asks_for_a_powerdown_and_takes_silence_as_going_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let t = Duration::from_millis(300);
        for refuse in [false, true] {
            let path = dir.path().join(format!("qga-{refuse}.sock"));
            let server = tokio::spawn(shutting_agent(UnixListener::bind(&path).unwrap(), refuse));
            let mut ga = GuestAgent::connect(&path).await.unwrap();
            let result = ga.shutdown(t).await;
            let cmd = server.await.unwrap();
            assert_eq!(cmd["execute"], "guest-shutdown");
            assert_eq!(cmd["arguments"]["mode"], "powerdown");
            match (refuse, result) {
                (false, Ok(())) => {}
                (true, Err(e)) => assert!(e.to_string().contains("not allowed"), "{e}"),
                (refuse, r) => panic!("refuse={refuse}: {r:?}"),
            }
        }
    }
}
