//! `localhost` of the pod's network namespace, carried into the guest.
//!
//! containerd's CRI PortForward (kubectl port-forward) enters the pod's
//! network namespace and dials `localhost:<port>`. Under runc the server
//! is right there; under husk it is in the VM, and the namespace's
//! loopback does not reach it. So the shim listens on one 127.0.0.1 port
//! in the namespace, an iptables REDIRECT in the namespace's nat OUTPUT
//! chain sends every other loopback TCP connection to it, and for each
//! connection the shim reads the port that was dialled (SO_ORIGINAL_DST)
//! and asks the agent's forwarder (vsock `FORWARD_VSOCK_PORT`) for
//! 127.0.0.1:<port> in the guest. Nothing else uses loopback in that
//! namespace: the pod's processes all run in the VM.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("listening in the pod's network namespace: {0}")]
    Listen(#[source] crate::host::network::NetworkError),
    #[error("listening in {netns}: {source}")]
    Listener {
        netns: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("running nsenter iptables in {netns}: {source}")]
    Nsenter {
        netns: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("iptables in {netns}: {stderr}")]
    Iptables { netns: PathBuf, stderr: String },
}

/// A running forwarder; `stop` removes its rule and listener.
pub struct LocalForward {
    netns: PathBuf,
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

/// The iptables arguments that add (-A) or delete (-D) the redirect.
fn rule(action: &str, port: u16) -> Vec<String> {
    let port = port.to_string();
    [
        "-w",
        "-t",
        "nat",
        action,
        "OUTPUT",
        "-o",
        "lo",
        "-p",
        "tcp",
        "-d",
        "127.0.0.1/32",
        "!",
        "--dport",
        &port,
        "-j",
        "REDIRECT",
        "--to-ports",
        &port,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn iptables(netns: &Path, args: &[String]) -> Result<(), ForwardError> {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .arg("iptables")
        .args(args)
        .output()
        .map_err(|source| ForwardError::Nsenter {
            netns: netns.to_owned(),
            source,
        })?;
    if !out.status.success() {
        return Err(ForwardError::Iptables {
            netns: netns.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// A listener on 127.0.0.1 in `netns` (made on a thread that entered it).
fn listen_in(netns: &Path) -> Result<std::net::TcpListener, ForwardError> {
    crate::host::network::on_thread_in_netns(netns, || {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.set_nonblocking(true)?;
        Ok(l)
    })
    .map_err(ForwardError::Listen)
}

pub async fn start(netns: &Path, agent_socket: PathBuf) -> Result<LocalForward, ForwardError> {
    let std_listener = listen_in(netns)?;
    let port = std_listener
        .local_addr()
        .map_err(|source| ForwardError::Listener {
            netns: netns.to_owned(),
            source,
        })?
        .port();
    let listener = tokio::net::TcpListener::from_std(std_listener).map_err(|source| {
        ForwardError::Listener {
            netns: netns.to_owned(),
            source,
        }
    })?;
    iptables(netns, &rule("-A", port))?;
    let task = tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let socket = agent_socket.clone();
            tokio::spawn(async move {
                if let Err(e) = forward(conn, &socket).await {
                    tracing::debug!("port forward: {e}");
                }
            });
        }
    });
    Ok(LocalForward {
        netns: netns.to_owned(),
        port,
        task,
    })
}

/// The destination port a REDIRECTed connection was dialled to.
fn original_port(conn: &tokio::net::TcpStream) -> std::io::Result<u16> {
    const SO_ORIGINAL_DST: nix::libc::c_int = 80;
    // SAFETY: sockaddr_in is plain data, valid when all zero.
    let mut addr: nix::libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<nix::libc::sockaddr_in>() as nix::libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `addr`, which is
    // that large and lives across the call; the fd is the open socket.
    let ret = unsafe {
        nix::libc::getsockopt(
            conn.as_raw_fd(),
            nix::libc::SOL_IP,
            SO_ORIGINAL_DST,
            (&mut addr as *mut nix::libc::sockaddr_in).cast(),
            &mut len,
        )
    };
    if ret == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(u16::from_be(addr.sin_port))
}

async fn forward(mut conn: tokio::net::TcpStream, agent_socket: &Path) -> anyhow::Result<()> {
    let port = original_port(&conn)?;
    let mut guest =
        husk_hypervisor::hybrid_vsock_connect(agent_socket, husk_proto::FORWARD_VSOCK_PORT).await?;
    guest.write_all(format!("PORT {port}\n").as_bytes()).await?;
    read_forward_reply(&mut guest)
        .await
        .map_err(|e| anyhow::anyhow!("guest port {port}: {e}"))?;
    tokio::io::copy_bidirectional(&mut conn, &mut guest).await?;
    Ok(())
}

/// Longest reply line of the guest's forwarder that is read.
const MAX_FORWARD_REPLY: usize = 256;

/// Why the guest's forwarder did not take a `PORT` request.
#[derive(Debug, thiserror::Error)]
pub enum ForwardReplyError {
    #[error("reading the forwarder's reply: {0}")]
    Io(#[from] std::io::Error),
    /// Its reply, bounded and without control characters.
    #[error("{0}")]
    Refused(String),
}

/// Reads the guest forwarder's reply to `PORT <n>`: `OK\n`, or anything
/// else (`ERR <reason>\n`) as a refusal. Byte by byte, at most
/// [`MAX_FORWARD_REPLY`] bytes: nothing after the reply line may be taken
/// from the stream, it is the connection's.
pub async fn read_forward_reply<R: AsyncRead + Unpin>(
    guest: &mut R,
) -> Result<(), ForwardReplyError> {
    let mut reply = Vec::new();
    while reply.last() != Some(&b'\n') && reply.len() < MAX_FORWARD_REPLY {
        reply.push(guest.read_u8().await?);
    }
    if reply != b"OK\n" {
        let text = String::from_utf8_lossy(&reply);
        return Err(ForwardReplyError::Refused(crate::task::agent::sanitize(
            text.trim(),
        )));
    }
    Ok(())
}

impl LocalForward {
    pub fn stop(self) {
        self.task.abort();
        if let Err(e) = iptables(&self.netns, &rule("-D", self.port)) {
            // The namespace may be gone already (CNI teardown ran first).
            tracing::debug!("port forward rule: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_forwarder_reply_is_one_line_and_a_refusal_is_printable() {
        let mut input: &[u8] = b"OK\nHTTP/1.1";
        read_forward_reply(&mut input).await.unwrap();
        assert_eq!(input, b"HTTP/1.1", "the stream after the line is left");
        let mut input: &[u8] = b"ERR connection refused\x1b[2J\n";
        let e = read_forward_reply(&mut input).await.unwrap_err();
        assert_eq!(e.to_string(), "ERR connection refused?[2J");
        let long = vec![b'x'; 1000];
        let mut input = &long[..];
        assert!(read_forward_reply(&mut input).await.is_err());
        assert_eq!(input.len(), 1000 - MAX_FORWARD_REPLY, "no more read");
    }

    #[test]
    fn the_rule_redirects_loopback_tcp_except_its_own_port() {
        let r = rule("-A", 41000).join(" ");
        assert_eq!(
            r,
            "-w -t nat -A OUTPUT -o lo -p tcp -d 127.0.0.1/32 ! --dport 41000 -j REDIRECT --to-ports 41000"
        );
    }
}
