//! A CRI test harness: a private containerd (tests/src/containerd.rs) of
//! any release line, with its CRI plugin enabled, runtime handlers `runc`,
//! `husk` and `husk-vm` (the latter two from the operator files in config/, see
//! tests/src/cri_config.rs), the busybox pause image as
//! sandbox image and a private CNI network (its own bridge, /24 subnet,
//! IPAM state and network namespaces), plus a small typed CRI v1 client
//! (k8s-cri over tonic) that drives it the way kubelet does. Dropping the
//! harness removes every pod, stops containerd and removes what CNI and the
//! pods left: processes, mounts, network namespaces, the bridge, cgroups,
//! shim sockets. Only /run/lock/husk-cri-net.lock stays: the host-wide lock
//! under which harnesses pick their subnets (unlinking it would race).
//! The end-to-end tests in tests/tests/cri.rs are written against it,
//! generic over the runtime handler.

use crate::containerd::{build_bin_dir, mounts_under, processes_mentioning, Containerd};
use crate::ip;
use crate::release::Release;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use std::collections::HashMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// The sandbox image, built by tests/fixtures/build-pause-image.sh.
pub const PAUSE_IMAGE: &str = "docker.io/husk/pause:test";
/// The container image, built by tests/fixtures/build-test-image.sh.
pub const BUSYBOX_IMAGE: &str = crate::ctr::IMAGE;
/// The containerd namespace the CRI plugin works in.
pub const K8S_NAMESPACE: &str = "k8s.io";
/// Runtime handler names (RuntimeClass handlers) the harness configures.
pub const RUNC: &str = "runc";
pub const HUSK: &str = "husk";
pub const HUSK_VM: &str = "husk-vm";

/// Every CRI call gets this long; a pod that runs in a VM under TCG takes
/// seconds to start, none takes minutes.
const RPC_TIMEOUT: Duration = Duration::from_secs(240);
/// The pods' subnets are 10.250.N.0/24, one N per live harness.
const SUBNET_PREFIX: [u8; 2] = [10, 250];

/// The pause image archive built by scripts/setup.sh.
pub fn pause_archive() -> PathBuf {
    crate::installed_archive("HUSK_PAUSE_IMAGE", "/usr/local/share/husk/pause-oci.tar")
}

/// Why the CRI harness cannot run on this host, if it cannot: the tests
/// print `SKIPPED: <reason>` and return. Missing pieces that setup.sh
/// installs are setup errors and fail instead. Probed once per process:
/// tests run in parallel and must not race on the probe's device name.
pub fn unsupported_reason() -> Option<String> {
    static REASON: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    REASON.get_or_init(probe_host).clone()
}

/// A harness, or None after printing `SKIPPED: <reason>` where the host
/// cannot run one ([`unsupported_reason`]).
pub fn harness_or_skip() -> Option<Cri> {
    if let Some(reason) = unsupported_reason() {
        println!("SKIPPED: {reason}");
        return None;
    }
    Some(Cri::start())
}

/// A VM-image test archive setup.sh installed
/// (tests/fixtures/build-vm-image.sh), or where `HUSK_VM_IMAGE_DIR` says.
pub fn vm_archive(file: &str) -> PathBuf {
    let dir = std::env::var("HUSK_VM_IMAGE_DIR").unwrap_or_else(|_| "/usr/local/share/husk".into());
    crate::installed_archive("HUSK_VM_IMAGE_UNSET", &format!("{dir}/{file}"))
}

