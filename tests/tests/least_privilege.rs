//! Least privilege of a pod's host processes, end to end: after a pod
//! boots, each process the shim started is read from /proc (uid,
//! capabilities, no_new_privs, seccomp, namespaces, root, OOM score) and
//! checked against what it must no longer have; the tables it prints are
//! the ones in docs/security.md. Both pod kinds: a micro-VM pod's VMM and
//! daemons (through `ctr`), and a VM-image pod's QEMU (through CRI, with
//! the Debian test image, read while its disk boots).

use husk_tests::containerd::Containerd;
use husk_tests::ctr::*;
use husk_tests::privileges::{descendants, root_entries, table, Privileges};

/// What virtiofsd keeps: what serving files of every uid takes
/// (virtiofsd's own default set, less dac_read_search: with it, a file
/// handle opens any file of a file system a shared bind lives on).
const VIRTIOFSD_CAPS: [&str; 8] = [
    "chown",
    "dac_override",
    "fowner",
    "fsetid",
    "setgid",
    "setuid",
    "mknod",
    "setfcap",
];

/// Each process under the shim of task `id`, named by its role.
fn pod_processes(ctrd: &Containerd, id: &str) -> (Privileges, Vec<(String, Privileges)>) {
    let shim = ctrd
        .shims("containerd-shim-husk-v2")
        .into_iter()
        .find(|s| s.id == id)
        .unwrap_or_else(|| panic!("no shim for {id}"));
    let shim = Privileges::of(shim.pid).unwrap();
    let mut rows = Vec::new();
    for pid in descendants(shim.pid) {
        let Some(p) = Privileges::of(pid) else {
            continue;
        };
        let parent = parent_comm(pid);
        let role = match (p.comm.as_str(), parent.as_str()) {
            ("virtiofsd", "virtiofsd") => "virtiofsd (server, in its sandbox)".to_owned(),
            ("virtiofsd", _) => "virtiofsd (waiter)".to_owned(),
            ("husk-vmm", "husk-vmm") => "husk-vmm (the VMM)".to_owned(),
            ("husk-vmm", _) => "husk-vmm (pid-namespace parent)".to_owned(),
            ("husk-ns-monitor", _) => {
                let child = descendants(pid)
                    .first()
                    .and_then(|c| Privileges::of(*c))
                    .map(|c| c.comm)
                    .unwrap_or_default();
                format!("pid-namespace monitor of {child}")
            }
            (comm, _) => comm.to_owned(),
        };
        rows.push((role, p));
    }
    rows.insert(0, ("containerd-shim-husk-v2".to_owned(), shim.clone()));
    (shim, rows)
}

fn parent_comm(pid: u32) -> String {
    husk_tests::comm(husk_tests::parent_pid(pid))
}

/// Host paths with secrets or other pods in them, as `pid` sees them
/// (through /proc/<pid>/root): the ones it can reach.
fn host_paths_seen(pid: u32) -> Vec<&'static str> {
    [
        "etc/shadow",
        "etc/passwd",
        "root",
        "home",
        "var/lib",
        "var/log",
        "run/containerd",
        "proc/1",
        "sys/kernel",
    ]
    .into_iter()
    .filter(|p| std::path::Path::new(&format!("/proc/{pid}/root/{p}")).exists())
    .collect()
}

fn find<'a>(rows: &'a [(String, Privileges)], role: &str) -> Vec<&'a Privileges> {
    rows.iter()
        .filter(|(r, _)| r.starts_with(role))
        .map(|(_, p)| p)
        .collect()
}

/// A process that runs guest-facing code: an unprivileged id of its own,
/// no capability (none it could regain), no_new_privs, a seccomp filter.
fn assert_unprivileged(role: &str, p: &Privileges) {
    assert!(
        p.uids.iter().all(|&u| u != 0) && p.gids.iter().all(|&g| g != 0),
        "{role} runs as uid {:?} gid {:?}",
        p.uids,
        p.gids
    );
    assert_eq!(p.cap_eff, 0, "{role} has capabilities {:?}", p.effective());
    assert_eq!(p.cap_prm, 0, "{role} may regain capabilities");
    assert_eq!(p.cap_bnd, 0, "{role} keeps a bounding set");
    assert!(p.no_new_privs, "{role} may gain privileges through exec");
    assert_eq!(p.seccomp, 2, "{role} has no seccomp filter");
}

