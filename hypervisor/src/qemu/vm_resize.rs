//! A VM image resized while it runs (docs/vm-pods.md, "Resizing a running
//! VM"): the room it boots with, and the QMP side of a resize. The guest's
//! side (bringing what was plugged online) is the guest agent's
//! ([`super::qga`]).
//!
//! - **vCPUs:** QEMU starts with `-smp N,maxcpus=M`. A resize up plugs
//!   the CPUs QEMU lists as free in `query-hotpluggable-cpus`, with the
//!   type and properties it gives (ACPI CPU hotplug, which every x86 Linux
//!   takes; the new CPU stays offline until user space onlines it); down,
//!   the ones husk plugged go again by `device_del` (ACPI eject, which the
//!   guest completes) once the guest took them offline. The CPUs of the
//!   boot are never removed.
//! - **Memory:** a virtio-mem device over a RAM backend as large as the
//!   room (`maxmem` less the boot size), `requested-size` 0 at boot: it
//!   costs address space only. A resize sets `requested-size`; the guest's
//!   virtio_mem driver plugs or unplugs blocks and QEMU reports what is
//!   plugged as `size`; what the guest unplugs QEMU discards, so the host
//!   gets the memory back, not only the guest's view of it. Chosen over
//!   DIMM hotplug (`pc-dimm`, which a guest returns only whole and often
//!   not at all) and over a balloon (which hides memory from a guest that
//!   still counts it in MemTotal); it works under TCG and KVM alike.

use super::qmp::{Qmp, QmpError};
use serde::Deserialize;
use serde_json::json;
use std::time::{Duration, Instant};

/// The virtio-mem device's id (`/machine/peripheral/<id>`).
pub const HOT_MEMORY: &str = "hotmem";
/// The prefix of the ids husk gives the vCPUs it plugs.
const HOT_CPU: &str = "hotcpu-";
/// virtio-mem's block: what it plugs and unplugs at a time. 2 MiB is the
/// x86 minimum and lets the guest give back memory in small pieces.
const BLOCK_MIB: u32 = 2;
const MIB: u64 = 1 << 20;

/// How large a VM may grow while it runs; none beyond its boot size where
/// both are the boot's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Room {
    pub max_vcpus: u32,
    pub max_memory_mib: u32,
}

/// `-smp`, `-m` and the virtio-mem device for a VM of `vcpus` and
/// `memory_mib` at boot with `room`.
pub fn args(vcpus: u32, memory_mib: u32, room: Room) -> (String, String, Vec<String>) {
    let smp = if room.max_vcpus > vcpus {
        format!("{vcpus},maxcpus={}", room.max_vcpus)
    } else {
        vcpus.to_string()
    };
    let hot = hot_memory_mib(memory_mib, room);
    if hot == 0 {
        return (smp, format!("{memory_mib}M"), Vec::new());
    }
    let m = format!("{memory_mib}M,maxmem={}M", memory_mib + hot);
    let devices = vec![
        "-object".to_owned(),
        // Not reserve=off: QEMU reads /proc/sys/vm/overcommit_memory for
        // it, which its jail does not hold. Under the kernel's default
        // overcommit (0), an untouched mapping costs nothing; under strict
        // accounting (2) the room counts against the commit limit.
        format!("memory-backend-ram,id={HOT_MEMORY}-ram,size={hot}M"),
        "-device".to_owned(),
        format!(
            "virtio-mem-pci,id={HOT_MEMORY},memdev={HOT_MEMORY}-ram,requested-size=0,block-size={BLOCK_MIB}M"
        ),
    ];
    (smp, m, devices)
}

/// The memory the VM may be given beyond its boot size, in whole blocks.
pub fn hot_memory_mib(memory_mib: u32, room: Room) -> u32 {
    room.max_memory_mib.saturating_sub(memory_mib) / BLOCK_MIB * BLOCK_MIB
}

#[derive(Debug, thiserror::Error)]
pub enum ResizeError {
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error("QEMU has no free vCPU slot for {want} vCPUs (it was started with room for {max})")]
    NoRoom { want: u32, max: u32 },
    #[error(
        "the guest took {reached} MiB of memory beyond its boot size in {waited:?}, not the \
         {want} MiB asked (its virtio_mem driver may be missing, or the memory is in use and \
         cannot be given back)"
    )]
    Memory {
        want: u64,
        reached: u64,
        waited: Duration,
    },
}

