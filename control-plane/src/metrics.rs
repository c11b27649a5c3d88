//! Prometheus text exposition of the shards' counters.
//!
//! Owns rendering. The counters themselves live in each shard's cache-line-aligned
//! block of atomics (`switchboard_engine::ShardMetrics`), written by that shard alone;
//! the text format is simple enough that a metrics crate would only add a second copy
//! of every counter.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use switchboard_engine::metrics::{COMMANDS, LATENCY_BUCKETS_US, RESULTS};
use switchboard_engine::{CloseKind, EngineHandle, ShardMetrics};

use crate::auth::AuthStats;
use crate::store::StoreView;

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

/// A family and its samples, each `(labels, value)` (labels without braces).
fn series(
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

/// Render every metric.
pub fn render(
    engine: &EngineHandle,
    auth: &AuthStats,
    api: &ApiStats,
    store: Option<&StoreView>,
    alerts: &crate::alerts::AlertsView,
    census: &[switchboard_engine::control::Census],
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
    let limited = shards.iter().enumerate().flat_map(|(i, m)| {
        switchboard_engine::limits::LimitEvent::ALL.map(|e| {
            let n = m.rate_limited[e.index()].load(Relaxed);
            (format!("shard=\"{i}\",event=\"{}\"", e.name()), n)
        })
    });
    series(
        &mut out,
        "switchboard_rate_limited_total",
        "counter",
        "Commands refused by a rate limit (error 114), by the event whose bucket was empty.",
        limited,
    );
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
    histogram(
        &mut out,
        "switchboard_publish_to_flush_seconds",
        "Time from a publication entering the server to the end of the shard's write pass that sent it.",
        shards,
        |m| (&m.latency_buckets, &m.latency_sum_us, &m.latency_count),
    );
    histogram(
        &mut out,
        "switchboard_command_duration_seconds",
        "Time to handle a client command (decode, checks, reply queued), one command in 64 sampled.",
        shards,
        |m| {
            (
                &m.command_latency_buckets,
                &m.command_latency_sum_us,
                &m.command_latency_count,
            )
        },
    );
    series(
        &mut out,
        "switchboard_connections_authenticated",
        "gauge",
        "Connections that completed connect (the rest of switchboard_connections are anonymous: upgrading, awaiting or checking a token, closing).",
        shards
            .iter()
            .enumerate()
            .map(|(i, m)| (format!("shard=\"{i}\""), m.authenticated.load(Relaxed))),
    );
    let commands = shards.iter().enumerate().flat_map(|(i, m)| {
        COMMANDS.iter().enumerate().map(move |(c, name)| {
            let n = m.commands[c].load(Relaxed);
            (format!("shard=\"{i}\",command=\"{name}\""), n)
        })
    });
    series(
        &mut out,
        "switchboard_commands_total",
        "counter",
        "Client commands received, by command.",
        commands,
    );
    let results = shards.iter().enumerate().flat_map(|(i, m)| {
        m.command_results
            .iter()
            .zip(COMMANDS)
            .flat_map(move |(row, command)| {
                row.iter().zip(RESULTS).map(move |(n, result)| {
                    (
                        format!("shard=\"{i}\",command=\"{command}\",result=\"{result}\""),
                        n.load(Relaxed),
                    )
                })
            })
    });
    series(
        &mut out,
        "switchboard_command_results_total",
        "counter",
        "Replies to client commands, by command and result: ok, rejected (the request or the caller's rights), rate_limited (114), failed (the server could not: 100, 108, 111).",
        results,
    );
    let errors = shards.iter().enumerate().flat_map(|(i, m)| {
        m.command_errors.iter().enumerate().map(move |(c, n)| {
            (
                format!("shard=\"{i}\",code=\"{}\"", 100 + c),
                n.load(Relaxed),
            )
        })
    });
    series(
        &mut out,
        "switchboard_command_errors_total",
        "counter",
        "Error replies to client commands, by error code (docs/PROTOCOL.md).",
        errors,
    );
    let states = census.iter().enumerate().flat_map(|(i, c)| {
        [
            ("handshaking", c.handshaking),
            ("awaiting_connect", c.awaiting_connect),
            ("open", c.open),
            ("closing", c.closing),
        ]
        .map(|(state, n)| (format!("shard=\"{i}\",state=\"{state}\""), n))
    });
    series(
        &mut out,
        "switchboard_connections_by_state",
        "gauge",
        "Connections by state: handshaking, awaiting_connect (no connect yet, or its token being checked), open, closing.",
        states,
    );
    type Get = fn(&switchboard_engine::control::Census) -> u64;
    let queues: [(&str, &str, Get); 3] = [
        (
            "switchboard_outbound_queued_frames",
            "Frames waiting in the connections' outbound queues.",
            |c| c.queued_frames,
        ),
        (
            "switchboard_outbound_queued_bytes",
            "Bytes charged to the connections' outbound queues.",
            |c| c.queued_bytes,
        ),
        (
            "switchboard_outbound_max_queued_bytes",
            "The deepest outbound queue, bytes (near engine.max_outbound_bytes: a slow consumer about to be closed).",
            |c| c.max_queued_bytes,
        ),
    ];
    for (name, help, get) in queues {
        let rows = census
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("shard=\"{i}\""), get(c)));
        series(&mut out, name, "gauge", help, rows);
    }
    let depths = engine.inbox_depths();
    series(
        &mut out,
        "switchboard_shard_inbox_depth",
        "gauge",
        "Messages waiting in a shard's inbox (from other shards and the control plane).",
        depths
            .iter()
            .enumerate()
            .map(|(i, d)| (format!("shard=\"{i}\""), *d as u64)),
    );
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
    series(
        &mut out,
        "switchboard_breaker_open",
        "gauge",
        "1 while a circuit breaker is open (store: durable publications refused; webhooks: alert deliveries skipped).",
        store_open.into_iter().chain([hooks_open]),
    );
    series(
        &mut out,
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
    process(&mut out);
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

type Histogram<'a> = (
    &'a [std::sync::atomic::AtomicU64; 15],
    &'a std::sync::atomic::AtomicU64,
    &'a std::sync::atomic::AtomicU64,
);

/// A per-shard histogram over [`LATENCY_BUCKETS_US`] (microseconds, shown in seconds).
fn histogram(
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

/// The standard process metrics (from [`crate::process`]); what could not be read is
/// left out.
fn process(out: &mut String) {
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
