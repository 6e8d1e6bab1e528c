//! The shim binary's actions besides serving: `start`, `delete`, `-v` and
//! `-info`, in husk's hands rather than the `containerd-shim` crate's, so
//! that every containerd a node runs can start, find and clean up a husk
//! pod (containerd's `core/runtime/v2/README.md`, "Commands"):
//!
//! - `start` reads whatever containerd writes on stdin — nothing, the
//!   runtime's options as a protobuf `Any` (1.6 to 2.2), or 2.3's
//!   `BootstrapParams` — and answers in kind: the socket address as text,
//!   or a `BootstrapResult`. One shim serves a pod: a container naming its
//!   sandbox finds that shim's socket. Every container's bundle gets the
//!   `address` file containerd 1.6/1.7 reconnect with after a restart.
//! - `delete` runs when containerd can no longer reach a shim: it cleans
//!   what a dead shim left, and nothing while the shim still answers.

use anyhow::{bail, Context};
use containerd_shim::Flags;
use containerd_shim_protos::protobuf::{well_known_types::any::Any, Message, MessageField};
use containerd_shim_protos::types::introspection::{RuntimeInfo, RuntimeVersion};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What `start` reads from stdin at most (containerd's own shims take 10
/// MiB; its payloads are a few hundred bytes).
pub const MAX_START_INPUT: u64 = 1 << 20;
/// How long the new server has to signal that it serves.
const SERVER_READY: Duration = Duration::from_secs(30);
/// Where containerd's shim sockets live by default.
const SOCKET_DIR: &str = "/run/containerd/s";
/// The file in the bundle that containerd 1.6/1.7 reconnect with.
pub const ADDRESS_FILE: &str = "address";
/// The environment variable holding containerd's ttrpc address.
const TTRPC_ADDRESS_ENV: &str = "TTRPC_ADDRESS";
/// The sandbox a CRI container belongs to.
const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

/// containerd 2.3's `containerd.runtime.bootstrap.v1.BootstrapParams`
/// (api/runtime/bootstrap/v1/bootstrap.proto), the fields husk reads.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BootstrapParams {
    #[prost(string, tag = "1")]
    pub instance_id: String,
    #[prost(string, tag = "2")]
    pub namespace: String,
    #[prost(int32, tag = "3")]
    pub log_level: i32,
    #[prost(string, tag = "4")]
    pub containerd_version: String,
    #[prost(string, tag = "5")]
    pub containerd_ttrpc_address: String,
    #[prost(string, tag = "6")]
    pub containerd_grpc_address: String,
    #[prost(string, tag = "7")]
    pub containerd_binary: String,
    #[prost(message, repeated, tag = "8")]
    pub extensions: Vec<Extension>,
    #[prost(string, optional, tag = "9")]
    pub socket_dir: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Extension {
    #[prost(message, optional, tag = "1")]
    pub value: Option<ProtoAny>,
}

/// google.protobuf.Any.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProtoAny {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `containerd.runtime.bootstrap.v1.BootstrapResult`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BootstrapResult {
    #[prost(int32, tag = "1")]
    pub version: i32,
    #[prost(string, tag = "2")]
    pub address: String,
    #[prost(string, tag = "3")]
    pub protocol: String,
}

/// What containerd wrote on `start`'s stdin.
#[derive(Debug, PartialEq)]
pub enum StartInput {
    /// Nothing (containerd without runtime options).
    Empty,
    /// The runtime's options as an `Any` (containerd 1.6 to 2.2).
    Options(ProtoAny),
    /// containerd 2.3+.
    Bootstrap(BootstrapParams),
}

