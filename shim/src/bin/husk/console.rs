//! `husk console POD`: a root shell in the pod's guest, outside any
//! container (husk_shim::micro_vm::console has the protocol). Root only. When stdin
//! is a terminal it is put in raw mode for the session and restored after;
//! otherwise stdin is sent as it is, then ^D, and the session ends when
//! the shell exits.

use crate::args::{self, Args, UsageError};
use anyhow::{bail, Context};
use nix::sys::termios;
use std::os::fd::AsFd;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// ASCII EOT, the terminal's end-of-file character.
const EOT: u8 = 0x04;

pub fn run(mut args: Args) -> anyhow::Result<i32> {
    let source = args::config_source(&mut args)?;
    let pod = args
        .positional()
        .ok_or_else(|| UsageError("console needs a pod id".into()))?;
    args.finish()?;
    if !nix::unistd::geteuid().is_root() {
        bail!("husk console is for root only: it opens a root shell in a pod's guest");
    }
    let config = args::load(&source)?;
    let stdin = std::io::stdin();
    let tty = std::io::IsTerminal::is_terminal(&stdin);
    let (rows, cols) = if tty { window_size() } else { (0, 0) };
    let rt = args::runtime()?;
    let stream = rt.block_on(husk_shim::micro_vm::console::open(
        &config,
        &pod,
        rows,
        cols,
        CONNECT_TIMEOUT,
    ))?;
    // Raw mode from here until the session ends, restored on every path.
    let saved = if tty {
        let saved = termios::tcgetattr(stdin.as_fd()).context("reading the terminal's mode")?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), termios::SetArg::TCSANOW, &raw)
            .context("setting the terminal raw")?;
        Some(saved)
    } else {
        None
    };
    let result = rt.block_on(relay(stream));
    if let Some(saved) = saved {
        let _ = termios::tcsetattr(stdin.as_fd(), termios::SetArg::TCSANOW, &saved);
    }
    // The stdin reader may still block in read(2): do not wait for it.
    rt.shutdown_background();
    result?;
    Ok(0)
}

/// Copies stdin to the guest and the guest to stdout until the guest
/// closes the session.
async fn relay(stream: tokio::net::UnixStream) -> anyhow::Result<()> {
    let (mut from_guest, mut to_guest) = stream.into_split();
    tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buf = vec![0u8; 4096];
        loop {
            match stdin.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to_guest.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
        // End of input: the terminal's end-of-file character (^D), which
        // ends the shell at an empty line. Not a half-close: the vsock
        // backend closes the whole stream on one, output and all, and
        // dropping `to_guest` would be one, so it is kept until the end.
        let _ = to_guest.write_all(&[EOT]).await;
        std::future::pending::<()>().await;
    });
    let mut stdout = tokio::io::stdout();
    let mut buf = vec![0u8; 8192];
    loop {
        let n = from_guest
            .read(&mut buf)
            .await
            .context("reading from the guest")?;
        if n == 0 {
            break;
        }
        stdout.write_all(&buf[..n]).await?;
        stdout.flush().await?;
    }
    Ok(())
}

fn window_size() -> (u16, u16) {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into `ws`, which lives for
    // the call; fd 0 is ours.
    let rc = unsafe { libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) };
    if rc == 0 {
        (ws.ws_row, ws.ws_col)
    } else {
        (0, 0)
    }
}
