//! The agent's vsock door, end to end through containerd's CRI plugin: in
//! one husk pod, a container running as uid 65534 and a root but
//! unprivileged one try every agent port (gRPC, port-forward, and the
//! debug console, which this pod is booted with) through the guest's
//! loopback (CID 1), the host (CID 2) and the guest's own CID, with
//! /bin/vsock-probe from the test image (tests/fixtures/vsock-probe.c).
//! Not one attempt is served, and the host still reaches all three
//! ports. docs/security.md, "The agent's vsock door".

use husk_tests::cri::{ContainerSpec, Cri, Pod, PodSpec, HUSK};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// HTTP/2's client connection preface (RFC 9113, 3.4), escaped for the
/// probe: the agent's gRPC server answers it with a SETTINGS frame.
const H2_PREFACE: &str = r"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Every agent port, with what its server waits for before it speaks.
const PORTS: [(u32, &str); 3] = [
    (husk_proto::AGENT_VSOCK_PORT, H2_PREFACE),
    (husk_proto::FORWARD_VSOCK_PORT, r"PORT 1\n"),
    (husk_proto::DEBUG_CONSOLE_VSOCK_PORT, r"SIZE 0 0\n"),
];

/// Loopback (VMADDR_CID_LOCAL), the host (VMADDR_CID_HOST), the guest.
const CIDS: [u32; 3] = [1, 2, husk_hypervisor::GUEST_CID];

/// What the probe says of a connection that reached nobody or was shut
/// at once; `served` and `open` mean a server took it.
const REFUSED: [&str; 3] = ["refused", "timeout", "closed"];

#[test]
fn containers_cannot_reach_the_agent_over_vsock_and_the_host_can() {
    if let Some(reason) = husk_tests::cri::unsupported_reason() {
        println!("SKIPPED: {reason}");
        return;
    }
    let cri = Cri::start();
    // The debug console's port listens only in a pod booted with it.
    let path = cri.containerd().husk_config_path();
    let mut config = husk_config::Config::load(path).unwrap();
    config.debug.console = true;
    std::fs::write(path, config.to_toml()).unwrap();
    let pod = cri.run_pod(HUSK, &PodSpec::new("vsock-door"));

    let mut nobody = ContainerSpec::new("nobody", &["sleep", "1000"]);
    nobody.run_as_user = Some(65534);
    let root = ContainerSpec::new("root", &["sleep", "1000"]);
    let mut table = Vec::new();
    for (spec, uid) in [(&nobody, 65534), (&root, 0)] {
        let id = cri.create_and_start(&pod, spec);
        for line in probe(&cri, &id, uid) {
            table.push(format!("{:<7} {line}", spec.name));
        }
    }
    println!("{}", table.join("\n"));
    let served: Vec<&String> = table
        .iter()
        .filter(|l| !REFUSED.iter().any(|r| l.split(' ').any(|w| w == *r)))
        .collect();
    assert!(served.is_empty(), "served a container: {served:#?}");

    host_reaches_every_port(&cri, &pod);
    cri.stop_and_remove(&pod);
}

/// Runs the probe in container `id` against every (cid, port); returns
/// its lines after checking it ran as `uid` and answered for each target.
fn probe(cri: &Cri, id: &str, uid: u32) -> Vec<String> {
    let mut cmd = vec!["/bin/vsock-probe".to_owned()];
    for cid in CIDS {
        for (port, hello) in PORTS {
            cmd.push(format!("{cid}:{port}:{hello}"));
        }
    }
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let hint = "is /bin/vsock-probe in the test image? scripts/setup.sh rebuilds it";
    let out = cri
        .try_exec_sync(id, &cmd, 180)
        .unwrap_or_else(|e| panic!("vsock-probe ({hint}): {e}"));
    assert_eq!(out.exit_code, 0, "vsock-probe ({hint}): {out:?}");
    let mut lines = out.stdout.lines().map(str::to_owned);
    let who = lines.next().unwrap_or_default();
    assert!(who.starts_with(&format!("uid={uid} ")), "{who:?}");
    let results: Vec<String> = lines.collect();
    assert_eq!(results.len(), CIDS.len() * PORTS.len(), "{out:?}");
    for cid in CIDS {
        for (port, _) in PORTS {
            let target = format!("cid={cid} port={port} ");
            assert!(
                results.iter().any(|l| l.starts_with(&target)),
                "no {target:?} in {results:?}"
            );
        }
    }
    results
}

/// The host's side of the same door: through the pod's hybrid-vsock
/// socket, gRPC answers the preface with SETTINGS, port-forward answers
/// a request, and the debug console prompts.
fn host_reaches_every_port(cri: &Cri, pod: &Pod) {
    let socket = cri
        .containerd()
        .husk_runtime
        .join("vms")
        .join(&pod.id)
        .join("agent.vsock");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let answer = tokio::time::timeout(Duration::from_secs(60), host_checks(&socket)).await;
        answer.expect("the host's connections were answered within a minute");
    });
}

async fn host_checks(socket: &Path) {
    let connect = |port| husk_hypervisor::hybrid_vsock_connect(socket, port);

    let mut grpc = connect(husk_proto::AGENT_VSOCK_PORT).await.unwrap();
    grpc.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut frame = [0u8; 9];
    grpc.read_exact(&mut frame).await.unwrap();
    assert_eq!(frame[3], 0x4, "a SETTINGS frame (RFC 9113, 6.5): {frame:?}");

    let forward = connect(husk_proto::FORWARD_VSOCK_PORT).await.unwrap();
    let mut forward = BufReader::new(forward);
    forward.get_mut().write_all(b"PORT 1\n").await.unwrap();
    let mut line = String::new();
    forward.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("ERR "), "{line:?}");

    let mut console = connect(husk_proto::DEBUG_CONSOLE_VSOCK_PORT).await.unwrap();
    console.write_all(b"SIZE 0 0\n").await.unwrap();
    let mut prompt = [0u8; 64];
    let n = console.read(&mut prompt).await.unwrap();
    assert!(n > 0, "the console's shell said nothing");
    println!(
        "host: gRPC SETTINGS, port-forward {:?}, console {:?}",
        line.trim_end(),
        String::from_utf8_lossy(&prompt[..n])
    );
}
