//! A `VmPod` whose VM was booted before its pod existed (docs/pool.md):
//! booted by a pool member with a TAP in the shim's own network namespace
//! and a MAC of its own, then, when a pod takes it, given the pod's id,
//! network (the TAP moved into the pod's namespace and connected; the
//! guest NIC takes the pod's MAC, addresses and routes), cgroup, clock,
//! fresh entropy and hostname. A pod of another size stops it and boots
//! cold.

use super::{RunningVm, VmPod};
use crate::agent::VsockAgent;
use crate::error::TaskError;
use crate::pod::ContainerPlan;
use anyhow::anyhow;
use husk_config::{Config, PoolShape};
use husk_hypervisor::{MicroVm, NetDevice, VmSpec};
use husk_proto::agent::PersonalizeRequest;
use std::os::fd::{AsRawFd, OwnedFd};

/// Bytes of host entropy a pooled VM gets when it is handed out.
const ENTROPY_BYTES: usize = 64;

/// A booted VM waiting for its pod.
pub(super) struct PooledVm {
    running: RunningVm,
    shape: PoolShape,
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
    crate::network::format_mac(&b)
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

impl PooledVm {
    pub(super) async fn stop(self, pod_id: &str) {
        self.running.stop(pod_id).await;
    }
}

impl VmPod {
    /// Boots a VM of `shape` for a pod to come, under the id `pool_id`.
    pub async fn preboot(
        pool_id: String,
        config: Config,
        shape: PoolShape,
    ) -> Result<Self, TaskError> {
        let mut pod = VmPod::new(pool_id.clone(), Ok(config));
        let mut config = pod.config()?.clone();
        config.hypervisor.vcpus = shape.vcpus;
        config.hypervisor.memory_mib = shape.memory_mib;
        crate::console::ask_guest_for_console(&mut config);
        let tree = pod.tree()?.clone();
        tokio::task::spawn_blocking(move || tree.create())
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
            id: pool_id.clone(),
            shared_dir: pod.tree()?.shared_dir(),
            nets: vec![NetDevice {
                tap: tap.as_raw_fd(),
                mac: boot_mac.clone(),
            }],
            ..Default::default()
        };
        let vm = match MicroVm::start(&config, spec).await {
            Ok(vm) => vm,
            Err(e) => {
                pod.tree()?.remove();
                return Err(TaskError::Host(
                    anyhow::Error::new(e).context("booting a pool VM"),
                ));
            }
        };
        tracing::info!(pool_id, shape = %shape.name(), "pool VM ready");
        pod.pooled = tokio::sync::Mutex::new(Some(PooledVm {
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
        }));
        Ok(pod)
    }

    /// Whether the pooled VM still runs (its VMM has not exited).
    pub async fn pooled_vm_alive(&self) -> bool {
        match self.pooled.lock().await.as_mut() {
            Some(p) => !p.running.vm.has_exited(),
            None => false,
        }
    }

    /// The pod `pod_id` takes this pooled VM: the share tree is named for
    /// it, the VM's run and log directories take its id (nothing restarts).
    pub fn adopt(&mut self, pod_id: &str) -> Result<(), TaskError> {
        let Some(p) = self.pooled.get_mut().as_mut() else {
            return Err(TaskError::Host(anyhow!("no pooled VM to adopt")));
        };
        let Ok((_, tree)) = self.loaded.as_mut() else {
            return Err(TaskError::Host(anyhow!("no configuration")));
        };
        tree.adopt(pod_id).map_err(|e| {
            TaskError::Host(anyhow::Error::new(e).context("adopting the share tree"))
        })?;
        p.running
            .vm
            .rename(pod_id)
            .map_err(|e| TaskError::Host(anyhow::Error::new(e).context("adopting the VM")))?;
        tracing::info!(from = %self.pod_id, pod_id, "pool VM taken");
        self.pod_id = pod_id.to_owned();
        Ok(())
    }

