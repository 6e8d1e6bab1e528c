//! A VNC client just big enough for tests: RFB 3.8's handshake (RFC 6143
//! sections 7.1-7.3), with VNC authentication (7.2.2: the DES challenge)
//! or none, then one full FramebufferUpdateRequest (7.5.3) and the first
//! rectangle of the FramebufferUpdate that answers it (7.6.1). It runs
//! over any byte stream: a TCP connection, or [`WsStream`], RFB inside
//! binary WebSocket messages as noVNC sends it.
//!
//! DES is written out here (FIPS 46-3) rather than taken from a crate:
//! the offline registry this repository builds from has no DES crate, and
//! one block cipher for one test-side handshake is small. Everything the
//! server sends is length-checked before it is used.

use std::io::{Read, Write};

/// What the handshake and the first update showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The security types the server offered.
    pub offered: Vec<u8>,
    pub width: u16,
    pub height: u16,
    pub name: String,
    /// The first rectangle of the first FramebufferUpdate.
    pub first_rect: Rect,
    /// How many rectangles that update had.
    pub rects: u16,
}

/// A rectangle's header: x, y, width, height, encoding.
pub type Rect = (u16, u16, u16, u16, i32);

const VERSION: &[u8; 12] = b"RFB 003.008\n";
const SEC_NONE: u8 = 1;
const SEC_VNC: u8 = 2;
/// The longest text (a reason, the desktop name) read from a server.
const MAX_TEXT: usize = 4096;

fn read_n<const N: usize>(s: &mut impl Read) -> std::io::Result<[u8; N]> {
    let mut b = [0u8; N];
    s.read_exact(&mut b)?;
    Ok(b)
}

fn read_u32(s: &mut impl Read) -> std::io::Result<u32> {
    Ok(u32::from_be_bytes(read_n::<4>(s)?))
}

fn read_u16(s: &mut impl Read) -> std::io::Result<u16> {
    Ok(u16::from_be_bytes(read_n::<2>(s)?))
}

fn read_text(s: &mut impl Read) -> Result<String, String> {
    let len = read_u32(s).map_err(|e| format!("a text's length: {e}"))? as usize;
    if len > MAX_TEXT {
        return Err(format!("a text of {len} bytes"));
    }
    let mut b = vec![0u8; len];
    s.read_exact(&mut b).map_err(|e| format!("a text: {e}"))?;
    Ok(String::from_utf8_lossy(&b).into_owned())
}

/// Version, security (VNC authentication with `password`, or none when
/// it is None and the server offers none), ClientInit and ServerInit,
/// then a full update request and the first update's first rectangle.
pub fn handshake(s: &mut (impl Read + Write), password: Option<&[u8]>) -> Result<Session, String> {
    let version = read_n::<12>(s).map_err(|e| format!("the server's version: {e}"))?;
    if &version[..4] != b"RFB " {
        return Err(format!("not RFB: {version:?}"));
    }
    s.write_all(VERSION)
        .map_err(|e| format!("our version: {e}"))?;
    let count = read_n::<1>(s).map_err(|e| format!("security types: {e}"))?[0];
    if count == 0 {
        return Err(format!("refused: {}", read_text(s)?));
    }
    let mut offered = vec![0u8; usize::from(count)];
    s.read_exact(&mut offered)
        .map_err(|e| format!("security types: {e}"))?;
    let chosen = if password.is_some() {
        SEC_VNC
    } else {
        SEC_NONE
    };
    if !offered.contains(&chosen) {
        return Err(format!("security type {chosen} not offered: {offered:?}"));
    }
    s.write_all(&[chosen])
        .map_err(|e| format!("our security type: {e}"))?;
    if let Some(password) = password {
        let challenge = read_n::<16>(s).map_err(|e| format!("the challenge: {e}"))?;
        s.write_all(&vnc_auth_response(password, &challenge))
            .map_err(|e| format!("our response: {e}"))?;
    }
    match read_u32(s).map_err(|e| format!("the security result: {e}"))? {
        0 => {}
        n => return Err(format!("security result {n}: {}", read_text(s)?)),
    }
    s.write_all(&[1]).map_err(|e| format!("ClientInit: {e}"))?;
    let width = read_u16(s).map_err(|e| format!("ServerInit: {e}"))?;
    let height = read_u16(s).map_err(|e| format!("ServerInit: {e}"))?;
    let _pixel_format = read_n::<16>(s).map_err(|e| format!("ServerInit: {e}"))?;
    let name = read_text(s)?;
    let (rects, first_rect) = first_update(s, width, height)?;
    Ok(Session {
        offered,
        width,
        height,
        name,
        first_rect,
        rects,
    })
}

