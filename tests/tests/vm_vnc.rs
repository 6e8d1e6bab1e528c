//! The graphical console of a husk-vm pod (docs/vm-pods.md, "A graphical
//! console") end to end through CRI: `io.husk.vm.vnc` without a password
//! Secret and without `io.husk.vm.vnc-auth: none` is refused naming both;
//! with the Secret mounted at /vnc, a VNC client at the pod IP completes
//! RFB 3.8 with VNC authentication (a wrong password is refused) and gets
//! a FramebufferUpdate, the same through the WebSocket endpoint
//! (`io.husk.vm.vnc-websocket`, RFB in binary messages as noVNC sends
//! it), and `kubectl port-forward` reaches the server's greeting; the
//! pod's next VM serves the console again; with `io.husk.vm.vnc-auth:
//! none` and no Secret, RFB's None. QEMU is handed the clients and has no
//! listener of its own. The display exists as soon as QEMU runs, so the
//! test needs no finished boot: SeaBIOS's screen is what it sees. Nothing
//! is left.

use husk_tests::cri::{
    assert_no_vm_left, harness_or_skip, vm_archive, ContainerSpec, Cri, Pod, PodSpec, HUSK_VM,
};
use husk_tests::rfb::{self, Session, WsStream};
use k8s_cri::v1 as cri;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

const DEBIAN_VM: &str = "docker.io/husk/debian-vm:test";
/// containerd wants a command; husk-vm does not run it.
const VM_COMMAND: &[&str] = &["/disk"];
const VNC_PORT: u16 = 5900;
const WS_PORT: u16 = 5700;
const PASSWORD: &str = "hUsk-vnc";
/// QEMU under TCG on a loaded 2-core host: generous.
const DEADLINE: Duration = Duration::from_secs(180);

fn vm_container(name: &str) -> ContainerSpec {
    let mut spec = ContainerSpec::new(name, VM_COMMAND);
    spec.image = DEBIAN_VM.into();
    spec.resources = Some(cri::LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: 100_000,
        memory_limit_in_bytes: 512 << 20,
        ..Default::default()
    });
    spec
}

/// A pod with `annotations` (containerd passes io.husk.* on to the
/// container, as a user's `metadata.annotations`).
fn pod_spec(name: &str, annotations: &[(&str, &str)]) -> PodSpec {
    let mut spec = PodSpec::new(name);
    for (k, v) in annotations {
        spec.annotations.insert((*k).into(), (*v).into());
    }
    spec
}

/// The password Secret as kubelet mounts one: a directory with the key.
fn secret_mount(dir: &Path) -> cri::Mount {
    std::fs::write(dir.join("password"), format!("{PASSWORD}\n")).unwrap();
    cri::Mount {
        container_path: "/vnc".into(),
        host_path: dir.display().to_string(),
        readonly: true,
        ..Default::default()
    }
}

fn connect(ip: Ipv4Addr, port: u16) -> TcpStream {
    let addr = SocketAddr::from((ip, port));
    let deadline = Instant::now() + DEADLINE;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => {
                s.set_read_timeout(Some(DEADLINE)).unwrap();
                s.set_write_timeout(Some(DEADLINE)).unwrap();
                return s;
            }
            Err(e) => assert!(Instant::now() < deadline, "connecting to {addr}: {e}"),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// RFB straight over TCP to the pod IP.
fn vnc_at(ip: Ipv4Addr, password: &[u8]) -> Result<Session, String> {
    rfb::handshake(&mut connect(ip, VNC_PORT), Some(password))
}

/// RFB through the WebSocket endpoint, offering noVNC's `binary`.
fn vnc_over_websocket(ip: Ipv4Addr) -> Result<Session, String> {
    use tungstenite::client::IntoClientRequest;
    let stream = connect(ip, WS_PORT);
    let mut request = format!("ws://{ip}:{WS_PORT}/websockify")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "binary".parse().unwrap());
    let (ws, response) =
        tungstenite::client(request, stream).map_err(|e| format!("WebSocket upgrade: {e}"))?;
    let protocol = response.headers().get("Sec-WebSocket-Protocol");
    assert_eq!(
        protocol.and_then(|p| p.to_str().ok()),
        Some("binary"),
        "{response:?}"
    );
    let mut ws = WsStream::new(ws);
    let session = rfb::handshake(&mut ws, Some(PASSWORD.as_bytes()));
    let _ = ws.ws.close(None);
    session
}

