//! A VM process's figures as the kernel keeps them: CPU time from
//! `/proc/<pid>/stat` (proc(5): utime and stime are fields 14 and 15,
//! num_threads field 20, after a command name that may hold spaces and
//! parentheses) and memory from `/proc/<pid>/status`. What `kubectl top`
//! shows of a VM-image pod, and the pods' RSS in the metrics.

/// A process's CPU time and memory; zero where it is gone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcStats {
    pub user_usec: u64,
    pub system_usec: u64,
    pub threads: u64,
    /// VmRSS, VmHWM, RssAnon and RssFile + RssShmem, in bytes.
    pub rss: u64,
    pub rss_peak: u64,
    pub anon: u64,
    pub file: u64,
}

/// Reads `pid`'s figures; a field that cannot be read is zero.
pub fn read(pid: u32) -> ProcStats {
    let stat = std::fs::read(format!("/proc/{pid}/stat")).unwrap_or_default();
    let status = std::fs::read(format!("/proc/{pid}/status")).unwrap_or_default();
    parse(&stat, &status, clock_ticks())
}

/// The figures in a process's `stat` and `status` files as read, with
/// `ticks` clock ticks a second. The command name in both is any bytes
/// (prctl(PR_SET_NAME), which a guest that took over its VMM may call):
/// not being UTF-8 hides no figure.
pub fn parse(stat: &[u8], status: &[u8], ticks: u64) -> ProcStats {
    let mut s = ProcStats::default();
    parse_stat(&String::from_utf8_lossy(stat), ticks, &mut s);
    parse_status(&String::from_utf8_lossy(status), &mut s);
    s
}

fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&t| t > 0)
        .unwrap_or(100) as u64
}

/// `/proc/<pid>/stat`: the fields after the command name's last ')'.
fn parse_stat(stat: &str, ticks: u64, s: &mut ProcStats) {
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let usec = |t: u64| t.saturating_mul(1_000_000) / ticks.max(1);
    s.user_usec = usec(num(11));
    s.system_usec = usec(num(12));
    s.threads = num(17);
}

/// `/proc/<pid>/status`: `Name:\t<value> kB` lines.
fn parse_status(status: &str, s: &mut ProcStats) {
    let bytes = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
            .saturating_mul(1024)
    };
    s.rss = bytes("VmRSS");
    s.rss_peak = bytes("VmHWM");
    s.anon = bytes("RssAnon");
    s.file = bytes("RssFile").saturating_add(bytes("RssShmem"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_name_with_spaces_and_parentheses_does_not_shift_fields() {
        let stat = "42 (qemu (x) y) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 1 2 3";
        let mut s = ProcStats::default();
        parse_stat(stat, 100, &mut s);
        assert_eq!(
            (s.user_usec, s.system_usec, s.threads),
            (2_500_000, 500_000, 7)
        );
        // Garbage leaves zeros, never a panic.
        let mut z = ProcStats::default();
        parse_stat("no parenthesis", 100, &mut z);
        parse_stat("1 (x) S", 0, &mut z);
        assert_eq!(z, ProcStats::default());
    }

    #[test]
    fn a_command_name_that_is_not_utf8_hides_no_figure() {
        let stat = b"42 (q\xffemu\xc3) S 1 42 42 0 -1 0 0 0 0 0 250 50 0 0 20 0 7 0";
        let status = b"Name:\tq\xffemu\xc3\nVmRSS:\t  1024 kB\n";
        let s = parse(stat, status, 100);
        assert_eq!((s.user_usec, s.threads, s.rss), (2_500_000, 7, 1 << 20));
    }

    #[test]
    fn memory_is_read_in_bytes() {
        let status = "Name:\tqemu\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nRssAnon:\t 512 kB\nRssFile:\t 256 kB\nRssShmem:\t 256 kB\n";
        let mut s = ProcStats::default();
        parse_status(status, &mut s);
        assert_eq!(
            (s.rss, s.rss_peak, s.anon, s.file),
            (1 << 20, 2 << 20, 512 << 10, 512 << 10)
        );
    }

    #[test]
    fn this_process_is_read() {
        let s = read(std::process::id());
        assert!(s.rss > 0 && s.threads >= 1, "{s:?}");
        assert_eq!(read(u32::MAX - 1), ProcStats::default());
    }
}
