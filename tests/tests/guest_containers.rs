//! Containers run by the agent inside a real VM, driven over the agent API
//! the way the shim drives it: rootfs in the shared directory, OCI spec in,
//! stdio through ReadOutput/WriteStdin, exit status through WaitContainer.

use husk_hypervisor::{MicroVm, VmSpec};
use husk_proto::agent::agent_client::AgentClient;
use husk_proto::agent::*;
use husk_tests::*;
use tonic::transport::Channel;

async fn read_all(agent: &mut AgentClient<Channel>, id: &str, stream: OutputStream) -> Vec<u8> {
    let mut s = agent
        .read_output(ReadOutputRequest {
            container_id: id.into(),
            stream: stream as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = s.message().await.unwrap() {
        out.extend_from_slice(&chunk.data);
    }
    out
}

async fn create(
    agent: &mut AgentClient<Channel>,
    id: &str,
    args: &[&str],
    stdin: bool,
) -> Result<u32, tonic::Status> {
    let rootfs = format!("{}/rootfs", husk_proto::GUEST_SHARED_DIR);
    create_with_spec(agent, id, oci_spec(&rootfs, args), stdin).await
}

async fn create_with_spec(
    agent: &mut AgentClient<Channel>,
    id: &str,
    spec: serde_json::Value,
    stdin: bool,
) -> Result<u32, tonic::Status> {
    agent
        .create_container(CreateContainerRequest {
            container_id: id.into(),
            oci_spec_json: serde_json::to_vec(&spec).unwrap(),
            stdin,
        })
        .await
        .map(|r| r.into_inner().pid)
}

/// Runs a container to completion: (stdout, stderr, exit status).
async fn run(agent: &AgentClient<Channel>, id: &str, args: &[&str]) -> (String, String, u32) {
    let rootfs = format!("{}/rootfs", husk_proto::GUEST_SHARED_DIR);
    run_spec(agent, id, oci_spec(&rootfs, args)).await
}

async fn run_spec(
    agent: &AgentClient<Channel>,
    id: &str,
    spec: serde_json::Value,
) -> (String, String, u32) {
    let mut a = agent.clone();
    create_with_spec(&mut a, id, spec, false).await.unwrap();
    let (mut o, mut e) = (agent.clone(), agent.clone());
    let (id_o, id_e) = (id.to_owned(), id.to_owned());
    let out = tokio::spawn(async move { read_all(&mut o, &id_o, OutputStream::Stdout).await });
    let err = tokio::spawn(async move { read_all(&mut e, &id_e, OutputStream::Stderr).await });
    let req = || ContainerRequest {
        container_id: id.into(),
        ..Default::default()
    };
    a.start_container(req()).await.unwrap();
    let status = a
        .wait_container(req())
        .await
        .unwrap()
        .into_inner()
        .exit_status;
    let (out, err) = (out.await.unwrap(), err.await.unwrap());
    a.remove_container(req()).await.unwrap();
    (
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
        status,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_run_in_the_guest_with_separate_stdio_and_exit_status() {
    let runtime = tempfile::tempdir().unwrap();
    let shared = tempfile::tempdir().unwrap();
    busybox_rootfs(&shared.path().join("rootfs"));
    let config = test_config(runtime.path());
    require_guest_artifacts(&config);
    let guest_release = kernel_release_of(&config.hypervisor.kernel).unwrap();
    let mut vm = MicroVm::start(
        &config,
        VmSpec {
            id: "containers".into(),
            shared_dir: shared.path().to_owned(),
            nets: Vec::new(),
            cgroup_procs: Vec::new(),
            oom_score_adj: None,
        },
    )
    .await
    .expect("VM start");
    let agent = vm.agent().await.unwrap();
    let (out, err, status) = run(
        &agent,
        "c1",
        &["sh", "-c", "uname -r; echo out; echo err >&2; exit 3"],
    )
    .await;
    assert_eq!(out, format!("{guest_release}\nout\n"));
    assert_eq!(err, "err\n");
    assert_eq!(status, 3);

    // Namespaces, hostname, mounts and rlimits from the spec.
    let (out, _, status) = run(
        &agent,
        "c2",
        &["sh", "-c", "echo $$; hostname; ulimit -n; cat /proc/self/mountinfo | grep -c ' /dev/pts '; ls /dev/null; touch /sys/x 2>/dev/null || echo sys-ro"],
    )
    .await;
    assert_eq!(
        out, "1\nhusk-test\n1024\n1\n/dev/null\nsys-ro\n",
        "status {status}"
    );

    // A cgroup namespace is rooted at the container's own cgroup, as under
    // runc; the spec's memory limit is that cgroup's memory.max.
    let mut spec = oci_spec(
        &format!("{}/rootfs", husk_proto::GUEST_SHARED_DIR),
        &[
            "sh",
            "-c",
            "cat /proc/self/cgroup; cat /sys/fs/cgroup/memory.max",
        ],
    );
    spec["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"type": "cgroup"}));
    spec["linux"]["resources"] = serde_json::json!({"memory": {"limit": 67108864}});
    spec["mounts"].as_array_mut().unwrap().push(serde_json::json!(
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "ro"]}
    ));
    let (out, err, status) = run_spec(&agent, "cgns", spec).await;
    assert_eq!(
        (out.as_str(), status),
        ("0::/\n67108864\n", 0),
        "stderr: {err}"
    );

    // Killed by a signal: 128 + signal number, as runc reports it. The
    // process is PID 1 of its namespace, so only the agent can SIGKILL it.
    let mut a = agent.clone();
    let c3 = || ContainerRequest {
        container_id: "c3".into(),
        ..Default::default()
    };
    create(&mut a, "c3", &["sleep", "1000"], false)
        .await
        .unwrap();
    a.start_container(c3()).await.unwrap();
    let pids = a.list_processes(c3()).await.unwrap().into_inner().pids;
    assert_eq!(pids.len(), 1, "{pids:?}");
    let removed = a.remove_container(c3()).await.unwrap_err();
    assert_eq!(removed.code(), tonic::Code::FailedPrecondition);
    a.signal_container(SignalContainerRequest {
        container_id: "c3".into(),
        signal: 9,
        all: false,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        a.wait_container(c3())
            .await
            .unwrap()
            .into_inner()
            .exit_status,
        137
    );
    a.remove_container(c3()).await.unwrap();

    // stdin reaches the process, and its EOF too.
    let mut a = agent.clone();
    create(&mut a, "c4", &["cat"], true).await.unwrap();
    let mut o = agent.clone();
    let out = tokio::spawn(async move { read_all(&mut o, "c4", OutputStream::Stdout).await });
    a.start_container(ContainerRequest {
        container_id: "c4".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let input = tokio_stream::iter(vec![
        StdinChunk {
            container_id: "c4".into(),
            data: b"hel".to_vec(),
            ..Default::default()
        },
        StdinChunk {
            container_id: String::new(),
            data: b"lo\n".to_vec(),
            ..Default::default()
        },
    ]);
    a.write_stdin(input).await.unwrap();
    let status = a
        .wait_container(ContainerRequest {
            container_id: "c4".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.await.unwrap(), b"hello\n");
    assert_eq!(status.exit_status, 0);
    a.remove_container(ContainerRequest {
        container_id: "c4".into(),
        ..Default::default()
    })
    .await
    .unwrap();

    // A missing program fails at create, in runc's words.
    let mut a = agent.clone();
    let err = create(&mut a, "c5", &["/nonexistent"], false)
        .await
        .unwrap_err();
    assert!(
        err.message()
            .contains("exec: \"/nonexistent\": stat /nonexistent: no such file or directory"),
        "{err:?}"
    );
    let err = create(&mut a, "c6", &["nosuchprogram"], false)
        .await
        .unwrap_err();
    assert!(
        err.message().contains("executable file not found in $PATH"),
        "{err:?}"
    );
    // A bad spec names the field.
    let err = a
        .create_container(CreateContainerRequest {
            container_id: "c7".into(),
            oci_spec_json: br#"{"ociVersion":"1.1.0","process":{"args":["sh"],"cwd":"relative","user":{"uid":0,"gid":0}},"root":{"path":"/run/husk/shared/rootfs"},"linux":{"namespaces":[{"type":"mount"}]}}"#.to_vec(),
            stdin: false,
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("process.cwd"), "{err:?}");

    let status = vm.stop().await.unwrap();
    assert!(status.success());
}
