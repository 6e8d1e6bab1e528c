//! The agent API served to the host. Every request comes from the shim; the
//! answers are small and bounded.

use crate::containers::{Containers, Output};
use crate::guest;
use husk_proto::agent::agent_server::Agent;
use husk_proto::agent::*;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// How often an OOM watcher reads memory.events.
const OOM_POLL: std::time::Duration = std::time::Duration::from_millis(200);

pub struct AgentService {
    is_init: bool,
    started_ms: u64,
    serving_ms: u64,
    shared_dir: Option<PathBuf>,
    containers: Containers,
}

impl AgentService {
    pub fn new(
        is_init: bool,
        started_ms: u64,
        shared_dir: Option<PathBuf>,
        containers: Containers,
    ) -> Self {
        Self {
            is_init,
            started_ms,
            serving_ms: guest::boottime_ms(),
            shared_dir,
            containers,
        }
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    type ReadOutputStream = ReceiverStream<Result<OutputChunk, Status>>;
    type WatchOomStream = ReceiverStream<Result<OomEvent, Status>>;

    async fn configure_network(
        &self,
        request: Request<ConfigureNetworkRequest>,
    ) -> Result<Response<Empty>, Status> {
        let req = request.into_inner();
        crate::network::configure(&req).await.map_err(|e| match e {
            crate::network::NetworkError::Invalid { .. } => Status::invalid_argument(e.to_string()),
            _ => Status::internal(e.to_string()),
        })?;
        tracing::info!(
            interfaces = req.interfaces.len(),
            routes = req.routes.len(),
            "network configured"
        );
        Ok(Response::new(Empty {}))
    }

    async fn set_clock(
        &self,
        request: Request<SetClockRequest>,
    ) -> Result<Response<Empty>, Status> {
        let req = request.into_inner();
        if req.nanos >= 1_000_000_000 {
            return Err(Status::invalid_argument(format!(
                "nanos {} out of range",
                req.nanos
            )));
        }
        let now = nix::sys::time::TimeSpec::new(req.unix_seconds, req.nanos as i64);
        nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, now)
            .map_err(|e| Status::internal(format!("clock_settime: {e}")))?;
        Ok(Response::new(Empty {}))
    }

    async fn resize_pty(
        &self,
        request: Request<ResizePtyRequest>,
    ) -> Result<Response<Empty>, Status> {
        let req = request.into_inner();
        let dim = |v: u32| {
            u16::try_from(v)
                .map_err(|_| Status::invalid_argument(format!("window size {v} out of range")))
        };
        self.containers.resize(
            &req.container_id,
            &req.exec_id,
            dim(req.height)?,
            dim(req.width)?,
        )?;
        Ok(Response::new(Empty {}))
    }

    async fn container_stats(
        &self,
        request: Request<ContainerRequest>,
    ) -> Result<Response<ContainerStatsResponse>, Status> {
        let id = request.into_inner().container_id;
        let s = self.containers.stats(&id)?;
        Ok(Response::new(ContainerStatsResponse {
            cpu_stat: s.cpu_stat,
            memory_stat: s.memory_stat,
            memory_events: s.memory_events,
            memory_current: s.memory_current,
            memory_max: s.memory_max.unwrap_or(0),
            memory_peak: s.memory_peak,
            pids_current: s.pids_current,
            pids_max: s.pids_max.unwrap_or(0),
            io: s
                .io
                .into_iter()
                .map(
                    |(major, minor, read_bytes, write_bytes, read_ios, write_ios)| IoDeviceStats {
                        major,
                        minor,
                        read_bytes,
                        write_bytes,
                        read_ios,
                        write_ios,
                    },
                )
                .collect(),
        }))
    }

    async fn update_container(
        &self,
        request: Request<UpdateContainerRequest>,
    ) -> Result<Response<Empty>, Status> {
        let req = request.into_inner();
        self.containers
            .update(&req.container_id, &req.resources_json)?;
        tracing::info!(container_id = %req.container_id, "resources updated");
        Ok(Response::new(Empty {}))
    }

