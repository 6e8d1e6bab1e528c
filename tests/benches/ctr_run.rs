//! `ctr run` benchmark: from `ctr run` to the container's first output
//! byte, husk beside runc through the same private containerd, with husk's
//! time split into VM boot, the agent's create and start, the shim's own
//! work (its Create and Start handlers less the VM and agent time), and
//! containerd + ctr (the rest); then `ctr task exec` of `echo hi` into a
//! running container, to first output, for both. Not a test: it measures.
//!
//!   cargo build --release -p husk-shim && cargo bench -p husk-tests --bench ctr_run
//!   (HUSK_BENCH_RUNS=N, default 5; the shim measured is the release build)

use husk_tests::containerd::Containerd;
use husk_tests::ctr::{remove_task, run_detached};
use std::io::Read;
use std::process::Stdio;
use std::time::Instant;

const IMAGE: &str = "docker.io/husk/busybox:test";

/// (ms to first output byte, ms to exit) of `ctr run --rm ... echo hi`.
fn time_run(ctrd: &Containerd, runtime: &str, id: &str) -> (f64, f64) {
    time_ctr(
        ctrd,
        &["run", "--rm", "--runtime", runtime, IMAGE, id, "echo", "hi"],
    )
}

/// (ms to first output byte, ms to exit) of `ctr args...`.
fn time_ctr(ctrd: &Containerd, args: &[&str]) -> (f64, f64) {
    let started = Instant::now();
    let mut child = ctrd
        .ctr_command()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("ctr");
    let mut first = [0u8; 1];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .expect("no output");
    let first_ms = started.elapsed().as_secs_f64() * 1000.0;
    let status = child.wait().unwrap();
    assert!(status.success(), "ctr {args:?} failed");
    (first_ms, started.elapsed().as_secs_f64() * 1000.0)
}

/// A `key=value` number from the shim's log line `msg` for container `id`.
fn logged(log: &str, id: &str, msg: &str, key: &str) -> f64 {
    log.lines()
        .filter(|l| l.contains(&format!(": {msg} ")) && l.contains(&format!("container_id={id} ")))
        .find_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{key}=")))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(f64::NAN)
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

fn main() {
    let runs: usize = std::env::var("HUSK_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(5);
    let shim = husk_tests::containerd::build_bin_dir().join("containerd-shim-husk-v2");
    assert!(
        shim.exists(),
        "{} missing: run `cargo build --release -p husk-shim` first",
        shim.display()
    );
    let ctrd = Containerd::start();
    ctrd.import(std::path::Path::new(
        "/usr/local/share/husk/busybox-oci.tar",
    ));

    let names = [
        "runc: ctr run to first output",
        "husk: ctr run to first output",
        "  VM boot (agent ready)",
        "  agent create + start (guest)",
        "  shim's own work",
        "  containerd + ctr",
        "husk: ctr run to exit (incl. VM stop)",
    ];
    let mut rows: Vec<(&str, Vec<f64>)> = names.into_iter().map(|n| (n, Vec::new())).collect();
    for i in 0..runs {
        let (runc_first, _) = time_run(&ctrd, "io.containerd.runc.v2", &format!("bench-runc-{i}"));
        let id = format!("bench-husk-{i}");
        let (first, exit) = time_run(&ctrd, "io.containerd.husk.v2", &id);
        let log =
            std::fs::read_to_string(ctrd.dir.path().join("containerd.log")).unwrap_or_default();
        let boot = logged(&log, &id, "created", "vm_boot_ms");
        let guest = logged(&log, &id, "created", "agent_create_ms")
            + logged(&log, &id, "started", "agent_start_ms");
        let handlers =
            logged(&log, &id, "created", "handler_ms") + logged(&log, &id, "started", "handler_ms");
        let shim = handlers - boot - guest;
        let values = [runc_first, first, boot, guest, shim, first - handlers, exit];
        for (row, v) in rows.iter_mut().zip(values) {
            row.1.push(v);
        }
    }
    // Exec latency: into one running container per runtime.
    for (runtime, name) in [
        (
            "io.containerd.runc.v2",
            "runc: ctr task exec to first output",
        ),
        (
            "io.containerd.husk.v2",
            "husk: ctr task exec to first output",
        ),
    ] {
        let id = format!("bench-exec-{}", &name[..4]);
        run_detached(&ctrd, runtime, &id, &["sleep", "1000"]);
        let times = (0..runs)
            .map(|i| {
                time_ctr(
                    &ctrd,
                    &[
                        "task",
                        "exec",
                        "--exec-id",
                        &format!("e{i}"),
                        &id,
                        "echo",
                        "hi",
                    ],
                )
                .0
            })
            .collect();
        rows.push((name, times));
        let _ = ctrd.ctr(&["task", "kill", "-s", "SIGKILL", &id]);
        remove_task(&ctrd, &id);
    }

    println!("\nctr run benchmark: {runs} runs of `echo hi`, private containerd, same image\n");
    println!("{:<40} {:>9} {:>9} {:>9}", "ms", "min", "median", "max");
    for (name, v) in rows {
        let (lo, mid, hi) = stats(v);
        println!("{name:<40} {lo:>9.1} {mid:>9.1} {hi:>9.1}");
    }
    println!(
        "(runc's row is containerd + ctr + runc; the husk rows are parts of its first-output time)"
    );
}
