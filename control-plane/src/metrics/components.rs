//! What the control plane counts of itself: circuit breakers, alert webhooks, the
//! process, token checks, the server API, the store writer.
//!
//! Owns exposing those counters. Does not own them (each component keeps its own).

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use super::text::{family, series};
use super::ApiStats;
use crate::alerts::AlertsView;
use crate::auth::AuthStats;
use crate::store::StoreView;

/// Circuit breakers (store, webhooks) and alert webhook deliveries.
pub(super) fn expose_breakers(
    out: &mut String,
    store: Option<&StoreView>,
    alerts: &AlertsView,
    cluster: Option<&crate::cluster::ClusterState>,
) {
    let store_open = store.map(|st| {
        (
            "breaker=\"store\"".to_string(),
            u64::from(!st.state.healthy()),
        )
    });
    let hooks_open = (
        "breaker=\"webhooks\"".to_string(),
        u64::from(alerts.webhook_open.load(Relaxed)),
    );
    let redis_open = cluster.map(|c| ("breaker=\"redis\"".to_string(), u64::from(!c.up())));
    series(
        out,
        "switchboard_breaker_open",
        "gauge",
        "1 while a circuit breaker is open (store: durable publications refused; webhooks: alert deliveries skipped; redis: local clients only).",
        store_open.into_iter().chain([hooks_open]).chain(redis_open),
    );
    series(
        out,
        "switchboard_alert_webhooks_total",
        "counter",
        "Alert notices POSTed to webhooks, by result.",
        [
            (
                "result=\"sent\"".to_string(),
                alerts.webhook_sent.load(Relaxed),
            ),
            (
                "result=\"failed\"".to_string(),
                alerts.webhook_failures.load(Relaxed),
            ),
        ],
    );
}

/// Token checks and the server API.
pub(super) fn expose_auth_and_api(out: &mut String, auth: &AuthStats, api: &ApiStats) {
    family(
        out,
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
        out,
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
        out,
        "switchboard_api_refused_total",
        "counter",
        "Server API requests refused.",
    );
    let _ = writeln!(
        out,
        "switchboard_api_refused_total {}",
        api.refused.load(Relaxed)
    );
}

/// The store writer.
pub(super) fn expose_store(out: &mut String, st: &StoreView) {
    let last_commit_s = st.stats.last_commit_us.load(Relaxed) as f64 / 1e6;
    let families: [(&str, &str, &str, String); 11] = [
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
            "switchboard_store_archived_total",
            "counter",
            "Stored publications moved from the log's tail to the archive.",
            st.stats.archived.load(Relaxed).to_string(),
        ),
        (
            "switchboard_store_history_pages_total",
            "counter",
            "History pages read from the store (beyond what owner shards keep in memory).",
            st.stats.pages_read.load(Relaxed).to_string(),
        ),
        (
            "switchboard_store_history_page_failures_total",
            "counter",
            "History pages the store failed to read (answered 111 / 503).",
            st.stats.page_failures.load(Relaxed).to_string(),
        ),
        (
            "switchboard_store_last_history_page_seconds",
            "gauge",
            "Duration of the last history page read from the store.",
            format!("{:.6}", st.stats.last_page_us.load(Relaxed) as f64 / 1e6),
        ),
        (
            "switchboard_store_last_commit_seconds",
            "gauge",
            "Duration of the last store commit.",
            last_commit_s.to_string(),
        ),
    ];
    for (name, kind, help, value) in families {
        family(out, name, kind, help);
        let _ = writeln!(out, "{name} {value}");
    }
}

/// The standard process metrics (from [`crate::process`]); what could not be read is
/// left out.
pub(super) fn expose_process(out: &mut String) {
    let p = crate::process::ProcessStats::read();
    let gauges: [(&str, &str, &str, Option<f64>); 6] = [
        (
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent, seconds.",
            p.cpu_seconds,
        ),
        (
            "process_threads",
            "gauge",
            "Threads of the process.",
            p.threads,
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size, bytes.",
            p.virtual_bytes,
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size, bytes.",
            p.resident_bytes,
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process, Unix seconds.",
            p.start_time_seconds,
        ),
        (
            "process_open_fds",
            "gauge",
            "Open file descriptors.",
            p.open_fds,
        ),
    ];
    for (name, kind, help, value) in gauges {
        if let Some(v) = value {
            family(out, name, kind, help);
            let _ = writeln!(out, "{name} {v}");
        }
    }
}

/// The link to Redis and the node registry (a node in a cluster).
pub(super) fn expose_cluster(out: &mut String, c: &crate::cluster::ClusterState) {
    let node = format!("node=\"{}\"", c.node_id);
    series(
        out,
        "switchboard_redis_up",
        "gauge",
        "1 while Redis answers this node's heartbeats (0: serving local clients only).",
        [(node.clone(), u64::from(c.up()))],
    );
    family(
        out,
        "switchboard_redis_rtt_seconds",
        "gauge",
        "Round trip of this node's last registry heartbeat to Redis.",
    );
    let _ = writeln!(
        out,
        "switchboard_redis_rtt_seconds{{{node}}} {}",
        c.redis_rtt_us.load(Relaxed) as f64 / 1e6
    );
    series(
        out,
        "switchboard_redis_errors_total",
        "counter",
        "Redis connects and heartbeats that failed.",
        [(node.clone(), c.redis_errors.load(Relaxed))],
    );
    series(
        out,
        "switchboard_redis_connects_total",
        "counter",
        "Times the link to Redis was established.",
        [(node.clone(), c.redis_connects.load(Relaxed))],
    );
    series(
        out,
        "switchboard_cluster_bus_dropped_total",
        "counter",
        "Admin actions that could not wait for Redis (queue full) and did not reach the other nodes.",
        [(node.clone(), c.bus_dropped.load(Relaxed))],
    );
    series(
        out,
        "switchboard_cluster_nodes",
        "gauge",
        "Live nodes in the registry, as this node last read it.",
        [(node.clone(), c.nodes().len() as u64)],
    );
    series(
        out,
        "switchboard_shared_link_up",
        "gauge",
        "1 while shared channels are sequenced by Redis (0: this node serves them alone).",
        [(node.clone(), u64::from(c.fanout_gen.load(Relaxed) != 0))],
    );
    series(
        out,
        "switchboard_shared_sequenced_total",
        "counter",
        "Publications of shared channels Redis sequenced for this node.",
        [(node.clone(), c.sequenced.load(Relaxed))],
    );
    series(
        out,
        "switchboard_shared_pipelines_total",
        "counter",
        "Round trips that carried them (sequenced / pipelines: the batching under load).",
        [(node.clone(), c.pipelines.load(Relaxed))],
    );
    if let Some(f) = &c.fanout {
        let counters = [
            (
                "switchboard_shared_records_total",
                "Records of shared channels received from Redis and delivered here.",
                f.records.load(Relaxed),
            ),
            (
                "switchboard_shared_local_only_total",
                "Publications of shared channels sequenced on this node alone (Redis away).",
                f.local_only.load(Relaxed),
            ),
            (
                "switchboard_shared_relinks_total",
                "Times a gap or a new epoch had a shared channel read again from Redis.",
                f.relinks.load(Relaxed),
            ),
            (
                "switchboard_shared_refused_total",
                "Turns whose work for Redis was refused because the queue was full.",
                f.refused.load(Relaxed),
            ),
        ];
        for (name, help, v) in counters {
            series(out, name, "counter", help, [(node.clone(), v)]);
        }
    }
}
