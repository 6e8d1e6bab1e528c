//! The tools channel of a VM image (husk-vm): `kubectl exec -it` into a
//! VM that has no sshd and no husk agent. husk attaches a read-only disk
//! holding `husk-vm-tools` and a virtio-serial port named
//! [`PORT`]; the guest's cloud-init starts the helper from the disk
//! (vendor-data), and it serves exec sessions over the port: commands on
//! a PTY (or on pipes without `-t`), their input, window size, signals,
//! output and exit.
//!
//! One byte stream carries every session, in frames: `HT`, the kind (one
//! byte), the session (u32, big endian), the payload's length (u32, big
//! endian, at most [`MAX_PAYLOAD`]), the payload. The host opens with
//! [`Kind::Hello`] and a nonce, which the guest echoes after ending every
//! session of an earlier connection; a stream that stops making sense is
//! given up ([`FrameError`]), and the guest then looks for the next
//! `Hello`. Both sides bound everything they read: the guest is hostile to
//! the host, and the host end is shared by whoever reaches QEMU's socket.

/// The virtio-serial port's name (the guest's /dev/virtio-ports/…).
pub const PORT: &str = "io.husk.tools.0";
/// The tools disk's serial (the guest's /dev/disk/by-id/virtio-husk-tools).
pub const DISK_SERIAL: &str = "husk-tools";
/// The helper's file name on the tools disk.
pub const HELPER: &str = "husk-vm-tools";
/// The most a frame carries.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// The most arguments plus environment entries an Open carries.
pub const MAX_STRINGS: usize = 4096;
const MAGIC: [u8; 2] = *b"HT";
const HEADER: usize = 11;

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Host: a new connection (payload: an 8-byte nonce); guest: its echo.
    Hello = 1,
    /// Host: start a command ([`Open`]).
    Open = 2,
    /// Guest: the command runs (payload: its pid, u32).
    Started = 3,
    /// Host: input for the command; an empty payload ends it.
    Stdin = 4,
    /// Host: the terminal's new size (rows u16, columns u16).
    Resize = 5,
    /// Host: a signal for the command's process group (u32).
    Signal = 6,
    /// Guest: the command ended (payload: its status, u32: the exit code,
    /// or 128 + the signal that killed it).
    Exit = 7,
    /// Guest: the command could not start (payload: why, UTF-8).
    Error = 8,
    /// Guest: the command's output (the terminal's, with a PTY).
    Stdout = 9,
    /// Guest: the command's standard error (without a PTY).
    Stderr = 10,
}

impl Kind {
    fn of(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => Kind::Hello,
            2 => Kind::Open,
            3 => Kind::Started,
            4 => Kind::Stdin,
            5 => Kind::Resize,
            6 => Kind::Signal,
            7 => Kind::Exit,
            8 => Kind::Error,
            9 => Kind::Stdout,
            10 => Kind::Stderr,
            _ => return None,
        })
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub session: u32,
    pub payload: Vec<u8>,
}

/// Why a byte stream is not frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("no frame marker where a frame starts")]
    Marker,
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("a frame of {0} bytes, more than {MAX_PAYLOAD}")]
    TooLong(usize),
    #[error("a malformed {0:?} frame")]
    Malformed(Kind),
}

/// The frame of `kind` for `session` with `payload` (at most
/// [`MAX_PAYLOAD`]; longer data is sent in several frames).
pub fn encode(kind: Kind, session: u32, payload: &[u8]) -> Vec<u8> {
    debug_assert!(payload.len() <= MAX_PAYLOAD);
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&MAGIC);
    out.push(kind as u8);
    out.extend_from_slice(&session.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Frames out of a byte stream read in pieces.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, None until one is there.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.len() < HEADER {
            return Ok(None);
        }
        if self.buf[..2] != MAGIC {
            return Err(FrameError::Marker);
        }
        let kind = Kind::of(self.buf[2]).ok_or(FrameError::Kind(self.buf[2]))?;
        let session = u32::from_be_bytes(self.buf[3..7].try_into().expect("4 bytes"));
        let len = u32::from_be_bytes(self.buf[7..11].try_into().expect("4 bytes")) as usize;
        if len > MAX_PAYLOAD {
            return Err(FrameError::TooLong(len));
        }
        if self.buf.len() < HEADER + len {
            return Ok(None);
        }
        let payload = self.buf[HEADER..HEADER + len].to_vec();
        self.buf.drain(..HEADER + len);
        Ok(Some(Frame {
            kind,
            session,
            payload,
        }))
    }

    /// After an error: drops bytes up to the next `Hello` frame's start
    /// (or all but a possible start of one).
    pub fn resync(&mut self) {
        let hello = [MAGIC[0], MAGIC[1], Kind::Hello as u8];
        let from = self.buf.len().saturating_sub(2);
        let at = (1..self.buf.len())
            .find(|&i| self.buf[i..].starts_with(&hello))
            .unwrap_or(from.max(1).min(self.buf.len()));
        self.buf.drain(..at);
    }
}

/// A command to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    /// A PTY (`-t`) of this size (rows, columns; 0 0: the default);
    /// None: pipes.
    pub tty: Option<(u16, u16)>,
    pub cwd: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
}

