//! Pods and containers outlive their containerd, and a dead shim is its
//! tasks' exit, on every containerd release line a node runs (1.6, 1.7,
//! 2.1: tests/src/release.rs). Each test starts, on one containerd, a
//! container with `ctr run -d` and a pod through CRI (a container that
//! prints a line a second), then either
//! - restarts containerd (SIGTERM, or SIGKILL as a crash) on the same root,
//!   state and sockets, and checks that `ctr task ls` and CRI still list
//!   both, exec, stats and logs work, and stop and delete leave nothing; or
//! - SIGKILLs the husk shims, and checks that containerd reports the ctr
//!   task exited with 137, the pod's container exited as a runc pod's
//!   does when its shim is killed, and that cleanup leaves nothing.
//!
//! "Nothing" is: no shim, QEMU, virtiofsd or vhost-device-vsock of the
//! test, no mount under its directory, no pod network namespace or TAP.

use husk_tests::containerd::{mounts_under, processes_mentioning, Containerd};
use husk_tests::cri::{parse_log_line, ContainerSpec, Cri, Pod, PodSpec};
use husk_tests::ctr::{self, text};
use husk_tests::release::Release;
use k8s_cri::v1 as cri;
use nix::sys::signal::Signal;
use std::path::Path;
use std::time::{Duration, Instant};

/// The `ctr run -d` container's id (namespace `default`).
const CTR_ID: &str = "survivor";
/// Prints `tick <n>` every second, so that logs written after a restart
/// can be told from those written before.
const TICKER: &[&str] = &[
    "sh",
    "-c",
    "i=0; while true; do echo tick $i; i=$((i+1)); sleep 1; done",
];

/// The harness on containerd `line`, with the busybox image in the
/// `default` namespace too (for ctr); None (SKIPPED) where the host cannot
/// give pods a network.
fn harness(line: &str) -> Option<Cri> {
    if let Some(reason) = husk_tests::cri::unsupported_reason() {
        println!("SKIPPED: {reason}");
        return None;
    }
    let release = Release::named(line).unwrap_or_else(|e| panic!("containerd {line}: {e}"));
    let cri = Cri::start_release(&release);
    cri.containerd().import(&ctr::image_archive());
    Some(cri)
}

struct Workload {
    pod: Pod,
    ticker: String,
    log: ContainerSpec,
}

fn start_workload(cri: &Cri) -> Workload {
    ctr::run_detached(cri.containerd(), ctr::HUSK, CTR_ID, &["sleep", "1000"]);
    let pod = cri.run_pod(husk_tests::cri::HUSK, &PodSpec::new("survivor"));
    let log = ContainerSpec::new("ticker", TICKER);
    let ticker = cri.create_and_start(&pod, &log);
    let w = Workload { pod, ticker, log };
    wait_for_tick_after(&w, None, "at start");
    w
}

/// The highest `n` of the `tick <n>` lines in the ticker's CRI log.
fn last_tick(w: &Workload) -> Option<u64> {
    let path = w.pod.log_dir.join(&w.log.log_path);
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    text.lines()
        .map(|l| parse_log_line(l).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|(stream, tag, _)| *stream == "stdout" && *tag == "F")
        .filter_map(|(_, _, t)| t.strip_prefix("tick ")?.parse().ok())
        .max()
}

