//! What a run measures, and how results of several worker processes merge.
//!
//! Owns the latency histograms (HDR, microseconds, 3 significant digits), the
//! per-second timeline, delivery accounting (sent per channel, subscribers per
//! channel, unique / duplicate / out-of-order deliveries per subscriber and publisher)
//! and the serialised form workers send to the coordinator (histograms as base64 HDR
//! V2). Does not own time or sockets.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Largest latency recorded, µs (60 s); larger values are clamped to it.
pub const MAX_LATENCY_US: u64 = 60_000_000;

/// A latency histogram in microseconds.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid bounds")
}

/// Record `us` (clamped into range).
#[inline]
pub fn record(h: &mut Histogram<u64>, us: u64) {
    let _ = h.record(us.clamp(1, MAX_LATENCY_US));
}

/// Serialise a histogram (HDR V2, base64).
pub fn encode_histogram(h: &Histogram<u64>) -> String {
    let mut buf = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut buf)
        .expect("serialising to memory");
    base64::engine::general_purpose::STANDARD.encode(buf)
}

/// Parse a histogram written by [`encode_histogram`].
pub fn decode_histogram(s: &str) -> anyhow::Result<Histogram<u64>> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(s)?;
    Ok(Deserializer::new().deserialize(&mut &bytes[..])?)
}

/// Delivery order of one publisher as seen by one subscriber.
#[derive(Debug, Default)]
struct SeqTrack {
    /// Next sequence number expected.
    next: u64,
    /// Sequence numbers skipped over and not yet seen (bounded).
    missing: BTreeSet<u64>,
}

/// Most gaps remembered per (subscriber, publisher) pair; beyond, gaps count as lost.
const MAX_MISSING: usize = 100_000;

/// Per-second figures.
#[derive(Debug)]
pub struct Second {
    /// Messages sent (by intended time) in this second.
    pub sent: u64,
    /// Deliveries received in this second.
    pub received: u64,
    /// Latency of those deliveries.
    pub latency: Histogram<u64>,
}

/// Delivery and failure counts: the same in a worker's recorder, its result and the
/// merge of all workers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// Messages sent per channel.
    pub sent: BTreeMap<String, u64>,
    /// Reading subscribers per channel.
    pub subscribers: BTreeMap<String, u64>,
    /// Deliveries received, including duplicates.
    pub received: u64,
    /// First deliveries of a message that arrived after a later one (late, not lost).
    pub out_of_order: u64,
    /// Deliveries of a message already delivered to the same subscriber.
    pub duplicates: u64,
    /// Publications whose stamp could not be parsed.
    pub foreign: u64,
    /// Failures by kind (connect refused, closed by server, …).
    #[serde(default)]
    pub errors: BTreeMap<String, u64>,
    /// A few messages per failure kind.
    #[serde(default)]
    pub error_samples: BTreeMap<String, Vec<String>>,
    /// Connections established.
    pub connected: u64,
    /// Publishes acknowledged by the server.
    #[serde(default)]
    pub acked: u64,
}

impl Counts {
    /// First deliveries (each message at each subscriber once).
    pub fn unique(&self) -> u64 {
        self.received - self.duplicates
    }

    /// Deliveries expected: every message sent to a channel, once per reader of it.
    pub fn expected(&self) -> u64 {
        self.sent
            .iter()
            .map(|(c, n)| n * self.subscribers.get(c).copied().unwrap_or(0))
            .sum()
    }

    /// Expected deliveries that never arrived.
    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.unique())
    }

    /// Add another worker's counts.
    pub fn add(&mut self, other: &Counts) {
        for (c, n) in &other.sent {
            *self.sent.entry(c.clone()).or_default() += n;
        }
        for (c, n) in &other.subscribers {
            *self.subscribers.entry(c.clone()).or_default() += n;
        }
        for (k, n) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += n;
        }
        for (k, msgs) in &other.error_samples {
            for msg in msgs {
                self.sample(k, msg);
            }
        }
        self.received += other.received;
        self.out_of_order += other.out_of_order;
        self.duplicates += other.duplicates;
        self.foreign += other.foreign;
        self.connected += other.connected;
        self.acked += other.acked;
    }

    fn sample(&mut self, kind: &str, message: &str) {
        let samples = self.error_samples.entry(kind.to_string()).or_default();
        if samples.len() < 3 && !samples.iter().any(|m| m == message) {
            samples.push(message.to_string());
        }
    }
}

/// One worker's measurements.
#[derive(Debug)]
pub struct Recorder {
    /// CLOCK_MONOTONIC start of the measured run (`start` signal).
    pub t0_ns: u64,
    /// End-to-end latency of every delivery, µs, from the intended send time.
    pub latency: Histogram<u64>,
    /// The same from the actual send time: the server's (and network's) share.
    pub service: Histogram<u64>,
    /// Time to connect, upgrade and authenticate, µs.
    pub connect: Histogram<u64>,
    /// Time from sending a publish to its acknowledgment (reply), µs.
    pub ack: Histogram<u64>,
    /// Publishes sent and not yet acknowledged: (publisher, request id) → send time.
    unacked: HashMap<(u32, u32), u64>,
    /// Per-second timeline (index = whole seconds since `t0_ns`).
    pub seconds: Vec<Second>,
    /// Delivery and failure counts.
    pub counts: Counts,
    /// Sequence tracking per (subscriber, publisher).
    tracks: HashMap<(u32, u32), SeqTrack>,
}

