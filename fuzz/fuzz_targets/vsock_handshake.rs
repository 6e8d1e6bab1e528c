//! The two handshakes the host reads from the guest's side of hybrid
//! vsock before a stream is handed on: the backend's `OK <port>\n` to
//! CONNECT (husk-hypervisor, every agent connection) and the guest
//! forwarder's `OK\n` to PORT (the shim's port forward). Each must read
//! exactly one bounded line and no byte after it, accept exactly what the
//! protocol allows, and never panic. Input: byte 0 picks the handshake
//! (bit 0), the rest is what the guest sends.

#![no_main]

use husk_fuzz::{block_on, Input};
use husk_hypervisor::{read_handshake_reply, HandshakeError};
use husk_shim::micro_vm::portforward::{read_forward_reply, ForwardReplyError};
use libfuzzer_sys::fuzz_target;

/// The hypervisor's bound on the reply line (vsock.rs MAX_REPLY).
const MAX_REPLY: usize = 32;
/// The shim's bound on the forwarder's reply line.
const MAX_FORWARD_REPLY: usize = 256;

fn connect_reply(sent: &[u8]) {
    let mut stream = sent;
    let result = block_on(read_handshake_reply(&mut stream));
    let taken = &sent[..sent.len() - stream.len()];
    let newline = sent.iter().position(|b| *b == b'\n');
    match result {
        Ok(port) => {
            let line = &taken[..taken.len() - 1];
            assert_eq!(
                Some(taken.len() - 1),
                newline,
                "read past the first newline"
            );
            assert!(line.len() <= MAX_REPLY);
            let text = std::str::from_utf8(line).expect("an accepted reply is text");
            let digits = text.strip_prefix("OK ").expect("an accepted reply says OK");
            assert_eq!(digits.parse::<u32>().ok(), Some(port));
        }
        Err(HandshakeError::TooLong) => {
            assert!(newline.is_none_or(|n| n > MAX_REPLY));
            assert_eq!(taken.len(), MAX_REPLY + 1);
        }
        Err(HandshakeError::Io(_)) => {
            assert!(newline.is_none() && sent.len() <= MAX_REPLY);
            assert_eq!(taken, sent);
        }
        Err(HandshakeError::Unexpected(text)) => {
            assert_eq!(
                Some(taken.len() - 1),
                newline,
                "read past the first newline"
            );
            assert!(
                text.len() <= 3 * MAX_REPLY,
                "the error quotes a bounded line"
            );
        }
    }
}

fn forward_reply(sent: &[u8]) {
    let mut stream = sent;
    let result = block_on(read_forward_reply(&mut stream));
    let taken = &sent[..sent.len() - stream.len()];
    assert!(taken.len() <= MAX_FORWARD_REPLY);
    if let Some(n) = sent.iter().position(|b| *b == b'\n') {
        if n < MAX_FORWARD_REPLY {
            assert_eq!(taken.len(), n + 1, "read past the first newline");
        }
    }
    match result {
        Ok(()) => assert_eq!(taken, b"OK\n"),
        Err(ForwardReplyError::Refused(text)) => {
            assert_ne!(taken, b"OK\n");
            assert!(text.len() <= 3 * MAX_FORWARD_REPLY);
            assert!(
                !text
                    .chars()
                    .any(|c| c.is_control() && c != '\n' && c != '\t'),
                "control characters reach the log: {text:?}"
            );
        }
        Err(ForwardReplyError::Io(_)) => assert_eq!(taken, sent),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let which = input.u8();
    let sent = input.rest();
    if which & 1 == 0 {
        connect_reply(sent);
    } else {
        forward_reply(sent);
    }
});