/// Asks for the whole screen in Raw encoding and reads up to the first
/// rectangle's header of the answer (a bell or cut text before it is
/// skipped).
fn first_update(
    s: &mut (impl Read + Write),
    width: u16,
    height: u16,
) -> Result<(u16, Rect), String> {
    // SetEncodings: Raw only.
    s.write_all(&[2, 0, 0, 1, 0, 0, 0, 0])
        .map_err(|e| format!("SetEncodings: {e}"))?;
    let mut request = vec![3, 0, 0, 0, 0, 0];
    request.extend_from_slice(&width.to_be_bytes());
    request.extend_from_slice(&height.to_be_bytes());
    s.write_all(&request)
        .map_err(|e| format!("FramebufferUpdateRequest: {e}"))?;
    loop {
        let kind = read_n::<1>(s).map_err(|e| format!("a server message: {e}"))?[0];
        match kind {
            0 => break,
            2 => continue,
            3 => {
                let _pad = read_n::<3>(s).map_err(|e| format!("cut text: {e}"))?;
                read_text(s)?;
            }
            other => return Err(format!("server message type {other} before an update")),
        }
    }
    let _pad = read_n::<1>(s).map_err(|e| format!("the update: {e}"))?;
    let rects = read_u16(s).map_err(|e| format!("the update: {e}"))?;
    let h = read_n::<12>(s).map_err(|e| format!("the first rectangle: {e}"))?;
    let u = |i: usize| u16::from_be_bytes([h[i], h[i + 1]]);
    let encoding = i32::from_be_bytes([h[8], h[9], h[10], h[11]]);
    Ok((rects, (u(0), u(2), u(4), u(6), encoding)))
}

/// VNC authentication's answer: the challenge's two halves DES-encrypted
/// with the password (at most 8 bytes, zero-padded) as the key, each key
/// byte's bits reversed (RFB's quirk, RFC 6143 7.2.2 and its errata).
pub fn vnc_auth_response(password: &[u8], challenge: &[u8; 16]) -> [u8; 16] {
    let mut key = [0u8; 8];
    for (k, p) in key.iter_mut().zip(password) {
        *k = p.reverse_bits();
    }
    let keys = subkeys(u64::from_be_bytes(key));
    let mut out = [0u8; 16];
    for half in 0..2 {
        let block = &challenge[half * 8..half * 8 + 8];
        let plain = u64::from_be_bytes(block.try_into().expect("8 bytes"));
        out[half * 8..half * 8 + 8].copy_from_slice(&des(plain, &keys).to_be_bytes());
    }
    out
}

/// RFB inside binary WebSocket messages, as a byte stream: each write is
/// one message, reads take from the messages in order.
pub struct WsStream<S: Read + Write> {
    pub ws: tungstenite::WebSocket<S>,
    pending: Vec<u8>,
    at: usize,
}

impl<S: Read + Write> WsStream<S> {
    pub fn new(ws: tungstenite::WebSocket<S>) -> Self {
        WsStream {
            ws,
            pending: Vec::new(),
            at: 0,
        }
    }
}

fn ws_error(e: tungstenite::Error) -> std::io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        other => std::io::Error::other(other.to_string()),
    }
}

impl<S: Read + Write> Read for WsStream<S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.pending.len() {
            match self.ws.read().map_err(ws_error)? {
                tungstenite::Message::Binary(b) => {
                    self.pending = b;
                    self.at = 0;
                }
                tungstenite::Message::Close(_) => return Ok(0),
                tungstenite::Message::Text(t) => {
                    return Err(std::io::Error::other(format!("a text message: {t}")))
                }
                _ => {}
            }
        }
        let n = buf.len().min(self.pending.len() - self.at);
        buf[..n].copy_from_slice(&self.pending[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl<S: Read + Write> Write for WsStream<S> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.ws
            .send(tungstenite::Message::Binary(buf.to_vec()))
            .map_err(ws_error)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.ws.flush().map_err(ws_error)
    }
}

// DES (FIPS 46-3): the tables number bits from 1, the most significant.

