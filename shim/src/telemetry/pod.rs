//! One pod's metrics, served by its shim on `<runtime_dir>/pods/<pod>/
//! metrics.sock` (HTTP, `GET /metrics`, mode 0600 in a 0700 directory)
//! while its VM runs: boot phases, the VM's size, the host RSS of each of
//! the pod's processes, and the agent calls ([`super::calls`]).
//!
//! Boot phases come from the host's clock ([`BootTimings`]) and, for the
//! guest's own share (kernel until /init, agent start until serving), from
//! the agent's GuestInfo, asked once at the first scrape. Those are the
//! guest's word: each is cut to the host-measured time from VMM spawn to
//! agent ready, which contains it.

use super::text::{Exposition, Kind};
use super::TelemetryError;
use husk_hypervisor::{BootTimings, VmPids};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::Mutex;

/// How long one scrape of the pod may take, GuestInfo included.
const SERVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest `/proc/<pid>/status` read.
const MAX_STATUS_BYTES: u64 = 16 * 1024;

/// What the shim knows about its pod's VM once it booted.
#[derive(Debug, Clone)]
pub struct PodFacts {
    pub pod_id: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub accelerator: String,
    pub backend: String,
    pub timings: BootTimings,
    pub pids: VmPids,
    /// The VM's hybrid-vsock socket, for GuestInfo.
    pub agent_socket: PathBuf,
    /// When the VM became ready.
    pub ready_at: SystemTime,
}

/// The guest's account of its boot, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
struct GuestBoot {
    kernel: f64,
    agent_init: f64,
}

/// The pod's metrics now.
fn collect(facts: &PodFacts, guest: Option<GuestBoot>) -> Exposition {
    let pod = facts.pod_id.as_str();
    let mut exp = Exposition::default();
    exp.family(
        "husk_pod_info",
        "One per pod VM: the VMM and accelerator it runs on.",
        Kind::Gauge,
    )
    .sample(
        &[
            ("pod", pod),
            ("backend", &facts.backend),
            ("accelerator", &facts.accelerator),
        ],
        1.0,
    );
    let t = &facts.timings;
    let phases = exp.family(
        "husk_pod_boot_phase_seconds",
        "Where the pod VM's boot went: device daemons up (daemons), VMM process spawn \
         (vmm_spawn), VMM spawn to agent answering (agent_ready), the whole start (total), \
         and the guest's own account: kernel start to /init (guest_kernel), agent start to \
         serving (guest_agent_init).",
        Kind::Gauge,
    );
    for (phase, d) in [
        ("daemons", t.helpers),
        ("vmm_spawn", t.vmm_spawn),
        ("agent_ready", t.agent_ready),
        ("total", t.total),
    ] {
        phases.sample(&[("pod", pod), ("phase", phase)], d.as_secs_f64());
    }
    if let Some(g) = guest {
        phases.sample(&[("pod", pod), ("phase", "guest_kernel")], g.kernel);
        phases.sample(&[("pod", pod), ("phase", "guest_agent_init")], g.agent_init);
    }
    exp.family(
        "husk_pod_vm_ready_time_seconds",
        "When the pod VM's agent first answered, in seconds since the Unix epoch.",
        Kind::Gauge,
    )
    .sample(&[("pod", pod)], unix_seconds(facts.ready_at));
    exp.family("husk_pod_vcpus", "vCPUs of the pod's VM.", Kind::Gauge)
        .sample(&[("pod", pod)], facts.vcpus as f64);
    exp.family(
        "husk_pod_memory_bytes",
        "Guest memory size of the pod's VM.",
        Kind::Gauge,
    )
    .sample(&[("pod", pod)], facts.memory_mib as f64 * 1024.0 * 1024.0);
    let rss = exp.family(
        "husk_pod_process_resident_bytes",
        "Host resident memory (VmRSS) of each host process of the pod: its shim, the VMM, \
         virtiofsd and the vsock backend.",
        Kind::Gauge,
    );
    let p = &facts.pids;
    for (process, pid) in [
        ("shim", std::process::id()),
        ("vmm", p.vmm),
        ("virtiofsd", p.virtiofsd),
        ("vsock_backend", p.vsock_backend),
    ] {
        if let Some(bytes) = (pid != 0).then(|| resident_bytes(pid)).flatten() {
            rss.sample(&[("pod", pod), ("process", process)], bytes as f64);
        }
    }
    super::calls::add_to(&mut exp, pod, &super::calls::snapshot());
    exp
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// VmRSS of `pid` in bytes, from /proc/<pid>/status.
pub fn resident_bytes(pid: u32) -> Option<u64> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(format!("/proc/{pid}/status"))
        .ok()?
        .take(MAX_STATUS_BYTES)
        .read_to_string(&mut text)
        .ok()?;
    parse_vm_rss(&text)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut words = line["VmRSS:".len()..].split_whitespace();
    let kib: u64 = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then_some(kib * 1024)
}

