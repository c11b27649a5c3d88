//! What the AI pipelines count, in the exposition format: per model endpoint (calls,
//! latency histogram, errors by kind, tokens in and out, breaker state) and per
//! pipeline (queue depth, messages processed, dropped by a full queue, annotations,
//! replies, fallbacks, held, released, rejected).
//!
//! Owns exposing those counters. Does not own them (`crate::ai::stats`, the tap's).

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use super::text::{family, series};
use crate::ai::breaker::State;
use crate::ai::pipeline::AiView;
use crate::ai::stats::{ERROR_KINDS, LATENCY_BUCKETS_MS};
use crate::clock::now_ms;

/// Every AI metric (nothing when no pipeline and no model is configured).
pub(super) fn expose(out: &mut String, ai: &AiView) {
    if ai.models.is_empty() && ai.pipelines.is_empty() {
        return;
    }
    let label = |name: &str| format!("model=\"{name}\"");
    let now = now_ms();
    series(
        out,
        "switchboard_ai_model_calls_total",
        "counter",
        "Calls made to each model endpoint (not those its open breaker refused).",
        ai.models
            .iter()
            .map(|(n, m)| (label(n), m.stats.calls.load(Relaxed))),
    );
    series(
        out,
        "switchboard_ai_model_errors_total",
        "counter",
        "Failed model calls by kind (breaker_open: refused without a call).",
        ai.models.iter().flat_map(|(n, m)| {
            ERROR_KINDS.iter().enumerate().map(move |(i, k)| {
                (
                    format!("model=\"{n}\",kind=\"{k}\""),
                    m.stats.errors[i].load(Relaxed),
                )
            })
        }),
    );
    series(
        out,
        "switchboard_ai_model_tokens_total",
        "counter",
        "Tokens each endpoint reported, by direction (in: prompts, out: answers).",
        ai.models.iter().flat_map(|(n, m)| {
            [
                (
                    format!("model=\"{n}\",direction=\"in\""),
                    m.stats.tokens_in.load(Relaxed),
                ),
                (
                    format!("model=\"{n}\",direction=\"out\""),
                    m.stats.tokens_out.load(Relaxed),
                ),
            ]
        }),
    );
    series(
        out,
        "switchboard_ai_model_breaker_state",
        "gauge",
        "Each endpoint's breaker: 0 closed, 1 open, 2 half-open (the next call probes).",
        ai.models.iter().map(|(n, m)| {
            let v = match m.breaker.state(now) {
                State::Closed => 0,
                State::Open => 1,
                State::HalfOpen => 2,
            };
            (label(n), v)
        }),
    );
    let name = "switchboard_ai_model_call_seconds";
    family(
        out,
        name,
        "histogram",
        "Model call latency, whole calls (a streamed call ends with its last token).",
    );
    for (n, m) in &ai.models {
        let mut cumulative = 0;
        for (i, upper) in LATENCY_BUCKETS_MS.iter().enumerate() {
            cumulative += m.stats.latency_buckets[i].load(Relaxed);
            let le = *upper as f64 / 1000.0;
            let _ = writeln!(
                out,
                "{name}_bucket{{model=\"{n}\",le=\"{le}\"}} {cumulative}"
            );
        }
        cumulative += m.stats.latency_buckets[LATENCY_BUCKETS_MS.len()].load(Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{model=\"{n}\",le=\"+Inf\"}} {cumulative}"
        );
        let sum = m.stats.latency_sum_us.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{model=\"{n}\"}} {sum}");
        let _ = writeln!(out, "{name}_count{{model=\"{n}\"}} {cumulative}");
    }
    let depths = ai.tap.as_ref().map(|t| t.depths()).unwrap_or_default();
    series(
        out,
        "switchboard_ai_queue_depth",
        "gauge",
        "Messages waiting in each pipeline's queues.",
        depths
            .iter()
            .map(|(ns, d)| (format!("namespace=\"{ns}\""), *d as u64)),
    );
    series(
        out,
        "switchboard_ai_held",
        "gauge",
        "Fail-closed messages held for moderation now.",
        ai.pipelines.iter().map(|p| {
            (
                format!("namespace=\"{}\"", p.namespace),
                p.held.len() as u64,
            )
        }),
    );
    if let Some(tap) = &ai.tap {
        let st = tap.stats();
        series(
            out,
            "switchboard_ai_tap_total",
            "counter",
            "Messages the shards handed to pipelines (queued), and those a full queue turned away (dropped: delivered without AI; refused: fail-closed publisher refused).",
            [
                ("result=\"queued\"".to_string(), st.queued.load(Relaxed)),
                ("result=\"dropped\"".to_string(), st.dropped.load(Relaxed)),
                ("result=\"refused\"".to_string(), st.refused.load(Relaxed)),
            ],
        );
    }
    if let Some(e) = &ai.escalator {
        let b = &e.book;
        series(
            out,
            "switchboard_ai_escalations_total",
            "counter",
            "Escalations fired, and their webhook attempts by outcome (failed attempts are retried; dead: every attempt failed).",
            [
                ("outcome=\"fired\"".to_string(), b.fired.load(Relaxed)),
                ("outcome=\"delivered\"".to_string(), b.delivered.load(Relaxed)),
                ("outcome=\"attempt_failed\"".to_string(), b.webhook_failures.load(Relaxed)),
                ("outcome=\"dead\"".to_string(), b.dead.load(Relaxed)),
            ],
        );
    }
    series(
        out,
        "switchboard_ai_pipeline_total",
        "counter",
        "What each pipeline did, by outcome.",
        ai.pipelines.iter().flat_map(|p| {
            let s = &p.stats;
            [
                ("processed", &s.processed),
                ("annotated", &s.annotations),
                ("replied", &s.replies),
                ("fallback", &s.fallbacks),
                ("held", &s.held),
                ("released", &s.released),
                ("rejected", &s.rejected),
                ("publish_failed", &s.publish_failures),
            ]
            .map(|(outcome, c)| {
                (
                    format!("namespace=\"{}\",outcome=\"{outcome}\"", p.namespace),
                    c.load(Relaxed),
                )
            })
        }),
    );
}
