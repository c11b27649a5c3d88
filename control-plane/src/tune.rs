//! `switchboard tune check`: what this host allows a Switchboard process, read from the
//! kernel and the process limits, and what to change — with the exact `sysctl` and
//! `ulimit` lines — for the connections the configuration asks for.
//!
//! Owns reading the host ([`Host::read`]: `/proc/sys`, `getrlimit`, the CPU set, an
//! io_uring probe) and judging it ([`check`], a pure function of a [`Host`] and the
//! configuration, so tests give it any host). Does not own raising anything: the engine
//! raises its own open-file limit to the hard limit at start (`engine::files`).

use std::fmt::Write as _;

use crate::config::Config;

/// Bytes an idle subscribed connection costs the process (measured: 1,417–1,530 B,
/// docs/BENCHMARKS.md "Socket.IO endpoint"), rounded up.
const PROCESS_BYTES_PER_CONNECTION: u64 = 2_048;
/// Bytes the kernel keeps per idle TCP socket (socket, inode, dentry, TCP state),
/// rounded up.
const KERNEL_BYTES_PER_CONNECTION: u64 = 4_096;
/// Socket buffer bytes a busy connection holds (the minimum receive and send buffers,
/// `tcp_rmem[0]` + `tcp_wmem[0]`, 4 KiB each by default).
const BUFFER_BYTES_PER_BUSY_CONNECTION: u64 = 8_192;
/// Share of the host's memory a Switchboard process may plan to use.
const MEMORY_SHARE: f64 = 0.8;
/// Descriptors the engine keeps for health, admin and the store.
const RESERVED_FILES: u64 = switchboard_engine::files::RESERVED_FILES;

/// What the host allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// `RLIMIT_NOFILE` soft and hard.
    pub nofile: (u64, u64),
    /// `fs.nr_open`: the most a process's hard limit may be raised to.
    pub nr_open: Option<u64>,
    /// `net.core.somaxconn`.
    pub somaxconn: Option<u64>,
    /// `net.ipv4.ip_local_port_range`.
    pub port_range: Option<(u64, u64)>,
    /// `net.ipv4.tcp_mem` (pages): low, pressure, high.
    pub tcp_mem_pages: Option<(u64, u64, u64)>,
    /// Physical memory, bytes.
    pub memory_bytes: Option<u64>,
    /// `RLIMIT_MEMLOCK` soft, bytes (`u64::MAX`: unlimited).
    pub memlock: u64,
    /// Online CPUs, and those this process may run on.
    pub cores: (usize, usize),
    /// Whether io_uring can run, or why not.
    pub io_uring: Result<(), String>,
    /// `kernel.io_uring_disabled` (0 allowed, 1 root only, 2 off), where the kernel has it.
    pub io_uring_disabled: Option<u64>,
}

fn read_sys(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

fn numbers(text: &str) -> Vec<u64> {
    text.split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect()
}

fn rlimit(resource: libc::__rlimit_resource_t) -> (u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given, nothing else.
    if unsafe { libc::getrlimit(resource, &mut lim) } != 0 {
        return (0, 0);
    }
    (lim.rlim_cur, lim.rlim_max)
}

fn allowed_cores() -> usize {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity fills it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return 0;
        }
        libc::CPU_COUNT(&set) as usize
    }
}

