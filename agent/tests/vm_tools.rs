//! husk-vm-tools (the guest helper of `kubectl exec -it` in husk-vm VMs)
//! served on a raw PTY standing for its virtio-serial port: the host's
//! side of the frames is this test. A hello is echoed after garbage; a
//! shell on a PTY of the asked size runs what is typed and reports its
//! exit code; a command on pipes gets its input to its end and keeps
//! stdout and stderr apart; a command that cannot start is an Error
//! frame; a frame for a session that does not exist is ignored.

use husk_proto::tools::{decode_u32, encode, Decoder, Frame, Kind, Open};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

struct Helper {
    child: Child,
    port: std::fs::File,
    decoder: Decoder,
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Helper {
    fn start() -> Self {
        let pty = nix::pty::openpty(None, None).unwrap();
        // A raw line: the frames' bytes pass as they are.
        let mut t = nix::sys::termios::tcgetattr(&pty.slave).unwrap();
        nix::sys::termios::cfmakeraw(&mut t);
        nix::sys::termios::tcsetattr(&pty.slave, nix::sys::termios::SetArg::TCSANOW, &t).unwrap();
        let name = std::fs::read_link(format!("/proc/self/fd/{}", pty.slave.as_raw_fd())).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_husk-vm-tools"))
            .env("HUSK_VM_TOOLS_PORT", &name)
            .spawn()
            .unwrap();
        // The helper opens the slave by name; ours may go.
        drop(pty.slave);
        let port = std::fs::File::from(pty.master);
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        let flags = OFlag::from_bits_truncate(fcntl(port.as_raw_fd(), FcntlArg::F_GETFL).unwrap());
        fcntl(
            port.as_raw_fd(),
            FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK),
        )
        .unwrap();
        Helper {
            child,
            port,
            decoder: Decoder::default(),
        }
    }

    fn send(&mut self, kind: Kind, session: u32, payload: &[u8]) {
        self.port
            .write_all(&encode(kind, session, payload))
            .unwrap();
    }

    /// Frames until `done` says enough, at most 20 s.
    fn read_until(&mut self, done: impl Fn(&[Frame]) -> bool) -> Vec<Frame> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut frames = Vec::new();
        let mut buf = [0u8; 4096];
        while !done(&frames) {
            assert!(Instant::now() < deadline, "no answer: {frames:?}");
            match self.port.read(&mut buf) {
                Ok(n) if n > 0 => self.decoder.push(&buf[..n]),
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
            while let Some(f) = self.decoder.next_frame().unwrap() {
                frames.push(f);
            }
        }
        frames
    }
}

fn exited(session: u32) -> impl Fn(&[Frame]) -> bool {
    move |fs: &[Frame]| {
        fs.iter()
            .any(|f| f.session == session && matches!(f.kind, Kind::Exit | Kind::Error))
    }
}

fn output(frames: &[Frame], session: u32, kind: Kind) -> String {
    frames
        .iter()
        .filter(|f| f.session == session && f.kind == kind)
        .map(|f| String::from_utf8_lossy(&f.payload).into_owned())
        .collect()
}

fn exit_code(frames: &[Frame], session: u32) -> u32 {
    let f = frames
        .iter()
        .find(|f| f.session == session && f.kind == Kind::Exit)
        .unwrap_or_else(|| panic!("no exit of {session}: {frames:?}"));
    decode_u32(f).unwrap()
}

#[test]
fn the_helper_serves_sessions_on_a_pty_and_on_pipes() {
    let mut h = Helper::start();
    // Garbage first (an earlier connection's tail), then the hello.
    h.port.write_all(b"garbage!!!!!").unwrap();
    h.send(Kind::Hello, 0, b"12345678");
    let f = h.read_until(|fs| !fs.is_empty());
    assert_eq!(
        (f[0].kind, f[0].payload.as_slice()),
        (Kind::Hello, &b"12345678"[..])
    );

    // A frame for no session: nothing happens.
    h.send(Kind::Stdin, 99, b"lost\n");
    let open = |tty, args: &[&str]| Open {
        tty,
        cwd: "/".into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec![],
    };
    h.send(
        Kind::Open,
        1,
        &open(Some((33, 101)), &["sh"]).encode().unwrap(),
    );
    let f = h.read_until(|fs| fs.iter().any(|f| f.kind == Kind::Started));
    assert!(decode_u32(&f[0]).unwrap() > 1, "{f:?}");
    h.send(Kind::Stdin, 1, b"tty; stty size; echo $((6*7)); exit 3\n");
    let f = h.read_until(exited(1));
    let text = output(&f, 1, Kind::Stdout);
    assert!(text.contains("/dev/pts/"), "{text:?}");
    assert!(text.contains("33 101"), "{text:?}");
    assert!(text.contains("42\r\n"), "{text:?}");
    assert_eq!(exit_code(&f, 1), 3);

    h.send(
        Kind::Open,
        2,
        &open(None, &["sh", "-c", "cat; echo err >&2; kill -9 $$"])
            .encode()
            .unwrap(),
    );
    h.send(Kind::Stdin, 2, b"piped\n");
    h.send(Kind::Stdin, 2, b"");
    let f = h.read_until(exited(2));
    assert_eq!(output(&f, 2, Kind::Stdout), "piped\n");
    assert_eq!(output(&f, 2, Kind::Stderr), "err\n");
    assert_eq!(exit_code(&f, 2), 128 + 9);

    h.send(
        Kind::Open,
        3,
        &open(None, &["/nonexistent"]).encode().unwrap(),
    );
    let f = h.read_until(exited(3));
    let error = output(&f, 3, Kind::Error);
    assert!(error.contains("/nonexistent"), "{f:?}");
}
