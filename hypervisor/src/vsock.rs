//! The host end of hybrid vsock (the Firecracker / vhost-device-vsock
//! convention): connect to the backend's Unix socket, write
//! `CONNECT <port>\n`, read `OK <host port>\n`; from then on the stream is
//! the guest's port. The reply comes through the guest's device and is
//! bounded before it is trusted.

use crate::Error;
use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

/// Longest acceptable handshake reply ("OK 4294967295\n" is 14 bytes).
const MAX_REPLY: usize = 32;

/// Opens a stream to `port` in the guest through the hybrid vsock socket.
pub async fn hybrid_vsock_connect(socket: &Path, port: u32) -> Result<UnixStream, Error> {
    let fail = |reason: String| Error::Vsock {
        socket: socket.to_owned(),
        reason,
    };
    let io = |what: String| {
        move |source| Error::VsockIo {
            socket: socket.to_owned(),
            what,
            source,
        }
    };
    let mut stream = UnixStream::connect(socket)
        .await
        .map_err(io("connect".into()))?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(io("writing CONNECT".into()))?;
    read_handshake_reply(&mut stream)
        .await
        .map_err(|e| match e {
            HandshakeError::Io(source) => Error::VsockIo {
                socket: socket.to_owned(),
                what: format!("no reply to CONNECT {port} (is the guest listening?)"),
                source,
            },
            other => fail(other.to_string()),
        })?;
    Ok(stream)
}

/// Why the backend's reply to CONNECT is not `OK <port>\n`.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("reading the handshake reply: {0}")]
    Io(#[source] std::io::Error),
    #[error("handshake reply too long")]
    TooLong,
    #[error("unexpected handshake reply {0:?}")]
    Unexpected(String),
}

/// Reads the backend's reply to CONNECT from `stream` and returns the
/// port it names. Byte by byte: anything after the newline already
/// belongs to the guest and stays in the stream. The reply comes through
/// the guest's device, so it is bounded ([`MAX_REPLY`] bytes) and checked
/// before it is believed.
pub async fn read_handshake_reply<R: AsyncRead + Unpin>(
    stream: &mut R,
) -> Result<u32, HandshakeError> {
    let mut reply = Vec::with_capacity(MAX_REPLY);
    loop {
        let byte = stream.read_u8().await.map_err(HandshakeError::Io)?;
        if byte == b'\n' {
            break;
        }
        if reply.len() == MAX_REPLY {
            return Err(HandshakeError::TooLong);
        }
        reply.push(byte);
    }
    parse_ok(&reply)
        .ok_or_else(|| HandshakeError::Unexpected(String::from_utf8_lossy(&reply).into_owned()))
}

/// Parses `OK <port>` and returns the port.
fn parse_ok(reply: &[u8]) -> Option<u32> {
    std::str::from_utf8(reply)
        .ok()?
        .strip_prefix("OK ")?
        .parse()
        .ok()
}

/// A gRPC channel to the agent over hybrid vsock. Each (re)connect of the
/// channel does its own handshake. `timeout` bounds connecting only: some
/// RPCs (WaitContainer, ReadOutput) rightly last as long as a container.
pub async fn agent_channel(socket: &Path, port: u32, timeout: Duration) -> Result<Channel, Error> {
    let path: PathBuf = socket.to_owned();
    // The URI is required by tonic but unused: the connector decides where to go.
    let endpoint = Endpoint::from_static("http://husk-agent.vsock").connect_timeout(timeout);
    endpoint
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { hybrid_vsock_connect(&path, port).await.map(TokioIo::new) }
        }))
        .await
        .map_err(|source| Error::AgentConnect {
            socket: socket.to_owned(),
            port,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;
    use tokio::net::UnixListener;

    #[tokio::test]
    async fn the_reply_is_read_up_to_its_newline_and_no_further() {
        let mut input: &[u8] = b"OK 1024\nguest bytes";
        assert_eq!(read_handshake_reply(&mut input).await.unwrap(), 1024);
        assert_eq!(input, b"guest bytes");
        let mut input: &[u8] = b"OK 1024";
        assert!(matches!(
            read_handshake_reply(&mut input).await,
            Err(HandshakeError::Io(_))
        ));
    }

    #[test]
    fn handshake_replies_are_parsed_strictly() {
        assert_eq!(parse_ok(b"OK 1024"), Some(1024));
        assert_eq!(parse_ok(b"OK"), None);
        assert_eq!(parse_ok(b"ok 1024"), None);
        assert_eq!(parse_ok(b"OK -1"), None);
        assert_eq!(parse_ok(b"OK 99999999999"), None);
    }

    /// A stand-in for the vsock backend's Unix socket: checks the request
    /// line, answers with `reply`, then echoes.
    async fn fake_backend(dir: &Path, reply: &'static [u8]) -> PathBuf {
        let path = dir.join("vsock.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut stream = tokio::io::BufReader::new(stream);
            let mut line = String::new();
            stream.read_line(&mut line).await.unwrap();
            assert_eq!(line, "CONNECT 1024\n");
            stream.get_mut().write_all(reply).await.unwrap();
            let mut buf = [0u8; 5];
            if stream.read_exact(&mut buf).await.is_ok() {
                stream.get_mut().write_all(&buf).await.unwrap();
            }
        });
        path
    }

    #[tokio::test]
    async fn handshake_then_stream_carries_data() {
        let dir = tempfile::tempdir().unwrap();
        // Bytes after the newline belong to the stream and must not be eaten.
        let path = fake_backend(dir.path(), b"OK 1024\n").await;
        let mut s = hybrid_vsock_connect(&path, 1024).await.unwrap();
        s.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
    }

    #[tokio::test]
    async fn bad_handshake_reply_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = fake_backend(dir.path(), b"NO\n").await;
        let err = hybrid_vsock_connect(&path, 1024)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("unexpected handshake reply \"NO\""), "{err}");
    }

    #[tokio::test]
    async fn endless_handshake_reply_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = fake_backend(dir.path(), &[b'A'; 100]).await;
        let err = hybrid_vsock_connect(&path, 1024)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("too long"), "{err}");
    }

    #[tokio::test]
    async fn missing_socket_is_an_error_naming_it() {
        let err = hybrid_vsock_connect(Path::new("/nonexistent/v.sock"), 1024)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/v.sock"), "{err}");
    }
}