impl Open {
    /// The payload: tty flag, rows, columns, the counts of args and env
    /// (u16 each), then cwd, args and env, each ended by a NUL.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let bad = || FrameError::Malformed(Kind::Open);
        let strings = 1 + self.args.len() + self.env.len();
        if strings > MAX_STRINGS || self.args.is_empty() {
            return Err(bad());
        }
        let (rows, cols) = self.tty.unwrap_or((0, 0));
        let mut out = vec![u8::from(self.tty.is_some())];
        out.extend_from_slice(&rows.to_be_bytes());
        out.extend_from_slice(&cols.to_be_bytes());
        out.extend_from_slice(&(self.args.len() as u16).to_be_bytes());
        out.extend_from_slice(&(self.env.len() as u16).to_be_bytes());
        for s in std::iter::once(&self.cwd)
            .chain(&self.args)
            .chain(&self.env)
        {
            if s.contains('\0') {
                return Err(bad());
            }
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        }
        if out.len() > MAX_PAYLOAD {
            return Err(FrameError::TooLong(out.len()));
        }
        Ok(out)
    }

    pub fn decode(payload: &[u8]) -> Result<Self, FrameError> {
        let bad = || FrameError::Malformed(Kind::Open);
        let head = payload.get(..9).ok_or_else(bad)?;
        let u16_at = |i: usize| u16::from_be_bytes([head[i], head[i + 1]]);
        let tty = match head[0] {
            0 => None,
            1 => Some((u16_at(1), u16_at(3))),
            _ => return Err(bad()),
        };
        let (argc, envc) = (u16_at(5) as usize, u16_at(7) as usize);
        let mut strings = payload[9..].split(|b| *b == 0);
        let mut take = |n: usize| -> Result<Vec<String>, FrameError> {
            (0..n)
                .map(|_| {
                    let s = strings.next().ok_or_else(bad)?;
                    String::from_utf8(s.to_vec()).map_err(|_| bad())
                })
                .collect()
        };
        let cwd = take(1)?.remove(0);
        let args = take(argc)?;
        let env = take(envc)?;
        // What is left is the empty piece after the last NUL.
        if args.is_empty() || strings.next() != Some(&[][..]) || strings.next().is_some() {
            return Err(bad());
        }
        Ok(Open {
            tty,
            cwd,
            args,
            env,
        })
    }
}

/// A u32 payload (Started, Signal, Exit).
pub fn decode_u32(frame: &Frame) -> Result<u32, FrameError> {
    let b: [u8; 4] = frame
        .payload
        .as_slice()
        .try_into()
        .map_err(|_| FrameError::Malformed(frame.kind))?;
    Ok(u32::from_be_bytes(b))
}

/// A Resize payload: (rows, columns).
pub fn decode_size(frame: &Frame) -> Result<(u16, u16), FrameError> {
    match frame.payload.as_slice() {
        [a, b, c, d] => Ok((u16::from_be_bytes([*a, *b]), u16::from_be_bytes([*c, *d]))),
        _ => Err(FrameError::Malformed(frame.kind)),
    }
}

/// A Resize payload.
pub fn encode_size(rows: u16, cols: u16) -> [u8; 4] {
    let (r, c) = (rows.to_be_bytes(), cols.to_be_bytes());
    [r[0], r[1], c[0], c[1]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_come_whole_from_pieces() {
        let mut bytes = encode(Kind::Stdout, 7, b"hello");
        bytes.extend(encode(Kind::Exit, 7, &3u32.to_be_bytes()));
        let mut d = Decoder::default();
        let mut got = Vec::new();
        for b in bytes.chunks(3) {
            d.push(b);
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].kind, got[0].session), (Kind::Stdout, 7));
        assert_eq!(got[0].payload, b"hello");
        assert_eq!(decode_u32(&got[1]).unwrap(), 3);
    }

    #[test]
    fn bad_streams_are_refused_and_resynced_at_a_hello() {
        let mut d = Decoder::default();
        d.push(b"garbage!!!!!");
        assert_eq!(d.next_frame(), Err(FrameError::Marker));
        d.push(&encode(Kind::Hello, 0, &[1; 8]));
        d.resync();
        assert_eq!(d.next_frame().unwrap().unwrap().kind, Kind::Hello);
        let mut long = encode(Kind::Stdin, 1, b"");
        long[7..11].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_be_bytes());
        d.push(&long);
        assert!(matches!(d.next_frame(), Err(FrameError::TooLong(_))));
        let mut d = Decoder::default();
        d.push(&encode(Kind::Stdin, 1, b"")[..2]);
        d.push(&[99, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(d.next_frame(), Err(FrameError::Kind(99)));
        d.resync();
        assert_eq!(d.next_frame(), Ok(None));
    }

    #[test]
    fn an_open_round_trips_and_malformed_ones_are_refused() {
        let open = Open {
            tty: Some((24, 80)),
            cwd: "/".into(),
            args: vec!["sh".into(), "".into(), "-c".into()],
            env: vec!["TERM=xterm".into()],
        };
        assert_eq!(Open::decode(&open.encode().unwrap()).unwrap(), open);
        let pipes = Open { tty: None, ..open };
        let bytes = pipes.encode().unwrap();
        assert_eq!(Open::decode(&bytes).unwrap(), pipes);
        // Cut short, a string more, a count too many, no command.
        assert!(Open::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(Open::decode(&[&bytes[..], b"x\0"].concat()).is_err());
        let mut more = bytes.clone();
        more[8] = 9;
        assert!(Open::decode(&more).is_err());
        assert!(Open::decode(&[0, 0, 0, 0, 0, 0, 0, 0, 0, b'/', 0]).is_err());
        assert!(Open::decode(&[7; 3]).is_err());
    }
}
