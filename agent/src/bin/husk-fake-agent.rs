//! husk-fake-agent: a replaced agent, for the hostile-guest tests. It is
//! PID 1 of a test initrd (scripts/build-initrd.sh --fake), boots as the
//! real agent does as far as the host can tell (console marker, Health,
//! clock, network), accepts containers, and then never answers a call
//! that would let the host take a container back: SignalContainer,
//! WaitContainer, RemoveContainer, output streams. The host must stop
//! such a VM on its own (docs/security.md).
//!
//! Not installed on nodes; built only for the tests.

use husk_proto::agent::agent_server::{Agent, AgentServer};
use husk_proto::agent::*;
use std::pin::Pin;
use tokio_stream::Stream;
use tokio_vsock::{VsockAddr, VsockListener, VMADDR_CID_ANY};
use tonic::{Request, Response, Status, Streaming};

type Reply<T> = Result<Response<T>, Status>;
type Chunks<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Never answers.
async fn hang<T>() -> T {
    std::future::pending().await
}

struct Fake;

#[tonic::async_trait]
impl Agent for Fake {
    async fn health(&self, _: Request<HealthRequest>) -> Reply<HealthResponse> {
        Ok(Response::new(HealthResponse {
            agent_version: "fake".into(),
        }))
    }

    async fn guest_info(&self, _: Request<GuestInfoRequest>) -> Reply<GuestInfoResponse> {
        Ok(Response::new(GuestInfoResponse {
            agent_version: "fake".into(),
            ..Default::default()
        }))
    }

    async fn read_shared_file(
        &self,
        _: Request<ReadSharedFileRequest>,
    ) -> Reply<ReadSharedFileResponse> {
        hang().await
    }

    async fn set_clock(&self, _: Request<SetClockRequest>) -> Reply<Empty> {
        Ok(Response::new(Empty {}))
    }

    async fn configure_network(&self, _: Request<ConfigureNetworkRequest>) -> Reply<Empty> {
        Ok(Response::new(Empty {}))
    }

    async fn shutdown(&self, _: Request<ShutdownRequest>) -> Reply<ShutdownResponse> {
        hang().await
    }

    async fn create_container(
        &self,
        _: Request<CreateContainerRequest>,
    ) -> Reply<CreateContainerResponse> {
        Ok(Response::new(CreateContainerResponse { pid: 2 }))
    }

    async fn start_container(&self, _: Request<ContainerRequest>) -> Reply<StartContainerResponse> {
        Ok(Response::new(StartContainerResponse { pid: 2 }))
    }

    async fn wait_container(&self, _: Request<ContainerRequest>) -> Reply<WaitContainerResponse> {
        hang().await
    }

    async fn signal_container(&self, _: Request<SignalContainerRequest>) -> Reply<Empty> {
        hang().await
    }

    async fn remove_container(&self, _: Request<ContainerRequest>) -> Reply<Empty> {
        hang().await
    }

    async fn list_processes(&self, _: Request<ContainerRequest>) -> Reply<ListProcessesResponse> {
        hang().await
    }

    async fn exec_process(&self, _: Request<ExecProcessRequest>) -> Reply<CreateContainerResponse> {
        hang().await
    }

    async fn pause_container(&self, _: Request<ContainerRequest>) -> Reply<Empty> {
        hang().await
    }

    async fn resume_container(&self, _: Request<ContainerRequest>) -> Reply<Empty> {
        hang().await
    }

    type ReadOutputStream = Chunks<OutputChunk>;

    async fn read_output(&self, _: Request<ReadOutputRequest>) -> Reply<Self::ReadOutputStream> {
        // A stream that is open and never ends.
        Ok(Response::new(Box::pin(tokio_stream::pending())))
    }

    async fn write_stdin(&self, _: Request<Streaming<StdinChunk>>) -> Reply<Empty> {
        hang().await
    }

    async fn resize_pty(&self, _: Request<ResizePtyRequest>) -> Reply<Empty> {
        hang().await
    }

    async fn container_stats(&self, _: Request<ContainerRequest>) -> Reply<ContainerStatsResponse> {
        hang().await
    }

    async fn update_container(&self, _: Request<UpdateContainerRequest>) -> Reply<Empty> {
        hang().await
    }

    type WatchOomStream = Chunks<OomEvent>;

    async fn watch_oom(&self, _: Request<ContainerRequest>) -> Reply<Self::WatchOomStream> {
        Ok(Response::new(Box::pin(tokio_stream::pending())))
    }
}

/// The kernel gives /init no console when the initrd has no /dev/console:
/// mount devtmpfs and take it, so the marker reaches the host.
fn attach_console() {
    use std::os::fd::AsRawFd;
    let _ = std::fs::create_dir_all("/dev");
    let _ = nix::mount::mount(
        Some("devtmpfs"),
        "/dev",
        Some("devtmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    );
    if let Ok(console) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        for fd in 0..=2 {
            // SAFETY: dup2 onto the standard descriptors of this
            // single-threaded process (no runtime yet); `console` is open.
            unsafe { nix::libc::dup2(console.as_raw_fd(), fd) };
        }
    }
}

fn main() {
    if std::process::id() == 1 {
        attach_console();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let served: Result<(), Box<dyn std::error::Error>> = runtime.block_on(async {
        let listener =
            VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, husk_proto::AGENT_VSOCK_PORT))?;
        eprintln!("husk-fake-agent: a replaced agent that answers nothing that matters");
        eprintln!("{}", husk_proto::AGENT_LISTENING_MARKER);
        tonic::transport::Server::builder()
            .add_service(AgentServer::new(Fake))
            .serve_with_incoming(listener.incoming())
            .await?;
        Ok(())
    });
    if let Err(e) = served {
        eprintln!("husk-fake-agent: {e}");
    }
    // PID 1 must not exit; the host ends this VM.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
