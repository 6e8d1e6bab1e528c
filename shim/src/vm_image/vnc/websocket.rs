//! The VNC console's WebSocket endpoint (`io.husk.vm.vnc-websocket`),
//! what noVNC connects to: the upgrade and the RFC 6455 framing are
//! tokio-tungstenite's, under husk's bounds (the upgrade within
//! [`HANDSHAKE`], tungstenite's own 64 KiB cap on its request; frames and
//! messages at most [`MAX_MESSAGE`]; [`MAX_WEBSOCKETS`] clients at
//! once, the next closed at once). The RFB bytes inside the binary
//! messages go to QEMU over a socket pair whose other end it gets as a
//! VNC client (QEMU's own WebSocket server needs a listener, which QEMU
//! in its own network namespace cannot have). A client that offers the
//! `binary` subprotocol (noVNC's older default) gets it.

use super::handoff::Handoff;
use futures_util::{SinkExt, StreamExt};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// WebSocket clients bridged at once; more are closed at once.
pub const MAX_WEBSOCKETS: usize = 4;
/// How long a client has to finish the upgrade.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// Largest frame and message taken from a client (RFB client messages
/// are small; a clipboard text is the largest).
const MAX_MESSAGE: usize = 1 << 20;
/// What is read from QEMU at once into one message.
const CHUNK: usize = 64 << 10;

/// Bridges WebSocket clients to QEMU until the VM exits.
pub(crate) async fn accept(listener: TcpListener, handoff: Arc<Handoff>) {
    let slots = Arc::new(Semaphore::new(MAX_WEBSOCKETS));
    while let Some((stream, peer)) = handoff.next_client(&listener, "VNC WebSocket").await {
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "VNC WebSocket: {} clients already; closed", MAX_WEBSOCKETS);
            continue;
        };
        let handoff = handoff.clone();
        tokio::spawn(async move {
            let _slot = slot;
            tokio::select! {
                _ = handoff.vm_exited() => {}
                r = bridge(stream, &handoff) => match r {
                    Ok(()) => tracing::info!(%peer, "VNC WebSocket client left"),
                    Err(e) => tracing::info!(%peer, "VNC WebSocket client: {e}"),
                },
            }
        });
    }
}

/// Answers `binary` when the client offers it (noVNC's older versions
/// ask for it and fail without it). The signature is tungstenite's
/// handshake callback's, error type included.
#[allow(clippy::result_large_err)]
fn choose_subprotocol(
    request: &Request,
    mut response: Response,
) -> Result<Response, ErrorResponse> {
    let offers_binary = request
        .headers()
        .get_all("Sec-WebSocket-Protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == "binary");
    if offers_binary {
        response.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            tokio_tungstenite::tungstenite::http::HeaderValue::from_static("binary"),
        );
    }
    Ok(response)
}

/// Frames and messages bounded; a client's unmasked frames refused
/// (RFC 6455 5.1, tungstenite's default kept).
fn config() -> WebSocketConfig {
    WebSocketConfig {
        max_message_size: Some(MAX_MESSAGE),
        max_frame_size: Some(MAX_MESSAGE),
        accept_unmasked_frames: false,
        ..WebSocketConfig::default()
    }
}

/// One client: the upgrade, QEMU's end handed over, then bytes both ways
/// until either side ends.
async fn bridge(stream: TcpStream, handoff: &Handoff) -> Result<(), String> {
    let upgrade =
        tokio_tungstenite::accept_hdr_async_with_config(stream, choose_subprotocol, Some(config()));
    let ws = tokio::time::timeout(HANDSHAKE, upgrade)
        .await
        .map_err(|_| format!("no WebSocket upgrade within {HANDSHAKE:?}"))?
        .map_err(|e| format!("WebSocket upgrade: {e}"))?;
    let (ours, qemus) =
        tokio::net::UnixStream::pair().map_err(|e| format!("a socket pair for QEMU: {e}"))?;
    handoff
        .hand_over(qemus.as_fd())
        .await
        .map_err(|e| format!("handing the client to QEMU: {e}"))?;
    drop(qemus);
    pump(ws, ours).await
}