impl Host {
    /// Read this host, probing io_uring with the settings of `cfg`.
    pub fn read(cfg: &Config) -> Host {
        let three = |p: &str| {
            let n = numbers(&read_sys(p)?);
            (n.len() == 3).then(|| (n[0], n[1], n[2]))
        };
        let memory = read_sys("/proc/meminfo").and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| numbers(v).first().map(|kb| kb * 1024))
        });
        let online = std::thread::available_parallelism().map_or(1, |n| n.get());
        Host {
            nofile: rlimit(libc::RLIMIT_NOFILE),
            nr_open: read_sys("/proc/sys/fs/nr_open").and_then(|v| v.parse().ok()),
            somaxconn: read_sys("/proc/sys/net/core/somaxconn").and_then(|v| v.parse().ok()),
            port_range: read_sys("/proc/sys/net/ipv4/ip_local_port_range").and_then(|v| {
                let n = numbers(&v);
                (n.len() == 2).then(|| (n[0], n[1]))
            }),
            tcp_mem_pages: three("/proc/sys/net/ipv4/tcp_mem"),
            memory_bytes: memory,
            memlock: rlimit(libc::RLIMIT_MEMLOCK).0,
            cores: (online, allowed_cores().max(1)),
            io_uring: switchboard_engine::backend::probe_io_uring(&cfg.engine_config())
                .map_err(|e| e.to_string()),
            io_uring_disabled: read_sys("/proc/sys/kernel/io_uring_disabled")
                .and_then(|v| v.parse().ok()),
        }
    }
}

/// How a finding stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Fine for the configuration.
    Ok,
    /// Worth changing.
    Warn,
    /// Stops the configuration from working as asked.
    Fail,
}

/// One thing checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// How it stands.
    pub level: Level,
    /// What was checked.
    pub what: &'static str,
    /// What was found.
    pub detail: String,
    /// The lines that fix it (empty when nothing needs fixing).
    pub fix: Vec<String>,
}

/// The whole check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Each thing checked.
    pub findings: Vec<Finding>,
    /// Connections this host can hold as it is, and what bounds them.
    pub connections: (u64, &'static str),
}

fn finding(level: Level, what: &'static str, detail: String, fix: Vec<String>) -> Finding {
    Finding {
        level,
        what,
        detail,
        fix,
    }
}

