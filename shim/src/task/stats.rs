//! The guest's cgroup v2 figures as the metrics containerd expects from a
//! shim's Stats: `io.containerd.cgroups.v1.Metrics` in an Any.
//!
//! Why v1 when the guest runs cgroup v2: containerd-shim-protos 0.10 carries
//! only the v1 message, and every consumer (ctr task metrics, the CRI
//! plugin's ContainerStats) reads v1 and v2 alike. The v2 files map onto v1
//! fields as runc's own v1 exporter defines them (cache = file, rss = anon,
//! CPU times in nanoseconds).

use containerd_shim_protos::cgroups::metrics::{
    BlkIOEntry, BlkIOStat, CPUStat, CPUUsage, MemoryEntry, MemoryOomControl, MemoryStat, Metrics,
    PidsStat, Throttle,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use husk_proto::agent::ContainerStatsResponse;

pub const METRICS_TYPE_URL: &str = "io.containerd.cgroups.v1.Metrics";

pub fn to_metrics(s: &ContainerStatsResponse) -> Metrics {
    Metrics {
        pids: Some(PidsStat {
            current: s.pids_current,
            limit: s.pids_max,
            ..Default::default()
        })
        .into(),
        cpu: Some(cpu(s)).into(),
        memory: Some(memory(s)).into(),
        blkio: Some(blkio(s)).into(),
        memory_oom_control: Some(MemoryOomControl {
            oom_kill: s.memory_events.get("oom_kill").copied().unwrap_or(0),
            under_oom: 0,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

/// cpu.stat: microseconds in v2, nanoseconds in v1.
fn cpu(s: &ContainerStatsResponse) -> CPUStat {
    let cpu = |k: &str| s.cpu_stat.get(k).copied().unwrap_or(0);
    let nsec = |k: &str| cpu(k).saturating_mul(1000);
    CPUStat {
        usage: Some(CPUUsage {
            total: nsec("usage_usec"),
            user: nsec("user_usec"),
            kernel: nsec("system_usec"),
            ..Default::default()
        })
        .into(),
        throttling: Some(Throttle {
            periods: cpu("nr_periods"),
            throttled_periods: cpu("nr_throttled"),
            throttled_time: nsec("throttled_usec"),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

/// memory.stat, memory.current/max/peak and memory.events as v1's
/// MemoryStat (runc's mapping: cache = file, rss = anon); the hierarchy is
/// the container's own, so each `total_` field is its plain one.
fn memory(s: &ContainerStatsResponse) -> MemoryStat {
    let mem = |k: &str| s.memory_stat.get(k).copied().unwrap_or(0);
    MemoryStat {
        cache: mem("file"),
        rss: mem("anon"),
        rss_huge: mem("anon_thp"),
        mapped_file: mem("file_mapped"),
        dirty: mem("file_dirty"),
        writeback: mem("file_writeback"),
        pg_fault: mem("pgfault"),
        pg_maj_fault: mem("pgmajfault"),
        inactive_anon: mem("inactive_anon"),
        active_anon: mem("active_anon"),
        inactive_file: mem("inactive_file"),
        active_file: mem("active_file"),
        unevictable: mem("unevictable"),
        hierarchical_memory_limit: limit(s.memory_max),
        total_cache: mem("file"),
        total_rss: mem("anon"),
        total_rss_huge: mem("anon_thp"),
        total_mapped_file: mem("file_mapped"),
        total_dirty: mem("file_dirty"),
        total_writeback: mem("file_writeback"),
        total_pg_fault: mem("pgfault"),
        total_pg_maj_fault: mem("pgmajfault"),
        total_inactive_anon: mem("inactive_anon"),
        total_active_anon: mem("active_anon"),
        total_inactive_file: mem("inactive_file"),
        total_active_file: mem("active_file"),
        total_unevictable: mem("unevictable"),
        usage: Some(MemoryEntry {
            usage: s.memory_current,
            limit: limit(s.memory_max),
            max: s.memory_peak,
            failcnt: s.memory_events.get("max").copied().unwrap_or(0),
            ..Default::default()
        })
        .into(),
        kernel: Some(MemoryEntry {
            // The guest's figures: any u64, so the sum saturates.
            usage: mem("kernel_stack")
                .saturating_add(mem("slab"))
                .saturating_add(mem("sock")),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

/// io.stat as v1's recursive service bytes and counts, per device.
fn blkio(s: &ContainerStatsResponse) -> BlkIOStat {
    let entry = |d: &husk_proto::agent::IoDeviceStats, op: &str, value: u64| BlkIOEntry {
        op: op.into(),
        major: d.major.into(),
        minor: d.minor.into(),
        value,
        ..Default::default()
    };
    let per_device = |read: fn(&husk_proto::agent::IoDeviceStats) -> u64,
                      write: fn(&husk_proto::agent::IoDeviceStats) -> u64| {
        s.io.iter()
            .flat_map(|d| [entry(d, "Read", read(d)), entry(d, "Write", write(d))])
            .collect()
    };
    BlkIOStat {
        io_service_bytes_recursive: per_device(|d| d.read_bytes, |d| d.write_bytes),
        io_serviced_recursive: per_device(|d| d.read_ios, |d| d.write_ios),
        ..Default::default()
    }
}

/// v1 reports "no limit" as the largest page-aligned number.
fn limit(max: u64) -> u64 {
    if max == 0 {
        i64::MAX as u64 & !4095
    } else {
        max
    }
}

pub fn to_any(s: &ContainerStatsResponse) -> Result<Any, containerd_shim_protos::protobuf::Error> {
    let value = to_metrics(s).write_to_bytes()?;
    Ok(Any {
        type_url: METRICS_TYPE_URL.into(),
        value,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_figures_land_in_the_v1_fields() {
        let mut s = ContainerStatsResponse {
            memory_current: 64 << 20,
            memory_max: 128 << 20,
            pids_current: 3,
            ..Default::default()
        };
        s.cpu_stat.insert("usage_usec".into(), 1500);
        s.cpu_stat.insert("system_usec".into(), 500);
        s.memory_stat.insert("anon".into(), 60 << 20);
        s.memory_stat.insert("file".into(), 4 << 20);
        s.memory_events.insert("oom_kill".into(), 2);
        let any = to_any(&s).unwrap();
        assert_eq!(any.type_url, METRICS_TYPE_URL);
        let m = Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(m.memory.usage.usage, 64 << 20);
        assert_eq!(m.memory.usage.limit, 128 << 20);
        assert_eq!((m.memory.rss, m.memory.cache), (60 << 20, 4 << 20));
        assert_eq!(m.cpu.usage.total, 1_500_000);
        assert_eq!(m.cpu.usage.kernel, 500_000);
        assert_eq!(m.pids.current, 3);
        assert_eq!(m.memory_oom_control.oom_kill, 2);
        // "max" becomes v1's unlimited.
        s.memory_max = 0;
        assert_eq!(to_metrics(&s).memory.usage.limit, 0x7FFF_FFFF_FFFF_F000);
    }

    #[test]
    fn figures_the_guest_makes_up_do_not_overflow() {
        // What the agent_replies fuzz target's stats reproducer sends.
        let mut s = ContainerStatsResponse::default();
        for k in ["kernel_stack", "slab", "sock"] {
            s.memory_stat.insert(k.into(), u64::MAX - 1);
        }
        s.cpu_stat.insert("usage_usec".into(), u64::MAX);
        let m = to_metrics(&s);
        assert_eq!(m.memory.kernel.usage, u64::MAX);
        assert_eq!(m.cpu.usage.total, u64::MAX);
        assert!(to_any(&s).is_ok());
    }
}