#[test]
fn each_host_process_of_a_pod_runs_with_least_privilege() {
    let ctrd = setup();
    run_detached(&ctrd, HUSK, "lp-a", &["sleep", "1000"]);
    run_detached(&ctrd, HUSK, "lp-b", &["sleep", "1000"]);
    let (shim, rows) = pod_processes(&ctrd, "lp-a");
    let (_, other) = pod_processes(&ctrd, "lp-b");
    let roots: Vec<Option<Vec<String>>> = rows.iter().map(|(_, p)| root_entries(p.pid)).collect();
    let exposed: Vec<Vec<&str>> = rows.iter().map(|(_, p)| host_paths_seen(p.pid)).collect();
    println!("{}", table(&rows, &shim));
    // The pods go before anything is asserted, so a failure leaves nothing.
    for id in ["lp-a", "lp-b"] {
        assert!(ctrd
            .ctr(&["task", "kill", "-s", "SIGKILL", id])
            .status
            .success());
        remove_task(&ctrd, id);
    }
    assert_nothing_left(&ctrd);
    let exposed_to = |p: &Privileges| {
        rows.iter()
            .position(|(_, r)| r.pid == p.pid)
            .map(|i| exposed[i].clone())
            .unwrap_or_default()
    };
    let root_of = |p: &Privileges| {
        rows.iter()
            .position(|(_, r)| r.pid == p.pid)
            .and_then(|i| roots[i].clone())
            .unwrap_or_default()
    };

    let vmm: Vec<_> = find(&rows, "qemu")
        .into_iter()
        .chain(find(&rows, "husk-vmm (the VMM)"))
        .collect();
    assert_eq!(vmm.len(), 1, "one VMM: {rows:#?}");
    let vmm = vmm[0];
    assert_unprivileged("the VMM", vmm);
    let own = vmm.own_namespaces(&shim);
    for ns in ["ipc", "uts"] {
        assert!(own.contains(ns), "the VMM shares the host's {ns} namespace");
    }

    let vsock = find(&rows, "vhost-device-vs");
    assert_eq!(vsock.len(), 1, "one vsock daemon: {rows:#?}");
    assert_unprivileged("vhost-device-vsock", vsock[0]);
    let own = vsock[0].own_namespaces(&shim);
    for ns in ["mnt", "pid", "net", "ipc", "uts"] {
        assert!(
            own.contains(ns),
            "vhost-device-vsock shares the host's {ns} namespace"
        );
    }
    // Its root holds what it runs from (read-only) and its sockets; no
    // host configuration, no other pod, no /proc.
    let root = root_of(vsock[0]);
    for absent in ["etc", "home", "root", "proc", "sys", "dev"] {
        assert!(
            !root.contains(&absent.to_owned()),
            "vhost-device-vsock sees /{absent}: {root:?}"
        );
    }
    assert_eq!(
        exposed_to(vsock[0]),
        Vec::<&str>::new(),
        "seen by vhost-device-vsock"
    );
    // QEMU too, in a root of its own: /usr, its kernel, initrd, run
    // directory and /dev/urandom.
    if vmm.comm.starts_with("qemu") {
        assert!(vmm.own_namespaces(&shim).contains("mnt"));
        assert_eq!(exposed_to(vmm), Vec::<&str>::new(), "seen by QEMU");
    }
    assert_eq!(
        vsock[0].uids[1], vmm.uids[1],
        "the VMM and its vsock daemon share the VM's id"
    );

    let servers = find(&rows, "virtiofsd (server");
    assert_eq!(
        servers.len(),
        1,
        "virtiofsd serves from its own sandbox: {rows:#?}"
    );
    let fs = servers[0];
    for cap in fs.effective() {
        assert!(VIRTIOFSD_CAPS.contains(&cap), "virtiofsd keeps {cap}");
    }
    assert!(
        !fs.effective().contains(&"dac_read_search"),
        "virtiofsd keeps dac_read_search"
    );
    assert_eq!(fs.seccomp, 2, "virtiofsd has no seccomp filter");
    let own = fs.own_namespaces(&shim);
    for ns in ["mnt", "pid", "net", "ipc", "uts"] {
        assert!(
            own.contains(ns),
            "virtiofsd shares the host's {ns} namespace"
        );
    }
    // Its root is the pod's share, not the host's /.
    let root = root_of(fs);
    assert!(
        !root.contains(&"etc".to_owned()),
        "virtiofsd sees the host's /: {root:?}"
    );
    for (role, p) in rows.iter().skip(1) {
        if role.starts_with("virtiofsd (waiter") || role.starts_with("pid-namespace") {
            assert_eq!(
                p.cap_eff,
                0,
                "{role} keeps capabilities {:?}",
                p.effective()
            );
        }
    }

    // Another pod's processes run under another id: one VM cannot signal,
    // trace or read the memory of another.
    let other_vmm = find(&other, "qemu")
        .into_iter()
        .chain(find(&other, "husk-vmm (the VMM)"))
        .next()
        .unwrap();
    assert_ne!(other_vmm.uids[1], vmm.uids[1], "two pods share an id");
}

