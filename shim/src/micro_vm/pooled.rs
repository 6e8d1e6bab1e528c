//! [`PooledVm`]: a micro-VM booted before its pod existed (docs/pool.md):
//! booted by a pool member with a TAP in the shim's own network namespace
//! and a MAC of its own ([`preboot`]), then, when a pod takes it
//! ([`hand_out`]), given the pod's network (the TAP moved into the pod's
//! namespace and connected; the guest NIC takes the pod's MAC, addresses
//! and routes), cgroup, OOM score, clock, fresh entropy and hostname. A
//! pod of another size stops it and boots cold.

use super::agent::VsockAgent;
use super::running::{make_cgroup, start_port_forward, RunningVm};
use super::share::ShareTree;
use crate::task::agent::sanitize;
use crate::task::error::TaskError;
use anyhow::anyhow;
use husk_config::{Config, PoolShape};
use husk_hypervisor::{MicroVm, NetDevice, VmSpec};
use husk_proto::agent::PersonalizeRequest;
use serde_json::Value;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

/// Bytes of host entropy a pooled VM gets when it is handed out.
const ENTROPY_BYTES: usize = 64;

/// A booted VM waiting for its pod.
pub struct PooledVm {
    pub running: RunningVm,
    pub shape: PoolShape,
    /// The VM's TAP, in the shim's namespace until the pod takes it.
    tap: OwnedFd,
    tap_name: String,
    /// The MAC the guest NIC booted with.
    boot_mac: String,
}

/// A locally administered, unicast MAC of random bytes.
fn random_mac() -> String {
    let mut b = [0u8; 6];
    getrandom(&mut b);
    b[0] = (b[0] & 0xfe) | 0x02;
    crate::host::network::format_mac(&b)
}

fn getrandom(buf: &mut [u8]) {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: getrandom writes at most `len` bytes into the live buffer.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n > 0 {
            filled += n as usize;
        }
    }
}

/// What a pod brings to the pooled VM it takes.
pub struct PodFit<'a> {
    pub pod_id: &'a str,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub netns: Option<PathBuf>,
    pub cgroups_path: Option<&'a str>,
    pub oom_score_adj: Option<i32>,
    /// The sandbox's spec (its hostname).
    pub spec: &'a Value,
}

impl PooledVm {
    pub async fn stop(self, pod_id: &str) {
        self.running.stop(pod_id).await;
    }

    /// Whether the VM still runs (its VMM has not exited).
    pub fn alive(&mut self) -> bool {
        !self.running.vm.has_exited()
    }

    /// Whether it is of the size `fit` asks for.
    pub fn fits(&self, fit: &PodFit<'_>) -> bool {
        (self.shape.vcpus, self.shape.memory_mib) == (fit.vcpus, fit.memory_mib)
    }
}

