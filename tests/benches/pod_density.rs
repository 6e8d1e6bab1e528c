//! Density and parallel start, husk beside runc through one containerd
//! (CRI plugin, CNI bridge). Not a test: it measures.
//!
//!   cargo build --release -p husk-shim && cargo bench -p husk-tests --bench pod_density
//!   HUSK_BENCH_PARALLEL=N   pods started at once (default 10)
//!   HUSK_BENCH_DENSITY=a,b  idle-pod counts (default 1,10,50)
//!
//! Parallel start: N threads each run RunPodSandbox, CreateContainer and
//! StartContainer, until the container's first line is in its CRI log;
//! the wall time for all N, and each pod's own time.
//!
//! The same from a pool of N pre-booted VMs (docs/pool.md), filled first,
//! with what one idle pool VM costs the node (PSS of its member shim and
//! everything below it).
//!
//! Density: N idle pods (one `sleep` container each); then, per pod, the
//! memory of each host process that belongs to it — the pod's shim and
//! everything below it (husk: QEMU, virtiofsd, vhost-device-vsock; runc:
//! pause and the container) — as PSS (shared pages split between their
//! users, so the sum is what the node pays) and RSS, and the node's memory
//! in use (MemTotal - MemAvailable) against the same count before.

use husk_tests::comm;
use husk_tests::cri::{ContainerSpec, Cri, Pod, PodSpec, HUSK, RUNC};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(name)
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| default.to_vec())
}

/// Runs a pod with one `sleep` container; returns it and the ms from
/// RunPodSandbox to the container's first log line.
fn start_pod(cri: &Cri, handler: &str, name: &str) -> (Pod, f64) {
    let started = Instant::now();
    let pod = cri.run_pod(handler, &PodSpec::new(name));
    let spec = ContainerSpec::new("idle", &["sh", "-c", "echo ready; exec sleep 36000"]);
    cri.create_and_start(&pod, &spec);
    cri.wait_log(&pod, &spec, " stdout F ready", Duration::from_secs(300));
    (pod, started.elapsed().as_secs_f64() * 1000.0)
}

fn stats(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

fn parallel(cri: &Cri, handler: &str, label: &str, n: usize) {
    let started = Instant::now();
    let results: Vec<(Pod, f64)> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..n)
            .map(|i| s.spawn(move || start_pod(cri, handler, &format!("par-{handler}-{i}"))))
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let wall = started.elapsed().as_secs_f64() * 1000.0;
    let mut each: Vec<f64> = results.iter().map(|(_, ms)| *ms).collect();
    let (min, median, max) = stats(&mut each);
    println!(
        "{:<28} {:>10.0} {:>10.0} {:>10.0} {:>10.0}",
        format!("{label}: {n} pods at once"),
        wall,
        min,
        median,
        max
    );
    for (pod, _) in &results {
        cri.stop_and_remove(pod);
    }
}

/// `pid` and every process below it.
fn tree(pid: u32) -> Vec<u32> {
    let mut all = Vec::new();
    let mut queue = vec![pid];
    while let Some(p) = queue.pop() {
        all.push(p);
        queue.extend(children(p));
    }
    all
}

/// Parallel start of `n` pods, each taking a VM from a pool of `n` that was
/// filled beforehand; prints what an idle pool VM costs.
fn pool_parallel(cri: &Cri, n: usize) {
    let path = cri.containerd().dir.path().join("husk.toml");
    let mut config = husk_config::Config::load(&path).unwrap();
    let shape = husk_config::PoolShape {
        vcpus: config.hypervisor.vcpus,
        memory_mib: config.hypervisor.memory_mib,
        size: n as u32,
    };
    config.pool.shapes = vec![shape];
    std::fs::write(&path, config.to_toml()).unwrap();
    let pool = cri
        .containerd()
        .husk_runtime
        .join("pool")
        .join(shape.name());
    // A first pod starts the filling; it is not counted.
    let (primer, _) = start_pod(cri, HUSK, "pool-primer");
    cri.stop_and_remove(&primer);
    let idle = || {
        std::fs::read_dir(&pool)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "sock"))
                    .count()
            })
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(900);
    while idle() < n {
        assert!(
            Instant::now() < deadline,
            "the pool holds {} of {n}",
            idle()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(5));
    let members = cri.containerd().pool_members();
    let (mut pss, mut rss) = (0, 0);
    for m in &members {
        for p in tree(*m) {
            let (a, b) = memory_of(p);
            pss += a;
            rss += b;
        }
    }
    println!(
        "{:<28} {:>10} idle VMs: PSS {:.1} MiB, RSS {:.1} MiB each (member shim and its VM)",
        "husk pool",
        members.len(),
        pss as f64 / 1024.0 / members.len().max(1) as f64,
        rss as f64 / 1024.0 / members.len().max(1) as f64
    );
    // The pool refills in the background while the pods take their VMs,
    // as it does on a node.
    parallel(cri, HUSK, "husk pool", n);
    // Off, then the refilled members (and their VMs) ended.
    config.pool.shapes.clear();
    std::fs::write(&path, config.to_toml()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    while idle() < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    for pid in cri.containerd().pool_members() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    std::thread::sleep(Duration::from_secs(5));
}

/// The shim's RSS of a husk pod before and after rounds of `n` ExecSyncs
/// and container create/remove cycles: what grows with a pod's lifetime.
fn lifetime_growth(cri: &Cri, n: usize) {
    let pod = cri.run_pod(HUSK, &PodSpec::new("lifetime"));
    let spec = ContainerSpec::new("idle", &["sleep", "36000"]);
    let id = cri.create_and_start(&pod, &spec);
    let shim = pod_processes(&pod)[0];
    let rss = || memory_of(shim).1 as f64 / 1024.0;
    // The first calls warm the allocator and the connection.
    for _ in 0..20 {
        cri.exec_sync(&id, &["true"], 30);
    }
    let mut row = vec![format!("{:.1}", rss())];
    for _ in 0..3 {
        for _ in 0..n {
            let r = cri.exec_sync(&id, &["sh", "-c", "echo out; echo err >&2"], 30);
            assert_eq!(r.stdout.trim(), "out");
        }
        for i in 0..n / 10 {
            let mut c = ContainerSpec::new(&format!("short-{i}"), &["true"]);
            c.log_path = format!("short-{i}.log");
            let cid = cri.create_and_start(&pod, &c);
            cri.stop_container(&cid, 5);
            cri.remove_container(&cid);
        }
        row.push(format!("{:.1}", rss()));
    }
    println!(
        "\nshim RSS (MiB) of one husk pod: at start, then after each round of {n} ExecSyncs \
         and {} containers created, run and removed: {}",
        n / 10,
        row.join(" -> ")
    );
    cri.stop_and_remove(&pod);
}

fn meminfo_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn node_used_kib() -> u64 {
    meminfo_kib("MemTotal:") - meminfo_kib("MemAvailable:")
}

/// (Pss, Rss) in KiB of a process.
fn memory_of(pid: u32) -> (u64, u64) {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |k: &str| {
        rollup
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("Pss:"), field("Rss:"))
}

fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        out.extend(
            list.split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok()),
        );
    }
    out
}

