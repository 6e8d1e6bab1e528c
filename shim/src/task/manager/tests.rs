//! The manager against the in-memory guest and host of `crate::fake`:
//! the task state machine, the order of events, agent errors as ttrpc
//! codes, and a guest that does not answer or does not obey.

use super::*;
use crate::task::fake::{FakeAgent, FakePod, Recorder};
use containerd_shim_protos::ttrpc::Code;
use std::path::Path;
use std::time::Duration;

struct Harness {
    manager: Manager<FakePod>,
    agent: FakeAgent,
    events: Arc<Recorder>,
    log: Arc<Mutex<Vec<String>>>,
    bundles: tempfile::TempDir,
}

fn harness() -> Harness {
    harness_with(|_| {})
}

fn harness_with(tweak: impl FnOnce(&mut FakePod)) -> Harness {
    let agent = FakeAgent::new();
    let mut pod = FakePod::new(agent.clone());
    tweak(&mut pod);
    let log = pod.log.clone();
    let events = Arc::new(Recorder::default());
    Harness {
        manager: Manager::new("pod1".into(), pod, events.clone()),
        agent,
        events,
        log,
        bundles: tempfile::tempdir().unwrap(),
    }
}

impl Harness {
    /// A bundle with a minimal config.json for container `id`.
    fn bundle(&self, id: &str) -> String {
        let dir = self.bundles.path().join(id);
        std::fs::create_dir_all(dir.join("rootfs")).unwrap();
        std::fs::write(
            dir.join("config.json"),
            r#"{"root": {"path": "rootfs"}, "process": {"args": ["sh"]}}"#,
        )
        .unwrap();
        dir.display().to_string()
    }

    async fn create(&self, id: &str) -> Result<api::CreateTaskResponse, TaskError> {
        self.manager
            .create(api::CreateTaskRequest {
                id: id.into(),
                bundle: self.bundle(id),
                ..Default::default()
            })
            .await
    }

    async fn start(&self, id: &str, exec_id: &str) -> Result<api::StartResponse, TaskError> {
        self.manager
            .start(api::StartRequest {
                id: id.into(),
                exec_id: exec_id.into(),
                ..Default::default()
            })
            .await
    }

    async fn kill(&self, id: &str, signal: u32) -> Result<api::Empty, TaskError> {
        self.manager
            .kill(api::KillRequest {
                id: id.into(),
                signal,
                ..Default::default()
            })
            .await
    }

