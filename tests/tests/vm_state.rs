//! husk-vm's state volume end to end through CRI (docs/vm-pods.md,
//! "Firmware state and a TPM"): a directory mounted read-write in the VM
//! container, as kubelet mounts a filesystem PVC, named by the pod
//! annotation `io.husk.vm.state`, keeps the VM's UEFI variable store and
//! its TPM 2.0 (swtpm) across the pod's deletion and re-creation.
//!
//! 1. UEFI (`io.husk.vm.firmware: uefi`; the test disk has no EFI system
//!    partition, so OVMF ends in its shell, where attach types): no
//!    variable `HuskKept` yet; the shell's `setvar` makes one,
//!    non-volatile; swtpm runs as the VM's user, not root; a second pod
//!    on the same state volume is refused naming the first; the pod is
//!    deleted, and a new pod's shell reads the variable back;
//! 2. the Debian image (BIOS, a TIS TPM) on the same state volume: the
//!    guest's /dev/tpm0 is a TPM 2.0 with no NV index of ours; the guest
//!    defines one and writes it (raw TPM2 commands from python3, as the
//!    image has no tpm2-tools); the pod is deleted, and a new pod's guest
//!    reads the index back.
//!
//! The Debian pods also carry the interactive exec (docs/vm-pods.md,
//! "Interactive exec"), sharing their boots: the first has no tools disk
//! (`io.husk.vm.tools: "false"`), and `exec -it` is refused naming why and
//! what works instead; the second has one, and `kubectl exec -it`'s
//! stream gets a shell on a PTY of the size the client sent, which runs
//! what is typed, and whose exit code the stream reports; `exec -i`'s
//! input reaches a command on pipes, its stdout and stderr apart.
//!
//! Two OVMF boots and two Debian boots under TCG, one at a time: minutes.

use husk_tests::cri::{
    assert_no_vm_left, harness_or_skip, vm_archive, ContainerSpec, Cri, Pod, PodSpec, HUSK_VM,
};
use husk_tests::streaming::StreamOutput;
use husk_tests::vm_guest::{console, tail, wait_console, wait_exec};
use k8s_cri::v1 as cri;
use std::path::Path;
use std::time::{Duration, Instant};

const DEBIAN_VM: &str = "docker.io/husk/debian-vm:test";
const VM_COMMAND: &[&str] = &["/disk"];
const STATE: &str = "io.husk.vm.state";
/// Where the container is given its state volume.
const STATE_DIR: &str = "/vm-state";
/// The test's UEFI variable: its vendor GUID, and "KEPT" in hex.
const GUID: &str = "8d4e6a39-2b0c-4a53-9b1e-6c1f0f7e5a11";
const KEPT_HEX: &str = "4B455054";
/// The NV index the guest defines, written and read with raw TPM2
/// commands on /dev/tpm0 (owner authorization, an empty password):
/// `read` prints "read DATA" or "read rc=0x..."; any other argument is
/// defined as an index of its length and written: "write rc=0x0".
const TPM_NV: &str = r#"
import os, struct, sys
INDEX, OWNER, PW = 0x01500016, 0x40000001, 0x40000009
def cmd(cc, handles, params):
    auth = struct.pack(">IHBH", PW, 0, 0, 0)
    body = b"".join(struct.pack(">I", h) for h in handles) + struct.pack(">I", len(auth)) + auth + params
    fd = os.open("/dev/tpm0", os.O_RDWR)
    try:
        os.write(fd, struct.pack(">HII", 0x8002, 10 + len(body), cc) + body)
        r = os.read(fd, 4096)
    finally:
        os.close(fd)
    return struct.unpack(">I", r[6:10])[0], r[10:]
if sys.argv[1] == "read":
    rc, out = cmd(0x14E, [OWNER, INDEX], struct.pack(">HH", 4, 0))
    print("read rc=0x%x" % rc if rc else "read " + out[6:6 + struct.unpack(">H", out[4:6])[0]].decode())
