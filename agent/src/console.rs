//! The debug console's guest end: a root shell on a PTY, outside any
//! container, for `husk console` on the host (husk_shim::console). Served
//! only when the host asked for it on the kernel command line
//! ([`husk_proto::DEBUG_CONSOLE_PARAM`], which the kernel hands to /init as
//! an environment variable); otherwise the port is not even bound. Only the
//! host is served (host_only.rs), never a process in the guest.
//!
//! The shell is the initrd's busybox. It is carried into the agent's tmpfs
//! root only when the console is on ([`carry_shell`]) and freed otherwise,
//! so a guest without the console neither holds nor can run it.
//!
//! A session: the host's first line is `SIZE <rows> <cols>` (bounded),
//! then bytes both ways between the stream and the PTY. When the host's
//! input ends, the shell gets end-of-file; when the shell and everything on
//! its terminal are gone, or the host goes away, the session's process
//! group is killed and the stream closed.

use nix::pty::{openpty, Winsize};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The shell: busybox from the initrd (scripts/build-initrd.sh).
const SHELL: &str = "/bin/busybox";
/// Longest first line: "SIZE 65535 65535\n" and slack.
const MAX_SIZE_LINE: usize = 32;
/// ASCII EOT: the terminal's end-of-file character (VEOF by default).
const EOT: u8 = 0x04;
/// Longest wait for the shell's first output before the host's input is
/// passed on anyway.
const SHELL_READY: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether the host asked for the console.
pub fn enabled() -> bool {
    let (name, value) = husk_proto::DEBUG_CONSOLE_PARAM
        .split_once('=')
        .unwrap_or((husk_proto::DEBUG_CONSOLE_PARAM, ""));
    std::env::var(name).is_ok_and(|v| v == value)
}

/// During the move to the tmpfs root: copies the shell into `new_root`
/// when the console is on, and frees the initramfs copy either way.
pub fn carry_shell(new_root: &Path) {
    let shell = Path::new(SHELL);
    if enabled() && shell.exists() {
        let target = new_root.join(SHELL.trim_start_matches('/'));
        let copied = target
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::copy(shell, &target));
        if let Err(e) = copied {
            eprintln!("husk-agent: debug console: copying {SHELL}: {e}");
        }
    }
    let _ = std::fs::remove_file(shell);
}

/// Listens for console sessions when the console is on.
pub fn serve() -> std::io::Result<()> {
    if !enabled() {
        return Ok(());
    }
    let port = husk_proto::DEBUG_CONSOLE_VSOCK_PORT;
    let listener = crate::host_only::bind(port)?;
    tracing::warn!(port, "debug console on: root shells are served to the host");
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok(stream) => {
                    tokio::spawn(async move {
                        if let Err(e) = session(stream).await {
                            tracing::warn!("debug console session: {e}");
                        }
                    });
                }
                Err(e) => tracing::warn!("debug console accept: {e}"),
            }
        }
    });
    Ok(())
}

/// `SIZE <rows> <cols>`: the PTY's size, None for `0 0` (keep it).
pub fn parse_size(line: &str) -> Result<Option<(u16, u16)>, String> {
    let rest = line
        .trim_end()
        .strip_prefix("SIZE ")
        .ok_or_else(|| format!("expected SIZE <rows> <cols>, got {:?}", line.trim_end()))?;
    let mut words = rest.split(' ');
    let mut number = || words.next().and_then(|w| w.parse::<u16>().ok());
    match (number(), number(), words.next()) {
        (Some(0), Some(0), None) => Ok(None),
        (Some(r), Some(c), None) => Ok(Some((r, c))),
        _ => Err(format!("{rest:?} is not <rows> <cols>")),
    }
}