/// The pod's shim (started with `-id <pod id>`) and every process below it.
fn pod_processes(pod: &Pod) -> Vec<u32> {
    let needle = format!("-id\0{}\0", pod.id);
    let shim = husk_tests::containerd::processes_mentioning(&needle)
        .into_iter()
        .find(|p| comm(*p).starts_with("containerd-shim"));
    let mut all = Vec::new();
    let mut queue: Vec<u32> = shim.into_iter().collect();
    while let Some(p) = queue.pop() {
        all.push(p);
        queue.extend(children(p));
    }
    all
}

fn density(cri: &Cri, handler: &str, n: usize) {
    let before = node_used_kib();
    let pods: Vec<Pod> = (0..n)
        .map(|i| start_pod(cri, handler, &format!("dense-{handler}-{i}")).0)
        .collect();
    // Let boots settle (page cache, the guests' first minute).
    std::thread::sleep(Duration::from_secs(10));
    let after = node_used_kib();
    let mut per_process: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for pod in &pods {
        for pid in pod_processes(pod) {
            let (pss, rss) = memory_of(pid);
            let name = match comm(pid) {
                c if c.starts_with("containerd-shim") => "shim".to_owned(),
                c if c.starts_with("qemu") => "qemu".to_owned(),
                c => c,
            };
            let e = per_process.entry(name).or_default();
            e.0 += pss;
            e.1 += rss;
        }
    }
    let total_pss: u64 = per_process.values().map(|v| v.0).sum();
    let detail: Vec<String> = per_process
        .iter()
        .map(|(name, (pss, rss))| {
            format!(
                "{name} {:.1}/{:.1}",
                *pss as f64 / 1024.0 / n as f64,
                *rss as f64 / 1024.0 / n as f64
            )
        })
        .collect();
    println!(
        "{:<8} {:>5} {:>12.1} {:>14.1}   {}",
        handler,
        n,
        total_pss as f64 / 1024.0 / n as f64,
        (after.saturating_sub(before)) as f64 / 1024.0,
        detail.join(", ")
    );
    for pod in &pods {
        cri.stop_and_remove(pod);
    }
}

fn main() {
    if let Some(reason) = husk_tests::cri::unsupported_reason() {
        println!("SKIPPED: {reason}");
        return;
    }
    let parallel_n = env_list("HUSK_BENCH_PARALLEL", &[10])[0];
    let counts = env_list("HUSK_BENCH_DENSITY", &[1, 10, 50]);
    let cri = Cri::start();
    println!("\nparallel start: ms, wall time for all, then each pod's own\n");
    println!(
        "{:<28} {:>10} {:>10} {:>10} {:>10}",
        "", "all", "min", "median", "max"
    );
    parallel(&cri, RUNC, "runc", parallel_n);
    parallel(&cri, HUSK, "husk cold", parallel_n);
    pool_parallel(&cri, parallel_n);
    lifetime_growth(&cri, 200);
    println!(
        "\ndensity: idle pods; MiB per pod (PSS summed over the pod's host processes), \
         node memory in use after minus before (MiB), per process PSS/RSS MiB per pod\n"
    );
    println!(
        "{:<8} {:>5} {:>12} {:>14}   per process (PSS/RSS)",
        "runtime", "pods", "MiB/pod", "node delta"
    );
    for n in counts {
        for handler in [RUNC, HUSK] {
            density(&cri, handler, n);
        }
    }
}