else:
    data = sys.argv[1].encode()
    pub = struct.pack(">IHIHH", INDEX, 0x000B, 0x02020002, 0, len(data))
    rc, _ = cmd(0x12A, [OWNER], struct.pack(">HH", 0, len(pub)) + pub)
    if not rc:
        rc, _ = cmd(0x137, [OWNER, INDEX], struct.pack(">H", len(data)) + data + struct.pack(">H", 0))
    print("write rc=0x%x" % rc)
"#;

/// A pod whose VM keeps its state at [`STATE_DIR`].
fn pod_spec(name: &str) -> PodSpec {
    let mut p = PodSpec::new(name);
    p.annotations.insert(STATE.into(), STATE_DIR.into());
    p
}

/// A husk-vm container of the Debian image with the state volume `dir`;
/// `uefi`: booted by OVMF, stdin open for its shell.
fn vm(name: &str, dir: &Path, uefi: bool) -> ContainerSpec {
    let mut spec = ContainerSpec::new(name, VM_COMMAND);
    spec.image = DEBIAN_VM.into();
    spec.resources = Some(cri::LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: 100_000,
        memory_limit_in_bytes: if uefi { 512 } else { 1024 } << 20,
        ..Default::default()
    });
    spec.mounts = vec![cri::Mount {
        container_path: STATE_DIR.into(),
        host_path: dir.display().to_string(),
        ..Default::default()
    }];
    if uefi {
        spec.annotations
            .insert("io.husk.vm.firmware".into(), "uefi".into());
        spec.stdin = true;
    }
    spec
}

/// Boots OVMF's shell in `spec` and waits for it to take commands.
fn shell(cri: &Cri, pod: &Pod, spec: &ContainerSpec) -> String {
    let t = Instant::now();
    let id = cri.create_and_start(pod, spec);
    wait_console(pod, spec, &["UEFI Interactive Shell"], t);
    // The prompt ends no line, so the CRI log does not show it: wait for
    // startup.nsh's countdown, then its end.
    wait_console(pod, spec, &["startup.nsh", "1 seconds"], t);
    std::thread::sleep(Duration::from_secs(5));
    println!("{}: OVMF's shell after {:?}", spec.name, t.elapsed());
    id
}

/// Types `command` into the shell through attach and waits for output
/// `answer` holds; returns the console as it then is.
fn typed(
    cri: &Cri,
    (pod, spec, id): (&Pod, &ContainerSpec, &str),
    command: &str,
    answer: &[&str],
) -> String {
    let seen = |o: &StreamOutput| answer.iter().all(|a| o.stdout.contains(a));
    let url = cri.attach_url_with(id, true);
    let out = husk_tests::streaming::write_stdin(&url, format!("{command}\r").as_bytes(), seen)
        .unwrap_or_else(|e| panic!("typing {command:?}: {e}"));
    assert!(
        seen(&out),
        "{command:?}: no {answer:?} in {:?}; the console ends:\n{}",
        out.stdout,
        tail(&console(pod, spec), 2000)
    );
    console(pod, spec)
}