const IP: [u8; 64] = [
    58, 50, 42, 34, 26, 18, 10, 2, 60, 52, 44, 36, 28, 20, 12, 4, 62, 54, 46, 38, 30, 22, 14, 6,
    64, 56, 48, 40, 32, 24, 16, 8, 57, 49, 41, 33, 25, 17, 9, 1, 59, 51, 43, 35, 27, 19, 11, 3, 61,
    53, 45, 37, 29, 21, 13, 5, 63, 55, 47, 39, 31, 23, 15, 7,
];
const FP: [u8; 64] = [
    40, 8, 48, 16, 56, 24, 64, 32, 39, 7, 47, 15, 55, 23, 63, 31, 38, 6, 46, 14, 54, 22, 62, 30,
    37, 5, 45, 13, 53, 21, 61, 29, 36, 4, 44, 12, 52, 20, 60, 28, 35, 3, 43, 11, 51, 19, 59, 27,
    34, 2, 42, 10, 50, 18, 58, 26, 33, 1, 41, 9, 49, 17, 57, 25,
];
const E: [u8; 48] = [
    32, 1, 2, 3, 4, 5, 4, 5, 6, 7, 8, 9, 8, 9, 10, 11, 12, 13, 12, 13, 14, 15, 16, 17, 16, 17, 18,
    19, 20, 21, 20, 21, 22, 23, 24, 25, 24, 25, 26, 27, 28, 29, 28, 29, 30, 31, 32, 1,
];
const P: [u8; 32] = [
    16, 7, 20, 21, 29, 12, 28, 17, 1, 15, 23, 26, 5, 18, 31, 10, 2, 8, 24, 14, 32, 27, 3, 9, 19,
    13, 30, 6, 22, 11, 4, 25,
];
const PC1: [u8; 56] = [
    57, 49, 41, 33, 25, 17, 9, 1, 58, 50, 42, 34, 26, 18, 10, 2, 59, 51, 43, 35, 27, 19, 11, 3, 60,
    52, 44, 36, 63, 55, 47, 39, 31, 23, 15, 7, 62, 54, 46, 38, 30, 22, 14, 6, 61, 53, 45, 37, 29,
    21, 13, 5, 28, 20, 12, 4,
];
const PC2: [u8; 48] = [
    14, 17, 11, 24, 1, 5, 3, 28, 15, 6, 21, 10, 23, 19, 12, 4, 26, 8, 16, 7, 27, 20, 13, 2, 41, 52,
    31, 37, 47, 55, 30, 40, 51, 45, 33, 48, 44, 49, 39, 56, 34, 53, 46, 42, 50, 36, 29, 32,
];
const SHIFTS: [u32; 16] = [1, 1, 2, 2, 2, 2, 2, 2, 1, 2, 2, 2, 2, 2, 2, 1];
const S: [[u8; 64]; 8] = [
    [
        14, 4, 13, 1, 2, 15, 11, 8, 3, 10, 6, 12, 5, 9, 0, 7, 0, 15, 7, 4, 14, 2, 13, 1, 10, 6, 12,
        11, 9, 5, 3, 8, 4, 1, 14, 8, 13, 6, 2, 11, 15, 12, 9, 7, 3, 10, 5, 0, 15, 12, 8, 2, 4, 9,
        1, 7, 5, 11, 3, 14, 10, 0, 6, 13,
    ],
    [
        15, 1, 8, 14, 6, 11, 3, 4, 9, 7, 2, 13, 12, 0, 5, 10, 3, 13, 4, 7, 15, 2, 8, 14, 12, 0, 1,
        10, 6, 9, 11, 5, 0, 14, 7, 11, 10, 4, 13, 1, 5, 8, 12, 6, 9, 3, 2, 15, 13, 8, 10, 1, 3, 15,
        4, 2, 11, 6, 7, 12, 0, 5, 14, 9,
    ],
    [
        10, 0, 9, 14, 6, 3, 15, 5, 1, 13, 12, 7, 11, 4, 2, 8, 13, 7, 0, 9, 3, 4, 6, 10, 2, 8, 5,
        14, 12, 11, 15, 1, 13, 6, 4, 9, 8, 15, 3, 0, 11, 1, 2, 12, 5, 10, 14, 7, 1, 10, 13, 0, 6,
        9, 8, 7, 4, 15, 14, 3, 11, 5, 2, 12,
    ],
    [
        7, 13, 14, 3, 0, 6, 9, 10, 1, 2, 8, 5, 11, 12, 4, 15, 13, 8, 11, 5, 6, 15, 0, 3, 4, 7, 2,
        12, 1, 10, 14, 9, 10, 6, 9, 0, 12, 11, 7, 13, 15, 1, 3, 14, 5, 2, 8, 4, 3, 15, 0, 6, 10, 1,
        13, 8, 9, 4, 5, 11, 12, 7, 2, 14,
    ],
    [
        2, 12, 4, 1, 7, 10, 11, 6, 8, 5, 3, 15, 13, 0, 14, 9, 14, 11, 2, 12, 4, 7, 13, 1, 5, 0, 15,
        10, 3, 9, 8, 6, 4, 2, 1, 11, 10, 13, 7, 8, 15, 9, 12, 5, 6, 3, 0, 14, 11, 8, 12, 7, 1, 14,
        2, 13, 6, 15, 0, 9, 10, 4, 5, 3,
    ],
    [
        12, 1, 10, 15, 9, 2, 6, 8, 0, 13, 3, 4, 14, 7, 5, 11, 10, 15, 4, 2, 7, 12, 9, 5, 6, 1, 13,
        14, 0, 11, 3, 8, 9, 14, 15, 5, 2, 8, 12, 3, 7, 0, 4, 10, 1, 13, 11, 6, 4, 3, 2, 12, 9, 5,
        15, 10, 11, 14, 1, 7, 6, 0, 8, 13,
    ],
    [
        4, 11, 2, 14, 15, 0, 8, 13, 3, 12, 9, 7, 5, 10, 6, 1, 13, 0, 11, 7, 4, 9, 1, 10, 14, 3, 5,
        12, 2, 15, 8, 6, 1, 4, 11, 13, 12, 3, 7, 14, 10, 15, 6, 8, 0, 5, 9, 2, 6, 11, 13, 8, 1, 4,
        10, 7, 9, 5, 0, 15, 14, 2, 3, 12,
    ],
    [
        13, 2, 8, 4, 6, 15, 11, 1, 10, 9, 3, 14, 5, 0, 12, 7, 1, 15, 13, 8, 10, 3, 7, 4, 12, 5, 6,
        11, 0, 14, 9, 2, 7, 11, 4, 1, 9, 12, 14, 2, 0, 6, 10, 13, 15, 3, 5, 8, 2, 1, 14, 7, 4, 10,
        8, 13, 15, 12, 9, 0, 3, 5, 6, 11,
    ],
];

