//! husk-vm's root disk on a volume beside bare QEMU (a benchmark: tables,
//! not a test; docs/vm-pods.md, "The root disk on a volume").
//!
//! 1. Import: the Debian test image's disk (qcow2) into a blank raw block
//!    volume (a loop device over a sparse file, as a block PVC is handed
//!    over): husk-vm's import, as its "import done in" line on the
//!    container's stderr says (from the first block job to the vCPUs'
//!    start), against `qemu-img convert -n -t none -O raw` of the same file
//!    into the same kind of volume (target opened O_DIRECT, as husk opens a
//!    block volume).
//! 2. Guest I/O on the volume: a husk-vm pod booted from it, and bare QEMU
//!    booting the same volume with the same device and cache options
//!    (tests/fixtures/bench-vm-image.py --volume), run the same workload in
//!    the guest once cloud-init has finished: 256 MiB written O_DIRECT with
//!    a final fsync (MiB/s), then 200 4 KiB writes each O_DSYNC (ms each:
//!    the cost of a flush through the stack); three rounds, the best kept.
//!
//! Runs alternate (bare, husk, ...) so both see the same host load, which
//! under TCG moves a guest's numbers more than anything husk does.
//!
//!   cargo build -p husk-shim && cargo bench -p husk-tests --bench vm_disk
//!   (HUSK_BENCH_RUNS=N, default 3: N imports and N boots of each, at most 3)

use husk_tests::cri::{parse_log_line, ContainerSpec, Cri, PodSpec, HUSK_VM};
use k8s_cri::v1 as cri;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const IMAGE: &str = "docker.io/husk/debian-vm:test";
const DISK: &str = "/usr/local/share/husk/debian-vm.qcow2";
const VOLUME_MIB: u64 = 2200;
const DEVICE: &str = "/dev/xvda";
const TIMEOUT: Duration = Duration::from_secs(1200);
/// The guest's workload, three times: prints the guest's clock around
/// each part. The best of the three is taken: a guest under TCG shares
/// the host's CPUs, and a moment of other load slows one round.
const WORKLOAD: &str = "cd /var/tmp && for i in 1 2 3; do rm -f bench.w bench.s && sync && \
    a=$(date +%s.%N) && \
    dd if=/dev/zero of=bench.w bs=1M count=256 oflag=direct conv=fsync status=none && \
    b=$(date +%s.%N) && \
    dd if=/dev/zero of=bench.s bs=4k count=200 oflag=dsync status=none && \
    c=$(date +%s.%N) && rm -f bench.w bench.s && echo \"times $a $b $c\" || exit 1; done";
const SEQ_MIB: f64 = 256.0;
const SYNC_WRITES: f64 = 200.0;

/// A loop device over a sparse file: a blank raw block volume.
struct Volume {
    dev: String,
    _file: tempfile::NamedTempFile,
}

impl Volume {
    fn new() -> Self {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(VOLUME_MIB << 20).unwrap();
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file.path())
            .output()
            .expect("losetup");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            dev: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            _file: file,
        }
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).output();
    }
}

fn vm_on(name: &str, dev: &str) -> ContainerSpec {
    let mut spec = ContainerSpec::new(name, &["/disk"]);
    spec.image = IMAGE.into();
    spec.resources = Some(cri::LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: 100_000,
        memory_limit_in_bytes: 1024 << 20,
        ..Default::default()
    });
    spec.devices = vec![cri::Device {
        container_path: DEVICE.into(),
        host_path: dev.into(),
        permissions: "rwm".into(),
    }];
    spec
}

fn pod_spec(name: &str) -> PodSpec {
    let mut p = PodSpec::new(name);
    p.annotations
        .insert("io.husk.vm.root-disk".into(), DEVICE.into());
    p
}

/// Seconds husk-vm's import of the image into `volume` took, as its
/// stderr line says; the pod is ended once it is done.
fn husk_import(cri: &Cri, volume: &Volume, i: usize) -> f64 {
    let pod = cri.run_pod(HUSK_VM, &pod_spec(&format!("bench-import-{i}")));
    let spec = vm_on("vm", &volume.dev);
    cri.create_and_start(&pod, &spec);
    let log = pod.log_dir.join(&spec.log_path);
    let deadline = Instant::now() + TIMEOUT;
    let secs = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let done = text
            .lines()
            .filter_map(|l| parse_log_line(l).ok())
            .find_map(|(_, _, t)| {
                t.split("import done in ")
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .parse::<f64>()
                    .ok()
            });
        if let Some(s) = done {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "no import in {TIMEOUT:?}: {text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    cri.stop_and_remove(&pod);
    secs
}

/// Seconds `qemu-img convert` of the same disk into `volume` took.
fn qemu_img_import(volume: &Volume) -> f64 {
    let t = Instant::now();
    let out = Command::new("qemu-img")
        .args([
            "convert", "-n", "-t", "none", "-f", "qcow2", "-O", "raw", DISK,
        ])
        .arg(&volume.dev)
        .output()
        .expect("qemu-img");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed().as_secs_f64()
}

/// (MiB/s written with O_DIRECT, ms per O_DSYNC write), the best of the
/// workload's "times a b c" lines.
fn io_numbers(text: &str) -> Option<(f64, f64)> {
    let rounds: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("times "))
        .map(|line| {
            let t: Vec<f64> = line
                .split_whitespace()
                .map(|v| v.parse().ok())
                .collect::<Option<_>>()?;
            let [a, b, c] = t[..] else { return None };
            Some((SEQ_MIB / (b - a), (c - b) * 1000.0 / SYNC_WRITES))
        })
        .collect::<Option<_>>()?;
    let best_rate = rounds.iter().map(|r| r.0).reduce(f64::max)?;
    let best_latency = rounds.iter().map(|r| r.1).reduce(f64::min)?;
    Some((best_rate, best_latency))
}