/// The guest's boot account from GuestInfo, each phase cut to `bound`.
fn guest_boot(info: &husk_proto::agent::GuestInfoResponse, bound: Duration) -> GuestBoot {
    let ms = |v: u64| (Duration::from_millis(v).min(bound)).as_secs_f64();
    GuestBoot {
        kernel: ms(info.agent_started_ms),
        agent_init: ms(info.agent_serving_ms.saturating_sub(info.agent_started_ms)),
    }
}

async fn ask_guest(facts: &PodFacts) -> Option<GuestBoot> {
    let ask = async {
        let channel = husk_hypervisor::agent_channel(
            &facts.agent_socket,
            husk_proto::AGENT_VSOCK_PORT,
            SERVE_TIMEOUT,
        )
        .await
        .ok()?;
        let mut agent = husk_proto::agent::agent_client::AgentClient::new(channel);
        let info = agent
            .guest_info(husk_proto::agent::GuestInfoRequest {})
            .await
            .ok()?
            .into_inner();
        Some(guest_boot(&info, facts.timings.agent_ready))
    };
    tokio::time::timeout(SERVE_TIMEOUT / 2, ask)
        .await
        .ok()
        .flatten()
}

/// The shim's metrics server for its pod; stops (and removes its socket)
/// when dropped.
pub struct PodMetricsServer {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl PodMetricsServer {
    /// Serves `facts` on `path` (an old socket there is replaced).
    pub fn start(path: &Path, facts: PodFacts) -> Result<Self, TelemetryError> {
        let io = |what| {
            let path = path.to_owned();
            move |source| TelemetryError::Io { what, path, source }
        };
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("removing the old socket")(e)),
        }
        let listener = tokio::net::UnixListener::bind(path).map_err(io("binding"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(io("setting the mode of"))?;
        let facts = Arc::new(facts);
        let guest: Arc<Mutex<Option<GuestBoot>>> = Arc::default();
        let task = tokio::spawn(async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(pod_id = %facts.pod_id, %e, "metrics socket accept");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (facts, guest) = (facts.clone(), guest.clone());
                tokio::spawn(async move {
                    let body = || async {
                        let mut known = guest.lock().await;
                        if known.is_none() {
                            *known = ask_guest(&facts).await;
                        }
                        collect(&facts, *known).render()
                    };
                    if let Err(e) =
                        super::http::serve_one(stream, "/metrics", SERVE_TIMEOUT, body).await
                    {
                        tracing::debug!(pod_id = %facts.pod_id, %e, "metrics request");
                    }
                });
            }
        });
        Ok(Self {
            path: path.to_owned(),
            task,
        })
    }
}

