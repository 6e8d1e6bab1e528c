//! Reading newline-ended JSON messages from a socket with a bound on each:
//! QMP (QEMU's monitor) and the QEMU guest agent both speak one JSON
//! object per line (QEMU's docs/interop/qmp-spec: `return`, `error`,
//! `event`, `id`), and the guest agent's lines are the guest's to write.
//! A line longer than the bound is an error, never buffered on; a line is
//! parsed into a typed [`Message`] whose payloads stay raw text until the
//! caller asks for its own type, so no line becomes an untyped JSON tree
//! (a 24 MiB line of `[0,0,...]` as a tree costs the shim half a GiB).

use serde::Deserialize;
use serde_json::value::RawValue;
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

/// One QAPI message as QMP and the guest agent send it. Fields husk does
/// not read are skipped without being kept.
#[derive(Debug, Deserialize)]
pub struct Message {
    /// A command's result, as raw JSON text ([`Message::result`]).
    #[serde(rename = "return")]
    pub ret: Option<Box<RawValue>>,
    pub error: Option<QapiError>,
    /// An event's name and its data, raw.
    pub event: Option<String>,
    pub data: Option<Box<RawValue>>,
    /// QMP's reply to our numeric command id.
    pub id: Option<u64>,
    /// QMP's greeting.
    #[serde(rename = "QMP")]
    pub greeting: Option<serde::de::IgnoredAny>,
}

/// A command's error.
#[derive(Debug, Clone, Deserialize)]
pub struct QapiError {
    pub class: String,
    pub desc: String,
}

impl QapiError {
    /// Class and description for a log or an error: at most 512
    /// characters each, control characters replaced (they are the peer's).
    pub fn printable(&self) -> (String, String) {
        (printable(&self.class, 512), printable(&self.desc, 512))
    }
}

/// Peer text for a log or an error: at most `max` characters, control
/// characters replaced.
pub fn printable(text: &str, max: usize) -> String {
    text.chars()
        .take(max)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// What a message said: its result, or its error.
#[derive(Debug)]
pub enum Outcome {
    Return(Box<RawValue>),
    Error(QapiError),
    /// Neither (an event, a greeting, or something else).
    Neither,
}

impl Message {
    pub fn outcome(self) -> Outcome {
        match (self.ret, self.error) {
            (Some(r), _) => Outcome::Return(r),
            (None, Some(e)) => Outcome::Error(e),
            (None, None) => Outcome::Neither,
        }
    }
}

/// Parses one line (without its newline) as a [`Message`]. The guest
/// agent puts a 0xFF byte before its reply to `guest-sync-delimited` (and
/// may leave partial output of an earlier session before it): everything
/// up to the last 0xFF is skipped. None for a blank line.
pub fn parse_message(line: &[u8]) -> Option<Result<Message, serde_json::Error>> {
    let start = line.iter().rposition(|&b| b == 0xff).map_or(0, |i| i + 1);
    let text = &line[start..];
    if text.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    Some(from_object(text))
}

/// `T` from JSON text that is an object: serde's derived structs would
/// take an array of their fields too (`[1234567, null]` as a reply).
pub fn from_object<T: serde::de::DeserializeOwned>(text: &[u8]) -> Result<T, serde_json::Error> {
    match text.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => serde_json::from_slice(text),
        _ => Err(serde::de::Error::custom("not a JSON object")),
    }
}

/// The next non-blank line as a [`Message`], at most `max` bytes.
pub async fn read_message<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> Result<Message, LineError> {
    loop {
        let line = read_line(reader, max).await?;
        if let Some(parsed) = parse_message(&line) {
            return Ok(parsed?);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_bounded_and_messages_typed() {
        let mut r: &[u8] =
            b"{\"return\":1,\"id\":7}\r\n\n\xff{\"event\":\"X\",\"data\":{\"a\":[1]}}\nxxxxxxxxxxxxxxxxxxxx\n";
        let m = read_message(&mut r, 64).await.unwrap();
        assert_eq!((m.ret.unwrap().get(), m.id), ("1", Some(7)));
        let m = read_message(&mut r, 64).await.unwrap();
        assert_eq!(m.event.as_deref(), Some("X"));
        assert_eq!(m.data.unwrap().get(), "{\"a\":[1]}");
        assert!(matches!(
            read_message(&mut r, 8).await,
            Err(LineError::TooLong(8))
        ));
        for bad in [
            &b"[1]\n"[..],
            b"[{\"a\": 1}, null, null, null, null, null]\n",
            b"{\"id\":\"seven\"}\n",
            b"{\"error\":{\"class\":1}}\n",
        ] {
            let mut r = bad;
            assert!(matches!(
                read_message(&mut r, 64).await,
                Err(LineError::Json(_))
            ));
        }
        let mut r: &[u8] = b"{\"unterminated\"";
        assert!(matches!(
            read_message(&mut r, 64).await,
            Err(LineError::Closed)
        ));
    }

    /// What husk does not read is skipped, however deep or wide it is:
    /// nothing of it is kept.
    #[test]
    fn unread_fields_are_skipped() {
        let wide = format!("{{\"other\":[{}0],\"return\":{{}}}}", "0,".repeat(100_000));
        let m = parse_message(wide.as_bytes()).unwrap().unwrap();
        assert_eq!(m.ret.unwrap().get(), "{}");
        assert!(parse_message(b"  \xff ").is_none());
        let e = parse_message(b"{\"error\":{\"class\":\"GenericError\",\"desc\":\"a\\u001bb\"}}")
            .unwrap()
            .unwrap();
        let Outcome::Error(e) = e.outcome() else {
            panic!("an error")
        };
        assert_eq!(e.printable(), ("GenericError".into(), "a?b".into()));
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