/// One entry of `query-hotpluggable-cpus`.
#[derive(Debug, Deserialize)]
struct HotpluggableCpu {
    #[serde(rename = "type")]
    driver: String,
    props: serde_json::Map<String, serde_json::Value>,
    #[serde(rename = "qom-path")]
    qom_path: Option<String>,
}

/// The CPU slots and which are plugged.
async fn cpu_slots(qmp: &Qmp, timeout: Duration) -> Result<Vec<HotpluggableCpu>, QmpError> {
    let mut slots: Vec<HotpluggableCpu> =
        qmp.call("query-hotpluggable-cpus", None, timeout).await?;
    // QEMU lists the highest first; plug in the guest's order.
    slots.sort_by_key(|s| slot_key(&s.props));
    Ok(slots)
}

fn slot_key(props: &serde_json::Map<String, serde_json::Value>) -> [u64; 4] {
    ["socket-id", "die-id", "core-id", "thread-id"]
        .map(|k| props.get(k).and_then(|v| v.as_u64()).unwrap_or(0))
}

fn cpu_id(props: &serde_json::Map<String, serde_json::Value>) -> String {
    let [s, d, c, t] = slot_key(props);
    format!("{HOT_CPU}{s}-{d}-{c}-{t}")
}

/// Plugs vCPUs until `want` are plugged; returns how many were added.
pub async fn plug_vcpus(qmp: &Qmp, want: u32, timeout: Duration) -> Result<u32, ResizeError> {
    let slots = cpu_slots(qmp, timeout).await?;
    let plugged = slots.iter().filter(|s| s.qom_path.is_some()).count() as u32;
    if want > slots.len() as u32 {
        return Err(ResizeError::NoRoom {
            want,
            max: slots.len() as u32,
        });
    }
    let mut added = 0;
    for slot in slots.iter().filter(|s| s.qom_path.is_none()) {
        if plugged + added >= want {
            break;
        }
        let mut arguments = slot.props.clone();
        arguments.insert("driver".into(), slot.driver.clone().into());
        arguments.insert("id".into(), cpu_id(&slot.props).into());
        qmp.execute("device_add", Some(arguments.into()), timeout)
            .await?;
        added += 1;
    }
    Ok(added)
}

/// The ids of the vCPUs husk plugged, the last first: the ones an
/// unplug takes, `count` of them at most.
pub async fn hot_vcpus(qmp: &Qmp, timeout: Duration) -> Result<Vec<String>, QmpError> {
    let slots = cpu_slots(qmp, timeout).await?;
    let mut ids: Vec<String> = Vec::new();
    for slot in slots.iter().filter(|s| s.qom_path.is_some()) {
        // A plugged CPU's qom-path is /machine/peripheral/<id> when it
        // was plugged with an id; the boot's are /machine/unattached/...
        if let Some(id) = slot
            .qom_path
            .as_deref()
            .and_then(|p| p.strip_prefix("/machine/peripheral/"))
            .filter(|id| id.starts_with(HOT_CPU))
        {
            ids.push(id.to_owned());
        }
    }
    ids.reverse();
    Ok(ids)
}

/// Asks QEMU to unplug the vCPU `id` (the guest ejects it).
pub async fn unplug_vcpu(qmp: &Qmp, id: &str, timeout: Duration) -> Result<(), QmpError> {
    qmp.execute("device_del", Some(json!({ "id": id })), timeout)
        .await
        .map(drop)
}

/// How many vCPUs QEMU runs now.
pub async fn vcpu_count(qmp: &Qmp, timeout: Duration) -> Result<u32, QmpError> {
    let cpus: Vec<serde::de::IgnoredAny> = qmp.call("query-cpus-fast", None, timeout).await?;
    Ok(cpus.len() as u32)
}

/// The memory the guest has plugged beyond its boot size, in bytes.
pub async fn hot_memory(qmp: &Qmp, timeout: Duration) -> Result<u64, QmpError> {
    let path = format!("/machine/peripheral/{HOT_MEMORY}");
    qmp.call(
        "qom-get",
        Some(json!({"path": path, "property": "size"})),
        timeout,
    )
    .await
}

