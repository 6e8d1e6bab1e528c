//! A husk-vm VM resized in place (docs/vm-pods.md, "Resizing a running
//! VM"): UpdateContainerResources (kubelet's in-place pod resize, `crictl
//! update`) gives the VM container new CPU and memory limits; the VM is
//! sized from them as at its start (`Config::vm_size`), and grows or
//! shrinks to that size while it runs: vCPUs and virtio-mem memory
//! plugged by QMP (`husk_hypervisor::qemu::vm_resize`), brought online in
//! the guest by its agent (`qga`), or taken offline by it and unplugged.
//!
//! What cannot be done fails with an error that says why, and the VM keeps
//! the size it had: more than the room it booted with (`[pod]`'s bounds),
//! less than its boot size (the boot's vCPUs and memory stay), and a
//! guest without qemu-guest-agent (nothing would bring new CPUs online).
//! kubelet then reports the resize as not done and keeps the old limits.

use super::guest_agent::{on_agent, GuestAgentSlot};
use crate::task::agent::AgentError;
use husk_config::{Config, VmLimits};
use husk_hypervisor::qemu::vm_resize::{self, ResizeError, Room};
use husk_hypervisor::VmImage;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// How long the guest is given to plug or unplug memory, and to eject a
/// vCPU.
const SETTLE: Duration = Duration::from_secs(30);

/// A VM's size: vCPUs and MiB of memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    pub vcpus: u32,
    pub memory_mib: u32,
}

/// The room a VM boots with: the node's bounds for one pod (`[pod]`).
pub fn room(config: &Config) -> Room {
    Room {
        max_vcpus: config.pod.max_vcpus,
        max_memory_mib: config.pod.max_memory_mib,
    }
}

/// What a VM container needs to be resized.
pub struct Resizer {
    config: Config,
    annotations: HashMap<String, String>,
    boot: Size,
    room: Room,
    now: Mutex<Size>,
    /// One resize at a time.
    busy: tokio::sync::Mutex<()>,
}

fn refused(message: String) -> AgentError {
    AgentError::Status {
        code: tonic::Code::InvalidArgument,
        message,
    }
}

fn failed(message: String) -> AgentError {
    AgentError::Status {
        code: tonic::Code::FailedPrecondition,
        message,
    }
}

/// The limits in an OCI LinuxResources (JSON), as the VM's size reads them.
fn limits(resources: &[u8]) -> Result<VmLimits, AgentError> {
    let v: Value = serde_json::from_slice(resources)
        .map_err(|e| refused(format!("the resources are not OCI LinuxResources: {e}")))?;
    let positive = |p: &str| {
        v.pointer(p)
            .and_then(Value::as_i64)
            .filter(|&n| n > 0)
            .map(|n| n as u64)
    };
    Ok(VmLimits {
        cpu_quota: positive("/cpu/quota"),
        cpu_period: positive("/cpu/period"),
        memory_bytes: positive("/memory/limit"),
    })
}

impl Resizer {
    pub fn new(
        config: Config,
        annotations: HashMap<String, String>,
        boot: Size,
        room: Room,
    ) -> Self {
        Self {
            config,
            annotations,
            boot,
            room,
            now: Mutex::new(boot),
            busy: tokio::sync::Mutex::new(()),
        }
    }

