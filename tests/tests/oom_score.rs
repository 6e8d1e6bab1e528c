//! A pod's standing with the OOM killer, against runc: for a BestEffort,
//! a Burstable and a Guaranteed pod (the `oom_score_adj` kubelet gives
//! each class's container: 1000, one in between, -997), every host
//! process of the husk pod's VM (VMM, virtiofsd, vhost-device-vsock and
//! what they forked) has the score runc gives the same container's
//! process. containerd's `restrict_oom_score_adj` (which these machines
//! need: no CAP_SYS_RESOURCE) raises a score below containerd's own to
//! it, for runc and husk alike.

use husk_tests::cri::{ContainerSpec, Cri, PodSpec, HUSK, RUNC};
use husk_tests::privileges::descendants;

fn oom_score_adj(pid: u32) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn container(score: i64) -> ContainerSpec {
    let mut spec = ContainerSpec::new("app", &["sleep", "1000"]);
    spec.resources = Some(k8s_cri::v1::LinuxContainerResources {
        oom_score_adj: score,
        ..Default::default()
    });
    spec
}

/// The pid of runc's task `id` in containerd's k8s.io namespace.
fn runc_pid(cri: &Cri, id: &str) -> u32 {
    let out = cri.containerd().ctr(&["-n", "k8s.io", "task", "ls"]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("no task {id} in:\n{text}"))
}

/// Every host process of the husk pod's VM, with its score and name.
fn vm_scores(cri: &Cri, pod_id: &str) -> Vec<(u32, String, Option<i32>)> {
    let shim = cri
        .containerd()
        .shims("containerd-shim-husk-v2")
        .into_iter()
        .find(|s| s.id == pod_id)
        .expect("the pod's shim");
    descendants(shim.pid)
        .into_iter()
        .map(|pid| (pid, husk_tests::comm(pid), oom_score_adj(pid)))
        .collect()
}

#[test]
fn each_vm_process_has_runcs_score_for_the_same_pod() {
    if let Some(reason) = husk_tests::cri::unsupported_reason() {
        println!("SKIPPED: {reason}");
        return;
    }
    let cri = Cri::start();
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for (class, score) in [
        ("BestEffort", 1000i64),
        ("Burstable", 500),
        ("Guaranteed", -997),
    ] {
        let runc_pod = cri.run_pod(RUNC, &PodSpec::new(&format!("oom-runc-{}", score.abs())));
        let runc_ctr = cri.create_and_start(&runc_pod, &container(score));
        let runc = oom_score_adj(runc_pid(&cri, &runc_ctr));
        let husk_pod = cri.run_pod(HUSK, &PodSpec::new(&format!("oom-husk-{}", score.abs())));
        cri.create_and_start(&husk_pod, &container(score));
        let vm = vm_scores(&cri, &husk_pod.id);
        for (pid, comm, s) in &vm {
            rows.push(format!(
                "| {class} ({score}) | {comm} ({pid}) | {s:?} | {runc:?} |"
            ));
            if *s != runc {
                failures.push(format!(
                    "{class}: {comm} ({pid}) has {s:?}, runc's process {runc:?}"
                ));
            }
        }
        if vm.is_empty() {
            failures.push(format!("{class}: no VM process under the shim"));
        }
        cri.stop_and_remove(&runc_pod);
        cri.stop_and_remove(&husk_pod);
    }
    println!("| pod | husk VM process | oom_score_adj | runc's container |\n|---|---|---|---|");
    println!("{}", rows.join("\n"));
    assert!(failures.is_empty(), "{failures:#?}");
}
