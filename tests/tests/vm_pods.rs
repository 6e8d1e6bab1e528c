//! husk-vm end to end through CRI: a KubeVirt
//! containerDisk (the Debian test image, tests/fixtures/build-vm-image.sh) booted
//! as a pod under `runtimeClassName: husk-vm`, driven as kubelet drives
//! it. A full Debian boot under TCG takes minutes, so one test boots as
//! few VMs as the assertions allow and runs two at a time:
//!
//! 1. pod A (firmware boot, cloud-init volumes) beside pod K (the image
//!    with /boot: direct kernel boot, no volumes, a raw block volume): the
//!    console in the CRI log through cloud-init's "finished", the user-data
//!    web server at the pod IP, `ip addr`, MTU and hostname through exec,
//!    SSH with the Secret's key (a wrong key refused), ExecSync's stdout,
//!    stderr and exit 7, `exec -it` on a PTY (husk-vm-tools), stats; then
//!    A powered off by StopContainer (exit 0 within the grace) and K
//!    panicked (exit 1 that says so);
//! 2. A restarted (a new container from the unchanged image: the file
//!    written before is gone, the image's disk hash unchanged), stopped
//!    with no grace (137 at once), beside pod B from the same image at once, whose
//!    network-config asks for DHCP (husk's DHCP server on the TAP answers
//!    with the pod's address and router) and which also ignores the power
//!    button but powers off at its guest agent's shutdown (exit 0).
//!
//! The fast test checks every bad image's CreateContainer error. Both
//! check that nothing is left: QEMU, run directories, overlays and seeds,
//! mounts, the pods' network namespaces (and the TAP in them).

use husk_tests::cri::{harness_or_skip, vm_archive, ContainerSpec, Cri, PodSpec, HUSK, HUSK_VM};
use husk_tests::vm_guest::{console, stderr_log, wait_console, wait_exec, BOOT_TIMEOUT};
use k8s_cri::v1 as cri;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const DEBIAN_VM: &str = "docker.io/husk/debian-vm:test";
const DEBIAN_VM_KERNEL: &str = "docker.io/husk/debian-vm-kernel:test";
const BAD_TWO_DISKS: &str = "docker.io/husk/vm-bad-two-disks:test";
const BAD_NOT_DISK: &str = "docker.io/husk/vm-bad-not-disk:test";
/// containerd refuses a container without a command ("no command
/// specified") before any runtime sees it, and containerDisks have none:
/// a husk-vm pod names one, which husk-vm does not run.
const VM_COMMAND: &[&str] = &["/disk"];
/// The user-data's web server.
const WEB_PORT: u16 = 8080;

fn import(cri: &mut Cri, images: &[(&str, &str)]) {
    for (file, name) in images {
        cri.import_image(&vm_archive(file), name);
    }
}

fn mount(host: &Path, container: &str) -> cri::Mount {
    cri::Mount {
        container_path: container.into(),
        host_path: host.display().to_string(),
        readonly: true,
        ..Default::default()
    }
}

/// A husk-vm container of `image` with `limits` (CPUs, MiB).
fn vm_container(name: &str, image: &str, limits: (i64, i64)) -> ContainerSpec {
    let mut spec = ContainerSpec::new(name, VM_COMMAND);
    spec.image = image.into();
    spec.resources = Some(cri::LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: limits.0 * 100_000,
        memory_limit_in_bytes: limits.1 << 20,
        ..Default::default()
    });
    spec
}

/// cloud-init's closing line: "Cloud-init v. 22.4.2 finished at ...".
const CLOUD_INIT_FINISHED: &[&str] = &["Cloud-init v.", " finished at "];

fn http_get(ip: std::net::Ipv4Addr, port: u16) -> Result<String, String> {
    let addr = SocketAddr::from((ip, port));
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    text.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .ok_or_else(|| format!("no HTTP response: {text:?}"))
}

