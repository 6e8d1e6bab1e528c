//! The JSON lines the host reads from QEMU's monitor (QMP) and from the
//! QEMU guest agent in a VM image's guest (QEMU's docs/interop/qmp-spec,
//! qga/qapi-schema.json): husk-hypervisor's `json_lines` (`read_line`,
//! `read_message`, `parse_message`), then what QMP's client makes of each
//! message (`check_greeting`, `Incoming::of`: events, replies by id) and
//! what the guest agent's client does with it (`is_sync_reply`,
//! `reply_value::<ExecStatusReply>` and `decode`). Nothing may panic;
//! besides:
//!
//! - a line is taken exactly up to its newline, and one longer than the
//!   bound is refused having consumed at most the bound plus one byte
//!   (nothing is buffered past it); `read_message` yields the same
//!   messages as its lines do;
//! - a parsed message says what a plain JSON reading of the same text
//!   says (`return`, `id`, `event`);
//! - events and replies are only what the message says; a greeting only
//!   a `{"QMP": ...}`; a sync ends only on an integer `return` equal to
//!   the id;
//! - every error's text is bounded and has no control characters, and
//!   decoded exec output is at most 3/4 of the line's bytes.
//!
//! Input: a u16 line bound (taken modulo 4096), a u32 guest-sync id, four
//! bytes of read sizes (how much the socket hands over at a time, cycled;
//! 0 means 1), then the stream as the peer sends it.

#![no_main]

use husk_fuzz::{block_on, Input};
use husk_hypervisor::qemu::json_lines::{parse_message, read_line, read_message, LineError};
use husk_hypervisor::qemu::qga::{is_sync_reply, reply_value, ExecStatusReply};
use husk_hypervisor::qemu::qmp::{check_greeting, GuestEvent, Incoming};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncBufRead, AsyncRead, ReadBuf};

/// The longest error text taken: a command name, a class and a
/// description of 512 characters each (`QapiError::printable`) and the
/// words around them.
const MAX_ERROR_CHARS: usize = 1200;

/// A socket that hands over the stream a few bytes at a time.
struct Chunked<'a> {
    data: &'a [u8],
    at: usize,
    sizes: [usize; 4],
    turn: usize,
}

impl<'a> Chunked<'a> {
    fn new(data: &'a [u8], sizes: [u8; 4]) -> Self {
        Chunked {
            data,
            at: 0,
            sizes: sizes.map(|s| usize::from(s.max(1))),
            turn: 0,
        }
    }

    fn available(&self) -> &'a [u8] {
        let n = self.sizes[self.turn % 4].min(self.data.len() - self.at);
        &self.data[self.at..self.at + n]
    }
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let a = self.available();
        let n = a.len().min(buf.remaining());
        buf.put_slice(&a[..n]);
        self.at += n;
        self.turn += 1;
        Poll::Ready(Ok(()))
    }
}

impl AsyncBufRead for Chunked<'_> {
    fn poll_fill_buf(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        Poll::Ready(Ok(this.available()))
    }

    fn consume(mut self: Pin<&mut Self>, n: usize) {
        assert!(
            n <= self.available().len(),
            "consumed more than handed over"
        );
        self.at += n;
        self.turn += 1;
    }
}

fn assert_printable(text: &str) {
    assert!(
        text.chars().count() <= MAX_ERROR_CHARS,
        "an error of {} characters",
        text.chars().count()
    );
    assert!(
        !text.chars().any(char::is_control),
        "control characters reach the log: {text:?}"
    );
}

/// Every line of the stream as `read_line` takes it, checked against
/// the line model; returns the lines it took.
fn lines(stream: &[u8], max: usize, sizes: [u8; 4]) -> Vec<Vec<u8>> {
    let mut r = Chunked::new(stream, sizes);
    let mut out = Vec::new();
    loop {
        let start = r.at;
        let rest = &stream[start..];
        let result = block_on(read_line(&mut r, max));
        let consumed = r.at - start;
        match (result, rest.iter().position(|&b| b == b'\n')) {
            (Ok(line), Some(i)) => {
                assert!(i <= max, "a line of {i} bytes over the bound {max}");
                assert_eq!(consumed, i + 1, "read past the newline");
                let raw = &rest[..i];
                assert_eq!(line, raw.strip_suffix(b"\r").unwrap_or(raw));
                out.push(line);
            }
            (Ok(_), None) => panic!("a line without its newline"),
            (Err(LineError::TooLong(m)), newline) => {
                assert_eq!(m, max);
                assert!(newline.map_or(rest.len(), |i| i + 1) > max + 1);
                assert!(
                    consumed <= max + 1,
                    "buffered {consumed} bytes past the bound"
                );
                return out;
            }
            (Err(LineError::Closed), None) => {
                assert!(rest.len() <= max + 1);
                assert_eq!(consumed, rest.len());
                return out;
            }
            (Err(e), newline) => panic!("{e} with a newline at {newline:?}"),
        }
    }
}