/// Waits up to `timeout` until nothing of a husk-vm VM is left under the
/// harness: no process naming the husk runtime directory (every VM
/// process does), no run directory; panics naming what is left.
pub fn assert_no_vm_left(cri: &Cri, timeout: Duration) {
    let runtime = &cri.containerd().husk_runtime;
    let deadline = Instant::now() + timeout;
    loop {
        let procs = processes_mentioning(&runtime.display().to_string());
        let vms = crate::entries(&runtime.join("vms"));
        if procs.is_empty() && vms.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "left: processes {procs:?}, run directories {vms:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn probe_host() -> Option<String> {
    if !Path::new("/sys/class/net").exists() {
        return Some("no /sys/class/net: cannot manage network devices".into());
    }
    // The bridge plugin needs bridges and veth pairs; try one of each.
    let probe = format!("huskprobe{}", std::process::id() % 100_000);
    for args in [
        vec!["link", "add", &probe, "type", "bridge"],
        vec!["link", "del", &probe],
        vec!["link", "add", &probe, "type", "veth"],
        vec!["link", "del", &probe],
    ] {
        match Command::new("ip").args(&args).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                let _ = Command::new("ip").args(["link", "del", &probe]).output();
                return Some(format!(
                    "`ip {}` failed (the CNI bridge plugin needs bridges and veth pairs): {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            Err(e) => return Some(format!("cannot run `ip` (apt-get install iproute2): {e}")),
        }
    }
    None
}

/// The private CNI network of one harness: a bridge named `huskcri<N>`
/// holding the gateway address 10.250.N.1/24, created before containerd
/// starts so that two harnesses (in one process or two) never pick the same
/// N, and deleted on drop. The bridge plugin finds it and only attaches the
/// pods' veths (isGateway = false: the plugin changes no host sysctl).
pub struct PodNetwork {
    pub bridge: String,
    pub subnet: String,
    pub gateway: Ipv4Addr,
    pub name: String,
    index: u8,
}

impl PodNetwork {
    fn create() -> Self {
        // The choice and the creation happen under one host-wide lock; the
        // lock goes with the process, so a crashed test never wedges it.
        std::fs::create_dir_all("/run/lock").unwrap();
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/run/lock/husk-cri-net.lock")
            .expect("opening /run/lock/husk-cri-net.lock");
        let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .expect("locking /run/lock/husk-cri-net.lock");
        let taken = host_ipv4_prefixes();
        let start = (std::process::id() % 256) as usize;
        for i in 0..256 {
            let index = ((start + i) % 256) as u8;
            let bridge = format!("huskcri{index}");
            let net = Ipv4Addr::new(SUBNET_PREFIX[0], SUBNET_PREFIX[1], index, 0);
            if Path::new("/sys/class/net").join(&bridge).exists()
                || taken.iter().any(|&(a, len)| overlaps((net, 24), (a, len)))
            {
                continue;
            }
            let gateway = Ipv4Addr::new(SUBNET_PREFIX[0], SUBNET_PREFIX[1], index, 1);
            ip(&["link", "add", &bridge, "type", "bridge"]);
            let network = PodNetwork {
                subnet: format!("{net}/24"),
                name: format!("husk-cri-{index}"),
                bridge,
                gateway,
                index,
            };
            ip(&[
                "addr",
                "add",
                &format!("{gateway}/24"),
                "dev",
                &network.bridge,
            ]);
            ip(&["link", "set", &network.bridge, "up"]);
            return network;
        }
        panic!("no free 10.250.N.0/24 for a pod network: stale huskcri* bridges? (ip link)");
    }

    /// The CNI conflist: bridge with host-local IPAM whose state lives in
    /// `ipam_dir`, then loopback. containerd also brings up the pods' `lo`
    /// with the loopback plugin itself; keeping it in the list makes the
    /// file a complete network on its own, and the plugin is idempotent.
    fn conflist(&self, ipam_dir: &Path) -> String {
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": self.name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": false,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": ipam_dir,
                        "ranges": [[{"subnet": self.subnet, "gateway": self.gateway.to_string()}]],
                        "routes": [{"dst": "0.0.0.0/0", "gw": self.gateway.to_string()}]
                    }
                },
                {"type": "loopback"}
            ]
        })
        .to_string()
    }

    /// Whether `addr` lies in this network's subnet.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        let o = addr.octets();
        [o[0], o[1], o[2]] == [SUBNET_PREFIX[0], SUBNET_PREFIX[1], self.index] && o[3] != 0
    }

    /// The host ends of the veth pairs plugged into the bridge.
    pub fn ports(&self) -> Vec<PathBuf> {
        crate::entries(&Path::new("/sys/class/net").join(&self.bridge).join("brif"))
    }
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        // Deleting the bridge takes its address and route with it.
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

/// IPv4 prefixes in use on this host: interface addresses and routes.
fn host_ipv4_prefixes() -> Vec<(Ipv4Addr, u8)> {
    let mut found = Vec::new();
    for args in [
        &["-o", "-4", "addr", "show"][..],
        &["-4", "route", "show", "table", "all"][..],
    ] {
        let out = Command::new("ip").args(args).output().expect("running ip");
        for word in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let (addr, len) = word.split_once('/').unwrap_or((word, "32"));
            if let (Ok(a), Ok(l)) = (addr.parse::<Ipv4Addr>(), len.parse::<u8>()) {
                if l <= 32 {
                    found.push((a, l));
                }
            }
        }
    }
    found
}

fn overlaps(a: (Ipv4Addr, u8), b: (Ipv4Addr, u8)) -> bool {
    let len = a.1.min(b.1);
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    };
    u32::from(a.0) & mask == u32::from(b.0) & mask
}

/// A private containerd with the CRI plugin, its CNI network, and a CRI
/// client. All calls block (a private current-thread tokio runtime runs
/// them), so tests stay plain `#[test]` functions.
pub struct Cri {
    ctrd: Option<Containerd>,
    pub net: PodNetwork,
    /// Pods' cgroup parent, like kubelet's /kubepods (cgroupfs driver).
    pub cgroup_parent: String,
    /// Where the pods' log directories go.
    pub log_root: PathBuf,
    /// host-local's state: one file per reserved address.
    pub ipam_dir: PathBuf,
    /// containerd's streaming server (exec, attach, port-forward URLs).
    pub stream_addr: String,
    client: RuntimeServiceClient<Channel>,
    images: k8s_cri::v1::image_service_client::ImageServiceClient<Channel>,
    /// Every pod this harness ran, for the shim sockets Drop removes.
    pod_ids: std::sync::Mutex<Vec<String>>,
    rt: tokio::runtime::Runtime,
}

/// A running pod sandbox, as RunPodSandbox made it.
pub struct Pod {
    pub id: String,
    pub handler: String,
    pub config: cri::PodSandboxConfig,
    pub log_dir: PathBuf,
    pub ip: Ipv4Addr,
    /// The network namespace containerd made for it (from the verbose
    /// status' runtime spec).
    pub netns: PathBuf,
    /// The pod's cgroup (below `Cri::cgroup_parent`).
    pub cgroup: String,
    containers: std::sync::Mutex<Vec<String>>,
}