fn wait_http(ip: std::net::Ipv4Addr) -> String {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        match http_get(ip, WEB_PORT) {
            Ok(body) => return body,
            Err(e) => assert!(Instant::now() < deadline, "no web server at {ip}: {e}"),
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .output()
        .expect("ssh-keygen (apt-get install openssh-client)");
    assert!(out.status.success(), "{out:?}");
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    (key, public.trim().to_owned())
}

/// `ssh debian@ip hostname` with `key`: its output, or the failure.
fn ssh(ip: std::net::Ipv4Addr, key: &Path) -> Result<String, String> {
    let out = Command::new("ssh")
        .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"])
        .args([
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
        ])
        .args(["-o", "ConnectTimeout=30", "-o", "LogLevel=ERROR", "-i"])
        .arg(key)
        .arg(format!("debian@{ip}"))
        .arg("hostname")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn sha256(path: &Path) -> String {
    use sha2::Digest;
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A container's bundle rootfs, as the shim mounted it.
fn rootfs(cri: &Cri, id: &str) -> PathBuf {
    cri.containerd()
        .dir
        .path()
        .join("state/io.containerd.runtime.v2.task/k8s.io")
        .join(id)
        .join("rootfs")
}

/// The MTU of the pod interface CNI made in `netns` (from netlink: the
/// host's /sys shows the host's namespace whatever nsenter joined).
fn pod_mtu(netns: &Path) -> String {
    pod_link(netns, "mtu")
}

/// The word after `key` in `ip link show eth0` in `netns`.
fn pod_link(netns: &Path, key: &str) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["ip", "-o", "link", "show", "dev", "eth0"])
        .output()
        .expect("nsenter");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    words
        .find(|w| *w == key)
        .and_then(|_| words.next())
        .unwrap_or_else(|| panic!("no {key} of the pod interface in {text:?}"))
        .to_owned()
}

/// Nothing of a VM is left under the harness: no QEMU (every VM process
/// names the husk runtime directory), no run directory, no VM files in
/// any snapshot.
fn assert_no_vm_leftovers(cri: &Cri) {
    let runtime = &cri.containerd().husk_runtime;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let procs = husk_tests::containerd::processes_mentioning(&runtime.display().to_string());
        let vms = husk_tests::entries(&runtime.join("vms"));
        let files = find_named(cri.containerd().dir.path(), ".husk-vm");
        if procs.is_empty() && vms.is_empty() && files.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "left: processes {procs:?}, run directories {vms:?}, VM files {files:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn find_named(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(t) = e.file_type() else { continue };
            if e.file_name() == name {
                found.push(e.path());
            } else if t.is_dir() {
                stack.push(e.path());
            }
        }
    }
    found
}

/// Every image that is not a containerDisk fails with what is wrong; a
/// second app container in a husk-vm pod is refused; a containerDisk under
/// `husk` is pointed to husk-vm. Through CRI the runtime's create runs in
/// StartContainer (CreateContainer only records the container), so that
/// is the call that fails. Nothing is left.
#[test]
fn bad_images_and_a_second_vm_fail_with_the_reason() {
    let Some(mut cri) = harness_or_skip() else {
        return;
    };
    import(
        &mut cri,
        &[
            ("debian-vm-oci.tar", DEBIAN_VM),
            ("vm-bad-two-disks-oci.tar", BAD_TWO_DISKS),
            ("vm-bad-not-disk-oci.tar", BAD_NOT_DISK),
        ],
    );
    let pod = cri.run_pod(HUSK_VM, &PodSpec::new("bad-images"));
    let cases = [
        (husk_tests::cri::BUSYBOX_IMAGE, "no /disk/ directory"),
        (BAD_TWO_DISKS, "/disk/ holds 2 files (a.qcow2, b.qcow2)"),
        (BAD_NOT_DISK, "disk.img is not a disk image"),
    ];
    for (i, (image, reason)) in cases.iter().enumerate() {
        let spec = vm_container(&format!("bad{i}"), image, (1, 512));
        let id = cri.try_create(&pod, &spec).unwrap();
        let e = cri.start_container(&id).expect_err(image);
        println!("{image}: {e}");
        assert!(e.contains(reason), "{image}: {e}");
        cri.remove_container(&id);
    }
    // One VM per pod: while the first runs, a second is refused naming it.
    let first = cri.create_and_start(&pod, &vm_container("vm", DEBIAN_VM, (1, 512)));
    let second = cri
        .try_create(&pod, &vm_container("second", DEBIAN_VM, (1, 512)))
        .unwrap();
    let e = cri.start_container(&second).unwrap_err();
    println!("second VM: {e}");
    assert!(e.contains("runs one VM") && e.contains(&first), "{e}");
    assert_eq!(
        cri.container_status(&first).state(),
        cri::ContainerState::ContainerRunning
    );

    // A containerDisk given to husk (a container runtime) is pointed to
    // husk-vm.
    let husk_pod = cri.run_pod(HUSK, &PodSpec::new("disk-under-husk"));
    let mut spec = vm_container("vm", DEBIAN_VM, (1, 512));
    spec.resources = None;
    let id = cri.try_create(&husk_pod, &spec).unwrap();
    let e = cri.start_container(&id).unwrap_err();
    println!("containerDisk under husk: {e}");
    assert!(e.contains("containerDisk") && e.contains("husk-vm"), "{e}");

    cri.stop_and_remove(&pod);
    cri.stop_and_remove(&husk_pod);
    assert_no_vm_leftovers(&cri);
}