/// A VM-image pod's QEMU, read while the Debian test image boots: the
/// VM's own uid, no capability (none to regain), no_new_privs, a seccomp
/// filter, mount, network, IPC and UTS namespaces of its own, a root with
/// no host file in it, and the container's OOM score.
#[test]
fn a_vm_image_pods_qemu_runs_with_least_privilege() {
    use husk_tests::cri::{ContainerSpec, Cri, PodSpec, HUSK_VM};
    if let Some(reason) = husk_tests::cri::unsupported_reason() {
        println!("SKIPPED: {reason}");
        return;
    }
    let dir = std::env::var("HUSK_VM_IMAGE_DIR").unwrap_or_else(|_| "/usr/local/share/husk".into());
    let archive =
        husk_tests::installed_archive("HUSK_VM_IMAGE_UNSET", &format!("{dir}/debian-vm-oci.tar"));
    let mut cri = Cri::start();
    cri.import_image(&archive, "docker.io/husk/debian-vm:test");
    let pod = cri.run_pod(HUSK_VM, &PodSpec::new("lp-vm"));
    let mut spec = ContainerSpec::new("vm", &["/disk"]);
    spec.image = "docker.io/husk/debian-vm:test".into();
    spec.resources = Some(k8s_cri::v1::LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: 100_000,
        memory_limit_in_bytes: 512 << 20,
        oom_score_adj: 1000,
        ..Default::default()
    });
    let id = cri.create_and_start(&pod, &spec);
    let qemu = husk_tests::containerd::processes_mentioning(&format!("husk-vm-{id},"));
    let shim = cri
        .containerd()
        .shims("containerd-shim-husk-vm-v2")
        .into_iter()
        .find(|s| s.id == pod.id)
        .expect("the pod's shim");
    let shim = Privileges::of(shim.pid).unwrap();
    let rows: Vec<(String, Privileges)> = qemu
        .iter()
        .filter_map(|&pid| Privileges::of(pid).map(|p| ("qemu-system-x86_64 (VM image)".into(), p)))
        .collect();
    let root = qemu.first().and_then(|&pid| root_entries(pid));
    let exposed = qemu.first().map(|&pid| host_paths_seen(pid));
    let score = qemu
        .first()
        .and_then(|&pid| std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).ok());
    let mut shown = vec![("containerd-shim-husk-vm-v2".to_owned(), shim.clone())];
    shown.extend(rows.iter().cloned());
    println!("{}", table(&shown, &shim));
    println!("QEMU's root: {root:?}; oom_score_adj {score:?}");
    cri.stop_and_remove(&pod);
    cri.assert_pod_gone(&pod);

    assert_eq!(rows.len(), 1, "one QEMU for the VM: {rows:#?}");
    let qemu = &rows[0].1;
    assert_unprivileged("a VM image's QEMU", qemu);
    let own = qemu.own_namespaces(&shim);
    for ns in ["mnt", "net", "ipc", "uts"] {
        assert!(own.contains(ns), "QEMU shares the host's {ns} namespace");
    }
    let root = root.unwrap_or_default();
    for absent in ["etc", "home", "root", "proc", "sys", "var", "run", "tmp"] {
        assert!(
            !root.contains(&absent.to_owned()),
            "QEMU sees /{absent}: {root:?}"
        );
    }
    assert_eq!(
        exposed.unwrap_or_default(),
        Vec::<&str>::new(),
        "seen by QEMU"
    );
    assert_eq!(
        score.as_deref().map(str::trim),
        Some("1000"),
        "QEMU's oom_score_adj"
    );
}