    /// The pooled VM, when it fits `plan`, made the pod's; None when there
    /// is none or it does not fit (it is stopped then).
    pub(super) async fn take_pooled(
        &self,
        plan: &ContainerPlan,
    ) -> Option<Result<(RunningVm, VsockAgent), TaskError>> {
        let p = self.pooled.lock().await.take()?;
        if (p.shape.vcpus, p.shape.memory_mib) != (plan.vcpus, plan.memory_mib) {
            tracing::info!(pod_id = %self.pod_id, shape = %p.shape.name(), vcpus = plan.vcpus, memory_mib = plan.memory_mib, "the pooled VM does not fit the pod; booting cold");
            p.running.stop(&self.pod_id).await;
            return None;
        }
        Some(self.hand_out(p, plan).await)
    }

    async fn hand_out(
        &self,
        p: PooledVm,
        plan: &ContainerPlan,
    ) -> Result<(RunningVm, VsockAgent), TaskError> {
        let PooledVm {
            mut running,
            tap,
            tap_name,
            boot_mac,
            ..
        } = p;
        let result = self
            .personalize(&mut running, tap, &tap_name, &boot_mac, plan)
            .await;
        match result {
            Ok(agent) => Ok((running, agent)),
            Err(e) => {
                running.stop(&self.pod_id).await;
                Err(e)
            }
        }
    }

    async fn personalize(
        &self,
        running: &mut RunningVm,
        tap: OwnedFd,
        tap_name: &str,
        boot_mac: &str,
        plan: &ContainerPlan,
    ) -> Result<VsockAgent, TaskError> {
        let pod_id = &self.pod_id;
        let host = |what: &'static str| move |e: anyhow::Error| TaskError::Host(e.context(what));
        // The VM booted at the pool's lower priority; the pod's runs at 0.
        normal_priority(&running.vm.processes());
        // The VM's processes join the pod's cgroup (they started outside):
        // each of them, what the daemons forked included (a pid written to
        // cgroup.procs moves that process alone).
        if let Some(path) = plan.guest.cgroups_path.as_deref() {
            let cgroup = super::make_cgroup(pod_id, path).await?;
            let pids = running.vm.processes();
            for file in cgroup.procs_files() {
                for &pid in &pids {
                    match std::fs::write(&file, pid.to_string()) {
                        Ok(()) => {}
                        // Gone since it was listed: nothing to move (a
                        // dead VM fails the calls that follow).
                        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                        Err(e) => {
                            return Err(TaskError::Host(anyhow::Error::new(e).context(format!(
                                "moving the pool VM's process {pid} into {}",
                                file.display()
                            ))))
                        }
                    }
                }
            }
            running.cgroup = Some(cgroup);
        }
        let mut client = running.vm.agent().await.map_err(|e| {
            TaskError::Host(anyhow::Error::new(e).context("connecting to the agent"))
        })?;
        if let Some(netns) = plan.guest.netns.clone() {
            let name = tap_name.to_owned();
            let adopted =
                tokio::task::spawn_blocking(move || crate::network::adopt(&netns, tap, &name))
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
                    .map_err(|s| anyhow!("{}", crate::agent::sanitize(s.message())));
                let netns = n.netns.clone();
                running.network = Some(n);
                configured.map_err(host("configuring the guest network"))?;
                tracing::info!(pod_id, netns = %netns.display(), "pod network connected to the pool VM");
                match crate::portforward::start(&netns, running.vm.agent_socket()).await {
                    Ok(f) => running.forward = Some(f),
                    Err(e) => {
                        tracing::warn!(pod_id, "port-forward into the pod is unavailable: {e}")
                    }
                }
            }
        }
        husk_hypervisor::set_guest_clock(&mut client)
            .await
            .map_err(|e| host("setting the guest clock")(e.into()))?;
        let mut entropy = vec![0u8; ENTROPY_BYTES];
        getrandom(&mut entropy);
        let hostname = plan
            .guest
            .spec
            .get("hostname")
            .and_then(|h| h.as_str())
            .unwrap_or_default()
            .to_owned();
        client
            .personalize(PersonalizeRequest { entropy, hostname })
            .await
            .map_err(|s| host("personalizing the guest")(anyhow!("{}", s.message())))?;
        tracing::info!(pod_id, "pool VM handed out");
        Ok(VsockAgent::new(client))
    }
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