/// What a pod is asked for in RunPodSandbox.
#[derive(Clone, Debug)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub hostname: String,
    pub dns_servers: Vec<String>,
    pub dns_searches: Vec<String>,
    pub dns_options: Vec<String>,
    pub annotations: HashMap<String, String>,
    pub labels: HashMap<String, String>,
    /// `hostNetwork: true`: the node's network namespace.
    pub host_network: bool,
}

impl PodSpec {
    pub fn new(name: &str) -> Self {
        PodSpec {
            name: name.into(),
            namespace: "husk-test".into(),
            uid: format!("uid-{name}-{}", std::process::id()),
            hostname: name.into(),
            dns_servers: vec!["10.96.0.10".into()],
            dns_searches: vec!["husk-test.svc.cluster.local".into()],
            dns_options: vec!["ndots:5".into()],
            annotations: HashMap::new(),
            labels: HashMap::new(),
            host_network: false,
        }
    }
}

/// What a container is asked for in CreateContainer.
#[derive(Clone, Debug)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub envs: Vec<(String, String)>,
    /// Relative to the pod's log directory, as kubelet passes it.
    pub log_path: String,
    pub mounts: Vec<cri::Mount>,
    pub resources: Option<cri::LinuxContainerResources>,
    pub annotations: HashMap<String, String>,
    /// Host devices (a raw block volume reaches CRI as one).
    pub devices: Vec<cri::Device>,
    /// Keep stdin open (`stdin: true`), for attach to write to.
    pub stdin: bool,
    /// `securityContext.runAsUser`: the uid the container runs as (the
    /// image's user when None).
    pub run_as_user: Option<i64>,
}

impl ContainerSpec {
    /// The busybox test image running `command`, logging to `<name>.log`.
    pub fn new(name: &str, command: &[&str]) -> Self {
        ContainerSpec {
            name: name.into(),
            image: BUSYBOX_IMAGE.into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            args: Vec::new(),
            envs: Vec::new(),
            log_path: format!("{name}.log"),
            mounts: Vec::new(),
            resources: None,
            annotations: HashMap::new(),
            devices: Vec::new(),
            stdin: false,
            run_as_user: None,
        }
    }
}

/// ExecSync's answer.
#[derive(Debug)]
pub struct ExecResult {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i32,
}

impl Cri {
    /// Starts the private containerd (of the release `HUSK_CONTAINERD`
    /// selects) with CRI and imports the pause and busybox images into
    /// `k8s.io`; returns once CRI reports the runtime and the network ready
    /// and sees both images.
    pub fn start() -> Self {
        Self::start_release(&Release::selected())
    }

    /// `start`, on containerd `release`.
    pub fn start_release(release: &Release) -> Self {
        let pause = pause_archive();
        let busybox = crate::ctr::image_archive();
        // Short on purpose: the husk runtime directory inside it holds
        // vms/<64-hex sandbox id>/vhost-vsock.sock, and a Unix socket path
        // has at most 107 bytes ("/tmp/hcXXXXXX/husk/vms/<id>/..." is 104).
        let dir = tempfile::Builder::new()
            .prefix("hc")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path().to_owned();
        let net = PodNetwork::create();
        let conf_dir = d.join("cni/net.d");
        let ipam_dir = d.join("cni/ipam");
        std::fs::create_dir_all(&conf_dir).unwrap();
        std::fs::write(
            conf_dir.join("10-husk-cri.conflist"),
            net.conflist(&ipam_dir),
        )
        .unwrap();
        let log_root = d.join("pod-logs");
        std::fs::create_dir_all(&log_root).unwrap();
        let stream_port = free_tcp_port();
        let stream_addr = format!("127.0.0.1:{stream_port}");
        let cgroup_parent = format!("/husk-cri-{}", net.index);
        let shim = build_bin_dir().join("containerd-shim-husk-v2");
        let vm_shim = crate::containerd::vm_shim_link();
        let config = crate::cri_config::cri_config(
            release,
            &crate::cri_config::Private {
                dir: &d,
                cni_conf_dir: &conf_dir,
                stream_port,
                pause_image: PAUSE_IMAGE,
                default_runtime: RUNC,
                runc_type: crate::ctr::RUNC,
                shim: &shim,
                vm_shim: &vm_shim,
            },
        );
        if let Some(drop_in) = &config.drop_in {
            std::fs::create_dir_all(d.join("conf.d")).unwrap();
            std::fs::write(d.join("conf.d/husk.toml"), drop_in).unwrap();
        }
        let ctrd = Containerd::start_in(dir, release, Some(&config.main));
        // Multi-threaded, so that threads can call CRI at once (the
        // parallel pod start benchmark).
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let channel = rt
            .block_on(containerd_client::connect(&ctrd.socket))
            .expect("connecting to containerd's CRI socket");
        let mut harness = Cri {
            client: RuntimeServiceClient::new(channel.clone()),
            images: k8s_cri::v1::image_service_client::ImageServiceClient::new(channel),
            ctrd: Some(ctrd),
            pod_ids: Default::default(),
            net,
            cgroup_parent,
            log_root,
            ipam_dir,
            stream_addr,
            rt,
        };
        harness.wait_ready();
        for (archive, name) in [(&pause, PAUSE_IMAGE), (&busybox, BUSYBOX_IMAGE)] {
            harness.import(archive);
            harness.wait_image(name);
        }
        harness
    }

    pub fn containerd(&self) -> &Containerd {
        self.ctrd.as_ref().expect("containerd")
    }