/// Asks for `mib` MiB beyond the boot size and waits (up to `wait`) until
/// the guest has plugged or unplugged its way there.
pub async fn set_hot_memory(
    qmp: &Qmp,
    mib: u32,
    timeout: Duration,
    wait: Duration,
) -> Result<(), ResizeError> {
    let want = u64::from(mib) * MIB;
    let path = format!("/machine/peripheral/{HOT_MEMORY}");
    let arguments = json!({"path": path, "property": "requested-size", "value": want});
    qmp.execute("qom-set", Some(arguments), timeout).await?;
    let began = Instant::now();
    loop {
        let size = hot_memory(qmp, timeout).await?;
        if size == want {
            return Ok(());
        }
        if began.elapsed() >= wait {
            return Err(ResizeError::Memory {
                want: want / MIB,
                reached: size / MIB,
                waited: wait,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_costs_arguments_only_where_there_is_room() {
        let none = args(2, 1024, Room::default());
        assert_eq!(none, ("2".into(), "1024M".into(), Vec::new()));
        let same = args(
            2,
            1024,
            Room {
                max_vcpus: 2,
                max_memory_mib: 1024,
            },
        );
        assert_eq!(same, ("2".into(), "1024M".into(), Vec::new()));
        let (smp, m, devices) = args(
            1,
            1024,
            Room {
                max_vcpus: 4,
                max_memory_mib: 4097,
            },
        );
        assert_eq!(smp, "1,maxcpus=4");
        // 3073 MiB of room is 3072 in 2 MiB blocks.
        assert_eq!(m, "1024M,maxmem=4096M");
        assert_eq!(
            devices.join(" "),
            "-object memory-backend-ram,id=hotmem-ram,size=3072M \
             -device virtio-mem-pci,id=hotmem,memdev=hotmem-ram,requested-size=0,block-size=2M"
        );
    }

    /// A fake QEMU with 4 CPU slots, core 0 the boot's and core 2 plugged
    /// by husk: each command it was sent, with its arguments.
    async fn qemu_with_slots(listener: tokio::net::UnixListener) -> Vec<serde_json::Value> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        let greeting = b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n";
        write.write_all(greeting).await.unwrap();
        let mut lines = BufReader::new(read).lines();
        let mut seen = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            let cmd: serde_json::Value = serde_json::from_str(&line).unwrap();
            let slot = |core: u64, path: Option<&str>| {
                let mut s = json!({"type": "max-x86_64-cpu", "vcpus-count": 1,
                    "props": {"socket-id": 0, "core-id": core, "thread-id": 0, "node-id": 0}});
                if let Some(p) = path {
                    s["qom-path"] = p.into();
                }
                s
            };
            let ret = match cmd["execute"].as_str().unwrap() {
                "query-hotpluggable-cpus" => json!([
                    slot(3, None),
                    slot(2, Some("/machine/peripheral/hotcpu-0-0-2-0")),
                    slot(1, None),
                    slot(0, Some("/machine/unattached/device[0]")),
                ]),
                _ => json!({}),
            };
            let answer = json!({"return": ret, "id": cmd["id"]});
            write
                .write_all(format!("{answer}\n").as_bytes())
                .await
                .unwrap();
            seen.push(cmd);
        }
        seen
    }

    #[tokio::test]
    async fn free_slots_are_plugged_in_order_with_qemus_properties() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let server = tokio::spawn(qemu_with_slots(listener));
        let t = Duration::from_secs(5);
        let qmp = Qmp::connect(&sock, t).await.unwrap();
        // Two plugged; four asked: cores 1 and 3, in that order.
        assert_eq!(plug_vcpus(&qmp, 4, t).await.unwrap(), 2);
        let e = plug_vcpus(&qmp, 5, t).await.unwrap_err().to_string();
        assert!(e.contains("room for 4"), "{e}");
        // Only what husk plugged is offered for unplugging.
        assert_eq!(hot_vcpus(&qmp, t).await.unwrap(), ["hotcpu-0-0-2-0"]);
        drop(qmp);
        let seen = server.await.unwrap();
        let added: Vec<&serde_json::Value> = seen
            .iter()
            .filter(|c| c["execute"] == "device_add")
            .map(|c| &c["arguments"])
            .collect();
        assert_eq!(added.len(), 2, "{seen:?}");
        assert_eq!(added[0]["id"], "hotcpu-0-0-1-0");
        assert_eq!(added[0]["driver"], "max-x86_64-cpu");
        assert_eq!(added[0]["core-id"], 1);
        assert_eq!(added[0]["node-id"], 0);
        assert_eq!(added[1]["core-id"], 3);
    }

    #[test]
    fn cpu_slots_are_named_and_ordered_by_their_place() {
        let props = |c: u64| {
            serde_json::json!({"socket-id": 0, "core-id": c, "thread-id": 0, "node-id": 0})
                .as_object()
                .unwrap()
                .clone()
        };
        assert_eq!(cpu_id(&props(3)), "hotcpu-0-0-3-0");
        assert!(slot_key(&props(1)) < slot_key(&props(2)));
    }
}