    async fn watch_oom(
        &self,
        request: Request<ContainerRequest>,
    ) -> Result<Response<Self::WatchOomStream>, Status> {
        let id = request.into_inner().container_id;
        let (cgroup, mut exit) = self.containers.oom_watch(&id)?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let count = || cgroup.memory_events().get("oom_kill").copied().unwrap_or(0);
            let mut seen = count();
            // memory.events is polled: a kill is reported within the
            // period, and always before the init's exit (the last check).
            loop {
                let exited = tokio::time::timeout(OOM_POLL, exit.wait_for(Option::is_some))
                    .await
                    .is_ok();
                let now = count();
                if now > seen {
                    seen = now;
                    tracing::info!(container_id = %id, oom_kill = now, "OOM kill");
                    if tx
                        .send(Ok(OomEvent {
                            oom_kill_count: now,
                        }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                if exited || tx.is_closed() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn create_container(
        &self,
        request: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        let req = request.into_inner();
        let id = req.container_id.clone();
        let pid = self
            .containers
            .create(req.container_id, &req.oci_spec_json, req.stdin)
            .await
            .inspect_err(|e| tracing::warn!(container_id = %id, %e, "create failed"))?;
        tracing::info!(container_id = %id, pid, "container created");
        Ok(Response::new(CreateContainerResponse { pid }))
    }

    async fn exec_process(
        &self,
        request: Request<ExecProcessRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        let req = request.into_inner();
        let pid = self
            .containers
            .exec(&req.container_id, req.exec_id.clone(), &req.process_json, req.stdin)
            .await
            .inspect_err(|e| tracing::warn!(container_id = %req.container_id, exec_id = %req.exec_id, %e, "exec failed"))?;
        tracing::info!(container_id = %req.container_id, exec_id = %req.exec_id, pid, "exec created");
        Ok(Response::new(CreateContainerResponse { pid }))
    }

    async fn pause_container(
        &self,
        request: Request<ContainerRequest>,
    ) -> Result<Response<Empty>, Status> {
        let id = request.into_inner().container_id;
        self.containers.freeze(&id, true).await?;
        tracing::info!(container_id = %id, "paused");
        Ok(Response::new(Empty {}))
    }

    async fn resume_container(
        &self,
        request: Request<ContainerRequest>,
    ) -> Result<Response<Empty>, Status> {
        let id = request.into_inner().container_id;
        self.containers.freeze(&id, false).await?;
        tracing::info!(container_id = %id, "resumed");
        Ok(Response::new(Empty {}))
    }

    async fn start_container(
        &self,
        request: Request<ContainerRequest>,
    ) -> Result<Response<StartContainerResponse>, Status> {
        let ContainerRequest {
            container_id: id,
            exec_id,
        } = request.into_inner();
        let pid = self.containers.start(&id, &exec_id).await?;
        tracing::info!(container_id = %id, exec_id, pid, "started");
        Ok(Response::new(StartContainerResponse { pid }))
    }

    async fn wait_container(
        &self,
        request: Request<ContainerRequest>,
    ) -> Result<Response<WaitContainerResponse>, Status> {
        let ContainerRequest {
            container_id: id,
            exec_id,
        } = request.into_inner();
        let exit_status = self.containers.wait(&id, &exec_id).await?;
        tracing::info!(container_id = %id, exec_id, exit_status, "exited");
        Ok(Response::new(WaitContainerResponse { exit_status }))
    }

    async fn signal_container(
        &self,
        request: Request<SignalContainerRequest>,
    ) -> Result<Response<Empty>, Status> {
        let req = request.into_inner();
        let signal = i32::try_from(req.signal)
            .map_err(|_| Status::invalid_argument(format!("invalid signal {}", req.signal)))?;
        self.containers
            .signal(&req.container_id, &req.exec_id, signal, req.all)?;
        Ok(Response::new(Empty {}))
    }

    async fn remove_container(
        &self,
        request: Request<ContainerRequest>,
    ) -> Result<Response<Empty>, Status> {
        let ContainerRequest {
            container_id: id,
            exec_id,
        } = request.into_inner();
        self.containers.remove(&id, &exec_id)?;
        tracing::info!(container_id = %id, exec_id, "removed");
        Ok(Response::new(Empty {}))
    }

    async fn list_processes(
        &self,
        request: Request<ContainerRequest>,
    ) -> Result<Response<ListProcessesResponse>, Status> {
        let id = request.into_inner().container_id;
        let pids = self.containers.pids(&id)?;
        Ok(Response::new(ListProcessesResponse { pids }))
    }

    async fn read_output(
        &self,
        request: Request<ReadOutputRequest>,
    ) -> Result<Response<Self::ReadOutputStream>, Status> {
        let req = request.into_inner();
        let which = match req.stream() {
            OutputStream::Stdout => Output::Stdout,
            OutputStream::Stderr => Output::Stderr,
        };
        let mut pipe = self
            .containers
            .take_output(&req.container_id, &req.exec_id, which)?;
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::spawn(async move {
            let mut buf = vec![0u8; husk_proto::IO_CHUNK_BYTES];
            loop {
                match pipe.read(&mut buf).await {
                    Ok(0) => return,
                    // A terminal's master reads EIO once the last holder of
                    // its slave end is gone: that is its end of file.
                    Err(e) if e.raw_os_error() == Some(nix::libc::EIO) => return,
                    Ok(n) => {
                        let chunk = OutputChunk {
                            data: buf[..n].to_vec(),
                        };
                        if tx.send(Ok(chunk)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn write_stdin(
        &self,
        request: Request<Streaming<StdinChunk>>,
    ) -> Result<Response<Empty>, Status> {
        let mut stream = request.into_inner();
        let Some(first) = stream.message().await? else {
            return Ok(Response::new(Empty {}));
        };
        let mut pipe = self
            .containers
            .take_stdin(&first.container_id, &first.exec_id)?;
        let mut chunk = Some(first);
        while let Some(c) = chunk {
            if let Err(e) = pipe.write_all(&c.data).await {
                // The process closed its stdin or exited: not the client's error.
                tracing::debug!(container_id = %c.container_id, %e, "stdin closed by the process");
                break;
            }
            chunk = stream.message().await?;
        }
        // Dropping the pipe is the EOF the process sees.
        Ok(Response::new(Empty {}))
    }

    async fn health(&self, _: Request<HealthRequest>) -> Result<Response<HealthResponse>, Status> {
        Ok(Response::new(HealthResponse {
            agent_version: AGENT_VERSION.into(),
        }))
    }

    async fn guest_info(
        &self,
        _: Request<GuestInfoRequest>,
    ) -> Result<Response<GuestInfoResponse>, Status> {
        let (memory_total_kib, memory_available_kib) = guest::memory_kib()
            .map_err(|e| Status::internal(format!("reading /proc/meminfo: {e}")))?;
        Ok(Response::new(GuestInfoResponse {
            agent_version: AGENT_VERSION.into(),
            kernel_release: guest::kernel_release(),
            boot_id: guest::boot_id(),
            uptime_ms: guest::boottime_ms(),
            agent_started_ms: self.started_ms,
            agent_serving_ms: self.serving_ms,
            memory_total_kib,
            memory_available_kib,
            online_cpus: guest::online_cpus(),
            hw_rng: guest::hw_rng(),
            shared_dir: self
                .shared_dir
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        }))
    }

    async fn read_shared_file(
        &self,
        request: Request<ReadSharedFileRequest>,
    ) -> Result<Response<ReadSharedFileResponse>, Status> {
        let req = request.into_inner();
        let root = self
            .shared_dir
            .as_deref()
            .ok_or_else(|| Status::failed_precondition("no shared directory is mounted"))?;
        let path = resolve_below(root, &req.path)?;
        let limit = match req.max_bytes {
            0 => husk_proto::MAX_READ_BYTES,
            n => n.min(husk_proto::MAX_READ_BYTES),
        };
        let (content, truncated) = tokio::task::spawn_blocking(move || read_bounded(&path, limit))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(ReadSharedFileResponse { content, truncated }))
    }

    async fn shutdown(
        &self,
        _: Request<ShutdownRequest>,
    ) -> Result<Response<ShutdownResponse>, Status> {
        if !self.is_init {
            return Err(Status::failed_precondition(
                "the agent is not PID 1 of a VM: refusing to reboot this machine",
            ));
        }
        tracing::info!("shutdown requested");
        tokio::spawn(async {
            // Let the reply leave before the guest goes away.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            power_off();
        });
        Ok(Response::new(ShutdownResponse {}))
    }
}

/// Ends the VM. The kernel runs with `reboot=t` and the VMM with
/// `-no-reboot`, so a reboot request triple-faults the vCPU and the VMM
/// exits; RB_POWER_OFF would only halt, since the micro-VM has no ACPI.
fn power_off() {
    nix::unistd::sync();
    // reboot() returns only on failure.
    let Err(err) = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    tracing::error!(%err, "reboot failed");
}

/// Joins a client-supplied relative path to `root`, refusing anything that
/// could leave it: absolute paths, `..`, and symlinks resolving outside.
fn resolve_below(root: &Path, rel: &str) -> Result<PathBuf, Status> {
    let rel_path = Path::new(rel);
    if rel.is_empty()
        || !rel_path
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(Status::invalid_argument(format!(
            "path {rel:?} must be relative to the shared directory, without '..'"
        )));
    }
    let joined = root.join(rel_path);
    let real = joined
        .canonicalize()
        .map_err(|e| Status::not_found(format!("{rel}: {e}")))?;
    let real_root = root
        .canonicalize()
        .map_err(|e| Status::internal(format!("{}: {e}", root.display())))?;
    if !real.starts_with(&real_root) {
        return Err(Status::permission_denied(format!(
            "{rel} resolves outside the shared directory"
        )));
    }
    Ok(real)
}

fn read_bounded(path: &Path, limit: u64) -> Result<(Vec<u8>, bool), Status> {
    let file = std::fs::File::open(path)
        .map_err(|e| Status::not_found(format!("{}: {e}", path.display())))?;
    let mut content = Vec::new();
    // One byte past the limit tells whether the file was longer.
    file.take(limit + 1)
        .read_to_end(&mut content)
        .map_err(|e| Status::internal(format!("{}: {e}", path.display())))?;
    let truncated = content.len() as u64 > limit;
    content.truncate(limit as usize);
    Ok((content, truncated))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_resolve_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::fs::write(dir.path().join("a/f"), b"x").unwrap();
        let got = resolve_below(dir.path(), "a/f").unwrap();
        assert_eq!(got, dir.path().canonicalize().unwrap().join("a/f"));
    }

    #[test]
    fn escaping_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "."] {
            let err = resolve_below(dir.path(), bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn symlink_out_of_the_root_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("out")).unwrap();
        let err = resolve_below(dir.path(), "out/hostname").unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn reads_are_bounded_and_report_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"0123456789").unwrap();
        assert_eq!(read_bounded(&f, 4).unwrap(), (b"0123".to_vec(), true));
        assert_eq!(
            read_bounded(&f, 10).unwrap(),
            (b"0123456789".to_vec(), false)
        );
    }
}