/// The bits of `input` (`width` bits wide) that `table` names, in order.
fn permute(input: u64, width: u32, table: &[u8]) -> u64 {
    table.iter().fold(0, |out, &bit| {
        (out << 1) | ((input >> (width - u32::from(bit))) & 1)
    })
}

fn subkeys(key: u64) -> [u64; 16] {
    const MASK: u64 = (1 << 28) - 1;
    let cd = permute(key, 64, &PC1);
    let (mut c, mut d) = (cd >> 28, cd & MASK);
    let mut keys = [0u64; 16];
    for (k, &shift) in keys.iter_mut().zip(&SHIFTS) {
        c = ((c << shift) | (c >> (28 - shift))) & MASK;
        d = ((d << shift) | (d >> (28 - shift))) & MASK;
        *k = permute((c << 28) | d, 56, &PC2);
    }
    keys
}

fn feistel(r: u64, key: u64) -> u64 {
    let e = permute(r, 32, &E) ^ key;
    let mut out = 0u64;
    for (i, sbox) in S.iter().enumerate() {
        let six = (e >> (42 - 6 * i)) & 0x3f;
        let row = ((six >> 4) & 0b10) | (six & 1);
        let col = (six >> 1) & 0xf;
        out = (out << 4) | u64::from(sbox[(row * 16 + col) as usize]);
    }
    permute(out, 32, &P)
}

fn des(block: u64, keys: &[u64; 16]) -> u64 {
    let ip = permute(block, 64, &IP);
    let (mut l, mut r) = (ip >> 32, ip & 0xffff_ffff);
    for &k in keys {
        (l, r) = (r, l ^ feistel(r, k));
    }
    permute((r << 32) | l, 64, &FP)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two worked examples DES texts use.
    #[test]
    fn des_matches_known_vectors() {
        let keys = subkeys(0x1334_5779_9BBC_DFF1);
        assert_eq!(des(0x0123_4567_89AB_CDEF, &keys), 0x85E8_1354_0F0A_B405);
        let keys = subkeys(0x0E32_9232_EA6D_0D73);
        assert_eq!(des(0x8787_8787_8787_8787, &keys), 0x0000_0000_0000_0000);
    }

    #[test]
    fn the_vnc_key_has_each_byte_mirrored() {
        // Password "pw": key bytes 0x0e 0xee, zero-padded.
        let challenge = [0u8; 16];
        let direct = des(0, &subkeys(0x0EEE_0000_0000_0000)).to_be_bytes();
        let answer = vnc_auth_response(b"pw", &challenge);
        assert_eq!(&answer[..8], &direct);
        assert_eq!(&answer[8..], &direct);
        // Python's cryptography (3DES with the mirrored key thrice) on
        // the challenge 00 01 .. 0f.
        let challenge: [u8; 16] = std::array::from_fn(|i| i as u8);
        let answer = vnc_auth_response(b"pw", &challenge);
        let hex: String = answer.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "858600d9af143c9e6541d3dd92a835d0");
    }
}
