//! What the shards count, per shard: connections, frames and bytes, publications and
//! deliveries, closes by reason, rate-limit refusals, latency histograms, commands
//! and their results, connections by state, queue and inbox depths.
//!
//! Owns exposing `switchboard_engine::ShardMetrics` and the shards' census: one table
//! of plain per-shard counters (name, type, help, getter) and a few labelled families.
//! Does not own the counters (each shard writes its own block of atomics).

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use switchboard_engine::control::Census;
use switchboard_engine::metrics::{COMMANDS, RESULTS};
use switchboard_engine::{CloseKind, EngineHandle};

use super::text::{family, histogram, series, Family};

/// Expose the shards' metrics of `engine`, with `census` (one per shard, asked at
/// scrape time).
pub(super) fn expose(out: &mut String, engine: &EngineHandle, census: &[Census]) {
    let shards = engine.metrics();
    family(
        out,
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
    let per_shard: [Family; 29] = [
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
            "switchboard_socketio_sessions_total",
            "counter",
            "Engine.IO sessions opened by Socket.IO clients (WebSocket and polling).",
            |m| m.eio_sessions.load(Relaxed),
        ),
        (
            "switchboard_socketio_upgrades_total",
            "counter",
            "Engine.IO sessions moved from HTTP long-polling to WebSocket.",
            |m| m.eio_upgrades.load(Relaxed),
        ),
        (
            "switchboard_socketio_recovered_total",
            "counter",
            "Socket.IO sessions restored by connection state recovery (pid and offset).",
            |m| m.sio_recovered.load(Relaxed),
        ),
        (
            "switchboard_socketio_not_recovered_total",
            "counter",
            "Socket.IO reconnects naming a pid that could not be recovered exactly.",
            |m| m.sio_not_recovered.load(Relaxed),
        ),
        (
            "switchboard_socketio_forwarded_total",
            "counter",
            "Engine.IO requests sent over the shard mesh to the shard holding their session.",
            |m| m.eio_forwarded.load(Relaxed),
        ),
        (
            "switchboard_socketio_hook_calls_total",
            "counter",
            "Socket.IO backend hook calls made.",
            |m| m.hook_calls.load(Relaxed),
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
        (
            "switchboard_history_bytes",
            "gauge",
            "Bytes of retained publications kept in memory (all channels and inboxes; bounded by engine.history_memory_bytes).",
            |m| m.history_bytes.load(Relaxed),
        ),
        (
            "switchboard_history_evicted_total",
            "counter",
            "Retained publications evicted, oldest first, to stay within engine.history_memory_bytes.",
            |m| m.history_evicted.load(Relaxed),
        ),
        (
            "switchboard_history_freed_bytes_total",
            "counter",
            "Bytes of retained publications let go (expired, pushed out by history_size, evicted, forgotten with their stream).",
            |m| m.history_freed_bytes.load(Relaxed),
        ),
        (
            "switchboard_streams",
            "gauge",
            "Channels with a live stream position (epoch and offset) on the shard.",
            |m| m.streams.load(Relaxed),
        ),
        (
            "switchboard_streams_evicted_total",
            "counter",
            "Streams forgotten before their idle time to stay within engine.max_streams (their next publication starts a new epoch).",
            |m| m.streams_evicted.load(Relaxed),
        ),
    ];
    for (name, kind, help, get) in per_shard {
        family(out, name, kind, help);
        for (i, m) in shards.iter().enumerate() {
            let _ = writeln!(out, "{name}{{shard=\"{i}\"}} {}", get(m));
        }
    }
    family(
        out,
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
        out,
        "switchboard_rate_limited_total",
        "counter",
        "Commands refused by a rate limit (error 114), by the event whose bucket was empty.",
        limited,
    );
    family(
        out,
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
        out,
        "switchboard_publish_to_flush_seconds",
        "Time from a publication entering the server to the end of the shard's write pass that sent it.",
        shards,
        |m| (&m.latency_buckets, &m.latency_sum_us, &m.latency_count),
    );
    histogram(
        out,
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
        out,
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
        out,
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
        out,
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
        out,
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
        out,
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
        series(out, name, "gauge", help, rows);
    }
    let depths = engine.inbox_depths();
    series(
        out,
        "switchboard_shard_inbox_depth",
        "gauge",
        "Messages waiting in a shard's inbox (from other shards and the control plane).",
        depths
            .iter()
            .enumerate()
            .map(|(i, d)| (format!("shard=\"{i}\""), *d as u64)),
    );
}