impl Recorder {
    /// An empty recorder; `t0_ns` is set when the run starts.
    pub fn new() -> Self {
        Recorder {
            t0_ns: 0,
            latency: histogram(),
            service: histogram(),
            connect: histogram(),
            ack: histogram(),
            unacked: HashMap::new(),
            seconds: Vec::new(),
            counts: Counts::default(),
            tracks: HashMap::new(),
        }
    }

    fn second(&mut self, at_ns: u64) -> &mut Second {
        let i = (at_ns.saturating_sub(self.t0_ns) / 1_000_000_000) as usize;
        while self.seconds.len() <= i {
            self.seconds.push(Second {
                sent: 0,
                received: 0,
                latency: histogram(),
            });
        }
        &mut self.seconds[i]
    }

    /// Count a failure.
    pub fn error(&mut self, kind: &str) {
        *self.counts.errors.entry(kind.to_string()).or_default() += 1;
    }

    /// Count a failure and keep its message if it is among the first few of its kind.
    pub fn error_with(&mut self, kind: &str, message: &str) {
        self.error(kind);
        self.counts.sample(kind, message);
    }

    /// A message was sent to `channel`, intended at `intended_ns`.
    pub fn sent(&mut self, channel: &str, intended_ns: u64) {
        match self.counts.sent.get_mut(channel) {
            Some(n) => *n += 1,
            None => {
                self.counts.sent.insert(channel.to_string(), 1);
            }
        }
        self.second(intended_ns).sent += 1;
    }

    /// Publisher `publisher` sent its publish `id` at `now_ns`.
    pub fn publish_sent(&mut self, publisher: u32, id: u32, now_ns: u64) {
        self.unacked.insert((publisher, id), now_ns);
    }

    /// Publisher `publisher` got the reply to its command `id` at `now_ns` (replies to
    /// other commands are ignored).
    pub fn replied(&mut self, publisher: u32, id: u32, now_ns: u64) {
        if let Some(sent) = self.unacked.remove(&(publisher, id)) {
            self.counts.acked += 1;
            record(&mut self.ack, now_ns.saturating_sub(sent) / 1_000);
        }
    }

    /// Subscriber `subscriber` received a message from `publisher` with sequence `seq`,
    /// intended at `intended_ns` and sent at `actual_ns`, at `now_ns`.
    pub fn delivered(
        &mut self,
        subscriber: u32,
        publisher: u32,
        seq: u64,
        intended_ns: u64,
        actual_ns: u64,
        now_ns: u64,
    ) {
        self.counts.received += 1;
        let track = self.tracks.entry((subscriber, publisher)).or_default();
        if seq == track.next {
            track.next += 1;
        } else if seq > track.next {
            if track.missing.len() < MAX_MISSING {
                track
                    .missing
                    .extend(track.next..seq.min(track.next + MAX_MISSING as u64));
            }
            track.next = seq + 1;
        } else if track.missing.remove(&seq) {
            self.counts.out_of_order += 1;
        } else {
            self.counts.duplicates += 1;
            return;
        }
        let us = now_ns.saturating_sub(intended_ns) / 1_000;
        record(&mut self.latency, us);
        record(&mut self.service, now_ns.saturating_sub(actual_ns) / 1_000);
        let second = self.second(now_ns);
        second.received += 1;
        record(&mut second.latency, us);
    }

