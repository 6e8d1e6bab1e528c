//! Facts about the guest the agent runs in, read from the kernel.

use std::io;

/// CLOCK_BOOTTIME in milliseconds: time since the guest kernel started.
pub fn boottime_ms() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
        Ok(ts) => ts.tv_sec() as u64 * 1000 + ts.tv_nsec() as u64 / 1_000_000,
        Err(_) => 0,
    }
}

pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The hardware RNG feeding the guest kernel's entropy pool.
pub fn hw_rng() -> String {
    std::fs::read_to_string("/sys/class/misc/hw_random/rng_current")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

pub fn online_cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(0)
}

/// (MemTotal, MemAvailable) in KiB from /proc/meminfo.
pub fn memory_kib() -> io::Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    Ok(parse_meminfo(&text))
}

fn parse_meminfo(text: &str) -> (u64, u64) {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("MemTotal"), field("MemAvailable"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_fields_are_parsed() {
        let text = "MemTotal:         238428 kB\nMemFree:  1 kB\nMemAvailable:     201044 kB\n";
        assert_eq!(parse_meminfo(text), (238428, 201044));
    }

    #[test]
    fn missing_meminfo_fields_read_as_zero() {
        assert_eq!(parse_meminfo("MemFree: 3 kB\n"), (0, 0));
    }

    #[test]
    fn boottime_advances() {
        let a = boottime_ms();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(boottime_ms() >= a + 20);
    }
}
