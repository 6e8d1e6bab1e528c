//! A client for port-forward through containerd's CRI streaming server,
//! as kubectl port-forward speaks it: a WebSocket with the
//! `v4.channel.k8s.io` subprotocol, `?port=N` in the URL, and binary frames
//! whose first byte is the channel (0 data, 1 error for the first port).
//! Each channel opens with one frame carrying the port (2 bytes, little
//! endian), which is skipped.

use std::time::{Duration, Instant};
use tungstenite::client::IntoClientRequest;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::Message;

type Socket = tungstenite::WebSocket<MaybeTlsStream<std::net::TcpStream>>;

/// Opens a streaming URL (http://...) as a `v4.channel.k8s.io` WebSocket
/// whose reads give up after 5 s, so a silent stream cannot hang a test.
fn connect(url: &str) -> Result<Socket, String> {
    let ws_url = url.replacen("http://", "ws://", 1);
    let mut request = ws_url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("{ws_url}: {e}"))?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "v4.channel.k8s.io".parse().expect("a header value"),
    );
    let (ws, _) = tungstenite::connect(request).map_err(|e| format!("connecting {ws_url}: {e}"))?;
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    }
    Ok(ws)
}

/// A read that timed out (the socket has a read timeout) or was
/// interrupted by a signal (a child's SIGCHLD): try again.
fn retryable(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
    )
}

/// Sends `data` to `port` through the PortForward `url` and returns what
/// comes back until `expect_len` bytes arrived (or the stream ends).
pub fn port_forward_exchange(
    url: &str,
    port: u16,
    data: &[u8],
    expect_len: usize,
) -> Result<Vec<u8>, String> {
    let mut ws = connect(&format!("{url}?port={port}"))?;
    let mut frame = vec![0u8];
    frame.extend_from_slice(data);
    ws.send(Message::Binary(frame))
        .map_err(|e| format!("sending: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen_port = [false; 2];
    let mut received = Vec::new();
    while received.len() < expect_len && Instant::now() < deadline {
        let msg = match ws.read() {
            Ok(m) => m,
            Err(tungstenite::Error::Io(e)) if retryable(&e) => continue,
            Err(e) => return Err(format!("reading: {e} (after {received:?})")),
        };
        let Message::Binary(bytes) = msg else {
            continue;
        };
        let Some((&channel, payload)) = bytes.split_first() else {
            continue;
        };
        let channel = channel as usize;
        if channel > 1 {
            continue;
        }
        if !seen_port[channel] {
            seen_port[channel] = true;
            continue;
        }
        if channel == 1 && !payload.is_empty() {
            return Err(format!(
                "port-forward error: {}",
                String::from_utf8_lossy(payload)
            ));
        }
        received.extend_from_slice(payload);
    }
    let _ = ws.close(None);
    Ok(received)
}

/// What an exec or attach stream carried: stdout, stderr, and the final
/// status frame (JSON; empty if the stream ended without one).
#[derive(Debug, Default)]
pub struct StreamOutput {
    pub stdout: String,
    pub stderr: String,
    pub status: String,
}

/// Reads an exec or attach stream (`v4.channel.k8s.io`: channel 1 stdout,
/// 2 stderr, 3 the status) until it closes, or until `until` returns true
/// on what has arrived.
pub fn read_stream(
    url: &str,
    until: impl Fn(&StreamOutput) -> bool,
) -> Result<StreamOutput, String> {
    read_until(connect(url)?, until)
}

/// Writes `input` to an attach or exec stream's stdin (channel 0), then
/// reads what comes back as [`read_stream`] does.
pub fn write_stdin(
    url: &str,
    input: &[u8],
    until: impl Fn(&StreamOutput) -> bool,
) -> Result<StreamOutput, String> {
    let mut ws = connect(url)?;
    let mut frame = vec![0u8];
    frame.extend_from_slice(input);
    ws.send(Message::Binary(frame))
        .map_err(|e| format!("sending: {e}"))?;
    read_until(ws, until)
}

/// What arrives on `ws` until it closes, `until` holds, or 60 s pass.
fn read_until(
    mut ws: Socket,
    until: impl Fn(&StreamOutput) -> bool,
) -> Result<StreamOutput, String> {
    let mut out = StreamOutput::default();
    read_into(&mut ws, &mut out, until, Duration::from_secs(60))?;
    let _ = ws.close(None);
    Ok(out)
}

/// Adds what arrives on `ws` to `out` until the stream closes (true),
/// `until` holds or `timeout` passes (false).
fn read_into(
    ws: &mut Socket,
    out: &mut StreamOutput,
    until: impl Fn(&StreamOutput) -> bool,
    timeout: Duration,
) -> Result<bool, String> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline && !until(out) {
        let msg = match ws.read() {
            Ok(m) => m,
            Err(tungstenite::Error::Io(e)) if retryable(&e) => continue,
            Err(tungstenite::Error::ConnectionClosed) | Err(tungstenite::Error::AlreadyClosed) => {
                return Ok(true)
            }
            Err(e) => return Err(format!("reading: {e} (after {out:?})")),
        };
        let bytes = match msg {
            Message::Binary(b) => b,
            Message::Close(_) => return Ok(true),
            _ => continue,
        };
        let Some((&channel, payload)) = bytes.split_first() else {
            continue;
        };
        let text = String::from_utf8_lossy(payload);
        match channel {
            1 => out.stdout.push_str(&text),
            2 => out.stderr.push_str(&text),
            3 => out.status.push_str(&text),
            _ => {}
        }
    }
    Ok(false)
}

/// An interactive exec or attach stream (`kubectl exec -it`): input and
/// terminal sizes sent, output read as it comes.
pub struct Interactive {
    ws: Socket,
    pub out: StreamOutput,
    pub closed: bool,
}

impl Interactive {
    pub fn connect(url: &str) -> Result<Self, String> {
        Ok(Self {
            ws: connect(url)?,
            out: StreamOutput::default(),
            closed: false,
        })
    }

    /// Sends `input` on stdin (channel 0).
    pub fn send(&mut self, input: &[u8]) -> Result<(), String> {
        let frame = [&[0u8][..], input].concat();
        self.ws
            .send(Message::Binary(frame))
            .map_err(|e| format!("sending: {e}"))
    }

    /// Sends the terminal's size (channel 4, as kubectl does).
    pub fn resize(&mut self, rows: u16, cols: u16) -> Result<(), String> {
        let size = format!("{{\"Width\":{cols},\"Height\":{rows}}}");
        let frame = [&[4u8][..], size.as_bytes()].concat();
        self.ws
            .send(Message::Binary(frame))
            .map_err(|e| format!("sending: {e}"))
    }

    /// Reads until `until` holds (true), the stream closes or `timeout`
    /// passes (false).
    pub fn read_until(
        &mut self,
        until: impl Fn(&StreamOutput) -> bool,
        timeout: Duration,
    ) -> Result<bool, String> {
        self.closed |= read_into(&mut self.ws, &mut self.out, &until, timeout)?;
        Ok(until(&self.out))
    }
}