impl Drop for PodMetricsServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(dir: &Path) -> PodFacts {
        PodFacts {
            pod_id: "pod-1".into(),
            vcpus: 2,
            memory_mib: 512,
            accelerator: "tcg".into(),
            backend: "qemu".into(),
            timings: BootTimings {
                helpers: Duration::from_millis(20),
                vmm_spawn: Duration::from_millis(3),
                agent_ready: Duration::from_millis(2500),
                total: Duration::from_millis(2600),
            },
            pids: VmPids {
                vmm: std::process::id(),
                virtiofsd: 0,
                vsock_backend: 0,
            },
            agent_socket: dir.join("no-agent.vsock"),
            ready_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        }
    }

    #[test]
    fn vm_rss_is_read_in_bytes() {
        assert_eq!(
            parse_vm_rss("Name:\tx\nVmRSS:\t  1234 kB\n"),
            Some(1234 * 1024)
        );
        assert_eq!(parse_vm_rss("VmRSS: lots\n"), None);
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        assert!(resident_bytes(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn guest_phases_are_cut_to_what_the_host_measured() {
        let info = husk_proto::agent::GuestInfoResponse {
            agent_started_ms: 900,
            agent_serving_ms: 1000,
            ..Default::default()
        };
        let g = guest_boot(&info, Duration::from_secs(2));
        assert_eq!((g.kernel, g.agent_init), (0.9, 0.1));
        let lying = husk_proto::agent::GuestInfoResponse {
            agent_started_ms: u64::MAX,
            agent_serving_ms: 5,
            ..Default::default()
        };
        let g = guest_boot(&lying, Duration::from_secs(2));
        assert_eq!((g.kernel, g.agent_init), (2.0, 0.0));
    }

    #[test]
    fn a_pod_reports_its_size_phases_and_processes() {
        let dir = tempfile::tempdir().unwrap();
        let exp = collect(
            &facts(dir.path()),
            Some(GuestBoot {
                kernel: 1.0,
                agent_init: 0.5,
            }),
        );
        let one = |name: &str, labels: &[(&str, &str)]| {
            let v = exp.find(name, labels);
            assert_eq!(v.len(), 1, "{name} {labels:?}: {v:?}");
            v[0]
        };
        assert_eq!(one("husk_pod_vcpus", &[("pod", "pod-1")]), 2.0);
        assert_eq!(one("husk_pod_memory_bytes", &[]), 512.0 * 1048576.0);
        assert_eq!(
            one("husk_pod_boot_phase_seconds", &[("phase", "agent_ready")]),
            2.5
        );
        assert_eq!(
            one("husk_pod_boot_phase_seconds", &[("phase", "guest_kernel")]),
            1.0
        );
        assert_eq!(
            one(
                "husk_pod_info",
                &[("backend", "qemu"), ("accelerator", "tcg")]
            ),
            1.0
        );
        assert!(one("husk_pod_process_resident_bytes", &[("process", "vmm")]) > 0.0);
        assert!(one("husk_pod_process_resident_bytes", &[("process", "shim")]) > 0.0);
        assert!(exp
            .find(
                "husk_pod_process_resident_bytes",
                &[("process", "virtiofsd")]
            )
            .is_empty());
        assert_eq!(one("husk_pod_vm_ready_time_seconds", &[]), 1_700_000_000.0);
    }

    #[tokio::test]
    async fn the_socket_serves_the_exposition_and_goes_with_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(super::super::POD_SOCKET);
        let server = PodMetricsServer::start(&path, facts(dir.path())).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let stream = tokio::net::UnixStream::connect(&path).await.unwrap();
        let body = super::super::http::get(stream, "/metrics", 1 << 20, SERVE_TIMEOUT)
            .await
            .unwrap();
        let exp = Exposition::parse(&body).unwrap();
        assert_eq!(exp.find("husk_pod_vcpus", &[("pod", "pod-1")]), vec![2.0]);
        // No agent behind the socket: no guest phases, the rest still.
        assert!(exp
            .find("husk_pod_boot_phase_seconds", &[("phase", "guest_kernel")])
            .is_empty());
        drop(server);
        assert!(!path.exists());
    }
}
