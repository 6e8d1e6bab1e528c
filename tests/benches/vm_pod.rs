//! husk-vm pod start beside bare QEMU (a benchmark: a table, not a
//! test). The Debian test image with the same cloud-init user-data (a web
//! server) and an SSH key, booted
//!
//! - as a husk-vm pod through CRI: from RunPodSandbox, and from QEMU's
//!   start (StartContainer), to cloud-init's "finished" line in the CRI log
//!   and to sshd's banner at the pod IP;
//! - by bare `qemu-system-x86_64` with the same devices, tb-size and size
//!   (tests/fixtures/bench-vm-image.py; user networking instead of the pod's TAP),
//!   from QEMU's start to the same two points.
//!
//! Runs alternate (bare, husk, bare, husk, ...) so both see the same host
//! load, which under TCG moves boot times more than anything husk does;
//! QEMU's CPU seconds at "finished" are printed too, as they depend less on
//! the load. Memory: QEMU's RSS, the part of it that is not guest RAM, and
//! what husk adds per pod beside QEMU (its shim).
//!
//!   cargo build -p husk-shim && cargo bench -p husk-tests --bench vm_pod
//!   (HUSK_BENCH_RUNS=N pairs, default 2; each boot takes minutes)

use husk_tests::cri::{ContainerSpec, Cri, PodSpec, HUSK_VM};
use k8s_cri::v1 as cri;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const IMAGE: &str = "docker.io/husk/debian-vm:test";
const MEMORY_MIB: i64 = 1024;
const TB_SIZE_MIB: u32 = 256;
const TIMEOUT: Duration = Duration::from_secs(1200);
/// The user-data tests/fixtures/bench-vm-image.py gives the bare VM.
const USER_DATA: &str = "#cloud-config
runcmd:
  - [sh, -c, \"mkdir -p /srv/www && hostname > /srv/www/index.html\"]
  - [systemd-run, --unit=web, python3, -m, http.server, \"8080\", --directory, /srv/www]
";

#[derive(Debug, Default)]
struct Sample {
    kind: &'static str,
    /// From RunPodSandbox (husk only).
    pod_to_finished: Option<f64>,
    pod_to_sshd: Option<f64>,
    /// From QEMU's start.
    qemu_to_finished: f64,
    qemu_to_sshd: f64,
    cpu_at_finished: Option<f64>,
    qemu_rss_mib: f64,
    /// QEMU's RSS less its guest RAM (husk only: read from smaps).
    qemu_own_mib: Option<f64>,
    shim_rss_mib: Option<f64>,
    load: f64,
}

fn load() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The RSS of the largest mapping of `pid` (QEMU's guest RAM), KiB.
fn largest_mapping_rss_kib(pid: u32) -> Option<u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let (mut best_size, mut best_rss, mut size) = (0u64, 0u64, 0u64);
    for line in smaps.lines() {
        let num = |l: &str| {
            l.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        };
        if line.starts_with("Size:") {
            size = num(line).unwrap_or(0);
        } else if line.starts_with("Rss:") && size > best_size {
            best_size = size;
            best_rss = num(line).unwrap_or(0);
        }
    }
    Some(best_rss)
}

/// How long ago `pid` started (its start time in /proc/<pid>/stat against
/// the system's uptime).
fn process_age(pid: u32) -> Duration {
    let start = husk_tests::stat_fields(pid)
        .get(19)
        .and_then(|t| t.parse::<f64>().ok())
        .map(|ticks| ticks / husk_tests::clock_ticks());
    let uptime = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|u| u.split_whitespace().next()?.parse::<f64>().ok());
    match (start, uptime) {
        (Some(s), Some(u)) if u >= s => Duration::from_secs_f64(u - s),
        _ => Duration::ZERO,
    }
}

fn sshd_answers(ip: std::net::Ipv4Addr) -> bool {
    let addr = std::net::SocketAddr::from((ip, 22));
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).is_ok() && &buf == b"SSH-"
}