    /// Restarts containerd on the same root, state and sockets (see
    /// `Containerd::restart`), reconnects, and returns once CRI reports
    /// the runtime and the network ready again.
    pub fn restart_containerd(&mut self, signal: nix::sys::signal::Signal) {
        self.ctrd.as_mut().expect("containerd").restart(signal);
        let channel = self
            .rt
            .block_on(containerd_client::connect(&self.containerd().socket))
            .expect("reconnecting to containerd's CRI socket");
        self.client = RuntimeServiceClient::new(channel.clone());
        self.images = k8s_cri::v1::image_service_client::ImageServiceClient::new(channel);
        self.wait_ready();
    }

    /// Imports an OCI archive into the CRI plugin's namespace.
    pub fn import(&self, archive: &Path) {
        let out = self.containerd().ctr(&[
            "-n",
            K8S_NAMESPACE,
            "images",
            "import",
            archive.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "import of {} failed: {}",
            archive.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut client = self.client.clone();
            let status = self.call(async move {
                client
                    .status(cri::StatusRequest { verbose: false })
                    .await
                    .map(|r| r.into_inner())
            });
            let conditions = status
                .ok()
                .and_then(|s| s.status)
                .map(|s| s.conditions)
                .unwrap_or_default();
            let ready = |t: &str| conditions.iter().any(|c| c.r#type == t && c.status);
            if ready("RuntimeReady") && ready("NetworkReady") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "CRI never became ready: {conditions:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Imports an OCI archive and waits until CRI sees image `name`.
    pub fn import_image(&mut self, archive: &Path, name: &str) {
        self.import(archive);
        self.wait_image(name);
    }

    fn wait_image(&mut self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut images = self.images.clone();
            let image = Some(cri::ImageSpec {
                image: name.into(),
                ..Default::default()
            });
            let found = self.call(async move {
                images
                    .image_status(cri::ImageStatusRequest {
                        image,
                        verbose: false,
                    })
                    .await
                    .map(|r| r.into_inner().image.is_some())
            });
            if matches!(found, Ok(true)) {
                return;
            }
            assert!(Instant::now() < deadline, "CRI never saw image {name}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs a CRI call to completion, failing the test when it takes longer
    /// than RPC_TIMEOUT; an error comes back as "<code>: <message>".
    fn call<T>(&self, fut: impl Future<Output = Result<T, tonic::Status>>) -> Result<T, String> {
        self.rt.block_on(async {
            match tokio::time::timeout(RPC_TIMEOUT, fut).await {
                Ok(answer) => answer.map_err(|e| format!("{:?}: {}", e.code(), e.message())),
                Err(_) => panic!("CRI call did not return within {RPC_TIMEOUT:?}"),
            }
        })
    }

    fn client(&self) -> RuntimeServiceClient<Channel> {
        self.client.clone()
    }

    /// RunPodSandbox with `handler` (a RuntimeClass handler: RUNC, HUSK),
    /// the way kubelet asks: own network, IPC and UTS, a PID namespace per
    /// container, a cgroup below `cgroup_parent`, no port mappings.
    pub fn run_pod(&self, handler: &str, spec: &PodSpec) -> Pod {
        self.try_run_pod(handler, spec)
            .unwrap_or_else(|e| panic!("RunPodSandbox ({handler}): {e}"))
    }

    /// RunPodSandbox, with its error (the runtime's message) as a value.
    pub fn try_run_pod(&self, handler: &str, spec: &PodSpec) -> Result<Pod, String> {
        let log_dir = self
            .log_root
            .join(format!("{}_{}_{}", spec.namespace, spec.name, spec.uid));
        std::fs::create_dir_all(&log_dir).unwrap();
        let cgroup = format!("{}/pod{}", self.cgroup_parent, spec.uid);
        let config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: spec.name.clone(),
                uid: spec.uid.clone(),
                namespace: spec.namespace.clone(),
                attempt: 0,
            }),
            hostname: spec.hostname.clone(),
            log_directory: log_dir.display().to_string(),
            dns_config: Some(cri::DnsConfig {
                servers: spec.dns_servers.clone(),
                searches: spec.dns_searches.clone(),
                options: spec.dns_options.clone(),
            }),
            port_mappings: Vec::new(),
            labels: spec.labels.clone(),
            annotations: spec.annotations.clone(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: cgroup.clone(),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(namespace_options(spec.host_network)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut client = self.client();
        let request = cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        };
        let id = self
            .call(async move { client.run_pod_sandbox(request).await })?
            .into_inner()
            .pod_sandbox_id;
        self.pod_ids.lock().unwrap().push(id.clone());
        let (status, info) = self.pod_status(&id);
        let ip = status
            .network
            .as_ref()
            .map(|n| n.ip.clone())
            .unwrap_or_default();
        let ip: Ipv4Addr = ip
            .parse()
            .unwrap_or_else(|_| panic!("pod {id} has no IPv4 address: {:?}", status.network));
        Ok(Pod {
            netns: netns_of(&info).unwrap_or_else(|| panic!("no netns in pod {id}'s info")),
            id,
            handler: handler.into(),
            config,
            log_dir,
            ip,
            cgroup,
            containers: Default::default(),
        })
    }

    /// PodSandboxStatus (verbose): the status and the parsed `info` JSON.
    pub fn pod_status(&self, id: &str) -> (cri::PodSandboxStatus, serde_json::Value) {
        let mut client = self.client();
        let request = cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        };
        let response = self
            .call(async move { client.pod_sandbox_status(request).await })
            .unwrap_or_else(|e| panic!("PodSandboxStatus {id}: {}", e))
            .into_inner();
        let info = response
            .info
            .get("info")
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default();
        (response.status.expect("pod status"), info)
    }

    /// CreateContainer then StartContainer in `pod`; returns the container
    /// id.
    pub fn create_and_start(&self, pod: &Pod, spec: &ContainerSpec) -> String {
        let id = self
            .try_create(pod, spec)
            .unwrap_or_else(|e| panic!("CreateContainer {}: {}", spec.name, e));
        self.start_container(&id)
            .unwrap_or_else(|e| panic!("StartContainer {}: {}", spec.name, e));
        id
    }

    /// StartContainer, with its error as a value.
    pub fn start_container(&self, id: &str) -> Result<(), String> {
        let mut client = self.client();
        let request = cri::StartContainerRequest {
            container_id: id.into(),
        };
        self.call(async move { client.start_container(request).await })
            .map(drop)
    }

    /// RemoveContainer.
    pub fn remove_container(&self, id: &str) {
        let mut client = self.client();
        let request = cri::RemoveContainerRequest {
            container_id: id.into(),
        };
        self.call(async move { client.remove_container(request).await })
            .unwrap_or_else(|e| panic!("RemoveContainer {id}: {e}"));
    }

    /// CreateContainer in `pod`, with its error (the runtime's message) as
    /// a value; returns the container id.
    pub fn try_create(&self, pod: &Pod, spec: &ContainerSpec) -> Result<String, String> {
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: spec.name.clone(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: spec.image.clone(),
                ..Default::default()
            }),
            command: spec.command.clone(),
            args: spec.args.clone(),
            envs: spec
                .envs
                .iter()
                .map(|(key, value)| cri::KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
            mounts: spec.mounts.clone(),
            devices: spec.devices.clone(),
            stdin: spec.stdin,
            annotations: spec.annotations.clone(),
            log_path: spec.log_path.clone(),
            linux: Some(cri::LinuxContainerConfig {
                resources: spec.resources.clone(),
                security_context: Some(cri::LinuxContainerSecurityContext {
                    // The pod's own choice, as kubelet passes it.
                    namespace_options: pod
                        .config
                        .linux
                        .as_ref()
                        .and_then(|l| l.security_context.as_ref())
                        .and_then(|c| c.namespace_options.clone()),
                    run_as_user: spec.run_as_user.map(|value| cri::Int64Value { value }),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        let mut client = self.client();
        let request = cri::CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(config),
            sandbox_config: Some(pod.config.clone()),
        };
        let id = self
            .call(async move { client.create_container(request).await })?
            .into_inner()
            .container_id;
        pod.containers.lock().unwrap().push(id.clone());
        Ok(id)
    }

    /// ExecSync of `cmd` in container `id`, with a timeout in seconds.
    pub fn exec_sync(&self, id: &str, cmd: &[&str], timeout_s: i64) -> ExecResult {
        self.try_exec_sync(id, cmd, timeout_s)
            .unwrap_or_else(|e| panic!("ExecSync {cmd:?} in {id}: {}", e))
    }

    /// ExecSync, with the runtime's error as a value.
    pub fn try_exec_sync(
        &self,
        id: &str,
        cmd: &[&str],
        timeout_s: i64,
    ) -> Result<ExecResult, String> {
        let mut client = self.client();
        let request = cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout_s,
        };
        let response = self
            .call(async move { client.exec_sync(request).await })?
            .into_inner();
        Ok(ExecResult {
            stdout: String::from_utf8_lossy(&response.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&response.stderr).into_owned(),
            exit_code: response.exit_code,
        })
    }

    /// StopContainer: the image's stop signal, SIGKILL after `timeout_s`.
    pub fn stop_container(&self, id: &str, timeout_s: i64) {
        let mut client = self.client();
        let request = cri::StopContainerRequest {
            container_id: id.into(),
            timeout: timeout_s,
        };
        self.call(async move { client.stop_container(request).await })
            .unwrap_or_else(|e| panic!("StopContainer {id}: {e}"));
    }

    /// UpdateContainerResources (what `crictl update` and kubelet's
    /// in-place resize call): the error's text where it fails.
    pub fn try_update_resources(
        &self,
        id: &str,
        resources: cri::LinuxContainerResources,
    ) -> Result<(), String> {
        let mut client = self.client();
        let request = cri::UpdateContainerResourcesRequest {
            container_id: id.into(),
            linux: Some(resources),
            ..Default::default()
        };
        self.call(async move { client.update_container_resources(request).await })
            .map(drop)
    }

    /// CRI's verbose Status `config`: the plugin configuration containerd
    /// actually parsed (runtime handlers, CNI, sandbox image).
    pub fn plugin_config(&self) -> serde_json::Value {
        let mut client = self.client();
        let info = self
            .call(async move { client.status(cri::StatusRequest { verbose: true }).await })
            .unwrap_or_else(|e| panic!("Status: {e}"))
            .into_inner()
            .info;
        info.get("config")
            .and_then(|c| serde_json::from_str(c).ok())
            .unwrap_or_else(|| panic!("no config in Status info: {info:?}"))
    }

    pub fn container_status(&self, id: &str) -> cri::ContainerStatus {
        let mut client = self.client();
        let request = cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        };
        self.call(async move { client.container_status(request).await })
            .unwrap_or_else(|e| panic!("ContainerStatus {id}: {}", e))
            .into_inner()
            .status
            .expect("container status")
    }

    /// Waits until container `spec` of `pod` has logged a line holding
    /// `needle` (its CRI log file, e.g. " stdout F ready"); panics after
    /// `timeout`.
    pub fn wait_log(&self, pod: &Pod, spec: &ContainerSpec, needle: &str, timeout: Duration) {
        let log = pod.log_dir.join(&spec.log_path);
        let deadline = Instant::now() + timeout;
        while !std::fs::read_to_string(&log).is_ok_and(|l| l.contains(needle)) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in {}",
                log.display()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Polls ContainerStatus until the container has exited.
    pub fn wait_exited(&self, id: &str, timeout: Duration) -> cri::ContainerStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.container_status(id);
            if status.state == cri::ContainerState::ContainerExited as i32 {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "container {id} still {:?} after {timeout:?}",
                status.state()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn container_stats(&self, id: &str) -> cri::ContainerStats {
        let mut client = self.client();
        let request = cri::ContainerStatsRequest {
            container_id: id.into(),
        };
        self.call(async move { client.container_stats(request).await })
            .unwrap_or_else(|e| panic!("ContainerStats {id}: {}", e))
            .into_inner()
            .stats
            .expect("container stats")
    }

    /// ListContainerStats of one pod's containers.
    pub fn list_container_stats(&self, pod_id: &str) -> Vec<cri::ContainerStats> {
        let mut client = self.client();
        let request = cri::ListContainerStatsRequest {
            filter: Some(cri::ContainerStatsFilter {
                pod_sandbox_id: pod_id.into(),
                ..Default::default()
            }),
        };
        self.call(async move { client.list_container_stats(request).await })
            .unwrap_or_else(|e| panic!("ListContainerStats: {}", e))
            .into_inner()
            .stats
    }

    /// PodSandboxStats, with the error (containerd may not implement it).
    pub fn pod_sandbox_stats(&self, pod_id: &str) -> Result<cri::PodSandboxStats, String> {
        let mut client = self.client();
        let request = cri::PodSandboxStatsRequest {
            pod_sandbox_id: pod_id.into(),
        };
        self.call(async move { client.pod_sandbox_stats(request).await })?
            .into_inner()
            .stats
            .ok_or_else(|| "no stats in the answer".into())
    }

    /// ListContainers, of one pod or of all.
    pub fn list_containers(&self, pod_id: Option<&str>) -> Vec<cri::Container> {
        let mut client = self.client();
        let request = cri::ListContainersRequest {
            filter: pod_id.map(|p| cri::ContainerFilter {
                pod_sandbox_id: p.into(),
                ..Default::default()
            }),
        };
        self.call(async move { client.list_containers(request).await })
            .unwrap_or_else(|e| panic!("ListContainers: {}", e))
            .into_inner()
            .containers
    }

    pub fn list_pods(&self) -> Vec<cri::PodSandbox> {
        let mut client = self.client();
        self.call(async move {
            client
                .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
                .await
        })
        .unwrap_or_else(|e| panic!("ListPodSandbox: {}", e))
        .into_inner()
        .items
    }

    /// PortForward for `ports` of `pod`: the streaming URL a client would
    /// then upgrade.
    pub fn port_forward(&self, pod: &Pod, ports: &[i32]) -> String {
        let mut client = self.client();
        let request = cri::PortForwardRequest {
            pod_sandbox_id: pod.id.clone(),
            port: ports.to_vec(),
        };
        self.call(async move { client.port_forward(request).await })
            .unwrap_or_else(|e| panic!("PortForward {}: {}", pod.id, e))
            .into_inner()
            .url
    }

    /// Exec (streaming): the URL a client connects to for `cmd`'s stdio.
    pub fn exec_url(&self, id: &str, cmd: &[&str]) -> String {
        self.exec_url_with(id, cmd, false)
    }

    /// Exec (streaming) with a terminal when `tty` (`kubectl exec -t`:
    /// stdout only, stderr goes to the terminal).
    pub fn exec_url_with(&self, id: &str, cmd: &[&str], tty: bool) -> String {
        self.exec_request(id, cmd, tty, false)
    }

    fn exec_request(&self, id: &str, cmd: &[&str], tty: bool, stdin: bool) -> String {
        let mut client = self.client();
        let request = cri::ExecRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty,
            stdin,
            stdout: true,
            stderr: !tty,
        };
        self.call(async move { client.exec(request).await })
            .unwrap_or_else(|e| panic!("Exec {id}: {}", e))
            .into_inner()
            .url
    }

    /// Exec (streaming) with a terminal and stdin: `kubectl exec -it`.
    pub fn exec_url_interactive(&self, id: &str, cmd: &[&str]) -> String {
        self.exec_request(id, cmd, true, true)
    }

    /// Exec (streaming) with stdin and no terminal: `kubectl exec -i`.
    pub fn exec_url_stdin(&self, id: &str, cmd: &[&str]) -> String {
        self.exec_request(id, cmd, false, true)
    }

    /// Attach: the URL a client connects to for a container's output.
    pub fn attach_url(&self, id: &str) -> String {
        self.attach_url_with(id, false)
    }

    /// Attach, with stdin when `stdin` (the container must keep it open).
    pub fn attach_url_with(&self, id: &str, stdin: bool) -> String {
        let mut client = self.client();
        let request = cri::AttachRequest {
            container_id: id.into(),
            stdin,
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        self.call(async move { client.attach(request).await })
            .unwrap_or_else(|e| panic!("Attach {id}: {}", e))
            .into_inner()
            .url
    }

    pub fn stop_pod(&self, pod: &Pod) {
        self.stop_pod_id(&pod.id)
            .unwrap_or_else(|e| panic!("StopPodSandbox {}: {}", pod.id, e));
    }

    pub fn remove_pod(&self, pod: &Pod) {
        self.remove_pod_id(&pod.id)
            .unwrap_or_else(|e| panic!("RemovePodSandbox {}: {}", pod.id, e));
    }

    fn stop_pod_id(&self, id: &str) -> Result<(), String> {
        let mut client = self.client();
        let request = cri::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.call(async move { client.stop_pod_sandbox(request).await })
            .map(drop)
    }

    fn remove_pod_id(&self, id: &str) -> Result<(), String> {
        let mut client = self.client();
        let request = cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.call(async move { client.remove_pod_sandbox(request).await })
            .map(drop)
    }

    /// StopPodSandbox, RemovePodSandbox, then `assert_pod_gone`.
    pub fn stop_and_remove(&self, pod: &Pod) {
        self.stop_pod(pod);
        self.remove_pod(pod);
        self.assert_pod_gone(pod);
    }

    /// Nothing of a removed pod is left: CRI lists neither it nor its
    /// containers; no process mentions its id (its shim), its shim socket
    /// is gone, and no process is in its cgroup; no mount names it or its containers; its network namespace
    /// is gone and host-local released its address; and once the harness
    /// has no pod left, the bridge has no ports.
    pub fn assert_pod_gone(&self, pod: &Pod) {
        let pods: Vec<String> = self.list_pods().into_iter().map(|p| p.id).collect();
        assert!(!pods.contains(&pod.id), "pod {} still listed", pod.id);
        let containers = self.list_containers(Some(&pod.id));
        assert!(containers.is_empty(), "containers left: {containers:?}");
        let ids: Vec<String> = std::iter::once(pod.id.clone())
            .chain(pod.containers.lock().unwrap().iter().cloned())
            .collect();
        let root = self.containerd().dir.path().to_owned();
        let reserved = self.ipam_dir.join(&self.net.name).join(pod.ip.to_string());
        let socket = shim_socket(&self.containerd().socket, K8S_NAMESPACE, &pod.id);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let shims = processes_mentioning(&pod.id);
            let in_cgroup = cgroup_pids(&pod.cgroup);
            let mounts: Vec<PathBuf> = mounts_under(&root)
                .into_iter()
                .filter(|m| ids.iter().any(|id| m.to_string_lossy().contains(id)))
                .collect();
            let netns = pod.netns.exists() || is_mounted(&pod.netns);
            let ports = if pods.is_empty() {
                self.net.ports()
            } else {
                Vec::new()
            };
            let ip_reserved = reserved.exists();
            let socket_left = socket.exists();
            if shims.is_empty()
                && !socket_left
                && in_cgroup.is_empty()
                && mounts.is_empty()
                && !netns
                && ports.is_empty()
                && !ip_reserved
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "pod {} left: processes {shims:?}, in its cgroup {in_cgroup:?}, \
                 mounts {mounts:?}, netns {} exists: {netns}, bridge ports {ports:?}, \
                 {} reserved: {ip_reserved}, shim socket {} exists: {socket_left}",
                pod.id,
                pod.netns.display(),
                pod.ip,
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Cri {
    fn drop(&mut self) {
        // Pods first, through CRI, as kubelet would: that tears down their
        // networks (CNI DEL) and stops their shims.
        if let Some(ctrd) = &self.ctrd {
            if ctrd.socket.exists() {
                let pods = {
                    let mut client = self.client();
                    self.rt.block_on(async {
                        tokio::time::timeout(
                            Duration::from_secs(10),
                            client.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }),
                        )
                        .await
                    })
                };
                if let Ok(Ok(pods)) = pods {
                    for pod in pods.into_inner().items {
                        let _ = self.stop_pod_id(&pod.id);
                        let _ = self.remove_pod_id(&pod.id);
                    }
                }
            }
        }
        // Whatever a failed teardown left in the pods' cgroups.
        kill_cgroup(&self.cgroup_parent);
        // containerd, its shims, the mounts under its directory (network
        // namespaces included), then the directory itself (IPAM state).
        let sockets: Vec<PathBuf> = match &self.ctrd {
            Some(ctrd) => self
                .pod_ids
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|id| shim_socket(&ctrd.socket, K8S_NAMESPACE, id))
                .collect(),
            None => Vec::new(),
        };
        drop(self.ctrd.take());
        // A shim that was killed, or that forgot, leaves its socket in
        // /run/containerd/s (assert_pod_gone reports the latter).
        for socket in sockets {
            let _ = std::fs::remove_file(socket);
        }
        remove_cgroup(&self.cgroup_parent);
        // The bridge goes when `net` drops, after this.
    }
}

fn namespace_options(host_network: bool) -> cri::NamespaceOption {
    let network = if host_network {
        cri::NamespaceMode::Node
    } else {
        cri::NamespaceMode::Pod
    };
    cri::NamespaceOption {
        network: network as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// The network namespace path in a pod's verbose info (its runtime spec).
fn netns_of(info: &serde_json::Value) -> Option<PathBuf> {
    info["runtimeSpec"]["linux"]["namespaces"]
        .as_array()?
        .iter()
        .find(|ns| ns["type"] == "network")?["path"]
        .as_str()
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

pub use crate::containerd::shim_socket;

fn is_mounted(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .any(|m| Path::new(m) == path)
}

/// A TCP port nobody listens on now, for containerd's streaming server.
fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding a free port")
}

/// The cgroup v1 hierarchies (and a v2 one, if mounted) of this host.
fn cgroup_hierarchies() -> Vec<PathBuf> {
    crate::entries(Path::new("/sys/fs/cgroup"))
        .into_iter()
        .filter(|p| {
            !p.is_symlink() && (p.join("cgroup.procs").exists() || p.join("tasks").exists())
        })
        .chain(
            Some(PathBuf::from("/sys/fs/cgroup")).filter(|p| p.join("cgroup.controllers").exists()),
        )
        .collect()
}

/// Directories of cgroup `rel` in every hierarchy and everything below,
/// deepest first.
fn cgroup_dirs(rel: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack: Vec<PathBuf> = cgroup_hierarchies()
        .into_iter()
        .map(|h| h.join(rel.trim_start_matches('/')))
        .filter(|p| p.is_dir())
        .collect();
    while let Some(dir) = stack.pop() {
        stack.extend(crate::entries(&dir).into_iter().filter(|p| p.is_dir()));
        found.push(dir);
    }
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

/// Live processes in cgroup `rel` or below, in any hierarchy.
pub fn cgroup_pids(rel: &str) -> Vec<u32> {
    let mut pids: Vec<u32> = cgroup_dirs(rel)
        .iter()
        .flat_map(|d| {
            std::fs::read_to_string(d.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<u32>>()
        })
        .filter(|&p| crate::process_alive(p))
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

fn kill_cgroup(rel: &str) {
    for pid in cgroup_pids(rel) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Removes cgroup `rel` and its children everywhere; killed processes take
/// a moment to leave, so it retries briefly.
fn remove_cgroup(rel: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        kill_cgroup(rel);
        for dir in cgroup_dirs(rel) {
            let _ = std::fs::remove_dir(&dir);
        }
        if cgroup_dirs(rel).is_empty() || Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Checks a CRI log line, `<RFC3339Nano time> <stdout|stderr> <F|P> <text>`,
/// and returns (stream, tag, text).
pub fn parse_log_line(line: &str) -> Result<(&str, &str, &str), String> {
    let mut parts = line.splitn(4, ' ');
    let (Some(time), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("not `<time> <stream> <tag> <text>`: {line:?}"));
    };
    let text = parts.next().unwrap_or("");
    if !is_rfc3339_nano(time) {
        return Err(format!("timestamp {time:?} is not RFC 3339: {line:?}"));
    }
    if stream != "stdout" && stream != "stderr" {
        return Err(format!("stream {stream:?} is not stdout/stderr: {line:?}"));
    }
    if tag != "F" && tag != "P" {
        return Err(format!("tag {tag:?} is not F/P: {line:?}"));
    }
    Ok((stream, tag, text))
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, as Go's RFC3339Nano writes.
fn is_rfc3339_nano(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    if !(digits(0..4)
        && b.get(4) == Some(&b'-')
        && digits(5..7)
        && b.get(7) == Some(&b'-')
        && digits(8..10)
        && b.get(10) == Some(&b'T')
        && digits(11..13)
        && b.get(13) == Some(&b':')
        && digits(14..16)
        && b.get(16) == Some(&b':')
        && digits(17..19))
    {
        return false;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if !(1..=9).contains(&n) {
            return false;
        }
        rest = &frac[n..];
    }
    if rest == "Z" {
        return true;
    }
    let z = rest.as_bytes();
    z.len() == 6
        && (z[0] == b'+' || z[0] == b'-')
        && z[1..3].iter().all(u8::is_ascii_digit)
        && z[3] == b':'
        && z[4..6].iter().all(u8::is_ascii_digit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_log_lines_are_parsed_and_checked() {
        assert_eq!(
            parse_log_line("2026-11-29T03:01:02.123456789Z stdout F hello world"),
            Ok(("stdout", "F", "hello world"))
        );
        assert_eq!(
            parse_log_line("2026-11-29T03:01:02+01:00 stderr P "),
            Ok(("stderr", "P", ""))
        );
        assert!(parse_log_line("hello").is_err());
        assert!(parse_log_line("2026-11-29 03:01:02Z stdout F x").is_err());
        assert!(parse_log_line("2026-11-29T03:01:02Z stdin F x").is_err());
        assert!(parse_log_line("2026-11-29T03:01:02.Z stdout F x").is_err());
        assert!(parse_log_line("2026-11-29T03:01:02Z stdout X x").is_err());
    }

    #[test]
    fn prefixes_overlap_when_one_contains_the_other() {
        let a = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert!(overlaps((a("10.250.3.0"), 24), (a("10.250.3.1"), 32)));
        assert!(overlaps((a("10.250.3.0"), 24), (a("10.0.0.0"), 8)));
        assert!(overlaps((a("10.250.3.0"), 24), (a("0.0.0.0"), 0)));
        assert!(!overlaps((a("10.250.3.0"), 24), (a("10.250.4.0"), 24)));
        assert!(!overlaps((a("10.250.3.0"), 24), (a("192.0.2.0"), 24)));
    }
}