/// Boots a VM of `shape` for a pod to come, under the id `pool_id`,
/// sharing `tree` (made here).
pub async fn preboot(
    pool_id: &str,
    config: &Config,
    shape: PoolShape,
    tree: &ShareTree,
) -> Result<PooledVm, TaskError> {
    let mut config = config.clone();
    config.hypervisor.vcpus = shape.vcpus;
    config.hypervisor.memory_mib = shape.memory_mib;
    super::console::ask_guest_for_console(&mut config);
    let made = tree.clone();
    tokio::task::spawn_blocking(move || made.create())
        .await
        .map_err(|e| TaskError::Host(anyhow!(e)))?
        .map_err(|e| TaskError::Host(e.into()))?;
    // A TAP name of the host's namespace: unique, at most 15 bytes.
    let mut suffix = [0u8; 5];
    getrandom(&mut suffix);
    let tap_name = format!(
        "hp{}",
        suffix
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let tap: OwnedFd = husk_hypervisor::tap::open_tap(&tap_name)
        .map_err(|e| TaskError::Host(anyhow::Error::new(e).context("opening the pool TAP")))?
        .into();
    let boot_mac = random_mac();
    let spec = VmSpec {
        id: pool_id.to_owned(),
        shared_dir: tree.shared_dir(),
        nets: vec![NetDevice {
            tap: tap.as_raw_fd(),
            mac: boot_mac.clone(),
        }],
        ..Default::default()
    };
    let vm = match MicroVm::start(&config, spec).await {
        Ok(vm) => vm,
        Err(e) => {
            tree.remove();
            return Err(TaskError::Host(
                anyhow::Error::new(e).context("booting a pool VM"),
            ));
        }
    };
    tracing::info!(pool_id, shape = %shape.name(), "pool VM ready");
    Ok(PooledVm {
        running: RunningVm {
            vm,
            network: None,
            forward: None,
            cgroup: None,
            metrics: None,
        },
        shape,
        tap,
        tap_name,
        boot_mac,
    })
}

/// Makes the pooled VM `p` the pod's; on error it is stopped.
pub async fn hand_out(p: PooledVm, fit: &PodFit<'_>) -> Result<(RunningVm, VsockAgent), TaskError> {
    let PooledVm {
        mut running,
        tap,
        tap_name,
        boot_mac,
        ..
    } = p;
    let result = personalize(&mut running, tap, &tap_name, &boot_mac, fit).await;
    match result {
        Ok(agent) => Ok((running, agent)),
        Err(e) => {
            running.stop(fit.pod_id).await;
            Err(e)
        }
    }
}

async fn personalize(
    running: &mut RunningVm,
    tap: OwnedFd,
    tap_name: &str,
    boot_mac: &str,
    fit: &PodFit<'_>,
) -> Result<VsockAgent, TaskError> {
    let pod_id = fit.pod_id;
    let host = |what: &'static str| move |e: anyhow::Error| TaskError::Host(e.context(what));
    // The VM booted at the pool's lower priority; the pod's runs at 0.
    normal_priority(&running.vm.processes());
    if let Some(score) = fit.oom_score_adj {
        running
            .vm
            .set_oom_score_adj(score)
            .map_err(|e| host("setting the pod's OOM score")(e.into()))?;
    }
    if let Some(path) = fit.cgroups_path {
        running.cgroup = Some(join_pod_cgroup(running, pod_id, path).await?);
    }
    let mut client =
        running.vm.agent().await.map_err(|e| {
            TaskError::Host(anyhow::Error::new(e).context("connecting to the agent"))
        })?;
    if let Some(netns) = fit.netns.clone() {
        let name = tap_name.to_owned();
        let adopted =
            tokio::task::spawn_blocking(move || crate::host::network::adopt(&netns, tap, &name))
                .await
                .map_err(|e| TaskError::Host(anyhow!(e)))?
                .map_err(|e| host("network attach")(e.into()))?;
        if let Some(n) = adopted {
            let mut request = n.guest.clone();
            for nic in &mut request.interfaces {
                nic.current_mac = boot_mac.to_owned();
            }
            let configured = client
                .configure_network(request)
                .await
                .map_err(|s| anyhow!("{}", sanitize(s.message())));
            let netns = n.netns.clone();
            running.network = Some(n);
            configured.map_err(host("configuring the guest network"))?;
            tracing::info!(pod_id, netns = %netns.display(), "pod network connected to the pool VM");
            running.forward = start_port_forward(pod_id, &netns, running.vm.agent_socket()).await;
        }
    }
    husk_hypervisor::set_guest_clock(&mut client)
        .await
        .map_err(|e| host("setting the guest clock")(e.into()))?;
    let mut entropy = vec![0u8; ENTROPY_BYTES];
    getrandom(&mut entropy);
    let hostname = fit
        .spec
        .get("hostname")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    client
        .personalize(PersonalizeRequest { entropy, hostname })
        .await
        .map_err(|s| host("personalizing the guest")(anyhow!("{}", sanitize(s.message()))))?;
    tracing::info!(pod_id, "pool VM handed out");
    Ok(VsockAgent::new(client))
}

/// The VM's processes join the pod's cgroup (they started outside): each
/// of them, what the daemons forked included (a pid written to
/// cgroup.procs moves that process alone).
async fn join_pod_cgroup(
    running: &mut RunningVm,
    pod_id: &str,
    path: &str,
) -> Result<crate::host::cgroup::HostCgroup, TaskError> {
    let cgroup = make_cgroup(pod_id, path).await?;
    let pids = running.vm.processes();
    for file in cgroup.procs_files() {
        for &pid in &pids {
            match std::fs::write(&file, pid.to_string()) {
                Ok(()) => {}
                // Gone since it was listed: nothing to move (a dead VM
                // fails the calls that follow).
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => {
                    cgroup.remove();
                    return Err(TaskError::Host(anyhow::Error::new(e).context(format!(
                        "moving the pool VM's process {pid} into {}",
                        file.display()
                    ))));
                }
            }
        }
    }
    Ok(cgroup)
}

/// Sets every thread of `pids` and of this shim back to niceness 0: the
/// member booted its VM at `pool::BOOT_NICENESS`, and niceness is per
/// thread (a vCPU thread keeps the value it was created with). A thread
/// that is gone meanwhile is skipped.
fn normal_priority(pids: &[u32]) {
    for pid in pids.iter().copied().chain([std::process::id()]) {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for tid in tasks
            .flatten()
            .filter_map(|t| t.file_name().to_str()?.parse::<libc::id_t>().ok())
        {
            // SAFETY: setpriority takes plain integers; no memory is shared.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, tid, 0);
            }
        }
    }
}