/// Judge `host` for the configuration `cfg`.
pub fn check(host: &Host, cfg: &Config) -> Report {
    let wanted = cfg.engine.max_connections as u64;
    let need_files = wanted + RESERVED_FILES;
    let mut out = Vec::new();

    // Open files: the engine raises its soft limit to the hard one at start.
    let (soft, hard) = host.nofile;
    let raise_to = need_files.next_power_of_two().max(65_536);
    let files_fix = vec![
        format!("ulimit -n {raise_to}            # this shell, before starting the server"),
        format!("LimitNOFILE={raise_to}          # systemd unit ([Service])"),
        format!("*  -  nofile  {raise_to}        # /etc/security/limits.conf"),
    ];
    out.push(if hard >= need_files {
        finding(
            Level::Ok,
            "open files",
            format!("soft {soft}, hard {hard}: the engine raises to {hard} at start; engine.max_connections {wanted} + {RESERVED_FILES} reserved fit"),
            Vec::new(),
        )
    } else {
        // The server starts and caps itself (HTTP 503 beyond): worth fixing, not fatal.
        finding(
            Level::Warn,
            "open files",
            format!("hard limit {hard} < engine.max_connections {wanted} + {RESERVED_FILES} reserved: at most {} connections", hard.saturating_sub(RESERVED_FILES)),
            files_fix,
        )
    });
    if let Some(nr) = host.nr_open {
        if nr < need_files {
            out.push(finding(
                Level::Fail,
                "fs.nr_open",
                format!("{nr}: no process may have more open files"),
                vec![format!("sysctl -w fs.nr_open={raise_to}")],
            ));
        }
    }

    // Accept backlog.
    if let Some(max) = host.somaxconn {
        let backlog = u64::from(cfg.engine.backlog);
        out.push(if max >= backlog {
            finding(Level::Ok, "net.core.somaxconn", format!("{max} ≥ engine.backlog {backlog}"), Vec::new())
        } else {
            finding(
                Level::Warn,
                "net.core.somaxconn",
                format!("{max} caps engine.backlog {backlog}: connect storms beyond it see SYN drops and retries"),
                vec![format!("sysctl -w net.core.somaxconn={backlog}")],
            )
        });
    }

    // Local ports: what clients on this host (load generators, nodes calling Redis or
    // webhooks) can open to one address.
    if let Some((lo, hi)) = host.port_range {
        let ports = hi.saturating_sub(lo) + 1;
        out.push(if ports >= 50_000 {
            finding(Level::Ok, "net.ipv4.ip_local_port_range", format!("{lo}–{hi} ({ports} ports)"), Vec::new())
        } else {
            finding(
                Level::Warn,
                "net.ipv4.ip_local_port_range",
                format!("{lo}–{hi}: {ports} outgoing connections per destination address from this host (load generators here need more, or several 127.0.0.x sources)"),
                vec!["sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\"".into()],
            )
        });
    }

    // TCP buffer memory: busy connections each hold at least their minimum buffers.
    let mut bounds: Vec<(u64, &'static str)> =
        vec![(hard.saturating_sub(RESERVED_FILES), "open files")];
    if let Some((_, _, high)) = host.tcp_mem_pages {
        let busy = high * 4096 / BUFFER_BYTES_PER_BUSY_CONNECTION;
        out.push(if busy >= wanted {
            finding(Level::Ok, "net.ipv4.tcp_mem", format!("{high} pages: buffers for {busy} busy connections"), Vec::new())
        } else {
            let pages = wanted * BUFFER_BYTES_PER_BUSY_CONNECTION / 4096;
            finding(
                Level::Warn,
                "net.ipv4.tcp_mem",
                format!("{high} pages: buffers for about {busy} busy connections of the {wanted} configured (idle ones need none)"),
                vec![format!("sysctl -w net.ipv4.tcp_mem=\"{} {} {pages}\"", pages / 2, pages * 3 / 4)],
            )
        });
    }

    // Memory.
    if let Some(mem) = host.memory_bytes {
        let per = PROCESS_BYTES_PER_CONNECTION + KERNEL_BYTES_PER_CONNECTION;
        let fit = (mem as f64 * MEMORY_SHARE) as u64 / per;
        bounds.push((fit, "memory"));
        out.push(finding(
            if fit >= wanted { Level::Ok } else { Level::Warn },
            "memory",
            format!("{} MiB: about {fit} idle connections at {per} B each (process and kernel), {}% of memory", mem >> 20, (MEMORY_SHARE * 100.0) as u32),
            Vec::new(),
        ));
    }

    // io_uring.
    out.push(match (&host.io_uring, cfg.engine.io) {
        (Ok(()), _) => finding(
            Level::Ok,
            "io_uring",
            "available (engine.io = auto uses it)".into(),
            Vec::new(),
        ),
        (Err(why), switchboard_engine::IoMode::Uring) => finding(
            Level::Fail,
            "io_uring",
            format!("unavailable and engine.io = \"uring\": the server will not start: {why}"),
            io_uring_fix(host),
        ),
        (Err(why), _) => finding(
            Level::Warn,
            "io_uring",
            format!("unavailable, epoll will be used: {why}"),
            io_uring_fix(host),
        ),
    });
    // Locked memory: io_uring's rings and registered buffers count against it on
    // kernels before 5.12.
    let lock_needed = (cfg.engine.uring_buffers * cfg.engine.uring_buffer_bytes) as u64
        * cfg.engine.resolved_shards() as u64;
    out.push(if host.memlock >= lock_needed || host.memlock == u64::MAX {
        finding(Level::Ok, "locked memory", format!("RLIMIT_MEMLOCK {} ≥ {lock_needed} B of io_uring buffers", memlock_text(host.memlock)), Vec::new())
    } else {
        finding(
            Level::Warn,
            "locked memory",
            format!("RLIMIT_MEMLOCK {} < {lock_needed} B of io_uring buffers (counted on kernels before 5.12)", memlock_text(host.memlock)),
            vec!["ulimit -l unlimited            # or LimitMEMLOCK=infinity in the systemd unit".into()],
        )
    });

    // Cores.
    let (online, allowed) = host.cores;
    let shards = if cfg.engine.shards == 0 {
        allowed
    } else {
        cfg.engine.shards
    };
    out.push(if shards > allowed {
        finding(
            Level::Warn,
            "cores",
            format!(
                "{shards} shards on {allowed} allowed cores ({online} online): shards share cores"
            ),
            vec![format!(
                "shards = {allowed}                # [engine], or --shards {allowed}"
            )],
        )
    } else {
        let pinning = if cfg.engine.pin_cores {
            "each shard pinned to its core"
        } else {
            "not pinned (engine.pin_cores = false)"
        };
        finding(
            Level::Ok,
            "cores",
            format!("{online} online, {allowed} allowed: {shards} shards, {pinning}"),
            Vec::new(),
        )
    });

    let connections = bounds
        .into_iter()
        .min_by_key(|(n, _)| *n)
        .unwrap_or((0, "open files"));
    Report {
        findings: out,
        connections,
    }
}

fn io_uring_fix(host: &Host) -> Vec<String> {
    match host.io_uring_disabled {
        Some(v) if v > 0 => vec!["sysctl -w kernel.io_uring_disabled=0".into()],
        _ => vec!["# a container runtime may forbid io_uring (seccomp): allow io_uring_setup, io_uring_enter, io_uring_register, or keep epoll".into()],
    }
}

fn memlock_text(v: u64) -> String {
    if v == u64::MAX {
        "unlimited".into()
    } else {
        format!("{v} B")
    }
}

impl Report {
    /// The report as printed.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for f in &self.findings {
            let tag = match f.level {
                Level::Ok => "ok  ",
                Level::Warn => "warn",
                Level::Fail => "FAIL",
            };
            let _ = writeln!(s, "{tag}  {}: {}", f.what, f.detail);
            for line in &f.fix {
                let _ = writeln!(s, "        {line}");
            }
        }
        let (n, by) = self.connections;
        let _ = writeln!(
            s,
            "\nThis host can hold about {n} connections (bound by {by})."
        );
        s
    }

    /// Whether anything stops the configuration from working as asked.
    pub fn failed(&self) -> bool {
        self.findings.iter().any(|f| f.level == Level::Fail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Host {
        Host {
            nofile: (1024, 1_048_576),
            nr_open: Some(1_048_576),
            somaxconn: Some(4096),
            port_range: Some((32768, 60999)),
            tcp_mem_pages: Some((287_907, 383_877, 575_814)),
            memory_bytes: Some(24 << 30),
            memlock: 8 << 20,
            cores: (2, 2),
            io_uring: Ok(()),
            io_uring_disabled: Some(0),
        }
    }

    fn level(r: &Report, what: &str) -> Level {
        r.findings.iter().find(|f| f.what == what).unwrap().level
    }

    #[test]
    fn a_roomy_host_passes_and_says_what_binds() {
        let r = check(&host(), &Config::default());
        assert!(!r.failed(), "{}", r.render());
        assert_eq!(level(&r, "open files"), Level::Ok);
        assert_eq!(level(&r, "net.ipv4.ip_local_port_range"), Level::Warn);
        // 24 GiB × 0.8 / 6 KiB ≈ 3.3 M; files 1,048,320: files bind.
        assert_eq!(r.connections, (1_048_576 - RESERVED_FILES, "open files"));
        assert!(r
            .render()
            .contains("This host can hold about 1048320 connections"));
    }

    #[test]
    fn tight_limits_fail_with_the_lines_that_fix_them() {
        let mut h = host();
        h.nofile = (1024, 20_000);
        h.somaxconn = Some(128);
        h.io_uring = Err("Operation not permitted".into());
        h.io_uring_disabled = Some(2);
        let mut cfg = Config::default();
        cfg.engine.io = switchboard_engine::IoMode::Uring;
        let r = check(&h, &cfg);
        assert!(r.failed(), "io_uring forced but unavailable");
        assert_eq!(level(&r, "open files"), Level::Warn);
        let text = r.render();
        assert!(text.contains("ulimit -n 131072"), "{text}");
        assert!(text.contains("LimitNOFILE=131072"), "{text}");
        assert!(text.contains("sysctl -w net.core.somaxconn=4096"), "{text}");
        assert!(
            text.contains("sysctl -w kernel.io_uring_disabled=0"),
            "{text}"
        );
        assert_eq!(r.connections, (20_000 - RESERVED_FILES, "open files"));
    }
}
