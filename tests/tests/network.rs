//! A container given a network namespace (as CNI gives a pod one) sees
//! the same interface, addresses and routes under husk as under runc, and
//! a server in it answers from the host at its address and from the
//! namespace's own localhost (what CRI PortForward dials): husk carries the
//! namespace's traffic into the VM through a TAP and tc redirects, and its
//! loopback through a redirect to the agent's forwarder. After the
//! container, nothing of husk stays in the namespace.

use husk_tests::ctr::*;
use husk_tests::ip;
use std::process::Command;
use std::time::{Duration, Instant};

/// A network namespace wired to the host by a veth pair, like a CNI
/// bridge-less ptp setup; removed on drop.
struct TestNetns {
    name: String,
    host_if: String,
    host_ip: String,
    pod_ip: String,
}

impl TestNetns {
    fn new() -> Self {
        let n = std::process::id() % 200;
        let ns = TestNetns {
            name: format!("husk-test-{}", std::process::id()),
            host_if: format!("hk{}h", std::process::id() % 1_000_000),
            host_ip: format!("10.213.{n}.1"),
            pod_ip: format!("10.213.{n}.2"),
        };
        ip(&["netns", "add", &ns.name]);
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns.name,
        ]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", ns.host_ip),
            "dev",
            &ns.host_if,
        ]);
        ip(&["link", "set", &ns.host_if, "up"]);
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{}/24", ns.pod_ip),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns.name, "link", "set", "eth0", "up"]);
        // As CNI's loopback plugin (and containerd) do for a pod.
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &ns.name,
            "route",
            "add",
            "default",
            "via",
            &ns.host_ip,
        ]);
        // IPv6 too, without duplicate address detection (both ends are
        // ours), so the addresses are usable at once.
        let (host6, pod6) = (ns.host_ip6(), ns.pod_ip6());
        ip(&[
            "addr",
            "add",
            &format!("{host6}/64"),
            "dev",
            &ns.host_if,
            "nodad",
        ]);
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{pod6}/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        ip(&[
            "-n", &ns.name, "-6", "route", "add", "default", "via", &host6,
        ]);
        ns
    }

    fn host_ip6(&self) -> String {
        format!("fd00:213:{}::1", std::process::id() % 200)
    }

    fn pod_ip6(&self) -> String {
        format!("fd00:213:{}::2", std::process::id() % 200)
    }

    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// `ip` output inside the namespace.
    fn show(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend(args);
        text(&Command::new("ip").args(&full).output().unwrap().stdout)
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Runs `command` until it prints something or `patience` is over,
/// every 300 ms: a server answers only once it has started, and takes one
/// connection at a time. Returns what it printed last.
fn output_when_ready(patience: Duration, command: impl Fn() -> Command) -> String {
    let deadline = Instant::now() + patience;
    loop {
        let got = text(&command().output().unwrap().stdout);
        if !got.is_empty() || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Reads what a server in the pod at `ip:port` sends (bash's /dev/tcp:
/// the host has no nc).
fn fetch(ip: &str, port: u16) -> String {
    output_when_ready(Duration::from_secs(120), || {
        let mut c = Command::new("timeout");
        c.args(["3", "bash", "-c", &format!("cat < /dev/tcp/{ip}/{port}")]);
        c
    })
}

/// What containerd's PortForward does: enter the pod's namespace and dial
/// localhost there.
fn fetch_in_netns(ns: &TestNetns, port: u16) -> String {
    output_when_ready(Duration::from_secs(60), || {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", ns.path())).args([
            "timeout",
            "5",
            "bash",
            "-c",
            &format!("cat < /dev/tcp/127.0.0.1/{port}"),
        ]);
        c
    })
}

fn scenario(
    ctrd: &husk_tests::containerd::Containerd,
    ns: &TestNetns,
    runtime: &str,
    tag: &str,
) -> (String, String, String) {
    let with_ns = format!("network:{}", ns.path());
    let seen = run_with(
        ctrd,
        runtime,
        &["--with-ns", &with_ns],
        &format!("net-show-{tag}"),
        &["sh", "-c", "ip -o -4 addr show eth0 | tr -s ' ' | cut -d' ' -f2,4; ip -4 route; \
             ip -o -6 addr show eth0 scope global | tr -s ' ' | cut -d' ' -f2,4; ip -6 route show default | cut -d' ' -f1-5; \
             ip link show eth0 | grep -o 'mtu [0-9]*'"],
        None,
    );
    assert!(seen.status.success(), "{}", text(&seen.stderr));
    let id = format!("net-srv-{tag}");
    let run = ctrd.ctr(&[
        "run",
        "-d",
        "--with-ns",
        &with_ns,
        "--runtime",
        runtime,
        IMAGE,
        &id,
        "sh",
        "-c",
        "echo served from the pod > /tmp/f; while true; do nc -l -p 8080 < /tmp/f; done",
    ]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let served = fetch(&ns.pod_ip, 8080);
    let forwarded = fetch_in_netns(ns, 8080);
    let _ = ctrd.ctr(&["task", "kill", "-s", "SIGKILL", &id]);
    remove_task(ctrd, &id);
    (text(&seen.stdout), served, forwarded)
}

#[test]
fn a_network_namespace_reaches_the_vm_as_it_reaches_runc() {
    let ctrd = setup();
    let ns = TestNetns::new();
    let runc = scenario(&ctrd, &ns, RUNC, "runc");
    let husk = scenario(&ctrd, &ns, HUSK, "husk");
    println!("runc: {runc:?}\nhusk: {husk:?}");
    assert!(
        husk.0.contains(&format!("eth0 {}/24", ns.pod_ip)),
        "{}",
        husk.0
    );
    assert!(
        husk.0.contains(&format!("default via {}", ns.host_ip)),
        "{}",
        husk.0
    );
    assert!(
        husk.0.contains(&format!("eth0 {}/64", ns.pod_ip6())),
        "{}",
        husk.0
    );
    assert!(
        husk.0
            .contains(&format!("default via {} dev eth0", ns.host_ip6())),
        "{}",
        husk.0
    );
    assert_eq!(husk.1, "served from the pod\n");
    // localhost in the pod's namespace, as containerd's PortForward dials.
    assert_eq!(husk.2, "served from the pod\n");
    assert_eq!(husk, runc);
    assert_nothing_left(&ctrd);
    // husk's TAP and its tc redirect left with the VM.
    let links = ns.show(&["-o", "link"]);
    assert!(!links.contains("husktap"), "TAP left behind: {links}");
    let qdiscs = text(
        &Command::new("tc")
            .args(["-n", &ns.name, "qdisc", "show", "dev", "eth0"])
            .output()
            .unwrap()
            .stdout,
    );
    assert!(
        !qdiscs.contains("ingress"),
        "ingress qdisc left behind: {qdiscs}"
    );
}