/// `io.husk.vm.firmware: uefi` boots OVMF (q35, the firmware read-only,
/// the VM's own copy of its variables): the test disk has no EFI system
/// partition, so OVMF ends in its shell, on the console, where a command
/// typed through attach (stdin) runs. A firmware husk-vm does not know is
/// refused naming it.
#[test]
fn uefi_firmware_runs_and_attach_types_into_the_console() {
    let Some(mut cri) = harness_or_skip() else {
        return;
    };
    if !Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd").exists() {
        panic!("OVMF missing: run `sudo bash scripts/setup.sh` (Debian's ovmf)");
    }
    import(&mut cri, &[("debian-vm-oci.tar", DEBIAN_VM)]);
    let pod = cri.run_pod(HUSK_VM, &PodSpec::new("uefi"));
    let mut bad = vm_container("floppy", DEBIAN_VM, (1, 512));
    bad.annotations
        .insert("io.husk.vm.firmware".into(), "floppy".into());
    let id = cri.try_create(&pod, &bad).unwrap();
    let e = cri.start_container(&id).unwrap_err();
    assert!(
        e.contains("io.husk.vm.firmware") && e.contains("floppy"),
        "{e}"
    );
    cri.remove_container(&id);

    let mut spec = vm_container("vm", DEBIAN_VM, (1, 512));
    spec.annotations
        .insert("io.husk.vm.firmware".into(), "uefi".into());
    spec.stdin = true;
    let t = Instant::now();
    let id = cri.create_and_start(&pod, &spec);
    let shell = wait_console(&pod, &spec, &["UEFI Interactive Shell"], t);
    assert!(
        console(&pod, &spec).contains("BdsDxe"),
        "no OVMF boot manager"
    );
    assert!(rootfs(&cri, &id).join(".husk-vm/OVMF_VARS.fd").is_file());
    let qemu = husk_tests::containerd::processes_mentioning(&format!("husk-vm-{id},"));
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", qemu[0])).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    // The firmware and its variables are flash devices on descriptors
    // QEMU was handed: it opens no path of the image or its rootfs.
    assert!(
        cmdline.contains("-M q35,pflash0=fw-code,pflash1=fw-vars")
            && cmdline.contains("filename=/dev/fdset/1,node-name=fw-code-file,read-only=on")
            && !cmdline.contains(&rootfs(&cri, &id).display().to_string()),
        "{cmdline}"
    );
    println!("OVMF's shell after {shell:?}");
    // stdin is the console: a command typed through attach runs in the
    // firmware's shell, and its output is in the log.
    // The prompt ("Shell> ") ends no line, so the CRI log (line by line)
    // does not show it: wait for the startup.nsh countdown, then its end.
    wait_console(&pod, &spec, &["startup.nsh", "1 seconds"], t);
    std::thread::sleep(Duration::from_secs(5));
    // The shell echoes what is typed; the command's own output is the line
    // that is exactly its words.
    let answered = |o: &husk_tests::streaming::StreamOutput| {
        o.stdout
            .split(['\r', '\n'])
            .any(|l| l.trim() == "husk typed this")
    };
    let url = cri.attach_url_with(&id, true);
    let typed =
        husk_tests::streaming::write_stdin(&url, b"echo husk typed this\r", answered).unwrap();
    assert!(answered(&typed), "{typed:?}");
    wait_console(&pod, &spec, &["husk typed this"], t);
    cri.stop_container(&id, 5);
    cri.stop_and_remove(&pod);
    assert_no_vm_leftovers(&cri);
}

