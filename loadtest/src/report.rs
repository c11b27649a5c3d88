//! The result of a run: one JSON object (schema `switchboard-loadtest/1`, documented in
//! `loadtest/README.md`) and the terminal summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::scenario::Scenario;

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    /// From a histogram in microseconds.
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            mean: h.mean() / 1000.0,
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// One second of the run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TimelinePoint {
    /// Seconds since the start.
    pub t: u64,
    /// Messages sent (by intended time).
    pub sent: u64,
    /// Deliveries received.
    pub delivered: u64,
    /// Median latency of those deliveries, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Largest, ms.
    pub max_ms: f64,
    /// Server resident memory, MiB (if sampled).
    pub server_rss_mib: Option<f64>,
    /// Server CPU use in this second, percent of one core (if sampled).
    pub server_cpu_pct: Option<f64>,
}

/// Connections open during the ramp, about once a second.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RampPoint {
    /// Seconds since the first connection attempt.
    pub t: f64,
    /// Connections ready.
    pub ready: u64,
    /// Connections that failed.
    pub failed: u64,
}

/// Delivery accounting.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Messages {
    /// Messages published.
    pub sent: u64,
    /// Deliveries expected (each message once per subscriber of its channel).
    pub expected: u64,
    /// Deliveries received, duplicates included.
    pub received: u64,
    /// First deliveries.
    pub unique: u64,
    /// Expected and never received.
    pub lost: u64,
    /// Received more than once.
    pub duplicates: u64,
    /// Received after a later message from the same publisher.
    pub out_of_order: u64,
    /// Unparseable publications.
    pub foreign: u64,
    /// `lost / expected`.
    pub loss_ratio: f64,
    /// Publishes the server acknowledged (protocols that reply to a publish).
    #[serde(default)]
    pub acked: u64,
}

/// Server resources over the run (with `--server-pid`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ServerUse {
    /// Process id.
    pub pid: u32,
    /// RSS before connecting, MiB.
    pub rss_before_mib: f64,
    /// RSS with every connection open, before the measured run, MiB.
    pub rss_ramped_mib: f64,
    /// RSS at the end of the run, MiB.
    pub rss_end_mib: f64,
    /// (RSS ramped − RSS before) / connections, bytes.
    pub bytes_per_connection: f64,
    /// CPU seconds used during the run (start to end of drain).
    pub cpu_s: f64,
    /// CPU use during the run, percent of one core.
    pub cpu_pct: f64,
    /// CPU microseconds per unique delivery (fanout, rooms, echo).
    pub cpu_us_per_delivery: Option<f64>,
    /// The other processes summed with `pid` (the nodes of a cluster).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_pids: Vec<u32>,
}

/// The harness's own use.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HarnessUse {
    /// Worker processes.
    pub workers: usize,
    /// CPU seconds of all workers during the run.
    pub cpu_s: f64,
    /// Busiest worker's CPU use, percent of one core (a worker is single-threaded).
    pub max_worker_cpu_pct: f64,
    /// Machine CPU busy during the run, percent of all cores.
    pub machine_busy_pct: f64,
    /// Cores on the machine.
    pub cores: usize,
}

/// One connect-storm step, all workers added up.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StormPoint {
    /// Target rate, connections/s.
    pub rate: f64,
    /// Attempts.
    pub attempts: u64,
    /// Authenticated.
    pub ok: u64,
    /// Failed.
    pub failed: u64,
    /// Connect + auth latency.
    pub latency_ms: Percentiles,
    /// Within the latency bound and failure ratio.
    pub held: bool,
}

/// Everything a run produced.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RunResult {
    /// `switchboard-loadtest/1`.
    pub schema: String,
    /// The scenario as run.
    pub scenario: Option<Scenario>,
    /// Protocol name.
    pub protocol: String,
    /// Start, Unix seconds.
    pub started_unix: u64,
    /// Machine description.
    pub machine: BTreeMap<String, String>,
    /// Connections planned.
    pub connections_target: usize,
    /// Connections established.
    pub connections_ok: u64,
    /// Connection attempts that failed.
    pub connections_failed: u64,
    /// Connect + upgrade + auth latency.
    pub connect_latency_ms: Percentiles,
    /// Delivery accounting.
    pub messages: Messages,
    /// Messages published per second.
    pub sent_per_s: f64,
    /// Unique deliveries per second.
    pub delivered_per_s: f64,
    /// End-to-end latency from the intended send time.
    pub latency_ms: Percentiles,
    /// Latency from the actual send time: the server's share, without the generator's
    /// own lateness.
    #[serde(default)]
    pub service_latency_ms: Percentiles,
    /// Time from sending a publish to the server's acknowledgment.
    #[serde(default)]
    pub ack_latency_ms: Percentiles,
    /// Acknowledged publishes per second.
    #[serde(default)]
    pub acked_per_s: f64,
    /// Connections during the ramp.
    #[serde(default)]
    pub ramp: Vec<RampPoint>,
    /// With `--metrics-url`: change of every server metric over the run (summed over
    /// labels), from before the ramp to after the drain.
    #[serde(default)]
    pub server_metrics: BTreeMap<String, f64>,
    /// Per-second timeline.
    pub timeline: Vec<TimelinePoint>,
    /// Server resources, if sampled (every node's together).
    pub server: Option<ServerUse>,
    /// Redis's resources, if sampled (nodes sharing Redis).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<ServerUse>,
    /// Harness resources.
    pub harness: HarnessUse,
    /// Connect-storm steps.
    pub storm: Vec<StormPoint>,
    /// Highest connect-storm rate that held, connections/s.
    pub storm_max_rate: Option<f64>,
    /// Failures by kind.
    pub errors: BTreeMap<String, u64>,
    /// A few messages per failure kind.
    #[serde(default)]
    pub error_samples: BTreeMap<String, Vec<String>>,
    /// Things the reader must know (generator-bound, server gone, …).
    pub warnings: Vec<String>,
    /// Merged latency histogram (base64 HDR V2), for later comparison.
    pub latency_histogram: String,
}

