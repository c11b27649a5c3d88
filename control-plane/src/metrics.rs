//! Prometheus text exposition of the shards' counters.
//!
//! Owns rendering. The counters themselves live in each shard's cache-line-aligned
//! block of atomics (`switchboard_engine::ShardMetrics`), written by that shard alone;
//! the text format is simple enough that a metrics crate would only add a second copy
//! of every counter.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use switchboard_engine::metrics::LATENCY_BUCKETS_US;
use switchboard_engine::{CloseKind, EngineHandle, ShardMetrics};

use crate::admin::StoreView;
use crate::auth::AuthStats;

/// Counters of the control plane itself.
#[derive(Debug, Default)]
pub struct ApiStats {
    /// Publications accepted by `POST /api/publish`.
    pub publications: std::sync::atomic::AtomicU64,
    /// API requests refused (auth, validation, overload).
    pub refused: std::sync::atomic::AtomicU64,
}

/// A per-shard metric: name, type, help, and how to read it.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ShardMetrics) -> u64,
);

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Render every metric.
pub fn render(
    engine: &EngineHandle,
    auth: &AuthStats,
    api: &ApiStats,
    store: Option<&StoreView>,
) -> String {
    let shards = engine.metrics();
    let mut out = String::with_capacity(8192);
    family(
        &mut out,
        "switchboard_info",
        "gauge",
        "Build and backend information.",
    );
    let _ = writeln!(
        out,
        "switchboard_info{{version=\"{}\",backend=\"{}\",shards=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        engine.backend(),
        shards.len()
    );
    let per_shard: [Family; 18] = [
        (
            "switchboard_connections",
            "gauge",
            "Connections currently held.",
            |m| m.connections.load(Relaxed),
        ),
        (
            "switchboard_shard_accepting",
            "gauge",
            "1 while the shard accepts connections.",
            |m| m.accepting.load(Relaxed) as u64,
        ),
        (
            "switchboard_connections_accepted_total",
            "counter",
            "TCP connections accepted.",
            |m| m.accepted.load(Relaxed),
        ),
        (
            "switchboard_upgrades_total",
            "counter",
            "WebSocket upgrades completed.",
            |m| m.upgraded.load(Relaxed),
        ),
        (
            "switchboard_frames_received_total",
            "counter",
            "WebSocket frames received.",
            |m| m.frames_in.load(Relaxed),
        ),
        (
            "switchboard_bytes_received_total",
            "counter",
            "Bytes received.",
            |m| m.bytes_in.load(Relaxed),
        ),
        (
            "switchboard_frames_sent_total",
            "counter",
            "WebSocket frames fully written.",
            |m| m.frames_out.load(Relaxed),
        ),
        (
            "switchboard_bytes_sent_total",
            "counter",
            "Bytes written.",
            |m| m.bytes_out.load(Relaxed),
        ),
        (
            "switchboard_write_syscalls_total",
            "counter",
            "Vectored write calls (frames_sent / this = batching).",
            |m| m.writes.load(Relaxed),
        ),
        (
            "switchboard_publications_total",
            "counter",
            "Publications accepted from clients.",
            |m| m.publications.load(Relaxed),
        ),
        (
            "switchboard_deliveries_total",
            "counter",
            "Publication frames queued to subscribers.",
            |m| m.deliveries.load(Relaxed),
        ),
        (
            "switchboard_ephemeral_dropped_total",
            "counter",
            "Ephemeral pushes (typing) skipped for subscribers with half-full queues.",
            |m| m.ephemeral_dropped.load(Relaxed),
        ),
        (
            "switchboard_pushes_coalesced_total",
            "counter",
            "Progress pushes that replaced an older one still queued for a slow client.",
            |m| m.coalesced.load(Relaxed),
        ),
        (
            "switchboard_sessions_resumed_total",
            "counter",
            "Sessions resumed with a reconnect token.",
            |m| m.resumes.load(Relaxed),
        ),
        (
            "switchboard_reconnect_tokens_refused_total",
            "counter",
            "Reconnect tokens refused (forged, malformed or expired).",
            |m| m.resumes_refused.load(Relaxed),
        ),
        (
            "switchboard_mesh_messages_total",
            "counter",
            "Messages sent to other shards.",
            |m| m.mesh_sent.load(Relaxed),
        ),
        (
            "switchboard_mesh_spilled_total",
            "counter",
            "Messages that met a full shard inbox and waited.",
            |m| m.mesh_spilled.load(Relaxed),
        ),
        (
            "switchboard_uring_buffers_exhausted_total",
            "counter",
            "io_uring receives re-armed because the provided-buffer ring was empty.",
            |m| m.uring_buffers_exhausted.load(Relaxed),
        ),
    ];
    for (name, kind, help, get) in per_shard {
        family(&mut out, name, kind, help);
        for (i, m) in shards.iter().enumerate() {
            let _ = writeln!(out, "{name}{{shard=\"{i}\"}} {}", get(m));
        }
    }
    family(
        &mut out,
        "switchboard_closes_total",
        "counter",
        "Connections ended, by reason.",
    );
    for (i, m) in shards.iter().enumerate() {
        for kind in CloseKind::ALL {
            let _ = writeln!(
                out,
                "switchboard_closes_total{{shard=\"{i}\",reason=\"{}\"}} {}",
                kind.label(),
                m.closes[kind as usize].load(Relaxed)
            );
        }
    }
    family(
        &mut out,
        "switchboard_rate_limited_total",
        "counter",
        "Commands refused by a rate limit (error 114), by the event whose bucket was empty.",
    );
    for (i, m) in shards.iter().enumerate() {
        for e in switchboard_engine::limits::LimitEvent::ALL {
            let _ = writeln!(
                out,
                "switchboard_rate_limited_total{{shard=\"{i}\",event=\"{}\"}} {}",
                e.name(),
                m.rate_limited[e.index()].load(Relaxed)
            );
        }
    }
    family(
        &mut out,
        "switchboard_slow_consumer_disconnects_total",
        "counter",
        "Connections closed because their outbound queue overflowed.",
    );
    for (i, m) in shards.iter().enumerate() {
        let _ = writeln!(
            out,
            "switchboard_slow_consumer_disconnects_total{{shard=\"{i}\"}} {}",
            m.closes[CloseKind::SlowConsumer as usize].load(Relaxed)
        );
    }
    let name = "switchboard_publish_to_flush_seconds";
    family(
        &mut out,
        name,
        "histogram",
        "Time from a publication entering the server to the end of the shard's write pass that sent it.",
    );
    for (i, m) in shards.iter().enumerate() {
        let mut cumulative = 0;
        for (b, upper) in LATENCY_BUCKETS_US.iter().enumerate() {
            cumulative += m.latency_buckets[b].load(Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{shard=\"{i}\",le=\"{}\"}} {cumulative}",
                *upper as f64 / 1e6
            );
        }
        cumulative += m.latency_buckets[LATENCY_BUCKETS_US.len()].load(Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{shard=\"{i}\",le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(
            out,
            "{name}_sum{{shard=\"{i}\"}} {}",
            m.latency_sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "{name}_count{{shard=\"{i}\"}} {}",
            m.latency_count.load(Relaxed)
        );
    }
    family(
        &mut out,
        "switchboard_auth_total",
        "counter",
        "Tokens verified, by result.",
    );
    let _ = writeln!(
        out,
        "switchboard_auth_total{{result=\"accepted\"}} {}",
        auth.accepted.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "switchboard_auth_total{{result=\"refused\"}} {}",
        auth.refused.load(Relaxed)
    );
    family(
        &mut out,
        "switchboard_api_publications_total",
        "counter",
        "Publications accepted by POST /api/publish.",
    );
    let _ = writeln!(
        out,
        "switchboard_api_publications_total {}",
        api.publications.load(Relaxed)
    );
    family(
        &mut out,
        "switchboard_api_refused_total",
        "counter",
        "Server API requests refused.",
    );
    let _ = writeln!(
        out,
        "switchboard_api_refused_total {}",
        api.refused.load(Relaxed)
    );
    if let Some(st) = store {
        let last_commit_s = st.stats.last_commit_us.load(Relaxed) as f64 / 1e6;
        let families: [(&str, &str, &str, String); 7] = [
            (
                "switchboard_store_up",
                "gauge",
                "1 while the store writes; 0 while its circuit is open (durable publications refused).",
                (st.state.healthy() as u64).to_string(),
            ),
            (
                "switchboard_store_backlog",
                "gauge",
                "Publications handed to the store writer and not yet stored.",
                st.state.backlog().to_string(),
            ),
            (
                "switchboard_store_commits_total",
                "counter",
                "Store transactions committed (each one fsync).",
                st.stats.commits.load(Relaxed).to_string(),
            ),
            (
                "switchboard_store_records_total",
                "counter",
                "Publications stored.",
                st.stats.records.load(Relaxed).to_string(),
            ),
            (
                "switchboard_store_failures_total",
                "counter",
                "Failed store write attempts (each retried).",
                st.stats.failures.load(Relaxed).to_string(),
            ),
            (
                "switchboard_store_pruned_total",
                "counter",
                "Stored publications deleted for age.",
                st.stats.pruned.load(Relaxed).to_string(),
            ),
            (
                "switchboard_store_last_commit_seconds",
                "gauge",
                "Duration of the last store commit.",
                last_commit_s.to_string(),
            ),
        ];
        for (name, kind, help, value) in families {
            family(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
    }
    out
}
