//! Reading a process's CPU time and resident memory, and the machine's CPU use, from
//! `/proc`.
//!
//! Owns the parsing of `/proc/PID/stat` (utime + stime), `/proc/PID/status` (VmRSS) and
//! `/proc/stat` (busy vs idle jiffies). The coordinator samples these once a second
//! and exactly at the run's boundaries.

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcSample {
    /// CPU seconds used so far (user + system).
    pub cpu_s: f64,
    /// Resident memory, bytes.
    pub rss_bytes: u64,
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Read a process; `None` if it is gone.
pub fn sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after ") ".
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(ProcSample {
        cpu_s: (utime + stime) / ticks_per_second(),
        rss_bytes: rss_kb * 1024,
    })
}

/// Machine CPU counters: (busy jiffies, total jiffies).
pub fn machine() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Cores on this machine.
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_bytes > 1024 * 1024);
        assert!(s.cpu_s >= 0.0);
        let (busy, total) = machine().unwrap();
        assert!(total >= busy && total > 0);
        assert!(sample(u32::MAX).is_none());
    }
}
