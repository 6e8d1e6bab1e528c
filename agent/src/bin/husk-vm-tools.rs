//! husk-vm-tools: `kubectl exec -it` into a husk-vm VM that has no sshd
//! and no husk agent (docs/vm-pods.md, "Interactive exec"). husk puts it on
//! a read-only disk it attaches to the VM, and the VM's cloud-init starts
//! it from there (the seed's vendor-data); it serves the tools channel
//! (husk-proto's `tools`) on the virtio-serial port
//! /dev/virtio-ports/io.husk.tools.0: each session runs a command as root
//! on a PTY (with a terminal) or on pipes, passes its input, window size
//! and signals, and sends back its output and exit.
//!
//! Plain threads, no runtime: a reader for the port, and per session a
//! waiter and a thread per output. Linked statically, so it runs on any
//! x86-64 Linux guest. What the host sends is bounded by the frame format;
//! a stream that stops making sense is skipped up to the host's next
//! Hello. When the host goes away (its end of the port closes), every
//! session's process group is killed: nobody is left to read it.

use husk_proto::tools::{self, decode_size, decode_u32, encode, Decoder, Frame, Kind, Open};
use nix::pty::{openpty, Winsize};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a command's output may go on after it exited (a background
/// process still writing) before its process group is killed.
const OUTPUT_AFTER_EXIT: Duration = Duration::from_secs(1);
/// ASCII EOT: the terminal's end-of-file character.
const EOT: u8 = 0x04;
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A running command: its process group and its input.
struct Session {
    pid: i32,
    stdin: Option<File>,
    tty: bool,
}

type Sessions = Arc<Mutex<HashMap<u32, Session>>>;
/// The port's writing end: whole frames, one at a time.
type Port = Arc<Mutex<File>>;

fn main() {
    // HUSK_VM_TOOLS_PORT: another device to serve (tests: a raw PTY).
    let path = std::env::var("HUSK_VM_TOOLS_PORT")
        .unwrap_or_else(|_| format!("/dev/virtio-ports/{}", tools::PORT));
    loop {
        if let Err(e) = serve(&path) {
            eprintln!("husk-vm-tools: {path}: {e}");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Serves the port until it fails.
fn serve(path: &str) -> std::io::Result<()> {
    let mut port = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let out: Port = Arc::new(Mutex::new(port.try_clone()?));
    let sessions = Sessions::default();
    let mut decoder = Decoder::default();
    // Until the host's Hello, nothing is taken as a command.
    let mut synced = false;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = port.read(&mut buf)?;
        if n == 0 {
            // The host's end is closed: its sessions have nobody left.
            if synced {
                end_all(&sessions);
                synced = false;
                decoder = Decoder::default();
            }
            std::thread::sleep(Duration::from_millis(250));
            continue;
        }
        decoder.push(&buf[..n]);
        loop {
            match decoder.next_frame() {
                Ok(Some(f)) if f.kind == Kind::Hello => {
                    end_all(&sessions);
                    synced = true;
                    send(&out, Kind::Hello, 0, &f.payload);
                }
                Ok(Some(f)) if synced => handle(f, &sessions, &out),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    eprintln!("husk-vm-tools: {e}; waiting for the host's next hello");
                    synced = false;
                    decoder.resync();
                }
            }
        }
    }
}

fn send(out: &Port, kind: Kind, session: u32, payload: &[u8]) {
    let frame = encode(kind, session, payload);
    // The host may be gone: what it would have read is dropped.
    let _ = out
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .write_all(&frame);
}

/// Kills every session's process group (their waiters report the exits).
fn end_all(sessions: &Sessions) {
    for (_, s) in sessions.lock().unwrap_or_else(|e| e.into_inner()).drain() {
        let _ = killpg(Pid::from_raw(s.pid), Signal::SIGKILL);
    }
}

fn handle(f: Frame, sessions: &Sessions, out: &Port) {
    let id = f.session;
    match f.kind {
        Kind::Open => match Open::decode(&f.payload) {
            Ok(open) => {
                if let Err(e) = start(id, open, sessions, out) {
                    send(out, Kind::Error, id, e.as_bytes());
                }
            }
            Err(e) => send(out, Kind::Error, id, e.to_string().as_bytes()),
        },
        Kind::Stdin => {
            let mut all = sessions.lock().unwrap_or_else(|e| e.into_inner());
            let Some(s) = all.get_mut(&id) else { return };
            if f.payload.is_empty() {
                match (s.tty, s.stdin.as_mut()) {
                    (true, Some(t)) => drop(t.write_all(&[EOT])),
                    _ => s.stdin = None,
                }
            } else if let Some(input) = s.stdin.as_mut() {
                let _ = input.write_all(&f.payload);
            }
        }
        Kind::Resize => {
            let all = sessions.lock().unwrap_or_else(|e| e.into_inner());
            if let (Some(s), Ok((rows, cols))) = (all.get(&id), decode_size(&f)) {
                if let (true, Some(t)) = (s.tty, s.stdin.as_ref()) {
                    set_size(t, rows, cols);
                }
            }
        }
        Kind::Signal => {
            let all = sessions.lock().unwrap_or_else(|e| e.into_inner());
            let signal = decode_u32(&f)
                .ok()
                .and_then(|n| Signal::try_from(n as i32).ok());
            if let (Some(s), Some(signal)) = (all.get(&id), signal) {
                let _ = killpg(Pid::from_raw(s.pid), signal);
            }
        }
        // What only the guest sends.
        _ => {}
    }
}

fn set_size(pty: &File, rows: u16, cols: u16) {
    let ws = Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ on a PTY master we hold, with a valid winsize.
    unsafe {
        nix::libc::ioctl(pty.as_raw_fd(), nix::libc::TIOCSWINSZ, &ws);
    }
}

/// A started command: the child, its input, its outputs.
type Spawned = (std::process::Child, Option<File>, Vec<(Kind, File)>);

/// Starts `open` as session `id`: the command in a session of its own.
fn start(id: u32, open: Open, sessions: &Sessions, out: &Port) -> Result<(), String> {
    if sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains_key(&id)
    {
        return Err(format!("session {id} is running already"));
    }
    let mut env = open.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(DEFAULT_PATH.into());
    }
    if open.tty.is_some() && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    let cwd = if std::path::Path::new(&open.cwd).is_dir() {
        open.cwd.as_str()
    } else {
        "/"
    };
    let mut cmd = Command::new(&open.args[0]);
    cmd.args(&open.args[1..])
        .env_clear()
        .envs(env.iter().filter_map(|e| e.split_once('=')))
        .current_dir(cwd);
    let io = |e: std::io::Error| format!("{}: {e}", open.args[0]);
    let (child, stdin, outputs) = match open.tty {
        Some(size) => spawn_on_pty(cmd, size).map_err(io)?,
        None => spawn_on_pipes(cmd).map_err(io)?,
    };
    let pid = child.id() as i32;
    sessions.lock().unwrap_or_else(|e| e.into_inner()).insert(
        id,
        Session {
            pid,
            stdin,
            tty: open.tty.is_some(),
        },
    );
    send(out, Kind::Started, id, &(pid as u32).to_be_bytes());
    let relays: Vec<_> = outputs
        .into_iter()
        .map(|(kind, file)| {
            let out = out.clone();
            std::thread::spawn(move || relay(file, kind, id, &out))
        })
        .collect();
    let (sessions, out) = (sessions.clone(), out.clone());
    std::thread::spawn(move || {
        let status = wait(child, pid, relays);
        sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        send(&out, Kind::Exit, id, &status.to_be_bytes());
    });
    Ok(())
}