/// `read_message` over the same stream yields what its lines parse to.
fn messages(stream: &[u8], max: usize, sizes: [u8; 4], lines: &[Vec<u8>]) {
    let mut r = Chunked::new(stream, sizes);
    let mut expected = lines.iter().filter_map(|l| parse_message(l));
    loop {
        match (block_on(read_message(&mut r, max)), expected.next()) {
            (Ok(m), Some(Ok(e))) => {
                assert_eq!(
                    m.ret.map(|r| r.get().to_owned()),
                    e.ret.map(|r| r.get().to_owned())
                );
                assert_eq!((m.id, m.event), (e.id, e.event));
            }
            (Err(LineError::Json(_)), Some(Err(_))) => return,
            (Err(LineError::TooLong(_) | LineError::Closed), None) => return,
            (got, want) => panic!("read_message gave {got:?}, its lines {want:?}"),
        }
    }
}

/// What the QMP and guest agent clients make of one line.
fn message(line: &[u8], sync_id: u64) {
    let Some(Ok(m)) = parse_message(line) else {
        return;
    };
    // What plain JSON says of the same text (after the last 0xFF).
    let start = line.iter().rposition(|&b| b == 0xff).map_or(0, |i| i + 1);
    let plain: Option<Value> = serde_json::from_slice(&line[start..]).ok();
    let field = |k: &str| {
        plain
            .as_ref()
            .and_then(|v| v.get(k))
            .filter(|v| !v.is_null())
    };
    assert!(plain.is_none() || plain.as_ref().is_some_and(Value::is_object));
    if plain.is_some() {
        let ret = m
            .ret
            .as_ref()
            .map(|r| serde_json::from_str::<Value>(r.get()).ok());
        if let Some(Some(ret)) = &ret {
            assert_eq!(Some(ret), field("return"));
        }
        assert_eq!(ret.is_some(), field("return").is_some());
        assert_eq!(m.id, field("id").and_then(Value::as_u64));
        assert_eq!(m.event.as_deref(), field("event").and_then(Value::as_str));
    }

    // QMP: the greeting.
    match check_greeting(&m) {
        Ok(()) => assert!(m.greeting.is_some()),
        Err(e) => assert_printable(&e.to_string()),
    }
    let ret = m.ret.as_ref().map(|r| r.get().to_owned());
    let event = m.event.clone();
    let data = m.data.as_ref().map(|d| d.get().to_owned());
    let id = m.id;
    // QMP: an event or a reply.
    match Incoming::of(m) {
        Incoming::Event(e) => {
            assert!(event.is_some());
            match e {
                Some(GuestEvent::Panicked) => assert_eq!(event.as_deref(), Some("GUEST_PANICKED")),
                Some(GuestEvent::JobStatusChanged) => {
                    assert_eq!(event.as_deref(), Some("JOB_STATUS_CHANGE"))
                }
                Some(GuestEvent::ShutdownByGuest) => {
                    assert_eq!(event.as_deref(), Some("SHUTDOWN"));
                    let data = data.expect("SHUTDOWN's data");
                    if let Ok(data) = serde_json::from_str::<Value>(&data) {
                        assert_eq!(data.get("guest"), Some(&Value::Bool(true)));
                    }
                }
                None => {}
            }
        }
        Incoming::Reply {
            id: reply_id,
            result,
        } => {
            assert!(event.is_none());
            assert_eq!(Some(reply_id), id);
            match result {
                Ok(r) => assert_eq!(Some(r.get()), ret.as_deref()),
                Err((class, desc)) => {
                    assert!(ret.is_none());
                    for t in [class, desc] {
                        assert!(t.chars().count() <= 512);
                        assert_printable(&t);
                    }
                }
            }
        }
        Incoming::Other => assert!(event.is_none() && id.is_none()),
    }

    // The guest agent: the end of a sync.
    let synced = is_sync_reply(parse_message(line).unwrap().unwrap(), sync_id);
    if synced {
        let ret: Value = serde_json::from_str(ret.as_deref().unwrap()).unwrap();
        assert_eq!(ret.as_u64(), Some(sync_id));
    }
    if ret.as_deref().map(str::trim) == Some(sync_id.to_string().as_str()) {
        assert!(synced);
    }
    // The guest agent: guest-exec-status.
    let reply = parse_message(line).unwrap().unwrap();
    match reply_value::<ExecStatusReply>("guest-exec-status", reply).and_then(|r| r.decode()) {
        Ok(status) => {
            assert!(ret.is_some());
            assert!(
                (status.stdout.len() + status.stderr.len()) * 4 <= line.len() * 3,
                "{} bytes of output from a line of {}",
                status.stdout.len() + status.stderr.len(),
                line.len()
            );
        }
        Err(e) => assert_printable(&e.to_string()),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let max = usize::from(input.u16() % 4096);
    let sync_id = u64::from(input.u32());
    let sizes = [input.u8(), input.u8(), input.u8(), input.u8()];
    let stream = input.rest();
    let taken = lines(stream, max, sizes);
    messages(stream, max, sizes, &taken);
    for line in &taken {
        message(line, sync_id);
    }
});