    /// Freeze into the serialisable form.
    pub fn finish(&self, cpu_s: f64, wall_s: f64) -> WorkerResult {
        WorkerResult {
            latency: encode_histogram(&self.latency),
            service: encode_histogram(&self.service),
            connect: encode_histogram(&self.connect),
            ack: encode_histogram(&self.ack),
            seconds: self
                .seconds
                .iter()
                .map(|s| SecondOut {
                    sent: s.sent,
                    received: s.received,
                    latency: encode_histogram(&s.latency),
                })
                .collect(),
            counts: self.counts.clone(),
            cpu_s,
            wall_s,
            extra: BTreeMap::new(),
        }
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

/// One second of a worker's timeline, serialised.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecondOut {
    /// Messages sent.
    pub sent: u64,
    /// Deliveries received.
    pub received: u64,
    /// Latency histogram (base64 HDR V2).
    pub latency: String,
}

/// What a worker process reports to the coordinator (one JSON line).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerResult {
    /// Latency histogram (base64 HDR V2).
    pub latency: String,
    /// Service latency histogram, from the actual send time (base64 HDR V2).
    #[serde(default)]
    pub service: String,
    /// Connect latency histogram (base64 HDR V2).
    pub connect: String,
    /// Publish acknowledgment latency histogram (base64 HDR V2).
    #[serde(default)]
    pub ack: String,
    /// Per-second timeline.
    pub seconds: Vec<SecondOut>,
    /// Delivery and failure counts.
    #[serde(flatten)]
    pub counts: Counts,
    /// CPU seconds the worker used during the run.
    pub cpu_s: f64,
    /// Wall seconds of the run.
    pub wall_s: f64,
    /// Scenario-specific figures (connect-storm steps).
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// Several workers' results added up.
#[derive(Debug)]
pub struct Merged {
    /// All deliveries' latency.
    pub latency: Histogram<u64>,
    /// All deliveries' service latency.
    pub service: Histogram<u64>,
    /// All connects' latency.
    pub connect: Histogram<u64>,
    /// All publish acknowledgments' latency.
    pub ack: Histogram<u64>,
    /// Per-second: sent, received, latency.
    pub seconds: Vec<(u64, u64, Histogram<u64>)>,
    /// Delivery and failure counts of all workers.
    pub counts: Counts,
    /// Harness CPU seconds (all workers).
    pub cpu_s: f64,
}

/// Add up workers' results.
pub fn merge(results: &[WorkerResult]) -> anyhow::Result<Merged> {
    let mut m = Merged {
        latency: histogram(),
        service: histogram(),
        connect: histogram(),
        ack: histogram(),
        seconds: Vec::new(),
        counts: Counts::default(),
        cpu_s: 0.0,
    };
    for r in results {
        m.latency.add(decode_histogram(&r.latency)?)?;
        if !r.service.is_empty() {
            m.service.add(decode_histogram(&r.service)?)?;
        }
        m.connect.add(decode_histogram(&r.connect)?)?;
        if !r.ack.is_empty() {
            m.ack.add(decode_histogram(&r.ack)?)?;
        }
        for (i, s) in r.seconds.iter().enumerate() {
            while m.seconds.len() <= i {
                m.seconds.push((0, 0, histogram()));
            }
            m.seconds[i].0 += s.sent;
            m.seconds[i].1 += s.received;
            m.seconds[i].2.add(decode_histogram(&s.latency)?)?;
        }
        m.counts.add(&r.counts);
        m.cpu_s += r.cpu_s;
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_duplicates_and_reordering() {
        let mut r = Recorder::new();
        r.counts.subscribers.insert("c".into(), 1);
        for seq in [0u64, 1, 3, 2, 2, 5] {
            r.delivered(9, 1, seq, 0, 0, 1_000_000);
        }
        for _ in 0..6 {
            r.sent("c", 0);
        }
        assert_eq!(r.counts.received, 6);
        assert_eq!(r.counts.duplicates, 1, "seq 2 twice");
        assert_eq!(r.counts.out_of_order, 1, "seq 2 after 3");
        assert_eq!(r.counts.unique(), 5);
        let m = merge(&[r.finish(0.0, 1.0)]).unwrap();
        assert_eq!(m.counts.expected(), 6);
        assert_eq!(m.counts.lost(), 1, "seq 4 never came");
        assert_eq!(m.latency.len(), 5);
        assert_eq!(m.latency.value_at_quantile(0.5), 1000);
    }

    #[test]
    fn acknowledgments_are_timed_from_their_publish() {
        let mut r = Recorder::new();
        r.publish_sent(1, 10, 1_000_000);
        r.publish_sent(1, 11, 2_000_000);
        r.publish_sent(2, 10, 2_000_000);
        r.replied(1, 11, 5_000_000);
        r.replied(2, 10, 2_500_000);
        r.replied(1, 99, 9_000_000); // not a publish: ignored
        let m = merge(&[r.finish(0.0, 1.0)]).unwrap();
        assert_eq!(m.counts.acked, 2);
        assert_eq!(m.ack.len(), 2);
        assert_eq!(m.ack.max(), m.ack.highest_equivalent(3_000));
    }

    #[test]
    fn merge_adds_histograms_and_timelines() {
        let mut a = Recorder::new();
        let mut b = Recorder::new();
        a.counts.subscribers.insert("c".into(), 2);
        b.counts.subscribers.insert("c".into(), 1);
        for i in 0..100u64 {
            a.delivered(1, 0, i, 0, 0, (i + 1) * 1_000_000); // 1..100 ms, spread over the first 0.1 s
            b.delivered(2, 0, i, 0, 0, 2_000_000_000 + i * 1_000); // ~2 s
            a.sent("c", 0);
        }
        let m = merge(&[a.finish(1.0, 3.0), b.finish(0.5, 3.0)]).unwrap();
        assert_eq!(m.latency.len(), 200);
        assert_eq!(m.seconds.len(), 3);
        assert_eq!(m.seconds[0].1, 100);
        assert_eq!(m.seconds[2].1, 100);
        assert_eq!(m.seconds[0].0, 100);
        assert_eq!(m.counts.expected(), 300);
        assert_eq!(m.counts.lost(), 100);
        assert!((m.cpu_s - 1.5).abs() < 1e-9);
        // p50 across both: the slowest of b (~2 s) sorts above all of a.
        assert!(m.latency.value_at_quantile(0.99) > 1_000_000);
        let text = encode_histogram(&m.latency);
        assert_eq!(decode_histogram(&text).unwrap().len(), 200);
    }
}