/// `kubectl exec -it ID -- /bin/sh` through the tools channel: a PTY of
/// the client's size, what is typed runs, the exit code comes back.
fn exec_it(cri: &Cri, id: &str) {
    let t = Instant::now();
    let url = cri.exec_url_interactive(id, &["/bin/sh"]);
    let mut s = husk_tests::streaming::Interactive::connect(&url).unwrap();
    s.resize(33, 101).unwrap();
    let prompt = s
        .read_until(|o| o.stdout.contains("# "), Duration::from_secs(60))
        .unwrap();
    assert!(prompt, "no shell prompt: {:?}", s.out);
    println!("exec -it: a prompt after {:?}", t.elapsed());
    s.send(b"tty; stty size; echo $((6*7)); exit 3\r").unwrap();
    s.read_until(|o| !o.status.is_empty(), Duration::from_secs(60))
        .unwrap();
    let o = &s.out;
    println!("exec -it: {:?}; status {}", o.stdout, o.status.trim());
    assert!(o.stdout.contains("/dev/pts/"), "no PTY: {o:?}");
    assert!(
        o.stdout.contains("33 101"),
        "the client's size not set: {o:?}"
    );
    assert!(
        o.stdout.contains("42\r\n"),
        "the typed command did not run: {o:?}"
    );
    assert!(
        o.status.contains("ExitCode") && o.status.contains("\"3\""),
        "{o:?}"
    );
    // `kubectl exec -i` (pipes, no terminal): input reaches the command,
    // stdout and stderr stay apart.
    let url = cri.exec_url_stdin(id, &["sh", "-c", "head -c 6; echo to-stderr >&2"]);
    let mut s = husk_tests::streaming::Interactive::connect(&url).unwrap();
    s.send(b"piped\n").unwrap();
    s.read_until(|o| o.stderr.contains("to-stderr"), Duration::from_secs(60))
        .unwrap();
    s.read_until(|_| false, Duration::from_secs(3)).unwrap();
    println!("exec -i: {:?}", s.out);
    assert_eq!(s.out.stdout, "piped\n", "{:?}", s.out);
    assert_eq!(s.out.stderr, "to-stderr\n", "{:?}", s.out);
}

/// Every process whose name holds `comm`.
fn pids_named(comm: &str) -> Vec<u32> {
    husk_tests::entries(Path::new("/proc"))
        .iter()
        .filter_map(|p| p.file_name()?.to_str()?.parse::<u32>().ok())
        .filter(|p| husk_tests::comm(*p).contains(comm))
        .collect()
}

fn uid_of(pid: u32) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}")).unwrap().uid()
}

