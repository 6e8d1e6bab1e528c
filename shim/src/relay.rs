//! stdio between containerd's FIFOs and the agent's streams. Output is
//! relayed until the agent's stream ends (the process's pipe hit EOF), so
//! the exit is reported only after the last byte is written.

use husk_proto::agent::agent_client::AgentClient;
use husk_proto::agent::{OutputStream, ReadOutputRequest, StdinChunk};
use std::io::Read;
use tokio::io::AsyncWriteExt;
use tonic::transport::Channel;

/// Copies one output stream of `container_id` into the FIFO at `path`.
pub async fn relay_output(
    mut agent: AgentClient<Channel>,
    container_id: String,
    exec_id: String,
    stream: OutputStream,
    path: String,
) -> anyhow::Result<()> {
    // Read-write so the open does not fail when the reader is not there yet.
    let mut fifo = tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_sender(&path)?;
    let mut chunks = agent
        .read_output(ReadOutputRequest {
            container_id,
            exec_id,
            stream: stream as i32,
        })
        .await?
        .into_inner();
    while let Some(chunk) = chunks.message().await? {
        fifo.write_all(&chunk.data).await?;
    }
    Ok(())
}

/// Copies the stdin FIFO at `path` to the process until EOF, which the
/// process then sees as its own EOF.
pub async fn relay_stdin(
    mut agent: AgentClient<Channel>,
    container_id: String,
    exec_id: String,
    path: String,
) -> anyhow::Result<()> {
    let (tx, rx) = tokio::sync::mpsc::channel::<StdinChunk>(4);
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
            let chunk = StdinChunk {
                data: buf[..n].to_vec(),
                ..Default::default()
            };
            if tx.blocking_send(chunk).is_err() {
                return Ok(());
            }
        }
    });
    // The agent learns the container id from the first message, so an
    // empty input still sends one message naming it.
    let opening = tokio_stream::once(StdinChunk {
        container_id,
        exec_id,
        data: Vec::new(),
    });
    let rest = tokio_stream::wrappers::ReceiverStream::new(rx);
    agent
        .write_stdin(tokio_stream::StreamExt::chain(opening, rest))
        .await?;
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