    pub fn size(&self) -> Size {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The size `resources` ask for, or why the VM cannot take it.
    pub fn wanted(&self, resources: &[u8]) -> Result<Size, AgentError> {
        let l = limits(resources)?;
        let (max_vcpus, max_memory) = (
            self.room.max_vcpus.max(self.boot.vcpus),
            self.boot.memory_mib + vm_resize::hot_memory_mib(self.boot.memory_mib, self.room),
        );
        if let (Some(q), Some(p)) = (l.cpu_quota, l.cpu_period) {
            let cpus = q.div_ceil(p);
            if cpus > u64::from(max_vcpus) {
                return Err(refused(format!(
                    "{cpus} CPUs asked; the VM was started with room for {max_vcpus} \
                     (pod.max_vcpus)"
                )));
            }
        }
        if let Some(b) = l.memory_bytes {
            if b >> 20 > u64::from(max_memory) {
                return Err(refused(format!(
                    "{} MiB of memory asked; the VM was started with room for \
                     {max_memory} MiB (pod.max_memory_mib)",
                    b >> 20
                )));
            }
        }
        let (vcpus, memory_mib) = self
            .config
            .vm_size(&self.annotations, l)
            .map_err(|e| refused(format!("{e}")))?;
        if vcpus < self.boot.vcpus || memory_mib < self.boot.memory_mib {
            return Err(refused(format!(
                "{vcpus} vCPUs and {memory_mib} MiB asked; a running VM cannot go below \
                 the size it booted with ({} vCPUs, {} MiB): restart the container to boot it \
                 smaller",
                self.boot.vcpus, self.boot.memory_mib
            )));
        }
        Ok(Size { vcpus, memory_mib })
    }

    /// Resizes the running VM to what `resources` ask for.
    pub async fn update(
        &self,
        vm: &VmImage,
        agent: &GuestAgentSlot,
        resources: &[u8],
        t: Duration,
    ) -> Result<(), AgentError> {
        let want = self.wanted(resources)?;
        let _one = self.busy.lock().await;
        let before = self.size();
        if want == before {
            return Ok(());
        }
        let result = self.apply(vm, agent, before, want, t).await;
        // What QEMU runs now, whatever happened.
        let vcpus = vm_resize::vcpu_count(vm.qmp(), t).await.ok();
        let hot = vm_resize::hot_memory(vm.qmp(), t).await.ok();
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = vcpus {
            now.vcpus = v;
        }
        if let Some(h) = hot {
            now.memory_mib = self.boot.memory_mib + (h >> 20) as u32;
        }
        tracing::info!(before = ?before, asked = ?want, now = ?*now, ok = result.is_ok(), "VM resized");
        result
    }

    async fn apply(
        &self,
        vm: &VmImage,
        agent: &GuestAgentSlot,
        before: Size,
        want: Size,
        t: Duration,
    ) -> Result<(), AgentError> {
        let qmp = vm.qmp();
        let hot_mib = want.memory_mib - self.boot.memory_mib;
        let qmp_err = |e: ResizeError| failed(format!("{e}"));
        if want.memory_mib > before.memory_mib {
            // Up: the guest's driver plugs up to a bound of offline memory
            // at a time, so plugged blocks are brought online as they come.
            self.grow_memory(vm, agent, hot_mib, t).await?;
        } else if want.memory_mib < before.memory_mib {
            vm_resize::set_hot_memory(qmp, hot_mib, t, SETTLE)
                .await
                .map_err(qmp_err)?;
        }
        if want.vcpus > before.vcpus {
            vm_resize::plug_vcpus(qmp, want.vcpus, t)
                .await
                .map_err(qmp_err)?;
            online_vcpus(agent, want.vcpus, t).await?;
        } else if want.vcpus < before.vcpus {
            self.shrink_vcpus(vm, agent, want.vcpus, t).await?;
        }
        Ok(())
    }

    async fn grow_memory(
        &self,
        vm: &VmImage,
        agent: &GuestAgentSlot,
        hot_mib: u32,
        t: Duration,
    ) -> Result<(), AgentError> {
        let qmp = vm.qmp();
        let began = std::time::Instant::now();
        let want = u64::from(hot_mib) << 20;
        match vm_resize::set_hot_memory(qmp, hot_mib, t, Duration::from_millis(500)).await {
            Ok(()) | Err(ResizeError::Memory { .. }) => {}
            Err(e) => return Err(failed(format!("{e}"))),
        }
        loop {
            on_agent!(agent, t, |a| a.online_memory(t))
                .map_err(|e| no_agent("bring the new memory online", e))?;
            let size = vm_resize::hot_memory(qmp, t)
                .await
                .map_err(|e| failed(format!("{e}")))?;
            if size == want {
                // What was plugged last is online too.
                on_agent!(agent, t, |a| a.online_memory(t))
                    .map_err(|e| no_agent("bring the new memory online", e))?;
                return Ok(());
            }
            if began.elapsed() > SETTLE {
                return Err(failed(format!(
                    "{}",
                    ResizeError::Memory {
                        want: want >> 20,
                        reached: size >> 20,
                        waited: SETTLE
                    }
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn shrink_vcpus(
        &self,
        vm: &VmImage,
        agent: &GuestAgentSlot,
        keep: u32,
        t: Duration,
    ) -> Result<(), AgentError> {
        let qmp = vm.qmp();
        on_agent!(agent, t, |a| a.offline_vcpus(keep, t))
            .map_err(|e| no_agent("take vCPUs offline", e))?;
        let hot = vm_resize::hot_vcpus(qmp, t)
            .await
            .map_err(|e| failed(format!("{e}")))?;
        let now = vm_resize::vcpu_count(qmp, t)
            .await
            .map_err(|e| failed(format!("{e}")))?;
        let extra = now.saturating_sub(keep) as usize;
        for id in hot.iter().take(extra) {
            vm_resize::unplug_vcpu(qmp, id, t)
                .await
                .map_err(|e| failed(format!("{e}")))?;
        }
        let began = std::time::Instant::now();
        loop {
            let n = vm_resize::vcpu_count(qmp, t)
                .await
                .map_err(|e| failed(format!("{e}")))?;
            if n <= keep {
                return Ok(());
            }
            if began.elapsed() > SETTLE {
                return Err(failed(format!(
                    "the guest still runs {n} vCPUs after {SETTLE:?}, {keep} asked (it did \
                     not eject the others)"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Brings the plugged vCPUs online as the guest's kernel adds them (its
/// ACPI handler runs a moment after the plug), until `want` are.
async fn online_vcpus(agent: &GuestAgentSlot, want: u32, t: Duration) -> Result<(), AgentError> {
    let began = std::time::Instant::now();
    loop {
        let online = on_agent!(agent, t, |a| a.online_vcpus(t))
            .map_err(|e| no_agent("bring the new vCPUs online", e))?;
        if online >= want {
            return Ok(());
        }
        if began.elapsed() > SETTLE {
            return Err(failed(format!(
                "the guest brought {online} of {want} vCPUs online in {SETTLE:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn no_agent(what: &str, e: husk_hypervisor::qemu::qga::GuestAgentError) -> AgentError {
    failed(format!(
        "the VM's QEMU guest agent must {what}: {} (a husk-vm VM is resized with \
         qemu-guest-agent running in the guest)",
        super::context::chain(e)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resizer() -> Resizer {
        let mut config = Config::default();
        config.pod.max_vcpus = 4;
        config.pod.max_memory_mib = 4096;
        Resizer::new(
            config.clone(),
            HashMap::new(),
            Size {
                vcpus: 1,
                memory_mib: 512,
            },
            room(&config),
        )
    }

    fn resources(quota: i64, memory: i64) -> Vec<u8> {
        serde_json::json!({"cpu": {"quota": quota, "period": 100000}, "memory": {"limit": memory}})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn an_update_asks_for_the_size_a_start_would_give() {
        let r = resizer();
        assert_eq!(
            r.wanted(&resources(200_000, 1 << 30)).unwrap(),
            Size {
                vcpus: 2,
                memory_mib: 1024
            }
        );
        // 1.5 CPUs is two vCPUs, as at a start.
        assert_eq!(r.wanted(&resources(150_000, 512 << 20)).unwrap().vcpus, 2);
    }

    #[test]
    fn beyond_the_room_or_below_the_boot_is_refused_naming_the_bound() {
        let r = resizer();
        let e = format!("{:?}", r.wanted(&resources(800_000, 1 << 30)).unwrap_err());
        assert!(e.contains("8 CPUs") && e.contains("room for 4"), "{e}");
        let e = format!("{:?}", r.wanted(&resources(100_000, 8 << 30)).unwrap_err());
        assert!(e.contains("8192 MiB") && e.contains("room for 4096"), "{e}");
        let e = format!(
            "{:?}",
            r.wanted(&resources(100_000, 256 << 20)).unwrap_err()
        );
        assert!(e.contains("booted with (1 vCPUs, 512 MiB)"), "{e}");
        let e = format!("{:?}", r.wanted(b"{not json").unwrap_err());
        assert!(e.contains("not OCI LinuxResources"), "{e}");
    }
}