/// What a VM container is given: its cloud-init and key volumes.
struct VmVolumes {
    _dir: tempfile::TempDir,
    cloud_init: PathBuf,
    keys: PathBuf,
}

fn volumes(user_data: &str, authorized_key: &str) -> VmVolumes {
    let dir = tempfile::tempdir().unwrap();
    let cloud_init = dir.path().join("cloud-init");
    let keys = dir.path().join("ssh");
    std::fs::create_dir(&cloud_init).unwrap();
    std::fs::create_dir(&keys).unwrap();
    std::fs::write(cloud_init.join("user-data"), user_data).unwrap();
    std::fs::write(keys.join("authorized_keys"), format!("{authorized_key}\n")).unwrap();
    VmVolumes {
        _dir: dir,
        cloud_init,
        keys,
    }
}

const WEB_USER_DATA: &str = "#cloud-config
runcmd:
  - [sh, -c, \"mkdir -p /srv/www && hostname > /srv/www/index.html\"]
  - [systemd-run, --unit=web, python3, -m, http.server, \"8080\", --directory, /srv/www]
";
/// A guest NIC (the pod interface's MAC) configured by DHCP alone.
fn dhcp_network_config(mac: &str) -> String {
    format!(
        "version: 2\nethernets:\n  eth0:\n    match:\n      macaddress: \"{mac}\"\n    \
         set-name: eth0\n    dhcp4: true\n"
    )
}
/// systemd-logind ignores the power button, as a guest without D-Bus or
/// acpid does.
macro_rules! ignore_power_key {
    () => {
        "#cloud-config
write_files:
  - path: /etc/systemd/logind.conf.d/50-husk-ignore-power-key.conf
    content: |
      [Login]
      HandlePowerKey=ignore
"
    };
}
const IGNORE_POWER_KEY: &str = ignore_power_key!();
/// As the web server's, and the power button ignored.
const IGNORE_POWER_USER_DATA: &str = concat!(
    ignore_power_key!(),
    "runcmd:
  - [sh, -c, \"mkdir -p /srv/www && hostname > /srv/www/index.html\"]
  - [systemd-run, --unit=web, python3, -m, http.server, \"8080\", --directory, /srv/www]
",
);

/// A 16 MiB file on a loop device, its first bytes a marker: a raw block
/// volume. None (SKIPPED printed) where loop devices cannot be made.
struct LoopDevice {
    dev: String,
    _file: tempfile::NamedTempFile,
}

const BLOCK_MARKER: &str = "husk-raw-block-volume";

impl LoopDevice {
    fn new() -> Option<Self> {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut data = vec![0u8; 16 << 20];
        data[..BLOCK_MARKER.len()].copy_from_slice(BLOCK_MARKER.as_bytes());
        std::fs::write(file.path(), &data).unwrap();
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file.path())
            .output()
            .ok()?;
        if !out.status.success() {
            println!(
                "SKIPPED raw block volume: losetup: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Self {
            dev: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            _file: file,
        })
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).output();
    }
}

#[test]
fn vm_pods_boot_serve_exec_stop_and_restart_clean() {
    let Some(mut cri) = harness_or_skip() else {
        return;
    };
    let started = Instant::now();
    import(
        &mut cri,
        &[
            ("debian-vm-oci.tar", DEBIAN_VM),
            ("debian-vm-kernel-oci.tar", DEBIAN_VM_KERNEL),
        ],
    );
    let keys = tempfile::tempdir().unwrap();
    let (good_key, good_public) = keygen(keys.path(), "secret-key");
    let (wrong_key, _) = keygen(keys.path(), "wrong-key");

    // --- 1. pod A (firmware boot) beside pod K (direct kernel boot) -----
    let pod_a = cri.run_pod(HUSK_VM, &PodSpec::new("vm-a"));
    let vol_a = volumes(WEB_USER_DATA, &good_public);
    let mut spec_a = vm_container("vm", DEBIAN_VM, (1, 1024));
    spec_a.mounts = vec![
        mount(&vol_a.cloud_init, "/cloud-init"),
        mount(&vol_a.keys, "/ssh-keys"),
    ];
    let pod_k = cri.run_pod(HUSK_VM, &PodSpec::new("vm-k"));
    let mut spec_k = vm_container("vm", DEBIAN_VM_KERNEL, (1, 768));
    let block = LoopDevice::new();
    if let Some(b) = &block {
        spec_k.devices = vec![cri::Device {
            container_path: "/dev/xvdb".into(),
            host_path: b.dev.clone(),
            permissions: "rw".into(),
        }];
    }
    let t_a = Instant::now();
    let a1 = cri.create_and_start(&pod_a, &spec_a);
    let t_k = Instant::now();
    let k = cri.create_and_start(&pod_k, &spec_k);
    println!(
        "pods A {} ({}) and K {} ({}) started",
        pod_a.ip, a1, pod_k.ip, k
    );

    // The console reaches the CRI log from the firmware's first line on.
    let kernel_a = wait_console(&pod_a, &spec_a, &["Linux version"], t_a);
    let kernel_k = wait_console(&pod_k, &spec_k, &["Linux version"], t_k);
    let finished_a = wait_console(&pod_a, &spec_a, CLOUD_INIT_FINISHED, t_a);
    let log_a = console(&pod_a, &spec_a);
    assert!(log_a.contains("SYSLINUX"), "no boot loader on the console");
    println!("A: kernel at {kernel_a:?}, cloud-init finished at {finished_a:?}; K: kernel at {kernel_k:?}");

    // user-data's web server, at the pod IP, answers with the pod's
    // hostname.
    let body = wait_http(pod_a.ip);
    let http_a = t_a.elapsed();
    assert_eq!(body.trim(), "vm-a");

    // Exec: the pod's address and MTU on the NIC, the pod's hostname.
    let ip = cri.exec_sync(&a1, &["ip", "-o", "-4", "addr", "show", "dev", "eth0"], 60);
    assert!(
        ip.stdout.contains(&format!("inet {}/24", pod_a.ip)),
        "{ip:?}"
    );
    let link = cri.exec_sync(&a1, &["ip", "-o", "link", "show", "dev", "eth0"], 60);
    let mtu = pod_mtu(&pod_a.netns);
    assert!(
        link.stdout.contains(&format!("mtu {mtu} ")),
        "pod MTU {mtu}: {link:?}"
    );
    let route = cri.exec_sync(&a1, &["ip", "route"], 60);
    assert!(
        route
            .stdout
            .contains(&format!("default via {} dev eth0", cri.net.gateway)),
        "{route:?}"
    );
    let hostname = cri.exec_sync(&a1, &["hostname"], 60);
    assert_eq!(hostname.stdout.trim(), "vm-a");
    let dns = cri.exec_sync(&a1, &["resolvectl", "dns", "eth0"], 60);
    assert!(dns.stdout.contains("10.96.0.10"), "{dns:?}");

    // ExecSync: stdout, stderr and the exit code as under a container.
    let r = cri.exec_sync(
        &a1,
        &["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 7"],
        60,
    );
    assert_eq!(
        (r.stdout.as_str(), r.stderr.as_str(), r.exit_code),
        ("to-stdout\n", "to-stderr\n", 7)
    );
    // exec -it gets a terminal: husk-vm-tools, which the guest's cloud-init
    // started from the tools disk beside the user's own user-data. (A
    // terminal without stdin shows nothing through CRI's stream, under
    // runc as well: kubectl exec -t is always with -i.)
    let url = cri.exec_url_interactive(&a1, &["/bin/sh"]);
    let mut tty = husk_tests::streaming::Interactive::connect(&url).unwrap();
    let prompt = tty
        .read_until(|o| o.stdout.contains("# "), Duration::from_secs(60))
        .unwrap();
    assert!(prompt, "no shell prompt: {:?}", tty.out);
    tty.send(b"tty; exit 5\r").unwrap();
    tty.read_until(|o| !o.status.is_empty(), Duration::from_secs(60))
        .unwrap();
    assert!(
        tty.out.stdout.contains("/dev/pts/") && tty.out.status.contains("\"5\""),
        "{:?}",
        tty.out
    );

    // SSH through the pod IP with the Secret's key; another key fails.
    assert_eq!(ssh(pod_a.ip, &good_key).as_deref(), Ok("vm-a"));
    let ssh_a = t_a.elapsed();
    let wrong = ssh(pod_a.ip, &wrong_key);
    assert!(
        wrong
            .as_ref()
            .is_err_and(|e| e.contains("Permission denied")),
        "{wrong:?}"
    );

    // Stats: QEMU's CPU time and memory on the host.
    let stats = cri.container_stats(&a1);
    let cpu = stats
        .cpu
        .as_ref()
        .and_then(|c| c.usage_core_nano_seconds.as_ref())
        .map_or(0, |v| v.value);
    let memory = stats
        .memory
        .as_ref()
        .and_then(|m| m.working_set_bytes.as_ref())
        .map_or(0, |v| v.value);
    assert!(cpu > 10_000_000_000, "a booted VM used {cpu} ns of CPU");
    assert!(memory > 100 << 20, "a booted VM uses {memory} bytes");

    // A file the restart must not see, and the overlay holding it.
    let w = cri.exec_sync(
        &a1,
        &["sh", "-c", "echo husk > /var/tmp/marker && sync"],
        60,
    );
    assert_eq!(w.exit_code, 0, "{w:?}");
    let disk_a1 = rootfs(&cri, &a1).join("disk/disk.qcow2");
    let image_hash = sha256(&vm_archive("debian-vm.qcow2"));
    assert_eq!(
        sha256(&disk_a1),
        image_hash,
        "the image's disk differs from the one built"
    );
    assert!(rootfs(&cri, &a1).join(".husk-vm/root.qcow2").is_file());

    // K: direct kernel boot, the generated network-config, a raw block
    // volume.
    wait_exec(&cri, &k, t_k);
    let ip_k = cri.exec_sync(&k, &["ip", "-o", "-4", "addr", "show", "dev", "eth0"], 60);
    assert!(
        ip_k.stdout.contains(&format!("inet {}/24", pod_k.ip)),
        "{ip_k:?}"
    );
    assert_eq!(cri.exec_sync(&k, &["hostname"], 60).stdout.trim(), "vm-k");
    let cmdline = cri.exec_sync(&k, &["cat", "/proc/cmdline"], 60);
    assert!(cmdline.stdout.contains("root=/dev/vda1"), "{cmdline:?}");
    if block.is_some() {
        let read = cri.exec_sync(
            &k,
            &[
                "head",
                "-c",
                &BLOCK_MARKER.len().to_string(),
                "/dev/disk/by-id/virtio-xvdb",
            ],
            60,
        );
        assert_eq!(read.stdout, BLOCK_MARKER, "{read:?}");
    }

    // StopContainer on A: the power button, a clean power-off, exit 0,
    // well within the grace period.
    let grace = 120;
    let t = Instant::now();
    cri.stop_container(&a1, grace);
    let stop_a = t.elapsed();
    let status = cri.container_status(&a1);
    assert_eq!(status.exit_code, 0, "{status:?}");
    assert!(stop_a < Duration::from_secs(grace as u64), "{stop_a:?}");
    assert!(console(&pod_a, &spec_a).contains("reboot: Power down"));
    println!("A: web server at {http_a:?}, ssh at {ssh_a:?}, powered off in {stop_a:?}");

    // K panics: a non-zero exit, and the log says why.
    let pvpanic = cri.exec_sync(
        &k,
        &[
            "sh",
            "-c",
            "modprobe pvpanic-mmio 2>/dev/null; ls /sys/module | grep -c pvpanic",
        ],
        60,
    );
    assert_ne!(
        pvpanic.stdout.trim(),
        "0",
        "no pvpanic driver in the guest: {pvpanic:?}"
    );
    let _ = cri.try_exec_sync(&k, &["sh", "-c", "echo c > /proc/sysrq-trigger"], 20);
    let panicked = cri.wait_exited(&k, Duration::from_secs(120));
    assert_eq!(panicked.exit_code, 1, "{panicked:?}");
    assert!(
        stderr_log(&pod_k, &spec_k).contains("husk-vm: the guest kernel panicked"),
        "{}",
        stderr_log(&pod_k, &spec_k)
    );
    cri.stop_and_remove(&pod_k);
    drop(block);

    // --- 2. A restarted (ignoring the power button) beside pod B --------
    let vol_a2 = volumes(IGNORE_POWER_USER_DATA, &good_public);
    // A new container of the same image in the same pod, as kubelet's
    // restart makes it (named apart: the harness has no attempt count).
    let mut spec_a2 = vm_container("vm-restarted", DEBIAN_VM, (1, 1024));
    spec_a2.mounts = vec![
        mount(&vol_a2.cloud_init, "/cloud-init"),
        mount(&vol_a2.keys, "/ssh-keys"),
    ];
    let pod_b = cri.run_pod(HUSK_VM, &PodSpec::new("vm-b"));
    // B's own network-config asks for DHCP: husk's DHCP server on the TAP
    // gives it the pod's address, as it would an image without cloud-init.
    let vol_b = volumes(IGNORE_POWER_KEY, &good_public);
    std::fs::write(
        vol_b.cloud_init.join("network-config"),
        dhcp_network_config(&pod_link(&pod_b.netns, "link/ether")),
    )
    .unwrap();
    let mut spec_b = vm_container("vm", DEBIAN_VM, (1, 1024));
    spec_b.mounts = vec![mount(&vol_b.cloud_init, "/cloud-init")];
    let t_a2 = Instant::now();
    let a2 = cri.create_and_start(&pod_a, &spec_a2);
    // kubelet removes the dead container after the restart is made.
    cri.remove_container(&a1);
    let t_b = Instant::now();
    let b = cri.create_and_start(&pod_b, &spec_b);
    wait_exec(&cri, &b, t_b);
    wait_exec(&cri, &a2, t_a2);
    // Two pods from one image run at once, each with its own address.
    assert_eq!(cri.exec_sync(&b, &["hostname"], 60).stdout.trim(), "vm-b");
    let ip_b = cri.exec_sync(
        &b,
        &["ip", "-o", "-4", "addr", "show", "scope", "global"],
        60,
    );
    assert!(
        ip_b.stdout.contains(&format!("inet {}/24", pod_b.ip)) && ip_b.stdout.contains("dynamic"),
        "B's address from DHCP: {ip_b:?}"
    );
    let route_b = cri.exec_sync(&b, &["ip", "route"], 60);
    assert!(
        route_b
            .stdout
            .contains(&format!("default via {}", cri.net.gateway)),
        "{route_b:?}"
    );
    assert_eq!(
        cri.container_status(&a2).state(),
        cri::ContainerState::ContainerRunning
    );
    // The restart started from the image, not from the first overlay.
    let marker = cri.exec_sync(&a2, &["test", "-e", "/var/tmp/marker"], 60);
    assert_eq!(
        marker.exit_code, 1,
        "the first container's file is back: {marker:?}"
    );
    assert_eq!(
        sha256(&rootfs(&cri, &a2).join("disk/disk.qcow2")),
        image_hash
    );

    // B ignores the power button, but its guest agent answers: the
    // agent's shutdown powers it off cleanly, well within the grace.
    let t = Instant::now();
    cri.stop_container(&b, grace);
    let stop_b = t.elapsed();
    assert_eq!(cri.container_status(&b).exit_code, 0);
    assert!(stop_b < Duration::from_secs(grace as u64), "{stop_b:?}");
    assert!(console(&pod_b, &spec_b).contains("reboot: Power down"));

    // A2 is stopped with no grace: killed at once, 137, whatever its
    // guest would have done.
    wait_console(&pod_a, &spec_a2, CLOUD_INIT_FINISHED, t_a2);
    let t = Instant::now();
    cri.stop_container(&a2, 0);
    let stop_a2 = t.elapsed();
    let status = cri.container_status(&a2);
    assert_eq!(status.exit_code, 137, "{status:?}");
    assert!(stop_a2 < Duration::from_secs(20), "{stop_a2:?}");
    println!("B powered off in {stop_b:?}; A2 killed in {stop_a2:?}");

    cri.stop_and_remove(&pod_a);
    cri.stop_and_remove(&pod_b);
    assert_no_vm_leftovers(&cri);
    println!("vm_pods: {:?} in all", started.elapsed());
}