impl StartInput {
    /// Tells the forms apart as containerd's own shims do: bootstrap
    /// parameters name the instance and namespace of the command line
    /// (options could parse as them too).
    pub fn parse(input: &[u8], id: &str, namespace: &str) -> anyhow::Result<Self> {
        use prost::Message as _;
        if input.is_empty() {
            return Ok(StartInput::Empty);
        }
        // Runtime options (an Any: fields 1 and 2) can decode as bootstrap
        // parameters too; real ones carry containerd's addresses.
        if let Ok(params) = BootstrapParams::decode(input) {
            if !params.containerd_ttrpc_address.is_empty()
                || !params.containerd_grpc_address.is_empty()
            {
                if params.instance_id != id || params.namespace != namespace {
                    bail!(
                        "bootstrap parameters for {}/{} do not match the command line's {namespace}/{id}",
                        params.namespace,
                        params.instance_id
                    );
                }
                return Ok(StartInput::Bootstrap(params));
            }
        }
        match ProtoAny::decode(input) {
            Ok(any) if !any.type_url.is_empty() => Ok(StartInput::Options(any)),
            _ => bail!(
                "stdin holds {} bytes that are neither runtime options nor bootstrap parameters for {namespace}/{id}",
                input.len()
            ),
        }
    }

    /// The runtime options, where containerd sent some.
    fn options(&self) -> Option<&ProtoAny> {
        match self {
            StartInput::Empty => None,
            StartInput::Options(any) => Some(any),
            StartInput::Bootstrap(p) => p
                .extensions
                .iter()
                .filter_map(|e| e.value.as_ref())
                .find(|a| a.type_url.ends_with(".Options")),
        }
    }

    /// runc's `shim_cgroup` option: the cgroup the shim goes into.
    pub fn shim_cgroup(&self) -> Option<String> {
        let any = self.options()?;
        let options =
            containerd_shim_protos::shim::oci::Options::parse_from_bytes(&any.value).ok()?;
        Some(options.shim_cgroup).filter(|c| !c.is_empty())
    }

    /// The answer containerd reads from stdout.
    pub fn reply(&self, address: &str) -> Vec<u8> {
        use prost::Message as _;
        match self {
            StartInput::Bootstrap(_) => BootstrapResult {
                version: 2,
                address: address.to_owned(),
                protocol: "ttrpc".into(),
            }
            .encode_to_vec(),
            _ => address.as_bytes().to_vec(),
        }
    }
}

/// The pod (shim group) a bundle's container belongs to: its sandbox for
/// a CRI container, else itself.
pub fn pod_id(bundle: &Path, id: &str) -> String {
    std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|spec| {
            spec.get("annotations")?
                .get(SANDBOX_ID_ANNOTATION)?
                .as_str()
                .filter(|s| husk_proto::is_safe_id(s, 128))
                .map(str::to_owned)
        })
        .unwrap_or_else(|| id.to_owned())
}

/// The shim socket of a pod, as containerd's shims name it: a hash of
/// containerd's address, the namespace and the pod id.
pub fn socket_address(grpc_address: &str, namespace: &str, pod_id: &str, dir: &str) -> String {
    use sha2::Digest;
    let path = Path::new(grpc_address).join(namespace).join(pod_id);
    let hash = sha2::Sha256::digest(path.as_os_str().as_encoded_bytes());
    format!("unix://{dir}/{hash:x}")
}

fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

/// Whether a shim answers on `address`.
pub fn answers(address: &str) -> bool {
    UnixStream::connect(socket_path(address)).is_ok()
}

/// `start`: answers with the pod's shim address, starting that shim when
/// none serves it yet.
pub fn start(flags: &Flags) -> anyhow::Result<()> {
    let mut input = Vec::new();
    std::io::stdin()
        .take(MAX_START_INPUT + 1)
        .read_to_end(&mut input)
        .context("reading stdin")?;
    if input.len() as u64 > MAX_START_INPUT {
        bail!("stdin holds more than {MAX_START_INPUT} bytes");
    }
    let input = StartInput::parse(&input, &flags.id, &flags.namespace)?;
    let bundle = std::env::current_dir().context("the bundle (working directory)")?;
    let pod = pod_id(&bundle, &flags.id);
    let (grpc, ttrpc, dir) = match &input {
        StartInput::Bootstrap(p) => (
            Some(p.containerd_grpc_address.clone()).filter(|a| !a.is_empty()),
            Some(p.containerd_ttrpc_address.clone()).filter(|a| !a.is_empty()),
            p.socket_dir.clone().filter(|d| !d.is_empty()),
        ),
        _ => (None, None, None),
    };
    let grpc = grpc.unwrap_or_else(|| flags.address.clone());
    let ttrpc = ttrpc
        .or_else(|| std::env::var(TTRPC_ADDRESS_ENV).ok())
        .context("no containerd ttrpc address (TTRPC_ADDRESS)")?;
    let address = socket_address(
        &grpc,
        &flags.namespace,
        &pod,
        dir.as_deref().unwrap_or(SOCKET_DIR),
    );
    if !answers(&address) && !claim_pooled_vm(flags, &bundle, &pod, &ttrpc, &address) {
        spawn_server(flags, &input, &grpc, &ttrpc, &address)?;
    }
    write_address(&bundle, &address)?;
    let mut out = std::io::stdout();
    out.write_all(&input.reply(&address))?;
    out.flush()?;
    Ok(())
}

