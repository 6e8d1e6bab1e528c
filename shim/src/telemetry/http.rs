//! The few bytes of HTTP/1 (RFC 9112) a metrics scrape needs: the server
//! reads one `GET` head and answers with `Connection: close`; the client
//! sends one `GET` and reads the answer to EOF. Both bound what they read
//! and how long they wait, so neither a stuck shim nor a stuck scraper
//! holds the other.

use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// Longest request head read (request line and headers).
const MAX_HEAD: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("HTTP I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("request head longer than {MAX_HEAD} bytes")]
    HeadTooLong,
    #[error("malformed request line {0:?}")]
    BadRequest(String),
    #[error("answer longer than {0} bytes")]
    BodyTooLong(usize),
    #[error("answer is not HTTP 200: {0:?}")]
    Status(String),
}

/// A request: its method and path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
}

/// Reads a request head (request line, headers up to the empty line).
pub async fn read_request<S: AsyncRead + Unpin>(stream: S) -> Result<Request, HttpError> {
    let mut reader = BufReader::new(stream.take(MAX_HEAD as u64 + 1));
    let mut first = String::new();
    let mut total = reader.read_line(&mut first).await?;
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).await?;
        total += n;
        if total > MAX_HEAD {
            return Err(HttpError::HeadTooLong);
        }
        if n == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let mut parts = first.split_whitespace();
    match (parts.next(), parts.next(), parts.next()) {
        (Some(method), Some(path), Some(version)) if version.starts_with("HTTP/1.") => {
            Ok(Request {
                method: method.to_owned(),
                path: path.to_owned(),
            })
        }
        _ => Err(HttpError::BadRequest(
            first.trim_end().chars().take(80).collect(),
        )),
    }
}

/// Writes a whole answer and closes the write side.
pub async fn respond<S: AsyncWrite + Unpin>(
    mut stream: S,
    status: &str,
    content_type: &str,
    body: &str,
) -> Result<(), HttpError> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await?;
    Ok(())
}

/// Serves one connection: reads a request, answers a `GET` of `path` with
/// `body()`, anything else with 404/405; all within `timeout`.
pub async fn serve_one<S, F, Fut>(
    stream: S,
    path: &str,
    timeout: Duration,
    body: F,
) -> Result<(), HttpError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = String>,
{
    let work = async move {
        let (read, write) = tokio::io::split(stream);
        let req = read_request(read).await?;
        if req.method != "GET" {
            return respond(write, "405 Method Not Allowed", "text/plain", "GET only\n").await;
        }
        if req.path != path {
            return respond(write, "404 Not Found", "text/plain", "not found\n").await;
        }
        let text = body().await;
        respond(write, "200 OK", super::text::CONTENT_TYPE, &text).await
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| HttpError::Timeout(timeout))?
}

/// Sends `GET path` and returns the body of a 200 answer, at most
/// `max_body` bytes, all within `timeout`.
pub async fn get<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    path: &str,
    max_body: usize,
    timeout: Duration,
) -> Result<String, HttpError> {
    let work = async move {
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: husk\r\n\r\n").as_bytes())
            .await?;
        let mut raw = Vec::new();
        (&mut stream)
            .take((MAX_HEAD + max_body) as u64 + 1)
            .read_to_end(&mut raw)
            .await?;
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or(HttpError::BodyTooLong(max_body))?;
        let head = String::from_utf8_lossy(&raw[..split]);
        let status = head.lines().next().unwrap_or_default();
        if status.split_whitespace().nth(1) != Some("200") {
            return Err(HttpError::Status(status.chars().take(80).collect()));
        }
        let body = &raw[split + 4..];
        if body.len() > max_body {
            return Err(HttpError::BodyTooLong(max_body));
        }
        Ok(String::from_utf8_lossy(body).into_owned())
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| HttpError::Timeout(timeout))?
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn get_reads_what_serve_one_answers() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let served = tokio::spawn(serve_one(server, "/metrics", T, || async {
            "up 1\n".to_owned()
        }));
        assert_eq!(get(client, "/metrics", 1024, T).await.unwrap(), "up 1\n");
        served.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn other_paths_and_methods_are_refused() {
        let (client, server) = tokio::io::duplex(1 << 16);
        tokio::spawn(serve_one(server, "/metrics", T, || async { String::new() }));
        let e = get(client, "/other", 1024, T).await.unwrap_err();
        assert!(
            matches!(e, HttpError::Status(ref s) if s.contains("404")),
            "{e}"
        );

        let (mut client, server) = tokio::io::duplex(1 << 16);
        tokio::spawn(serve_one(server, "/metrics", T, || async { String::new() }));
        client
            .write_all(b"POST /metrics HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    }

    #[tokio::test]
    async fn an_endless_head_is_cut() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let served = tokio::spawn(serve_one(server, "/metrics", T, || async { String::new() }));
        let junk = format!("GET /metrics HTTP/1.1\r\n{}", "X-A: b\r\n".repeat(2000));
        let _ = client.write_all(junk.as_bytes()).await;
        let e = served.await.unwrap().unwrap_err();
        assert!(matches!(e, HttpError::HeadTooLong), "{e}");
    }

    #[tokio::test]
    async fn a_long_or_silent_answer_is_refused() {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let _ = server.read(&mut buf).await;
            let body = "x".repeat(5000);
            let _ = server
                .write_all(format!("HTTP/1.1 200 OK\r\n\r\n{body}").as_bytes())
                .await;
        });
        let e = get(client, "/metrics", 1000, T).await.unwrap_err();
        assert!(matches!(e, HttpError::BodyTooLong(1000)), "{e}");

        let (client, _server) = tokio::io::duplex(1024);
        let e = get(client, "/metrics", 1000, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(e, HttpError::Timeout(_)), "{e}");
    }
}
