//! stdio between containerd's FIFOs and the agent's streams. Output is
//! relayed until the agent's stream ends (the process's pipe hit EOF), so
//! the exit is reported only after the last byte is written; what the
//! agent sends is bounded per message (`agent::VsockAgent::read_output`)
//! and never held beyond one chunk.

use crate::task::agent::AgentApi;
use husk_proto::agent::{ContainerRequest, OutputStream};
use std::io::Read;
use tokio::io::AsyncWriteExt;
use tokio_stream::StreamExt;

/// Copies one output stream of the process into the FIFO at `path`.
pub async fn relay_output<A: AgentApi>(
    agent: A,
    process: ContainerRequest,
    stream: OutputStream,
    path: String,
) -> anyhow::Result<()> {
    // Read-write so the open does not fail when the reader is not there yet.
    let mut fifo = tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_sender(&path)?;
    let mut chunks = agent.read_output(process, stream).await?;
    while let Some(chunk) = chunks.next().await {
        fifo.write_all(&chunk?).await?;
    }
    Ok(())
}

/// Copies the stdin FIFO at `path` to the process until EOF, which the
/// process then sees as its own EOF.
pub async fn relay_stdin<A: AgentApi>(
    agent: A,
    process: ContainerRequest,
    path: String,
) -> anyhow::Result<()> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    // A FIFO opened without a writer reads as EOF at once; a blocking open
    // waits for containerd's writer, so it runs on a blocking thread.
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut fifo = std::fs::File::open(&path)?;
        let mut buf = vec![0u8; husk_proto::IO_CHUNK_BYTES];
        loop {
            let n = fifo.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            if tx.blocking_send(buf[..n].to_vec()).is_err() {
                return Ok(());
            }
        }
    });
    agent.write_stdin(process, rx).await?;
    Ok(())
}

/// Wakes a relay blocked opening the stdin FIFO (no writer ever came) by
/// opening the other end for a moment; it then reads EOF and ends.
pub fn unblock_stdin(path: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    if path.is_empty() {
        return;
    }
    // O_NONBLOCK: fails at once (ENXIO) when no reader waits, instead of
    // blocking in turn.
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path);
}
