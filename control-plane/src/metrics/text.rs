//! The Prometheus text exposition format: a family's `# HELP`/`# TYPE` lines, its
//! samples, and per-shard histograms with cumulative buckets.
//!
//! Owns the format. Does not own what is exposed.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use switchboard_engine::metrics::LATENCY_BUCKETS_US;
use switchboard_engine::ShardMetrics;

/// A per-shard metric: name, type, help, and how to read it.
pub(super) type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ShardMetrics) -> u64,
);

pub(super) fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A family and its samples, each `(labels, value)` (labels without braces).
pub(super) fn series(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    rows: impl IntoIterator<Item = (String, u64)>,
) {
    family(out, name, kind, help);
    for (labels, value) in rows {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

pub(super) type Histogram<'a> = (
    &'a [std::sync::atomic::AtomicU64; 15],
    &'a std::sync::atomic::AtomicU64,
    &'a std::sync::atomic::AtomicU64,
);

/// A per-shard histogram over [`LATENCY_BUCKETS_US`] (microseconds, shown in seconds).
pub(super) fn histogram(
    out: &mut String,
    name: &str,
    help: &str,
    shards: &[std::sync::Arc<ShardMetrics>],
    get: impl Fn(&ShardMetrics) -> Histogram<'_>,
) {
    family(out, name, "histogram", help);
    for (i, m) in shards.iter().enumerate() {
        let (buckets, sum, count) = get(m);
        let mut cumulative = 0;
        for (b, upper) in LATENCY_BUCKETS_US.iter().enumerate() {
            cumulative += buckets[b].load(Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{shard=\"{i}\",le=\"{}\"}} {cumulative}",
                *upper as f64 / 1e6
            );
        }
        cumulative += buckets[LATENCY_BUCKETS_US.len()].load(Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{shard=\"{i}\",le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(
            out,
            "{name}_sum{{shard=\"{i}\"}} {}",
            sum.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{{shard=\"{i}\"}} {}", count.load(Relaxed));
    }
}
