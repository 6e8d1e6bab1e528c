//! Pod start benchmark: RunPodSandbox, then CreateContainer and
//! StartContainer of one container, until its first line is in the CRI log
//! file; runc, husk booting cold, and husk taking a VM from the pool
//! (docs/pool.md; the pool is given time to refill between pods) side by
//! side through the same containerd (CRI plugin, CNI bridge). Not a test:
//! it measures.
//!
//!   cargo build --release -p husk-shim && cargo bench -p husk-tests --bench pod_start
//!   (HUSK_BENCH_RUNS=N, default 5; the shim measured is the release build)

use husk_tests::cri::{ContainerSpec, Cri, PodSpec, HUSK, RUNC};
use std::time::{Duration, Instant};

/// ms from RunPodSandbox to the container's first logged line.
fn pod_start(cri: &Cri, handler: &str, i: usize) -> f64 {
    let started = Instant::now();
    let pod = cri.run_pod(handler, &PodSpec::new(&format!("bench-{handler}-{i}")));
    let spec = ContainerSpec::new("hello", &["sh", "-c", "echo ready; sleep 3600"]);
    cri.create_and_start(&pod, &spec);
    cri.wait_log(&pod, &spec, " stdout F ready", Duration::from_secs(120));
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    cri.stop_and_remove(&pod);
    ms
}

fn main() {
    if let Some(reason) = husk_tests::cri::unsupported_reason() {
        println!("SKIPPED: {reason}");
        return;
    }
    let runs: usize = std::env::var("HUSK_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(5);
    let cri = Cri::start();
    println!("\npod start benchmark: {runs} pods per row, RunPodSandbox to the first log line\n");
    println!("{:<36} {:>9} {:>9} {:>9}", "ms", "min", "median", "max");
    let row = |label: &str, mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        println!(
            "{:<36} {:>9.1} {:>9.1} {:>9.1}",
            label,
            v[0],
            v[v.len() / 2],
            v[v.len() - 1]
        );
    };
    for (handler, label) in [(RUNC, "runc: pod start"), (HUSK, "husk cold: pod start")] {
        row(
            label,
            (0..runs).map(|i| pod_start(&cri, handler, i)).collect(),
        );
    }
    // A pool of one VM of the default size, refilled between pods.
    let path = cri.containerd().dir.path().join("husk.toml");
    let mut config = husk_config::Config::load(&path).unwrap();
    let shape = husk_config::PoolShape {
        vcpus: config.hypervisor.vcpus,
        memory_mib: config.hypervisor.memory_mib,
        size: 1,
    };
    config.pool.shapes = vec![shape];
    std::fs::write(&path, config.to_toml()).unwrap();
    let pool = cri
        .containerd()
        .husk_runtime
        .join("pool")
        .join(shape.name());
    // The first pod fills the pool; it is not counted.
    pod_start(&cri, HUSK, runs);
    let pooled: Vec<f64> = (0..runs)
        .map(|i| {
            wait_for_idle_vm(&pool);
            pod_start(&cri, HUSK, runs + 1 + i)
        })
        .collect();
    row("husk from the pool: pod start", pooled);
    // End the pool's members (their VMs with them).
    for pid in cri.containerd().pool_members() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    std::thread::sleep(Duration::from_secs(5));
}

/// Waits until the pool has an idle VM (a member's claim socket).
fn wait_for_idle_vm(pool: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(180);
    while !std::fs::read_dir(pool).is_ok_and(|d| {
        d.flatten()
            .any(|e| e.path().extension().is_some_and(|x| x == "sock"))
    }) {
        assert!(Instant::now() < deadline, "the pool never refilled");
        std::thread::sleep(Duration::from_millis(100));
    }
}
