//! Boot benchmark: boots the configured micro-VM several times and prints
//! where the time from `MicroVm::start` to a ready agent goes, and what the
//! host processes of one VM cost in memory. Not a test: it asserts nothing
//! about speed, it measures.
//!
//!   cargo bench -p husk-tests --bench boot          (HUSK_BENCH_RUNS=N, default 5)
//!
//! Phases, per boot:
//! - helpers: virtiofsd + vhost-device-vsock spawned until their sockets exist
//! - vmm spawn: fork+exec of the VMM
//! - vmm init: VMM start until the guest kernel runs (host time since spawn
//!   minus guest uptime, since the guest clock starts with the kernel)
//! - kernel boot: guest uptime when the kernel exec'd the agent as /init
//! - agent init: agent start until it served gRPC (mounts, runtime, vsock bind)
//! - ready probe: agent serving until the host's Health probe succeeded
//! - total: start() call until the agent answered
//!
//! The guest-clock phases are approximate under TCG: the guest cannot
//! calibrate its TSC there and keeps time with jiffies.

use husk_hypervisor::MicroVm;
use husk_proto::agent::GuestInfoRequest;
use husk_tests::*;
use std::time::{Duration, Instant};

struct Sample {
    phases_ms: [f64; 7],
    rss_kib: [(u64, u64); 3],
}

const PHASES: [&str; 7] = [
    "helpers",
    "vmm spawn",
    "vmm init",
    "kernel boot",
    "agent init",
    "ready probe",
    "total",
];
const PROCESSES: [&str; 3] = ["qemu", "virtiofsd", "vhost-device-vsock"];

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn one_boot(config: &husk_config::Config, run: usize) -> Sample {
    let shared = tempfile::tempdir().unwrap();
    let spec = husk_hypervisor::VmSpec {
        id: format!("bench-{run}"),
        shared_dir: shared.path().to_owned(),
        nets: Vec::new(),
        cgroup_procs: Vec::new(),
        oom_score_adj: None,
    };
    let mut vm = MicroVm::start(config, spec).await.expect("VM start");
    let ready_at = Instant::now();
    let t = vm.timings();
    let info = vm
        .agent()
        .await
        .unwrap()
        .guest_info(GuestInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let since_spawn = ms(t.agent_ready) + ms(ready_at.elapsed());
    let vmm_init = (since_spawn - info.uptime_ms as f64).max(0.0);
    let kernel = info.agent_started_ms as f64;
    let agent_init = info.agent_serving_ms.saturating_sub(info.agent_started_ms) as f64;
    let probe = (ms(t.agent_ready) - vmm_init - info.agent_serving_ms as f64).max(0.0);
    let pids = vm.pids();
    let rss = [pids.vmm, pids.virtiofsd, pids.vsock_backend].map(|p| rss_kib(p).unwrap_or((0, 0)));
    vm.stop().await;
    Sample {
        phases_ms: [
            ms(t.helpers),
            ms(t.vmm_spawn),
            vmm_init,
            kernel,
            agent_init,
            probe,
            ms(t.total),
        ],
        rss_kib: rss,
    }
}

fn min_median_max(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs: usize = std::env::var("HUSK_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(5);
    let runtime = tempfile::tempdir().unwrap();
    let config = test_config(runtime.path());
    require_guest_artifacts(&config);
    let accel = husk_hypervisor::resolve_accelerator(config.hypervisor.accelerator);

    let mut samples = Vec::new();
    for run in 0..runs {
        samples.push(one_boot(&config, run).await);
    }

    println!(
        "\nhusk boot benchmark: {runs} boots, backend qemu, accelerator {} ({}), {} vCPU, {} MiB",
        accel.accelerator, accel.reason, config.hypervisor.vcpus, config.hypervisor.memory_mib
    );
    println!(
        "\n{:<14} {:>9} {:>9} {:>9}",
        "phase (ms)", "min", "median", "max"
    );
    for (i, name) in PHASES.iter().enumerate() {
        let (lo, mid, hi) = min_median_max(samples.iter().map(|s| s.phases_ms[i]).collect());
        println!("{name:<14} {lo:>9.1} {mid:>9.1} {hi:>9.1}");
    }
    println!(
        "\n{:<20} {:>12} {:>16} {:>16}",
        "host process", "RSS KiB", "shared mem KiB", "own RSS KiB"
    );
    for (i, name) in PROCESSES.iter().enumerate() {
        let (_, rss, _) = min_median_max(samples.iter().map(|s| s.rss_kib[i].0 as f64).collect());
        let (_, shm, _) = min_median_max(samples.iter().map(|s| s.rss_kib[i].1 as f64).collect());
        println!("{name:<20} {rss:>12.0} {shm:>16.0} {:>16.0}", rss - shm);
    }
    println!("(median per process; shared mem is guest RAM the process has mapped: a memfd)");
}