/// A screen, after the one security type `security` (2: VNC
/// authentication, 1: none) was all the server offered.
fn assert_screen(how: &str, s: &Session, security: u8) {
    println!("{how}: {s:?}");
    assert_eq!(s.offered, [security], "{how}: {s:?}");
    assert!(s.width >= 320 && s.height >= 200, "{how}: {s:?}");
    let (x, y, w, h, encoding) = s.first_rect;
    assert!(s.rects >= 1 && w > 0 && h > 0, "{how}: {s:?}");
    assert!(x + w <= s.width && y + h <= s.height, "{how}: {s:?}");
    assert_eq!(encoding, 0, "{how}: Raw was asked: {s:?}");
}

/// The server's greeting through CRI's PortForward (kubectl's path).
fn greeting_through_port_forward(cri: &Cri, pod: &Pod) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let url = cri.port_forward(pod, &[i32::from(VNC_PORT)]);
        match husk_tests::streaming::port_forward_exchange(&url, VNC_PORT, b"", 12) {
            Ok(got) if got.len() == 12 => return String::from_utf8_lossy(&got).into_owned(),
            other => assert!(Instant::now() < deadline, "port-forward: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn vnc_console_at_the_pod_ip_over_websocket_and_port_forward() {
    let Some(mut cri) = harness_or_skip() else {
        return;
    };
    cri.import_image(&vm_archive("debian-vm-oci.tar"), DEBIAN_VM);
    let annotations = [
        ("io.husk.vm.vnc", "5900"),
        ("io.husk.vm.vnc-websocket", "5700"),
    ];
    let pod = cri.run_pod(HUSK_VM, &pod_spec("vnc", &annotations));

    // No password and no explicit opt-out: refused, saying what to do.
    let open = vm_container("open");
    let id = cri.try_create(&pod, &open).unwrap();
    let e = cri.start_container(&id).unwrap_err();
    println!("no password: {e}");
    assert!(
        e.contains("needs a password")
            && e.contains("/vnc")
            && e.contains("io.husk.vm.vnc-auth: none"),
        "{e}"
    );
    cri.remove_container(&id);

    let secret = tempfile::tempdir().unwrap();
    let mut spec = vm_container("vm");
    spec.mounts.push(secret_mount(secret.path()));
    let t = Instant::now();
    let id = cri.create_and_start(&pod, &spec);
    let qemu = husk_tests::containerd::processes_mentioning(&format!("husk-vm-{id},"));
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", qemu[0])).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(
        cmdline.contains("-vnc none,password=on") && !cmdline.contains(PASSWORD),
        "{cmdline}"
    );

    let direct = vnc_at(pod.ip, PASSWORD.as_bytes()).unwrap();
    assert_screen("at the pod IP", &direct, 2);
    println!("first screen after {:?}", t.elapsed());
    let wrong = vnc_at(pod.ip, b"guessed").unwrap_err();
    println!("wrong password: {wrong}");
    assert!(wrong.starts_with("security result 1"), "{wrong}");
    let ws = vnc_over_websocket(pod.ip).unwrap();
    assert_screen("over WebSocket", &ws, 2);
    // (The size may differ from the first client's: the firmware changes
    // video modes as it boots.)
    let greeting = greeting_through_port_forward(&cri, &pod);
    println!("through port-forward: {greeting:?}");
    assert!(greeting.starts_with("RFB 003.00"), "{greeting:?}");

    // The next VM of the pod (a restart) serves the console again: the
    // ports were let go, and the pass filters came back with its network.
    cri.stop_container(&id, 0);
    cri.remove_container(&id);
    let mut again = vm_container("vm-again");
    again.mounts.push(secret_mount(secret.path()));
    let id = cri.create_and_start(&pod, &again);
    let direct = vnc_at(pod.ip, PASSWORD.as_bytes()).unwrap();
    assert_screen("the next VM, at the pod IP", &direct, 2);
    let ws = vnc_over_websocket(pod.ip).unwrap();
    assert_screen("the next VM, over WebSocket", &ws, 2);
    cri.stop_container(&id, 0);
    cri.stop_and_remove(&pod);

    // Asked for explicitly, a console without a password: RFB's None.
    let annotations = [("io.husk.vm.vnc", "5900"), ("io.husk.vm.vnc-auth", "none")];
    let pod = cri.run_pod(HUSK_VM, &pod_spec("vnc-open", &annotations));
    let id = cri.create_and_start(&pod, &vm_container("vm"));
    let open = rfb::handshake(&mut connect(pod.ip, VNC_PORT), None).unwrap();
    assert_screen("without a password", &open, 1);
    cri.stop_container(&id, 0);
    cri.stop_and_remove(&pod);
    assert_no_vm_left(&cri, Duration::from_secs(60));
}