fn husk_run(cri: &Cri, i: usize, keys: &Path) -> Sample {
    let dir = tempfile::tempdir().unwrap();
    let (ci, ssh) = (dir.path().join("ci"), dir.path().join("ssh"));
    std::fs::create_dir(&ci).unwrap();
    std::fs::create_dir(&ssh).unwrap();
    std::fs::write(ci.join("user-data"), USER_DATA).unwrap();
    std::fs::copy(keys, ssh.join("authorized_keys")).unwrap();
    let mut spec = ContainerSpec::new("vm", &["/disk"]);
    spec.image = IMAGE.into();
    spec.resources = Some(cri::LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: 100_000,
        memory_limit_in_bytes: MEMORY_MIB << 20,
        ..Default::default()
    });
    let mount = |host: &Path, c: &str| cri::Mount {
        container_path: c.into(),
        host_path: host.display().to_string(),
        readonly: true,
        ..Default::default()
    };
    spec.mounts = vec![mount(&ci, "/cloud-init"), mount(&ssh, "/ssh-keys")];
    let mut s = Sample {
        kind: "husk-vm pod",
        load: load(),
        ..Default::default()
    };
    let t_pod = Instant::now();
    let pod = cri.run_pod(HUSK_VM, &PodSpec::new(&format!("bench-vm-{i}")));
    let id = cri.create_and_start(&pod, &spec);
    // QEMU started in StartContainer (paused, then run): its start is
    // that call's, within milliseconds.
    let qemu_pid = husk_tests::containerd::processes_mentioning(&format!("husk-vm-{id},"))
        .into_iter()
        .next()
        .expect("the pod's QEMU");
    let t_qemu = Instant::now() - process_age(qemu_pid);
    let log = pod.log_dir.join(&spec.log_path);
    let deadline = Instant::now() + TIMEOUT;
    let (mut finished, mut sshd) = (None, None);
    while finished.is_none() || sshd.is_none() {
        assert!(Instant::now() < deadline, "no boot in {TIMEOUT:?}");
        if finished.is_none()
            && std::fs::read_to_string(&log).is_ok_and(|l| {
                l.lines()
                    .any(|l| l.contains("Cloud-init v.") && l.contains(" finished at "))
            })
        {
            finished = Some((t_pod.elapsed(), t_qemu.elapsed()));
            s.cpu_at_finished = husk_tests::cpu_secs(qemu_pid);
            s.qemu_rss_mib = status_kib(qemu_pid, "VmRSS").unwrap_or(0) as f64 / 1024.0;
            s.qemu_own_mib =
                largest_mapping_rss_kib(qemu_pid).map(|ram| s.qemu_rss_mib - ram as f64 / 1024.0);
            let shim = cri
                .containerd()
                .shims("containerd-shim-husk-vm-v2")
                .into_iter()
                .find(|sh| sh.id == pod.id);
            s.shim_rss_mib = shim
                .and_then(|sh| status_kib(sh.pid, "VmRSS"))
                .map(|k| k as f64 / 1024.0);
        }
        if sshd.is_none() && sshd_answers(pod.ip) {
            sshd = Some((t_pod.elapsed(), t_qemu.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let (f, ss) = (finished.unwrap(), sshd.unwrap());
    s.pod_to_finished = Some(f.0.as_secs_f64());
    s.pod_to_sshd = Some(ss.0.as_secs_f64());
    s.qemu_to_finished = f.1.as_secs_f64();
    s.qemu_to_sshd = ss.1.as_secs_f64();
    cri.stop_container(&id, 120);
    cri.stop_and_remove(&pod);
    s
}

fn bare_run(script: &Path) -> Sample {
    let mut s = Sample {
        kind: "bare QEMU",
        load: load(),
        ..Default::default()
    };
    let out = Command::new("python3")
        .arg(script)
        .args(["--memory", &MEMORY_MIB.to_string()])
        .args(["--tb-size", &TB_SIZE_MIB.to_string()])
        .output()
        .expect("running bench-vm-image.py");
    let text = String::from_utf8_lossy(&out.stdout);
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    let (Some(f), Some(ss)) = (value("ci_finished_s "), value("sshd_banner_s ")) else {
        panic!(
            "bench-vm-image.py said:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    s.qemu_to_finished = f;
    s.qemu_to_sshd = ss;
    s.cpu_at_finished = value("qemu_cpu_at_ci_finished_s ");
    s.qemu_rss_mib = value("qemu_rss_at_finished_kib ").unwrap_or(0.0) / 1024.0;
    s
}

fn opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}"))
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
        .unwrap_or(2);
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = repo.join("tests/fixtures/bench-vm-image.py");
    let archive =
        husk_tests::installed_archive("HUSK_VM_IMAGE", "/usr/local/share/husk/debian-vm-oci.tar");
    let mut cri = Cri::start();
    cri.import_image(&archive, IMAGE);
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("id");
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen");
    assert!(made.success());
    let public = key.with_extension("pub");
    let mut samples = Vec::new();
    for i in 0..runs {
        samples.push(bare_run(&script));
        samples.push(husk_run(&cri, i, &public));
    }
    println!(
        "\nhusk-vm pod start beside bare QEMU: the Debian test image, 1 vCPU, {MEMORY_MIB} MiB, \
         tb-size {TB_SIZE_MIB} MiB, TCG; seconds\n"
    );
    println!(
        "| run | load | pod start → cloud-init finished | pod start → sshd | QEMU start → finished | QEMU start → sshd | QEMU CPU s at finished | QEMU RSS MiB | QEMU RSS less guest RAM MiB | shim RSS MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for s in &samples {
        println!(
            "| {} | {:.1} | {} | {} | {:.1} | {:.1} | {} | {:.0} | {} | {} |",
            s.kind,
            s.load,
            opt(s.pod_to_finished),
            opt(s.pod_to_sshd),
            s.qemu_to_finished,
            s.qemu_to_sshd,
            opt(s.cpu_at_finished),
            s.qemu_rss_mib,
            opt(s.qemu_own_mib),
            opt(s.shim_rss_mib)
        );
    }
}
