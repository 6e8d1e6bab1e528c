//! Pod start benchmark: RunPodSandbox, then CreateContainer and
//! StartContainer of one container, until its first line is in the CRI log
//! file; runc and husk side by side through the same containerd (CRI
//! plugin, CNI bridge). Not a test: it measures.
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
    let log = pod.log_dir.join(&spec.log_path);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::fs::read_to_string(&log).is_ok_and(|l| l.contains(" stdout F ready")) {
        assert!(
            Instant::now() < deadline,
            "no log line in {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
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
    println!(
        "\npod start benchmark: {runs} pods per handler, RunPodSandbox to the first log line\n"
    );
    println!("{:<36} {:>9} {:>9} {:>9}", "ms", "min", "median", "max");
    for handler in [RUNC, HUSK] {
        let mut v: Vec<f64> = (0..runs).map(|i| pod_start(&cri, handler, i)).collect();
        v.sort_by(f64::total_cmp);
        println!(
            "{:<36} {:>9.1} {:>9.1} {:>9.1}",
            format!("{handler}: pod start"),
            v[0],
            v[v.len() / 2],
            v[v.len() - 1]
        );
    }
}