fn thousands(n: f64) -> String {
    let s = format!("{:.0}", n);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 && c != '-' {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The terminal summary.
pub fn summary(r: &RunResult) -> String {
    let mut o = String::new();
    let s = r.scenario.clone().unwrap_or_default();
    let _ = writeln!(
        o,
        "{} · {} · {:?} · {} connections · {} msg/s · {} B payload · {} s",
        s.name, r.protocol, s.kind, r.connections_target, s.rate, s.payload_bytes, s.duration_s
    );
    let c = &r.connect_latency_ms;
    let _ = writeln!(
        o,
        "connections  {} ok, {} failed          connect+auth p50 {:.2} ms  p99 {:.2} ms",
        r.connections_ok, r.connections_failed, c.p50, c.p99
    );
    let m = &r.messages;
    if m.expected > 0 || m.sent > 0 {
        let pct = if m.expected > 0 {
            100.0 * m.unique as f64 / m.expected as f64
        } else {
            0.0
        };
        let _ = writeln!(
            o,
            "messages     sent {}  expected {}  delivered {} ({pct:.3}%)  lost {}  duplicates {}  reordered {}",
            thousands(m.sent as f64),
            thousands(m.expected as f64),
            thousands(m.unique as f64),
            thousands(m.lost as f64),
            m.duplicates,
            m.out_of_order
        );
        let _ = writeln!(
            o,
            "throughput   {} msg/s sent, {} deliveries/s",
            thousands(r.sent_per_s),
            thousands(r.delivered_per_s)
        );
        let l = &r.latency_ms;
        let _ = writeln!(
            o,
            "latency      p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms  (from intended send time)",
                        l.p50, l.p90, l.p99, l.p999, l.max
        );
        let v = &r.service_latency_ms;
        let _ = writeln!(
            o,
            "service      p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms  (from actual send time)",
            v.p50, v.p90, v.p99, v.p999, v.max
        );
        if m.acked > 0 {
            let a = &r.ack_latency_ms;
            let _ = writeln!(
                o,
                "acks         {} acknowledged ({} /s)  p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms  (publish to reply)",
                thousands(m.acked as f64),
                thousands(r.acked_per_s),
                a.p50, a.p90, a.p99, a.p999, a.max
            );
        }
    }
    for p in &r.storm {
        let _ = writeln!(
            o,
            "storm        {:>7.0}/s  {:>6} attempts  {:>6} ok  {:>5} failed  p99 {:>8.2} ms  {}",
            p.rate,
            p.attempts,
            p.ok,
            p.failed,
            p.latency_ms.p99,
            if p.held { "held" } else { "FAILED" }
        );
    }
    if let Some(rate) = r.storm_max_rate {
        let _ = writeln!(
            o,
            "storm        highest rate that held: {} connects+auth/s",
            thousands(rate)
        );
    }
    if let Some(sv) = &r.server {
        let _ = writeln!(
            o,
            "server       pid {}  RSS {:.1} → {:.1} MiB ({:.0} B/connection)  CPU {:.2} s = {:.1}% of a core{}",
            sv.pid,
            sv.rss_before_mib,
            sv.rss_ramped_mib,
            sv.bytes_per_connection,
            sv.cpu_s,
            sv.cpu_pct,
            sv.cpu_us_per_delivery.map(|u| format!(" = {u:.3} µs/delivery")).unwrap_or_default()
        );
        if !sv.more_pids.is_empty() {
            let _ = writeln!(
                o,
                "             (with pids {:?}: every node's together)",
                sv.more_pids
            );
        }
    }
    if let Some(rd) = &r.redis {
        let _ = writeln!(
            o,
            "redis        pid {}  RSS {:.1} MiB  CPU {:.2} s = {:.1}% of a core{}",
            rd.pid,
            rd.rss_end_mib,
            rd.cpu_s,
            rd.cpu_pct,
            rd.cpu_us_per_delivery
                .map(|u| format!(" = {u:.3} µs/delivery"))
                .unwrap_or_default()
        );
    }
    for key in [
        "switchboard_deliveries_total",
        "switchboard_slow_consumer_disconnects_total",
        "switchboard_closes_total",
    ] {
        if let Some(v) = r.server_metrics.get(key) {
            let _ = writeln!(o, "metrics      {key} +{v:.0}");
        }
    }
    let h = &r.harness;
    let _ = writeln!(
        o,
        "harness      {} worker(s), CPU {:.2} s, busiest worker {:.0}% of a core; machine busy {:.0}% of {} cores",
        h.workers, h.cpu_s, h.max_worker_cpu_pct, h.machine_busy_pct, h.cores
    );
    for (k, n) in &r.errors {
        let samples = r
            .error_samples
            .get(k)
            .map(|s| format!("  e.g. {}", s.join(" | ")))
            .unwrap_or_default();
        let _ = writeln!(o, "error        {k}: {n}{samples}");
    }
    for w in &r.warnings {
        let _ = writeln!(o, "WARNING      {w}");
    }
    o
}