/// Waits until the log holds a tick newer than `after`: containerd is
/// writing the container's output to its log.
fn wait_for_tick_after(w: &Workload, after: Option<u64>, when: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while last_tick(w) <= after {
        assert!(
            Instant::now() < deadline,
            "{when}: no tick after {after:?} in the log in 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Everything a user does with a running container and pod works.
fn check_alive(cri: &Cri, w: &Workload, when: &str) {
    let ctrd = cri.containerd();
    assert_eq!(
        ctr::task_status(ctrd, CTR_ID),
        "RUNNING",
        "{when}: ctr task ls: {}",
        text(&ctrd.ctr(&["task", "ls"]).stdout)
    );
    static EXECS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = EXECS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let exec_id = format!("exec-{n}");
    let exec = ctrd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        &exec_id,
        CTR_ID,
        "echo",
        "alive",
    ]);
    assert!(
        exec.status.success() && text(&exec.stdout) == "alive\n",
        "{when}: ctr task exec: {:?} {} {}",
        exec.status,
        text(&exec.stdout),
        text(&exec.stderr)
    );
    let metrics = text(&ctrd.ctr(&["task", "metrics", CTR_ID]).stdout);
    assert!(
        metrics.contains("memory.usage_in_bytes"),
        "{when}: ctr task metrics: {metrics}"
    );

    let pods = cri.list_pods();
    assert!(
        pods.iter()
            .any(|p| p.id == w.pod.id && p.state == cri::PodSandboxState::SandboxReady as i32),
        "{when}: pod {} not listed ready: {pods:?}",
        w.pod.id
    );
    let status = cri.container_status(&w.ticker);
    assert_eq!(
        status.state(),
        cri::ContainerState::ContainerRunning,
        "{when}: {status:?}"
    );
    let r = cri.exec_sync(&w.ticker, &["echo", "alive"], 60);
    assert_eq!((r.stdout.as_str(), r.exit_code), ("alive\n", 0), "{when}");
    // The guest's figures still come through. Usage, not the working set:
    // containerd computes the working set as usage less inactive file
    // pages, which is 0 when a tiny container's pages are mostly file
    // pages (cgroup v1's usage is batched per CPU and may read below them).
    let stats = cri.container_stats(&w.ticker);
    assert!(
        stats
            .memory
            .as_ref()
            .and_then(|m| m.usage_bytes.as_ref())
            .is_some_and(|b| b.value > 0),
        "{when}: {stats:?}"
    );
    wait_for_tick_after(w, last_tick(w), when);
}

/// Stops and deletes both as a user would, then checks nothing is left.
fn tear_down(cri: &Cri, w: Workload) {
    cri.stop_and_remove(&w.pod);
    let ctrd = cri.containerd();
    let _ = ctrd.ctr(&["task", "kill", "-s", "SIGKILL", CTR_ID]);
    ctr::remove_task(ctrd, CTR_ID);
    assert_nothing_of_the_test_left(ctrd);
}

fn assert_nothing_of_the_test_left(ctrd: &Containerd) {
    ctr::assert_nothing_left(ctrd);
    let socket = ctrd.shim_socket("default", CTR_ID);
    assert!(
        !socket.exists(),
        "{CTR_ID}'s shim socket {} is left",
        socket.display()
    );
    let dir = ctrd.dir.path();
    let others: Vec<u32> = processes_mentioning(&dir.display().to_string())
        .into_iter()
        .filter(|&p| Some(p) != ctrd.pid())
        .collect();
    assert!(others.is_empty(), "processes of the test left: {others:?}");
    assert_eq!(mounts_under(dir), Vec::<std::path::PathBuf>::new());
    // The TAP lives in the pod's namespace (gone, assert_pod_gone checks);
    // none may have reached the host's.
    assert!(!Path::new("/sys/class/net/husktap0").exists());
}

fn containerd_restart(line: &str, signal: Signal) {
    let started = Instant::now();
    let Some(mut cri) = harness(line) else { return };
    let w = start_workload(&cri);
    check_alive(&cri, &w, "before the restart");
    cri.restart_containerd(signal);
    check_alive(&cri, &w, &format!("after a restart with {signal}"));
    tear_down(&cri, w);
    println!(
        "containerd {line}, restart with {signal}: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// `ctr events` running beside a test: what containerd published.
struct EventWatch(std::process::Child);

impl EventWatch {
    fn start(ctrd: &Containerd) -> Self {
        EventWatch(
            ctrd.ctr_command()
                .arg("events")
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        )
    }

    fn stop(mut self) -> String {
        let _ = self.0.kill();
        text(&self.0.wait_with_output().unwrap().stdout)
    }
}

/// The exit status a `/tasks/exit` event in `events` gives task `id`.
fn exit_status_of(events: &str, id: &str) -> Option<u64> {
    events
        .lines()
        .filter(|l| l.contains("/tasks/exit"))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l[l.find('{')?..]).ok())
        .find(|e| e["container_id"] == id)
        .and_then(|e| e["exit_status"].as_u64())
}

/// A file removed when the test ends, passed or not.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// SIGKILLs the shim `binary` started for task `id`.
fn kill_shim(ctrd: &Containerd, binary: &str, id: &str) {
    let shims = ctrd.shims(binary);
    let shim = shims
        .iter()
        .find(|s| s.id == id)
        .unwrap_or_else(|| panic!("no {binary} serves {id}: {shims:?}"));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(shim.pid as i32), Signal::SIGKILL)
        .expect("killing the shim");
}