/// Copies binary messages to QEMU and QEMU's bytes back as binary
/// messages.
async fn pump(
    ws: tokio_tungstenite::WebSocketStream<TcpStream>,
    qemu: tokio::net::UnixStream,
) -> Result<(), String> {
    let (mut to_client, mut from_client) = ws.split();
    let (mut from_qemu, mut to_qemu) = qemu.into_split();
    let upstream = async {
        while let Some(message) = from_client.next().await {
            match message.map_err(|e| format!("from the client: {e}"))? {
                Message::Binary(data) => to_qemu
                    .write_all(&data)
                    .await
                    .map_err(|e| format!("to QEMU: {e}"))?,
                Message::Close(_) => break,
                // tungstenite answers pings itself.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                Message::Text(_) => return Err("a text message (RFB is binary)".into()),
            }
        }
        Ok::<(), String>(())
    };
    let downstream = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = from_qemu
                .read(&mut buf)
                .await
                .map_err(|e| format!("from QEMU: {e}"))?;
            if n == 0 {
                let _ = to_client.send(Message::Close(None)).await;
                return Ok::<(), String>(());
            }
            to_client
                .send(Message::Binary(buf[..n].to_vec()))
                .await
                .map_err(|e| format!("to the client: {e}"))?;
        }
    };
    tokio::select! {
        r = upstream => r,
        r = downstream => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_is_answered_only_when_offered() {
        let request = |protocols: Option<&str>| {
            let mut r = Request::builder().uri("/");
            if let Some(p) = protocols {
                r = r.header("Sec-WebSocket-Protocol", p);
            }
            r.body(()).unwrap()
        };
        let answered = |req: &Request| {
            choose_subprotocol(req, Response::new(()))
                .unwrap()
                .headers()
                .get("Sec-WebSocket-Protocol")
                .map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(
            answered(&request(Some("base64, binary"))).as_deref(),
            Some("binary")
        );
        assert_eq!(answered(&request(Some("base64"))), None);
        assert_eq!(answered(&request(None)), None);
    }

    /// A client upgrades and its binary messages reach the other end of
    /// the pair, and bytes from there come back as binary messages.
    #[tokio::test]
    async fn bytes_cross_both_ways() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (qemu_side, ours) = tokio::net::UnixStream::pair().unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let ws = tokio_tungstenite::accept_hdr_async_with_config(
                s,
                choose_subprotocol,
                Some(config()),
            )
            .await
            .unwrap();
            pump(ws, ours).await
        });
        let client = std::thread::spawn(move || {
            let stream = std::net::TcpStream::connect(addr).unwrap();
            let req =
                tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                    format!("ws://{addr}/"),
                )
                .unwrap();
            let (mut ws, _) = tokio_tungstenite::tungstenite::client(req, stream).unwrap();
            ws.send(Message::Binary(b"RFB 003.008\n".to_vec())).unwrap();
            let back = ws.read().unwrap();
            ws.close(None).unwrap();
            back
        });
        let mut qemu_side = qemu_side;
        let mut got = [0u8; 12];
        qemu_side.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"RFB 003.008\n");
        qemu_side.write_all(b"\x00\x00\x00\x01").await.unwrap();
        let back = tokio::task::spawn_blocking(move || client.join().unwrap())
            .await
            .unwrap();
        assert_eq!(back, Message::Binary(b"\x00\x00\x00\x01".to_vec()));
        server.await.unwrap().unwrap();
    }

    /// Runs `client` against a bridge to a socket pair; returns the
    /// bridge's end and what reached the QEMU side before it ended.
    async fn bridge_against(
        client: impl FnOnce(std::net::TcpStream, String) + Send + 'static,
    ) -> (Result<(), String>, Vec<u8>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mut qemu_side, ours) = tokio::net::UnixStream::pair().unwrap();
        let client = std::thread::spawn(move || {
            client(
                std::net::TcpStream::connect(addr).unwrap(),
                format!("ws://{addr}/"),
            )
        });
        let (s, _) = listener.accept().await.unwrap();
        let ws =
            tokio_tungstenite::accept_hdr_async_with_config(s, choose_subprotocol, Some(config()))
                .await
                .unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(10), pump(ws, ours))
            .await
            .expect("the bridge ends");
        let mut got = Vec::new();
        qemu_side.read_to_end(&mut got).await.unwrap();
        tokio::task::spawn_blocking(move || client.join().unwrap())
            .await
            .unwrap();
        (ended, got)
    }

    fn upgraded(
        stream: std::net::TcpStream,
        url: String,
    ) -> tokio_tungstenite::tungstenite::WebSocket<std::net::TcpStream> {
        let req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
                .unwrap();
        tokio_tungstenite::tungstenite::client(req, stream)
            .unwrap()
            .0
    }

    /// A message over the bound, a text message and an unmasked frame
    /// each end the session; nothing of them reaches QEMU.
    #[tokio::test]
    async fn what_a_client_may_not_send_ends_its_session() {
        let (ended, got) = bridge_against(|s, url| {
            let mut ws = upgraded(s, url);
            let _ = ws.send(Message::Binary(vec![b'x'; MAX_MESSAGE + 1]));
            let _ = ws.read();
        })
        .await;
        let e = ended.unwrap_err();
        assert!(
            e.contains("from the client") && e.contains("too long"),
            "{e}"
        );
        assert!(got.is_empty(), "{} bytes reached QEMU", got.len());

        let (ended, got) = bridge_against(|s, url| {
            let mut ws = upgraded(s, url);
            let _ = ws.send(Message::Text("RFB 003.008\n".into()));
            let _ = ws.read();
        })
        .await;
        assert!(ended.unwrap_err().contains("text message"));
        assert!(got.is_empty());

        let (ended, got) = bridge_against(|s, url| {
            let mut ws = upgraded(s, url);
            // A binary frame of "RFB" without the mask a client must set
            // (RFC 6455 5.1), written under tungstenite.
            use std::io::Write;
            ws.get_mut()
                .write_all(&[0x82, 0x03, b'R', b'F', b'B'])
                .unwrap();
            let _ = ws.read();
        })
        .await;
        let e = ended.unwrap_err();
        assert!(
            e.contains("from the client") && e.contains("unmasked"),
            "{e}"
        );
        assert!(got.is_empty());
    }
}