fn husk_io(cri: &Cri, volume: &Volume, i: usize) -> (f64, f64) {
    let pod = cri.run_pod(HUSK_VM, &pod_spec(&format!("bench-io-{i}")));
    let id = cri.create_and_start(&pod, &vm_on("vm", &volume.dev));
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let r = cri.try_exec_sync(&id, &["cloud-init", "status", "--wait"], 600);
        if matches!(&r, Ok(r) if r.exit_code == 0) {
            break;
        }
        assert!(Instant::now() < deadline, "never booted: {r:?}");
        std::thread::sleep(Duration::from_secs(2));
    }
    let r = cri.exec_sync(&id, &["sh", "-c", WORKLOAD], 1200);
    let numbers = io_numbers(&r.stdout).unwrap_or_else(|| panic!("the workload said {r:?}"));
    cri.stop_container(&id, 120);
    cri.stop_and_remove(&pod);
    numbers
}

fn bare_io(script: &Path, volume: &Volume) -> (f64, f64) {
    let out = Command::new("python3")
        .arg(script)
        .args(["--memory", "1024", "--tb-size", "256"])
        .args(["--volume", &volume.dev, "--guest-sh", WORKLOAD])
        .args(["--timeout", "1200"])
        .output()
        .expect("running bench-vm-image.py");
    let text = String::from_utf8_lossy(&out.stdout);
    let guest: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("guest: "))
        .collect::<Vec<_>>()
        .join("\n");
    io_numbers(&guest).unwrap_or_else(|| {
        panic!(
            "bench-vm-image.py said:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
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
        .unwrap_or(3);
    let script: PathBuf = husk_tests::repo_root().join("tests/fixtures/bench-vm-image.py");
    let archive =
        husk_tests::installed_archive("HUSK_VM_IMAGE", "/usr/local/share/husk/debian-vm-oci.tar");
    let mut cri = Cri::start();
    cri.import_image(&archive, IMAGE);

    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for i in 0..runs {
        theirs.push(qemu_img_import(&Volume::new()));
        ours.push(husk_import(&cri, &Volume::new(), i));
    }
    println!("\nimport of the Debian test image's disk (qcow2, 2049 MiB) into a blank {VOLUME_MIB} MiB block volume (loop device), seconds\n");
    println!("| run | qemu-img convert -n -t none | husk-vm import |");
    println!("|---|---|---|");
    for (i, (t, o)) in theirs.iter().zip(&ours).enumerate() {
        println!("| {i} | {t:.2} | {o:.1} |");
    }
    let (mt, mo) = (median(theirs), median(ours));
    println!(
        "| median | {mt:.2} | {mo:.1} ({:+.0} %) |",
        (mo / mt - 1.0) * 100.0
    );

    // One volume, imported once, booted by both in turn.
    let volume = Volume::new();
    husk_import(&cri, &volume, runs);
    let boots = runs.clamp(1, 3);
    let mut rows = Vec::new();
    for i in 0..boots {
        rows.push(("bare QEMU", bare_io(&script, &volume)));
        rows.push(("husk-vm pod", husk_io(&cri, &volume, i)));
    }
    println!("\nguest I/O on the volume (virtio-blk, cache.direct=on, aio=threads; 1 vCPU, 1 GiB, TCG)\n");
    println!("| run | O_DIRECT write, MiB/s | O_DSYNC 4 KiB write, ms |");
    println!("|---|---|---|");
    for (kind, (mbps, ms)) in &rows {
        println!("| {kind} | {mbps:.1} | {ms:.2} |");
    }
    for kind in ["bare QEMU", "husk-vm pod"] {
        let of = |f: fn(&(f64, f64)) -> f64| {
            median(
                rows.iter()
                    .filter(|r| r.0 == kind)
                    .map(|r| f(&r.1))
                    .collect(),
            )
        };
        println!(
            "| median, {kind} | {:.1} | {:.2} |",
            of(|r| r.0),
            of(|r| r.1)
        );
    }
}