async fn read_size_line<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<String> {
    let mut line = Vec::with_capacity(MAX_SIZE_LINE);
    loop {
        let b = stream.read_u8().await?;
        if b == b'\n' {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        if line.len() == MAX_SIZE_LINE {
            return Err(std::io::Error::other("first line too long"));
        }
        line.push(b);
    }
}

async fn session<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    mut stream: S,
) -> std::io::Result<()> {
    let size = parse_size(&read_size_line(&mut stream).await?).map_err(std::io::Error::other)?;
    let winsize = size.map(|(rows, cols)| Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    });
    let pty = openpty(winsize.as_ref(), None)?;
    // openpty's descriptors are inherited across exec: without this, the
    // shell of a session started meanwhile (or any process the agent
    // starts) would hold this session's terminal open, and its end would
    // never come.
    for fd in [&pty.master, &pty.slave] {
        nix::fcntl::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(fd),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )?;
    }
    let shell = spawn_shell(&pty.slave)?;
    drop(pty.slave);
    tracing::info!(pid = shell, "debug console session started");
    let mut from_pty = tokio::fs::File::from_std(std::fs::File::from(pty.master.try_clone()?));
    let mut to_pty = tokio::fs::File::from_std(std::fs::File::from(pty.master));
    let (mut from_host, mut to_host) = tokio::io::split(stream);
    // The shell discards what its terminal holds when its line editor
    // starts: input written before that (a piped script, and the ^D that
    // ends it) would be lost and the session never end. So the host's
    // input goes in once the shell has printed something (its prompt), or
    // after SHELL_READY at most.
    let (ready, shell_ready) = tokio::sync::oneshot::channel::<()>();
    let input = tokio::spawn(async move {
        let _ = tokio::time::timeout(SHELL_READY, shell_ready).await;
        let _ = tokio::io::copy(&mut from_host, &mut to_pty).await;
        // The host's input ended: so does the shell's.
        let _ = to_pty.write_all(&[EOT]).await;
        let _ = to_pty.flush().await;
    });
    // Ends when the terminal has no process left (EIO) or the host left.
    let mut first = [0u8; 4096];
    if let Ok(n @ 1..) = from_pty.read(&mut first).await {
        let _ = ready.send(());
        if to_host.write_all(&first[..n]).await.is_ok() {
            let _ = tokio::io::copy(&mut from_pty, &mut to_host).await;
        }
    }
    input.abort();
    // Nothing of the session outlives it.
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(shell),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = to_host.shutdown().await;
    tracing::info!(pid = shell, "debug console session ended");
    Ok(())
}

/// Starts the shell as a session leader with the PTY as its controlling
/// terminal and stdio. Its exit is collected by the agent's reaper.
fn spawn_shell(slave: &OwnedFd) -> std::io::Result<i32> {
    let stdio = || slave.try_clone().map(Stdio::from);
    let mut cmd = Command::new(SHELL);
    cmd.arg("sh")
        .env_clear()
        .env("PATH", "/bin:/sbin:/usr/bin:/usr/sbin")
        .env("HOME", "/")
        .env("TERM", "xterm")
        .current_dir("/")
        .stdin(stdio()?)
        .stdout(stdio()?)
        .stderr(stdio()?);
    // SAFETY: between fork and exec only async-signal-safe calls: setsid
    // and ioctl on fd 0, which is the PTY's slave by then.
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
    Ok(child.id() as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_lines_are_strict() {
        assert_eq!(parse_size("SIZE 24 80\n"), Ok(Some((24, 80))));
        assert_eq!(parse_size("SIZE 0 0"), Ok(None));
        for bad in [
            "SIZE 24\n",
            "SIZE 24 80 1\n",
            "SIZE -1 80\n",
            "size 24 80\n",
            "SIZE 70000 1\n",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    /// A whole session against this host's busybox (the guest's shell):
    /// the size is applied, input reaches the shell, its output comes
    /// back, and the session ends when the shell does.
    #[tokio::test]
    async fn a_session_runs_the_shell_on_a_pty() {
        if !Path::new(SHELL).exists() {
            println!("SKIPPED: no {SHELL} on this host (busybox-static)");
            return;
        }
        let (mut host, guest) = tokio::io::duplex(1 << 16);
        let served = tokio::spawn(session(guest));
        host.write_all(b"SIZE 33 101\nstty size; uname -r; exit\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(20),
            host.read_to_end(&mut out),
        )
        .await
        .expect("the session ends when the shell exits")
        .unwrap();
        served.await.unwrap().unwrap();
        let out = String::from_utf8_lossy(&out);
        let release = crate::guest::kernel_release();
        assert!(out.contains("33 101"), "{out:?}");
        assert!(out.contains(&release), "{out:?}");
    }

    #[tokio::test]
    async fn the_end_of_input_ends_the_shell() {
        if !Path::new(SHELL).exists() {
            println!("SKIPPED: no {SHELL} on this host (busybox-static)");
            return;
        }
        let (mut host, guest) = tokio::io::duplex(1 << 16);
        let served = tokio::spawn(session(guest));
        host.write_all(b"SIZE 0 0\necho hello\n").await.unwrap();
        host.shutdown().await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(20),
            host.read_to_end(&mut out),
        )
        .await
        .expect("the session ends at the end of input")
        .unwrap();
        served.await.unwrap().unwrap();
        assert!(String::from_utf8_lossy(&out).contains("hello"), "{out:?}");
    }

    #[test]
    fn off_unless_the_kernel_parameter_is_in_the_environment() {
        // The test process has no such variable.
        assert!(!enabled());
    }
}
