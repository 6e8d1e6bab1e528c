//! Reading newline-ended JSON messages from a socket with a bound on each:
//! QMP (QEMU's monitor) and the QEMU guest agent both speak one JSON
//! object per line, and the guest agent's lines are the guest's to write.
//! A line longer than the bound is an error, never buffered on.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("reading")]
    Io(#[from] std::io::Error),
    #[error("the peer closed the connection")]
    Closed,
    #[error("a message longer than {0} bytes")]
    TooLong(usize),
    #[error("a message that is not a JSON object")]
    Json(#[from] serde_json::Error),
}

/// The next line (without its newline), at most `max` bytes. Bytes of a
/// line that ends early because of an error are dropped with it.
pub async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> Result<Vec<u8>, LineError> {
    let mut line = Vec::new();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Err(LineError::Closed);
        }
        let (take, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        if line.len() + take > max + 1 {
            return Err(LineError::TooLong(max));
        }
        line.extend_from_slice(&available[..take]);
        reader.consume(take);
        if done {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(line);
        }
    }
}

/// The next non-empty line as a JSON object. The guest agent puts a 0xFF
/// byte before its reply to `guest-sync-delimited` (and may leave partial
/// output of an earlier session before it): everything up to the last
/// 0xFF of the line is skipped.
pub async fn read_object<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> Result<serde_json::Map<String, serde_json::Value>, LineError> {
    loop {
        let line = read_line(reader, max).await?;
        let start = line.iter().rposition(|&b| b == 0xff).map_or(0, |i| i + 1);
        let text = &line[start..];
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        return Ok(serde_json::from_slice(text)?);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_bounded_and_objects_checked() {
        let mut r: &[u8] = b"{\"a\":1}\r\n\n\xff{\"b\":2}\nxxxxxxxxxxxxxxxxxxxx\n";
        assert_eq!(read_object(&mut r, 64).await.unwrap()["a"], 1);
        assert_eq!(read_object(&mut r, 64).await.unwrap()["b"], 2);
        assert!(matches!(
            read_object(&mut r, 8).await,
            Err(LineError::TooLong(8))
        ));
        let mut r: &[u8] = b"[1]\n";
        assert!(matches!(
            read_object(&mut r, 64).await,
            Err(LineError::Json(_))
        ));
        let mut r: &[u8] = b"{\"unterminated\"";
        assert!(matches!(
            read_object(&mut r, 64).await,
            Err(LineError::Closed)
        ));
    }

    #[tokio::test]
    async fn a_line_of_exactly_the_bound_is_taken() {
        let mut r: &[u8] = b"12345678\n123456789\n";
        assert_eq!(read_line(&mut r, 8).await.unwrap(), b"12345678");
        assert!(matches!(
            read_line(&mut r, 8).await,
            Err(LineError::TooLong(8))
        ));
    }
}