/// Starts `cmd` on a new PTY of `(rows, cols)` (0 0: the default size)
/// as its controlling terminal.
fn spawn_on_pty(mut cmd: Command, (rows, cols): (u16, u16)) -> std::io::Result<Spawned> {
    let size = (rows > 0 && cols > 0).then_some(Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    });
    let pty = openpty(size.as_ref(), None).map_err(std::io::Error::from)?;
    for fd in [&pty.master, &pty.slave] {
        cloexec(fd);
    }
    let stdio = || pty.slave.try_clone().map(Stdio::from);
    cmd.stdin(stdio()?).stdout(stdio()?).stderr(stdio()?);
    // SAFETY: between fork and exec only async-signal-safe calls: setsid,
    // and ioctl on fd 0, the PTY's slave by then.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()?;
            if nix::libc::ioctl(0, nix::libc::TIOCSCTTY as _, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(pty.slave);
    let master = File::from(pty.master);
    let reader = master.try_clone()?;
    Ok((child, Some(master), vec![(Kind::Stdout, reader)]))
}

/// Starts `cmd` on pipes, in a session of its own.
fn spawn_on_pipes(mut cmd: Command) -> std::io::Result<Spawned> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(drop).map_err(Into::into));
    }
    let mut child = cmd.spawn()?;
    let stdin = child.stdin.take().map(|s| File::from(OwnedFd::from(s)));
    let mut outputs = Vec::new();
    if let Some(s) = child.stdout.take() {
        outputs.push((Kind::Stdout, File::from(OwnedFd::from(s))));
    }
    if let Some(s) = child.stderr.take() {
        outputs.push((Kind::Stderr, File::from(OwnedFd::from(s))));
    }
    Ok((child, stdin, outputs))
}

/// Waits for the command, gives its output a moment to drain, kills what
/// is left of its process group; returns its status (the exit code, or
/// 128 + the signal that killed it).
fn wait(mut child: std::process::Child, pid: i32, relays: Vec<std::thread::JoinHandle<()>>) -> u32 {
    let status = child
        .wait()
        .map(|s| match (s.code(), s.signal()) {
            (Some(c), _) => c as u32 & 0xff,
            (None, Some(sig)) => 128 + sig as u32,
            _ => 255,
        })
        .unwrap_or(255);
    let drained = || {
        let deadline = std::time::Instant::now() + OUTPUT_AFTER_EXIT;
        while relays.iter().any(|r| !r.is_finished()) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    drained();
    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    // A process that left the group may still hold the output: it is not
    // waited for past a second more.
    drained();
    status
}

fn cloexec(fd: &OwnedFd) {
    let _ = nix::fcntl::fcntl(
        fd.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
}

/// Sends what `file` gives as `kind` frames until it ends (EOF, or EIO
/// from a PTY whose every process is gone).
fn relay(mut file: File, kind: Kind, id: u32, out: &Port) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n @ 1..) = file.read(&mut buf) {
        send(out, kind, id, &buf[..n]);
    }
}
