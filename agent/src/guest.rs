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

/// Most entropy bytes the host may credit at once.
pub const MAX_ENTROPY_BYTES: usize = 512;

/// Mixes `bytes` into the kernel's pool and credits them in full
/// (RNDADDENTROPY, random(4)): the host's getrandom output is as good as
/// the guest's own, and a VM booted ahead of its pod gets a pool nobody
/// else saw.
pub fn add_entropy(bytes: &[u8]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + bytes.len());
    info.extend_from_slice(&((bytes.len() * 8) as i32).to_ne_bytes());
    info.extend_from_slice(&(bytes.len() as i32).to_ne_bytes());
    info.extend_from_slice(bytes);
    // The buffer is read as __u32 words: pad to a whole word.
    info.resize(info.len().div_ceil(4) * 4, 0);
    let random = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/random")?;
    const RNDADDENTROPY: nix::libc::c_ulong = 0x4008_5203;
    // SAFETY: the ioctl reads a rand_pool_info of 8 + buf_size bytes,
    // which `info` holds and keeps alive across the call.
    let r = unsafe { nix::libc::ioctl(random.as_raw_fd(), RNDADDENTROPY as _, info.as_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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