fn shim_killed(line: &str) {
    let started = Instant::now();
    let Some(cri) = harness(line) else { return };
    let w = start_workload(&cri);
    let ctrd = cri.containerd();
    // The harness removes the sockets of the shims it ends and of its
    // pods; this one's shim is killed here, and checked for below.
    let _sweep = RemoveOnDrop(ctrd.shim_socket("default", CTR_ID));

    // ctr: containerd publishes the task's exit with 137 and stops
    // listing it running; the container can then be removed.
    let events = EventWatch::start(ctrd);
    std::thread::sleep(Duration::from_millis(500));
    kill_shim(ctrd, "containerd-shim-husk-v2", CTR_ID);
    let deadline = Instant::now() + Duration::from_secs(60);
    while ctr::task_status(ctrd, CTR_ID) == "RUNNING" {
        assert!(Instant::now() < deadline, "{CTR_ID} still RUNNING");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(500));
    let events = events.stop();
    assert_eq!(
        exit_status_of(&events, CTR_ID),
        Some(137),
        "events:\n{events}"
    );
    // containerd may already have dropped the dead task; then `task rm`
    // says so, and only the container is left to remove.
    let rm = ctrd.ctr(&["task", "rm", CTR_ID]);
    let rm_err = text(&rm.stderr);
    assert!(
        rm.status.success() || rm_err.contains("not found"),
        "ctr task rm: {rm_err}"
    );
    let crm = ctrd.ctr(&["container", "rm", CTR_ID]);
    assert!(crm.status.success(), "{}", text(&crm.stderr));

    // CRI: the pod's container is reported exited, and the pod goes away
    // leaving nothing.
    kill_shim(ctrd, "containerd-shim-husk-v2", &w.pod.id);
    let husk_status = cri.wait_exited(&w.ticker, Duration::from_secs(60));
    cri.stop_and_remove(&w.pod);
    assert_nothing_of_the_test_left(ctrd);
    // Its exit code is a runc pod's when its shim is killed (runc is the
    // oracle: on some lines CRI's own wait on the dead shim decides the
    // code). Last, as runc may leave processes behind here, which the
    // harness' drop ends.
    let runc_pod = cri.run_pod(husk_tests::cri::RUNC, &PodSpec::new("runc-survivor"));
    let runc_ticker = cri.create_and_start(&runc_pod, &ContainerSpec::new("ticker", TICKER));
    kill_shim(ctrd, "containerd-shim-runc-v2", &runc_pod.id);
    let runc_status = cri.wait_exited(&runc_ticker, Duration::from_secs(60));
    println!(
        "containerd {line}, shim killed: CRI exit code runc {} husk {}",
        runc_status.exit_code, husk_status.exit_code
    );
    assert_eq!(
        husk_status.exit_code, runc_status.exit_code,
        "husk: {husk_status:?}"
    );
    println!(
        "containerd {line}, shims killed: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn containerd_1_6_restarted_with_sigterm_keeps_pods() {
    containerd_restart("1.6", Signal::SIGTERM);
}

#[test]
fn containerd_1_6_restarted_after_sigkill_keeps_pods() {
    containerd_restart("1.6", Signal::SIGKILL);
}

#[test]
fn containerd_1_6_sees_a_killed_shim_as_exit_137() {
    shim_killed("1.6");
}

#[test]
fn containerd_1_7_restarted_with_sigterm_keeps_pods() {
    containerd_restart("1.7", Signal::SIGTERM);
}

#[test]
fn containerd_1_7_restarted_after_sigkill_keeps_pods() {
    containerd_restart("1.7", Signal::SIGKILL);
}

#[test]
fn containerd_1_7_sees_a_killed_shim_as_exit_137() {
    shim_killed("1.7");
}

#[test]
fn containerd_2_1_restarted_with_sigterm_keeps_pods() {
    containerd_restart("2.1", Signal::SIGTERM);
}

#[test]
fn containerd_2_1_restarted_after_sigkill_keeps_pods() {
    containerd_restart("2.1", Signal::SIGKILL);
}

#[test]
fn containerd_2_1_sees_a_killed_shim_as_exit_137() {
    shim_killed("2.1");
}

#[test]
fn exit_events_are_read_from_ctr_events() {
    let events = "2024-01-01 00:00:00 +0000 UTC default /tasks/exit \
        {\"container_id\":\"a\",\"id\":\"a\",\"pid\":7,\"exit_status\":137}\n\
        2024-01-01 00:00:00 +0000 UTC default /tasks/delete {\"container_id\":\"b\"}\n";
    assert_eq!(exit_status_of(events, "a"), Some(137));
    assert_eq!(exit_status_of(events, "b"), None);
}
