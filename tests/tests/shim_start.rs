//! The shim binary's own actions, as containerd runs them: `start` with
//! each form of stdin containerd 1.6 to 2.3 write (nothing, runtime
//! options, 2.3's BootstrapParams), the `address` file every bundle gets,
//! one server per pod, `-v` and `-info`, and no process left behind.

use containerd_shim_protos::protobuf::Message;
use husk_shim::task::bootstrap::{BootstrapParams, BootstrapResult, ProtoAny};
use husk_tests::containerd::{build_bin_dir, processes_mentioning, Containerd};
use prost::Message as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const NAMESPACE: &str = "husk-start-test";

fn shim() -> PathBuf {
    build_bin_dir().join("containerd-shim-husk-v2")
}

/// A bundle whose config.json names `sandbox` as its pod, if given.
fn bundle(dir: &Path, id: &str, sandbox: Option<&str>) -> PathBuf {
    let b = dir.join(id);
    std::fs::create_dir_all(&b).unwrap();
    let annotations = match sandbox {
        Some(s) => serde_json::json!({"io.kubernetes.cri.sandbox-id": s}),
        None => serde_json::json!({}),
    };
    let spec = serde_json::json!({"root": {"path": "rootfs"}, "annotations": annotations});
    std::fs::write(b.join("config.json"), spec.to_string()).unwrap();
    b
}

fn start(ctrd: &Containerd, bundle: &Path, id: &str, stdin: &[u8]) -> Output {
    let ttrpc = ctrd.dir.path().join("containerd.sock.ttrpc");
    let mut child = Command::new(shim())
        .args(["-namespace", NAMESPACE, "-id", id, "-address"])
        .arg(&ctrd.socket)
        .args(["-publish-binary", "containerd", "start"])
        .env("TTRPC_ADDRESS", &ttrpc)
        .current_dir(bundle)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), stdin).unwrap();
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

/// Shuts the server on `address` down and checks it exits.
fn shutdown(address: &str, id: &str) {
    let client = containerd_shim_protos::ttrpc::Client::connect(address).unwrap();
    let task = containerd_shim_protos::shim::shim_ttrpc::TaskClient::new(client);
    let ctx = containerd_shim_protos::ttrpc::context::with_timeout(5_000_000_000);
    let req = containerd_shim_protos::api::ShutdownRequest {
        id: id.into(),
        ..Default::default()
    };
    task.shutdown(ctx, &req).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !servers(id).is_empty() {
        assert!(Instant::now() < deadline, "the shim of {id} did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
    let path = address.trim_start_matches("unix://");
    assert!(!Path::new(path).exists(), "{path} left behind");
}

/// Shim processes serving `id`.
fn servers(id: &str) -> Vec<u32> {
    processes_mentioning(&format!("-id {id} "))
        .into_iter()
        .chain(processes_mentioning(&format!("-id\0{id}\0")))
        .collect()
}

#[test]
fn start_answers_each_form_of_stdin_and_orphans_nothing() {
    let ctrd = Containerd::start();
    let dir = tempfile::tempdir().unwrap();
    let sockets = tempfile::tempdir().unwrap();
    let options = ProtoAny {
        type_url: "containerd.runc.v1.Options".into(),
        value: Vec::new(),
    }
    .encode_to_vec();
    let forms: [(&str, Vec<u8>); 3] = [
        ("empty", Vec::new()),
        ("options", options),
        ("bootstrap", Vec::new()),
    ];
    for (form, input) in forms {
        let id = format!("start-{form}");
        let b = bundle(dir.path(), &id, None);
        let input = if form == "bootstrap" {
            BootstrapParams {
                instance_id: id.clone(),
                namespace: NAMESPACE.into(),
                containerd_grpc_address: ctrd.socket.display().to_string(),
                containerd_ttrpc_address: ctrd
                    .dir
                    .path()
                    .join("containerd.sock.ttrpc")
                    .display()
                    .to_string(),
                socket_dir: Some(sockets.path().display().to_string()),
                ..Default::default()
            }
            .encode_to_vec()
        } else {
            input
        };
        let out = start(&ctrd, &b, &id, &input);
        assert!(
            out.status.success(),
            "{form}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let address = if form == "bootstrap" {
            let result = BootstrapResult::decode(out.stdout.as_slice()).unwrap();
            assert_eq!((result.version, result.protocol.as_str()), (2, "ttrpc"));
            assert!(
                result
                    .address
                    .starts_with(&format!("unix://{}/", sockets.path().display())),
                "the socket goes where 2.3 asks: {}",
                result.address
            );
            result.address
        } else {
            let a = String::from_utf8(out.stdout).unwrap();
            assert!(a.starts_with("unix:///run/containerd/s/"), "{form}: {a}");
            a
        };
        assert_eq!(
            std::fs::read_to_string(b.join("address")).unwrap(),
            address,
            "{form}: the bundle's address file"
        );
        assert_eq!(servers(&id).len(), 1, "{form}: one server");

        // A second container of the same pod is served by the same shim.
        let app = format!("{id}-app");
        let app_bundle = bundle(dir.path(), &app, Some(&id));
        let app_input = if form == "bootstrap" {
            let mut p = BootstrapParams::decode(input.as_slice()).unwrap();
            p.instance_id = app.clone();
            p.encode_to_vec()
        } else {
            input.clone()
        };
        let out = start(&ctrd, &app_bundle, &app, &app_input);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read_to_string(app_bundle.join("address")).unwrap(),
            address
        );
        assert!(servers(&app).is_empty(), "no second server for the pod");
        shutdown(&address, &id);
    }
}

#[test]
fn start_refuses_what_it_cannot_read_and_starts_nothing() {
    let ctrd = Containerd::start();
    let dir = tempfile::tempdir().unwrap();
    let b = bundle(dir.path(), "start-garbage", None);
    let out = start(&ctrd, &b, "start-garbage", b"\xff\xff\xff\xff");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("neither runtime options nor bootstrap"),
        "{err}"
    );
    // Parameters for another container are refused too (containerd's own
    // check: options may parse as parameters).
    let other = BootstrapParams {
        instance_id: "someone-else".into(),
        namespace: NAMESPACE.into(),
        containerd_grpc_address: "/run/containerd/containerd.sock".into(),
        ..Default::default()
    };
    let out = start(&ctrd, &b, "start-garbage", &other.encode_to_vec());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("do not match"));
    assert!(servers("start-garbage").is_empty());
    assert!(!b.join("address").exists());
}

#[test]
fn version_and_info_describe_the_shim() {
    let out = Command::new(shim()).arg("-v").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(env!("CARGO_PKG_VERSION")), "{text}");
    assert!(text.contains("io.containerd.husk.v2"), "{text}");

    let out = Command::new(shim())
        .arg("-info")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info =
        containerd_shim_protos::types::introspection::RuntimeInfo::parse_from_bytes(&out.stdout)
            .unwrap();
    assert_eq!(info.name, "io.containerd.husk.v2");
    assert_eq!(info.version.version, env!("CARGO_PKG_VERSION"));
    let features: serde_json::Value = serde_json::from_slice(&info.features.value).unwrap();
    assert!(features["linux"]["seccomp"]["enabled"].as_bool().unwrap());
}
