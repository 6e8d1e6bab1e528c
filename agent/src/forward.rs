//! TCP forwarding into the pod: the host's port-forward path. The shim
//! connects to vsock port `FORWARD_VSOCK_PORT`, names a port with
//! `PORT <n>\n`, and gets `OK\n` once this has connected to
//! 127.0.0.1:<n> in the guest (the pod's network namespace), or
//! `ERR <reason>\n`; then the two streams are spliced until either ends.
//! Only the host is served (host_only.rs).

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_vsock::VsockStream;

/// Longest request line accepted: "PORT 65535\n" and some slack.
const MAX_REQUEST: u64 = 32;

pub fn serve() -> std::io::Result<()> {
    let listener = crate::host_only::bind(husk_proto::FORWARD_VSOCK_PORT)?;
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok(stream) => {
                    tokio::spawn(async move {
                        if let Err(e) = forward(stream).await {
                            tracing::debug!("port forward: {e}");
                        }
                    });
                }
                Err(e) => tracing::warn!("port forward accept: {e}"),
            }
        }
    });
    Ok(())
}

/// The port in a `PORT <n>` line.
pub fn parse_request(line: &str) -> Result<u16, String> {
    let port = line
        .trim_end()
        .strip_prefix("PORT ")
        .ok_or_else(|| format!("expected PORT <n>, got {:?}", line.trim_end()))?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("{port:?} is not a port")),
    }
}

async fn forward(stream: VsockStream) -> std::io::Result<()> {
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    (&mut stream).take(MAX_REQUEST).read_line(&mut line).await?;
    let target = match parse_request(&line) {
        Ok(port) => tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    let mut target = match target {
        Ok(t) => t,
        Err(e) => {
            stream
                .get_mut()
                .write_all(format!("ERR {e}\n").as_bytes())
                .await?;
            return Ok(());
        }
    };
    stream.get_mut().write_all(b"OK\n").await?;
    tokio::io::copy_bidirectional(&mut stream, &mut target).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_name_one_port() {
        assert_eq!(parse_request("PORT 8080\n"), Ok(8080));
        for bad in ["PORT 0\n", "PORT 70000\n", "GET / HTTP/1.1\n", "PORT x\n"] {
            assert!(parse_request(bad).is_err(), "{bad:?}");
        }
    }
}
