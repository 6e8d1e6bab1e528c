//! The node's exposition: every pod's shim asked on its metrics socket
//! (`<runtime_dir>/pods/*/metrics.sock`), their families merged, and the
//! node's own families added. What `husk metrics` prints and `husk
//! serve-metrics` serves.

use super::text::{Exposition, Kind};
use std::path::Path;
use std::time::Duration;

/// Most a pod's answer may hold; a pod's exposition is a few KiB.
const MAX_POD_BYTES: usize = 1 << 20;
/// Most pod directories looked at in one scrape.
const MAX_PODS: usize = 4096;

/// One scrape's result, and which pods did not answer.
pub struct NodeScrape {
    pub exposition: Exposition,
    /// (pod id, why) for every pod socket that gave no usable answer.
    pub unreachable: Vec<(String, String)>,
}

/// Asks every pod under `runtime_dir`, each within `timeout`.
pub async fn scrape(runtime_dir: &Path, timeout: Duration) -> NodeScrape {
    let mut exp = Exposition::default();
    let mut unreachable = Vec::new();
    let mut running = 0u64;
    for pod in pod_ids(runtime_dir) {
        let socket = super::pod_socket(runtime_dir, &pod);
        if !socket.exists() {
            // A pod whose VM is not up (yet, or any more).
            continue;
        }
        match scrape_pod(&socket, timeout).await {
            Ok(pod_exp) => {
                running += 1;
                exp.merge(pod_exp);
            }
            Err(e) => unreachable.push((pod, e.to_string())),
        }
    }
    exp.family(
        "husk_node_pods_running",
        "Pods whose VM runs on this node and whose shim answered the scrape.",
        Kind::Gauge,
    )
    .sample(&[], running as f64);
    exp.family(
        "husk_node_pods_unreachable",
        "Pods with a metrics socket whose shim did not answer the scrape.",
        Kind::Gauge,
    )
    .sample(&[], unreachable.len() as f64);
    super::node::add_to(&mut exp, runtime_dir);
    NodeScrape {
        exposition: exp,
        unreachable,
    }
}

async fn scrape_pod(socket: &Path, timeout: Duration) -> Result<Exposition, super::TelemetryError> {
    let stream = tokio::time::timeout(timeout, tokio::net::UnixStream::connect(socket))
        .await
        .map_err(|_| super::http::HttpError::Timeout(timeout))?
        .map_err(|source| super::TelemetryError::Io {
            what: "connecting to",
            path: socket.to_owned(),
            source,
        })?;
    let body = super::http::get(stream, "/metrics", MAX_POD_BYTES, timeout).await?;
    Ok(Exposition::parse(&body)?)
}

/// The pod directories' names that are ids (sorted, at most [`MAX_PODS`]).
fn pod_ids(runtime_dir: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(runtime_dir.join("pods"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| husk_proto::is_safe_id(name, 128))
        .take(MAX_PODS)
        .collect();
    ids.sort();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::pod::{PodFacts, PodMetricsServer};

    #[tokio::test]
    async fn pods_are_merged_and_counted_and_a_dead_socket_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let rt = dir.path();
        let mut servers = Vec::new();
        for (pod, vcpus) in [("a", 1), ("b", 3)] {
            std::fs::create_dir_all(rt.join("pods").join(pod)).unwrap();
            let facts = PodFacts {
                pod_id: pod.into(),
                vcpus,
                memory_mib: 256,
                accelerator: "tcg".into(),
                backend: "qemu".into(),
                timings: Default::default(),
                pids: husk_hypervisor::VmPids {
                    vmm: 0,
                    virtiofsd: 0,
                    vsock_backend: 0,
                },
                agent_socket: rt.join("none"),
                ready_at: std::time::SystemTime::now(),
            };
            servers.push(
                PodMetricsServer::start(&crate::telemetry::pod_socket(rt, pod), facts).unwrap(),
            );
        }
        // A socket nobody serves (a shim that died), and a pod not booted.
        std::fs::create_dir_all(rt.join("pods/dead")).unwrap();
        drop(
            std::os::unix::net::UnixListener::bind(crate::telemetry::pod_socket(rt, "dead"))
                .unwrap(),
        );
        std::fs::create_dir_all(rt.join("pods/booting")).unwrap();
        crate::telemetry::node::bump(rt, crate::telemetry::node::BOOT_FAILURES).unwrap();

        let s = scrape(rt, Duration::from_secs(2)).await;
        let e = &s.exposition;
        assert_eq!(e.find("husk_pod_vcpus", &[("pod", "a")]), vec![1.0]);
        assert_eq!(e.find("husk_pod_vcpus", &[("pod", "b")]), vec![3.0]);
        assert_eq!(e.render().matches("# TYPE husk_pod_vcpus ").count(), 1);
        assert_eq!(e.find("husk_node_pods_running", &[]), vec![2.0]);
        assert_eq!(e.find("husk_node_pods_unreachable", &[]), vec![1.0]);
        assert_eq!(s.unreachable.len(), 1);
        assert_eq!(s.unreachable[0].0, "dead");
        assert_eq!(
            e.find("husk_node_vm_boots_total", &[("result", "failed")]),
            vec![1.0]
        );
        drop(servers);
        let s = scrape(rt, Duration::from_secs(2)).await;
        assert_eq!(s.exposition.find("husk_node_pods_running", &[]), vec![0.0]);
    }
}
