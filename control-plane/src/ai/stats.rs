//! What the AI pipelines count: per model endpoint (calls, latency, errors by kind,
//! tokens) and per pipeline (messages processed, annotations, replies, fallbacks,
//! held and released messages).
//!
//! Owns the counters (atomics, written by the workers, read by `/metrics` and the
//! admin API). Does not own their exposition (`crate::metrics`).

use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the call-latency buckets, in milliseconds (the last is +Inf).
pub const LATENCY_BUCKETS_MS: [u64; 10] =
    [25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000];

/// Error kinds of a call, as `CallError::kind` names them, plus `breaker_open`.
pub const ERROR_KINDS: [&str; 7] = [
    "rate_limited",
    "server",
    "refused",
    "bad_answer",
    "timeout",
    "unreachable",
    "breaker_open",
];

/// One endpoint's counters.
#[derive(Debug, Default)]
pub struct ModelStats {
    /// Calls made (not those refused by the breaker).
    pub calls: AtomicU64,
    /// Call latency: counts per bucket of [`LATENCY_BUCKETS_MS`], then +Inf.
    pub latency_buckets: [AtomicU64; 11],
    /// Sum of call latencies, in microseconds.
    pub latency_sum_us: AtomicU64,
    /// Errors per kind of [`ERROR_KINDS`].
    pub errors: [AtomicU64; 7],
    /// Prompt tokens the endpoint counted.
    pub tokens_in: AtomicU64,
    /// Completion tokens the endpoint counted.
    pub tokens_out: AtomicU64,
}

impl ModelStats {
    /// A call that took `us` microseconds.
    pub fn called(&self, us: u64) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(us, Ordering::Relaxed);
        let ms = us / 1_000;
        let i = LATENCY_BUCKETS_MS
            .iter()
            .position(|&b| ms <= b)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    /// An error of `kind` (one of [`ERROR_KINDS`]).
    pub fn error(&self, kind: &str) {
        if let Some(i) = ERROR_KINDS.iter().position(|k| *k == kind) {
            self.errors[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Tokens the endpoint said a call used.
    pub fn tokens(&self, tokens_in: u64, tokens_out: u64) {
        self.tokens_in.fetch_add(tokens_in, Ordering::Relaxed);
        self.tokens_out.fetch_add(tokens_out, Ordering::Relaxed);
    }
}

/// One pipeline's counters.
#[derive(Debug, Default)]
pub struct PipelineStats {
    /// Messages the pipeline ran on.
    pub processed: AtomicU64,
    /// Annotations published.
    pub annotations: AtomicU64,
    /// Bot replies published from the model.
    pub replies: AtomicU64,
    /// Local fallbacks: replies and intents when the model could not answer.
    pub fallbacks: AtomicU64,
    /// Fail-closed messages held for moderation (ever).
    pub held: AtomicU64,
    /// Held messages released (by the pipeline or an operator).
    pub released: AtomicU64,
    /// Held messages rejected by an operator, or refused because too many were held.
    pub rejected: AtomicU64,
    /// Results that could not be published (the engine refused them).
    pub publish_failures: AtomicU64,
}

impl PipelineStats {
    /// Add one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_land_in_their_buckets_and_errors_by_kind() {
        let s = ModelStats::default();
        s.called(10_000);
        s.called(30_000);
        s.called(60_000_000);
        assert_eq!(s.latency_buckets[0].load(Ordering::Relaxed), 1);
        assert_eq!(s.latency_buckets[1].load(Ordering::Relaxed), 1);
        assert_eq!(s.latency_buckets[10].load(Ordering::Relaxed), 1);
        s.error("timeout");
        s.error("no such kind");
        assert_eq!(s.errors[4].load(Ordering::Relaxed), 1);
        assert_eq!(
            s.errors
                .iter()
                .map(|e| e.load(Ordering::Relaxed))
                .sum::<u64>(),
            1
        );
    }
}
