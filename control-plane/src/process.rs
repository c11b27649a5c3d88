//! This process's own resource use, read from Linux's `/proc/self`.
//!
//! Owns reading CPU time, memory, threads, start time and open files. Does not own
//! exposing them (`metrics`) or alerting on them (`alerts`).

/// What `/proc/self` says about the process; `None` where it could not be read.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessStats {
    /// User and system CPU time, seconds.
    pub cpu_seconds: Option<f64>,
    /// Threads.
    pub threads: Option<f64>,
    /// Virtual memory size, bytes.
    pub virtual_bytes: Option<f64>,
    /// Resident memory, bytes.
    pub resident_bytes: Option<f64>,
    /// Start time, Unix seconds.
    pub start_time_seconds: Option<f64>,
    /// Open file descriptors.
    pub open_fds: Option<f64>,
}

impl ProcessStats {
    /// Read them now.
    pub fn read() -> ProcessStats {
        // SAFETY: sysconf only reads a configuration value.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK).max(1) as f64,
                libc::sysconf(libc::_SC_PAGESIZE).max(1) as f64,
            )
        };
        let mut p = ProcessStats::default();
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the command name (which may contain spaces) in parentheses.
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let f: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
            // f[0] is field 3 (state): utime 14, stime 15, threads 20, starttime 22,
            // vsize 23, rss 24.
            if let (Some(u), Some(s)) = (num(11), num(12)) {
                p.cpu_seconds = Some((u + s) / ticks);
            }
            p.threads = num(17);
            p.virtual_bytes = num(20);
            p.resident_bytes = num(21).map(|r| r * page);
            let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("btime "))
                    .and_then(|v| v.trim().parse::<f64>().ok())
            });
            if let (Some(start), Some(boot)) = (num(19), boot) {
                p.start_time_seconds = Some(boot + start / ticks);
            }
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            p.open_fds = Some(fds.count() as f64);
        }
        p
    }
}

/// The process's resident memory, bytes (`/proc/self/statm`: cheaper than a full
/// [`ProcessStats::read`], for the alert rule evaluated every interval).
pub fn resident_bytes() -> Option<f64> {
    // SAFETY: sysconf only reads a configuration value.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as f64;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map(|pages| pages * page)
}