/// A new pod of a pooled size takes a pre-booted VM's shim (docs/pool.md);
/// the pool is refilled in the background either way. False: boot cold.
fn claim_pooled_vm(flags: &Flags, bundle: &Path, pod: &str, ttrpc: &str, address: &str) -> bool {
    // The pool holds micro-VMs; a husk-vm pod boots its own image.
    if crate::Mode::current() != crate::Mode::MicroVm {
        return false;
    }
    let Ok(config) = husk_config::Config::load_default() else {
        return false;
    };
    if config.pool.shapes.is_empty() {
        return false;
    }
    let annotations: std::collections::HashMap<String, String> =
        std::fs::read(bundle.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|spec| serde_json::from_value(spec.get("annotations")?.clone()).ok())
            .unwrap_or_default();
    let claimed = match config.pod_size(&annotations) {
        Ok((vcpus, memory_mib)) => {
            match crate::micro_vm::pool::shape_for(&config, vcpus, memory_mib) {
                Some(shape) => crate::micro_vm::pool::claim(
                    &config,
                    &shape,
                    &crate::micro_vm::pool::Claim {
                        pod_id: pod.to_owned(),
                        serve: crate::task::server::ServeArgs {
                            namespace: flags.namespace.clone(),
                            id: flags.id.clone(),
                            socket: address.to_owned(),
                            ttrpc_address: ttrpc.to_owned(),
                            bundle: bundle.to_owned(),
                        },
                    },
                ),
                None => false,
            }
        }
        // A size the pod may not have: the cold path refuses it by name.
        Err(_) => false,
    };
    refill_pool();
    claimed
}

/// Starts `pool-fill` on its own (it outlives this `start`).
fn refill_pool() {
    use std::os::unix::process::CommandExt;
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut cmd = Command::new(exe);
    cmd.arg("pool-fill")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid in the child before exec is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
    if let Err(e) = cmd.spawn() {
        eprintln!("{}: cannot refill the pool: {e}", crate::RUNTIME_ID);
    }
}

fn write_address(bundle: &Path, address: &str) -> anyhow::Result<()> {
    let path = bundle.join(ADDRESS_FILE);
    let tmp = bundle.join(".address.tmp");
    std::fs::write(&tmp, address).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
}