#[test]
fn a_state_volume_keeps_uefi_variables_and_the_tpm_across_pods() {
    let Some(mut cri) = harness_or_skip() else {
        return;
    };
    if !Path::new("/usr/bin/swtpm").exists() {
        panic!("swtpm missing: run `sudo bash scripts/setup.sh` (Debian's swtpm)");
    }
    let started = Instant::now();
    cri.import_image(&vm_archive("debian-vm-oci.tar"), DEBIAN_VM);
    let volume = tempfile::tempdir().unwrap();
    let dir = volume.path();
    let get = format!("setvar HuskKept -guid {GUID}");

    // 1. A UEFI variable set in the firmware's shell, kept by the volume.
    let pod = cri.run_pod(HUSK_VM, &pod_spec("vm-state-a"));
    let spec = vm("vm", dir, true);
    let id = shell(&cri, &pod, &spec);
    let at = (&pod, &spec, id.as_str());
    typed(&cri, at, &get, &["Unable to get"]);
    // The shell echoes each key with cursor moves, so the command's line is
    // not in the output as it was typed: the read-back below shows it ran.
    typed(
        &cri,
        at,
        &format!("setvar HuskKept -guid {GUID} -nv -bs ={KEPT_HEX}"),
        &[],
    );
    std::thread::sleep(Duration::from_secs(3));
    typed(&cri, at, &get, &["HuskKept - 0004 Bytes", "4B 45 50 54"]);
    // The only VM with a TPM on this host now.
    let swtpm = pids_named("swtpm");
    let qemu: Vec<u32> = husk_tests::containerd::processes_mentioning(&format!("husk-vm-{id},"))
        .into_iter()
        .filter(|p| husk_tests::comm(*p).contains("qemu"))
        .collect();
    assert_eq!((swtpm.len(), qemu.len()), (1, 1), "{swtpm:?} {qemu:?}");
    let (swtpm_uid, qemu_uid) = (uid_of(swtpm[0]), uid_of(qemu[0]));
    println!(
        "swtpm {} runs as uid {swtpm_uid}, QEMU as {qemu_uid}",
        swtpm[0]
    );
    assert!(swtpm_uid != 0 && swtpm_uid == qemu_uid);
    // The same state volume for a second VM: refused, naming the first.
    let pod_b = cri.run_pod(HUSK_VM, &pod_spec("vm-state-b"));
    let second = cri.try_create(&pod_b, &vm("vm", dir, false)).unwrap();
    let e = cri
        .start_container(&second)
        .expect_err("a second VM on the state");
    println!("second VM on the state volume: {e}");
    assert!(e.contains("another VM") && e.contains("vm-state-a"), "{e}");
    cri.remove_container(&second);
    cri.stop_container(&id, 5);
    cri.stop_and_remove(&pod);
    assert!(
        husk_tests::comm(swtpm[0]).is_empty(),
        "swtpm outlived its VM"
    );
    let vars = std::fs::metadata(dir.join("OVMF_VARS.fd")).unwrap();
    let template = std::fs::metadata("/usr/share/OVMF/OVMF_VARS_4M.fd").unwrap();
    assert_eq!(vars.len(), template.len());
    let tpm_files = husk_tests::entries(&dir.join("tpm2"));
    println!("the state volume's TPM directory: {tpm_files:?}");
    assert!(dir.join("tpm2/tpm2-00.permall").is_file(), "{tpm_files:?}");

    let pod = cri.run_pod(HUSK_VM, &pod_spec("vm-state-c"));
    let spec = vm("vm", dir, true);
    let id = shell(&cri, &pod, &spec);
    typed(
        &cri,
        (&pod, &spec, &id),
        &get,
        &["HuskKept - 0004 Bytes", "4B 45 50 54"],
    );
    println!("a new pod's firmware has the variable");
    cri.stop_container(&id, 5);
    cri.stop_and_remove(&pod);

    // 2. A TPM NV index written by the Debian guest, kept by the volume.
    let pod = cri.run_pod(HUSK_VM, &pod_spec("vm-state-d"));
    let t = Instant::now();
    let mut no_tools = vm("vm", dir, false);
    no_tools
        .annotations
        .insert("io.husk.vm.tools".into(), "false".into());
    let id = cri.create_and_start(&pod, &no_tools);
    let booted = wait_exec(&cri, &id, t);
    let url = cri.exec_url_interactive(&id, &["/bin/sh"]);
    let out = husk_tests::streaming::read_stream(&url, |o| !o.status.is_empty()).unwrap();
    println!("exec -it without a tools disk: {}", out.status.trim());
    assert!(
        out.status.contains("no tools disk") && out.status.contains("kubectl attach -it"),
        "{out:?}"
    );
    let version = cri.exec_sync(&id, &["cat", "/sys/class/tpm/tpm0/tpm_version_major"], 60);
    assert_eq!(version.stdout.trim(), "2", "{version:?}");
    let fresh = cri.exec_sync(&id, &["python3", "-c", TPM_NV, "read"], 60);
    println!("exec after {booted:?}; before: {}", fresh.stdout.trim());
    assert!(fresh.stdout.starts_with("read rc=0x"), "{fresh:?}");
    let w = cri.exec_sync(&id, &["python3", "-c", TPM_NV, "KEPT"], 60);
    assert_eq!(w.stdout.trim(), "write rc=0x0", "{w:?}");
    cri.stop_container(&id, 120);
    cri.stop_and_remove(&pod);

    let pod = cri.run_pod(HUSK_VM, &pod_spec("vm-state-e"));
    let t = Instant::now();
    let spec = vm("vm", dir, false);
    let id = cri.create_and_start(&pod, &spec);
    let booted = wait_exec(&cri, &id, t);
    let kept = cri.exec_sync(&id, &["python3", "-c", TPM_NV, "read"], 60);
    println!("a new pod: exec after {booted:?}; {}", kept.stdout.trim());
    assert_eq!(kept.stdout.trim(), "read KEPT", "{kept:?}");
    exec_it(&cri, &id);
    cri.stop_and_remove(&pod);
    cri.stop_and_remove(&pod_b);
    assert_no_vm_left(&cri, Duration::from_secs(30));
    println!("vm_state: {:?} in all", started.elapsed());
}