    async fn wait(&self, id: &str, exec_id: &str) -> u32 {
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            self.manager.wait(api::WaitRequest {
                id: id.into(),
                exec_id: exec_id.into(),
                ..Default::default()
            }),
        )
        .await
        .expect("wait returned")
        .unwrap();
        r.exit_status
    }

    async fn delete(&self, id: &str) -> Result<api::DeleteResponse, TaskError> {
        self.manager
            .delete(api::DeleteRequest {
                id: id.into(),
                ..Default::default()
            })
            .await
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits until `n` events were sent (they come from spawned tasks).
    async fn events(&self, n: usize) -> Vec<String> {
        for _ in 0..200 {
            if self.events.topics().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.events.topics()
    }
}

#[tokio::test]
async fn a_container_runs_its_life_with_events_in_order() {
    let h = harness();
    let created = h.create("pod1").await.unwrap();
    assert!(created.pid > 0);
    h.start("pod1", "").await.unwrap();
    let state = h.manager.state(api::StateRequest {
        id: "pod1".into(),
        ..Default::default()
    });
    assert_eq!(state.unwrap().status, TaskStatus::RUNNING.into());
    h.agent.exit("pod1", "", 3);
    assert_eq!(h.wait("pod1", "").await, 3);
    let deleted = h.delete("pod1").await.unwrap();
    assert_eq!(deleted.exit_status, 3);
    assert_eq!(
        h.events(4).await,
        ["create", "start", "exit", "delete"],
        "TaskExit comes before TaskDelete"
    );
    assert_eq!(h.log(), ["share pod1", "boot", "unshare pod1", "stop"]);
    let e = h.delete("pod1").await.unwrap_err();
    assert_eq!(e.code(), Code::NOT_FOUND, "{e}");
}

#[tokio::test]
async fn two_containers_share_one_vm() {
    let h = harness();
    h.create("pod1").await.unwrap();
    h.create("app").await.unwrap();
    assert_eq!(h.log().iter().filter(|l| *l == "boot").count(), 1);
    let e = h.create("app").await.unwrap_err();
    assert_eq!(e.code(), Code::ALREADY_EXISTS);
    h.delete("app").await.unwrap();
    assert!(!h.log().contains(&"stop".to_string()), "the pod still runs");
    h.delete("pod1").await.unwrap();
    assert_eq!(h.log().last().map(String::as_str), Some("stop"));
}

#[tokio::test]
async fn exec_processes_have_their_own_events() {
    let h = harness();
    h.create("pod1").await.unwrap();
    h.start("pod1", "").await.unwrap();
    let exec = api::ExecProcessRequest {
        id: "pod1".into(),
        exec_id: "e1".into(),
        spec: Some(Default::default()).into(),
        ..Default::default()
    };
    h.manager.exec(exec.clone()).await.unwrap();
    let e = h.manager.exec(exec).await.unwrap_err();
    assert_eq!(e.code(), Code::ALREADY_EXISTS);
    h.start("pod1", "e1").await.unwrap();
    h.agent.exit("pod1", "e1", 7);
    assert_eq!(h.wait("pod1", "e1").await, 7);
    let events = h.events(5).await;
    assert_eq!(
        events,
        ["create", "start", "exec-added", "exec-started", "exit"]
    );
    match &h.events.events.lock().unwrap()[4] {
        Event::Exit {
            id, exit_status, ..
        } => {
            assert_eq!((id.as_str(), *exit_status), ("e1", 7));
        }
        other => panic!("{other:?}"),
    }
    let deleted = h
        .manager
        .delete(api::DeleteRequest {
            id: "pod1".into(),
            exec_id: "e1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(deleted.exit_status, 7);
}

#[tokio::test]
async fn calls_in_the_wrong_state_are_refused() {
    let h = harness();
    h.create("pod1").await.unwrap();
    h.start("pod1", "").await.unwrap();
    let e = h.start("pod1", "").await.unwrap_err();
    assert_eq!(e.code(), Code::FAILED_PRECONDITION, "{e}");
    let e = h.delete("pod1").await.unwrap_err();
    assert_eq!(e.code(), Code::FAILED_PRECONDITION, "{e}");
    assert!(e.to_string().contains("still running"), "{e}");
    let e = h.start("nope", "").await.unwrap_err();
    assert_eq!(e.code(), Code::NOT_FOUND);
    h.kill("pod1", 15).await.unwrap();
    assert_eq!(h.wait("pod1", "").await, 128 + 15);
    let e = h.kill("pod1", 15).await.unwrap_err();
    assert_eq!(e.code(), Code::NOT_FOUND, "a finished process: {e}");
}

#[tokio::test]
async fn oom_comes_before_the_exit_and_a_flood_is_cut() {
    let h = harness();
    h.agent.misbehaviour.lock().unwrap().oom_kills = 10_000;
    h.create("pod1").await.unwrap();
    h.start("pod1", "").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    h.agent.exit("pod1", "", 137);
    assert_eq!(h.wait("pod1", "").await, 137);
    let topics = h.events(3).await;
    let ooms = topics.iter().filter(|t| *t == "oom").count();
    assert!(ooms >= 1, "{topics:?}");
    assert!(
        ooms <= 5,
        "10000 OOM kills in an instant became {ooms} events"
    );
    let exit = topics.iter().position(|t| t == "exit").unwrap();
    assert!(topics[..exit].iter().any(|t| t == "oom"), "{topics:?}");
}

#[tokio::test]
async fn agent_errors_map_to_ttrpc_codes_and_leave_nothing() {
    let h = harness();
    h.agent.misbehaviour.lock().unwrap().fail.insert(
        "create_container",
        (
            tonic::Code::InvalidArgument,
            format!("bad spec\x1b[2J{}", "x".repeat(100_000)),
        ),
    );
    let e = h.create("pod1").await.unwrap_err();
    assert_eq!(e.code(), Code::INVALID_ARGUMENT);
    let text = e.to_string();
    assert!(
        text.starts_with("husk create failed: bad spec?[2J"),
        "{text:.60}"
    );
    assert!(text.len() < 5000, "the guest's message is bounded");
    // The failed container is not kept, and the idle VM is stopped.
    assert_eq!(h.log(), ["share pod1", "boot", "unshare pod1", "stop"]);
    let e = h.start("pod1", "").await.unwrap_err();
    assert_eq!(e.code(), Code::NOT_FOUND);

    h.agent.misbehaviour.lock().unwrap().fail.clear();
    h.agent.misbehaviour.lock().unwrap().fail.insert(
        "start",
        (tonic::Code::Internal, "exec: \"/x\": not found".into()),
    );
    h.create("pod1").await.unwrap();
    let e = h.start("pod1", "").await.unwrap_err();
    assert_eq!(e.code(), Code::UNKNOWN);
    assert_eq!(e.to_string(), "husk start failed: exec: \"/x\": not found");
}

#[tokio::test]
async fn a_failed_boot_releases_the_share() {
    let h = harness_with(|p| p.boot_fails = Some("kernel panic".into()));
    let e = h.create("pod1").await.unwrap_err();
    assert!(e.to_string().contains("kernel panic"), "{e}");
    assert_eq!(h.log(), ["share pod1", "boot", "unshare pod1", "stop"]);
}

#[tokio::test]
async fn an_agent_that_never_answers_fails_within_the_deadline() {
    let h = harness();
    h.create("pod1").await.unwrap();
    h.start("pod1", "").await.unwrap();
    h.agent.misbehaviour.lock().unwrap().hang.insert("signal");
    let t = Instant::now();
    let e = h.kill("pod1", 15).await.unwrap_err();
    assert_eq!(e.code(), Code::DEADLINE_EXCEEDED, "{e}");
    assert!(e.to_string().contains("did not answer"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(h.agent.calls().contains(&"signal".to_string()));
    h.agent.misbehaviour.lock().unwrap().hang.insert("stats");
    let e = h
        .manager
        .stats(api::StatsRequest {
            id: "pod1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::DEADLINE_EXCEEDED, "{e}");
}

#[tokio::test]
async fn sigkill_the_guest_does_not_take_stops_the_vm() {
    let h = harness();
    h.create("pod1").await.unwrap();
    h.start("pod1", "").await.unwrap();
    h.agent.misbehaviour.lock().unwrap().hang.insert("signal");
    h.kill("pod1", 9).await.unwrap();
    assert_eq!(h.wait("pod1", "").await, KILLED);
    assert!(h.log().contains(&"stop".to_string()), "{:?}", h.log());
    // Delete works on the dead pod and releases its files.
    h.delete("pod1").await.unwrap();
    assert!(h.log().contains(&"unshare pod1".to_string()));
    assert_eq!(h.events(4).await, ["create", "start", "exit", "delete"]);
}

#[tokio::test]
async fn sigkill_the_guest_ignores_stops_the_vm_after_the_grace() {
    let h = harness();
    h.agent.misbehaviour.lock().unwrap().ignore_signals = true;
    h.create("pod1").await.unwrap();
    h.start("pod1", "").await.unwrap();
    let t = Instant::now();
    h.kill("pod1", 9).await.unwrap();
    assert_eq!(h.wait("pod1", "").await, KILLED);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(h.log().contains(&"stop".to_string()));
}

#[tokio::test]
async fn deleting_the_sandbox_ends_the_pod() {
    let h = harness();
    h.create("pod1").await.unwrap();
    h.create("app").await.unwrap();
    h.start("app", "").await.unwrap();
    let waiting = h.manager.wait(api::WaitRequest {
        id: "app".into(),
        ..Default::default()
    });
    // containerd deletes the sandbox while app still runs.
    let (waited, deleted) = tokio::join!(waiting, h.delete("pod1"));
    deleted.unwrap();
    assert_eq!(waited.unwrap().exit_status, KILLED);
    let log = h.log();
    assert!(log.contains(&"unshare app".to_string()), "{log:?}");
    assert!(log.contains(&"stop".to_string()), "{log:?}");
    let e = h.start("app", "").await.unwrap_err();
    assert_eq!(e.code(), Code::NOT_FOUND);
}

#[tokio::test]
async fn a_bad_spec_is_refused_before_anything_is_made() {
    let h = harness();
    let bundle = h.bundle("pod1");
    std::fs::write(
        Path::new(&bundle).join("config.json"),
        r#"{"root": {}, "process": {"args": ["sh"]}}"#,
    )
    .unwrap();
    let e = h
        .manager
        .create(api::CreateTaskRequest {
            id: "pod1".into(),
            bundle,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::INVALID_ARGUMENT);
    assert!(e.to_string().contains("root.path"), "{e}");
    assert!(h.log().is_empty(), "{:?}", h.log());
}