/// Removes the socket of a shim that no longer answers (it died without
/// its Shutdown): only a socket, never what else might be at the path.
fn remove_dead_socket(path: &str) {
    use std::os::unix::fs::FileTypeExt;
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

/// Starts the long-lived server for the pod's socket and waits until it
/// serves; on any failure it is killed, never left orphaned.
fn spawn_server(
    flags: &Flags,
    input: &StartInput,
    grpc: &str,
    ttrpc: &str,
    address: &str,
) -> anyhow::Result<()> {
    // Nothing answers on it: a dead shim's, if anything.
    remove_dead_socket(socket_path(address));
    let mut cmd = Command::new(std::env::current_exe().context("the shim's own path")?);
    // The server is told its mode by the name it runs as, as this process
    // was (current_exe resolves the husk-vm link to the one executable).
    if let Some(program) = std::env::args_os().next() {
        std::os::unix::process::CommandExt::arg0(&mut cmd, program);
    }
    cmd.args(["-namespace", &flags.namespace, "-id", &flags.id])
        .args(["-address", grpc, "-socket", address])
        .env(TTRPC_ADDRESS_ENV, ttrpc)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if !flags.publish_binary.is_empty() {
        cmd.args(["-publish-binary", &flags.publish_binary]);
    }
    if flags.debug {
        cmd.arg("-debug");
    }
    let mut child = cmd.spawn().context("starting the shim server")?;
    let ready = (|| -> anyhow::Result<()> {
        if let Some(cgroup) = input.shim_cgroup() {
            containerd_shim::cgroup::add_task_to_cgroup(&cgroup, child.id())
                .with_context(|| format!("moving the shim into cgroup {cgroup}"))?;
        }
        adjust_oom_score(child.id());
        // The server closes its stdout once it serves (or found another
        // shim serving the socket).
        let mut stdout = child.stdout.take().context("the server's stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut stdout, &mut std::io::sink());
            let _ = tx.send(());
        });
        rx.recv_timeout(SERVER_READY).map_err(|_| {
            anyhow::anyhow!("the shim server did not start within {SERVER_READY:?}")
        })?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !answers(address) {
            if let Ok(Some(status)) = child.try_wait() {
                bail!("the shim server exited ({status}) without serving {address}");
            }
            if Instant::now() > deadline {
                bail!("the shim server does not answer on {address}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    })();
    if let Err(e) = ready {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    Ok(())
}

/// The shim's OOM score: containerd's (this process inherited it) plus
/// one, so the OOM killer takes a shim before containerd. Raising needs no
/// privilege.
fn adjust_oom_score(pid: u32) {
    let own = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .unwrap_or(0);
    let score = (own + 1).min(1000);
    if let Err(e) = std::fs::write(format!("/proc/{pid}/oom_score_adj"), score.to_string()) {
        eprintln!("warning: cannot set the shim's oom_score_adj: {e}");
    }
}

/// `delete`: after containerd lost the shim of container `flags.id`.
/// Returns the DeleteResponse containerd reads from stdout.
pub fn delete(flags: &Flags) -> anyhow::Result<Vec<u8>> {
    let bundle = if flags.bundle.is_empty() {
        std::env::current_dir().context("the bundle (working directory)")?
    } else {
        PathBuf::from(&flags.bundle)
    };
    let pod = pod_id(&bundle, &flags.id);
    let address = std::fs::read_to_string(bundle.join(ADDRESS_FILE)).ok();
    let address = address.as_deref().map(str::trim);
    match address {
        Some(a) if answers(a) => eprintln!(
            "{}: the shim of pod {pod} still answers on {a}; nothing cleaned",
            crate::Mode::current().runtime_id()
        ),
        _ => {
            let config = husk_config::Config::load_default().unwrap_or_default();
            match crate::Mode::current() {
                crate::Mode::MicroVm => {
                    crate::micro_vm::cleanup_after_crash(&config, &pod, &flags.id, &bundle)
                }
                crate::Mode::VmImage => {
                    crate::vm_image::cleanup_after_crash(&config, &flags.id, &bundle)
                }
            }
            if let Some(a) = address.filter(|_| pod == flags.id) {
                remove_dead_socket(socket_path(a));
            }
        }
    }
    let exited_at = containerd_shim::util::timestamp().map_err(|e| anyhow::anyhow!("{e}"))?;
    let response = containerd_shim_protos::api::DeleteResponse {
        exit_status: crate::task::manager::KILLED,
        exited_at: Some(exited_at).into(),
        ..Default::default()
    };
    Ok(response.write_to_bytes()?)
}

/// `-v`: the version, as containerd's shims print it.
pub fn version() -> String {
    format!(
        "{}:\n  Version: {}\n  Runtime: {}\n",
        std::env::args().next().unwrap_or_default(),
        env!("CARGO_PKG_VERSION"),
        crate::Mode::current().runtime_id()
    )
}

/// `-info`: containerd 2.x's introspection, a protobuf `RuntimeInfo` on
/// stdout: name, version, and the OCI features the guest implements.
pub fn info() -> anyhow::Result<Vec<u8>> {
    // containerd sends the runtime options on stdin; husk has none to
    // report back, but the input is read so the writer never blocks.
    let mut input = Vec::new();
    let _ = std::io::stdin()
        .take(MAX_START_INPUT)
        .read_to_end(&mut input);
    let features = serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        "hooks": [],
        "mountOptions": ["bind", "rbind", "ro", "rw", "nosuid", "nodev", "noexec"],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "uts"],
            "capabilities": husk_proto::CAPABILITY_NAMES,
            "cgroup": {"v1": false, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {"enabled": true},
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
            "intelRdt": {"enabled": false}
        },
        "annotations": {"io.husk.vm": "true"}
    });
    let info = RuntimeInfo {
        name: crate::Mode::current().runtime_id().into(),
        version: MessageField::some(RuntimeVersion {
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        }),
        features: MessageField::some(Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/features/Features".into(),
            value: serde_json::to_vec(&features)?,
            ..Default::default()
        }),
        ..Default::default()
    };
    Ok(info.write_to_bytes()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn the_three_stdin_forms_are_told_apart() {
        assert_eq!(
            StartInput::parse(b"", "c1", "k8s.io").unwrap(),
            StartInput::Empty
        );
        let options = ProtoAny {
            type_url: "containerd.runc.v1.Options".into(),
            value: vec![],
        };
        assert_eq!(
            StartInput::parse(&options.encode_to_vec(), "c1", "k8s.io").unwrap(),
            StartInput::Options(options)
        );
        let params = BootstrapParams {
            instance_id: "c1".into(),
            namespace: "k8s.io".into(),
            containerd_grpc_address: "/run/containerd/containerd.sock".into(),
            socket_dir: Some("/run/s".into()),
            ..Default::default()
        };
        let parsed = StartInput::parse(&params.encode_to_vec(), "c1", "k8s.io").unwrap();
        assert_eq!(parsed, StartInput::Bootstrap(params.clone()));
        // Parameters for another instance are not this one's.
        let e = StartInput::parse(&params.encode_to_vec(), "c2", "k8s.io").unwrap_err();
        assert!(e.to_string().contains("k8s.io/c1"), "{e}");
        assert!(e.to_string().contains("k8s.io/c2"), "{e}");
        let e = StartInput::parse(b"\xff\xff\xff", "c1", "default").unwrap_err();
        assert!(e.to_string().contains("3 bytes"), "{e}");
    }

    #[test]
    fn replies_match_what_was_asked() {
        let a = "unix:///run/containerd/s/abc";
        assert_eq!(StartInput::Empty.reply(a), a.as_bytes());
        let reply = StartInput::Bootstrap(BootstrapParams::default()).reply(a);
        let result = BootstrapResult::decode(reply.as_slice()).unwrap();
        assert_eq!(
            result,
            BootstrapResult {
                version: 2,
                address: a.into(),
                protocol: "ttrpc".into()
            }
        );
    }

    #[test]
    fn socket_addresses_are_containerds() {
        // The crate computes the same name for the default directory.
        let ours = socket_address(
            "/run/containerd/containerd.sock",
            "k8s.io",
            "pod1",
            SOCKET_DIR,
        );
        let crates =
            containerd_shim::socket_address("/run/containerd/containerd.sock", "k8s.io", "pod1");
        assert_eq!(ours, crates);
    }

    #[test]
    fn containers_find_their_pod() {
        let bundle = tempfile::tempdir().unwrap();
        assert_eq!(pod_id(bundle.path(), "c1"), "c1");
        std::fs::write(
            bundle.path().join("config.json"),
            r#"{"annotations": {"io.kubernetes.cri.sandbox-id": "pod-9"}}"#,
        )
        .unwrap();
        assert_eq!(pod_id(bundle.path(), "c1"), "pod-9");
        std::fs::write(
            bundle.path().join("config.json"),
            r#"{"annotations": {"io.kubernetes.cri.sandbox-id": "../etc"}}"#,
        )
        .unwrap();
        assert_eq!(pod_id(bundle.path(), "c1"), "c1");
    }
}
