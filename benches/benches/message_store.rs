//! The message store's history pages at depth: one channel holding 1,000,000 stored
//! publications (64-byte payloads, archived as a running server's writer leaves them),
//! pages of 100 read at random positions — newest first from the top, oldest first
//! after a random offset, newest first before one, and by a random time range — as
//! the history reader reads them (one SQLite transaction, no memory). Criterion reports
//! the mean; each case also prints its p50 and p99 over every read it timed
//! (hdrhistogram), the numbers `docs/BENCHMARKS.md` quotes.
//!
//! `cargo bench --bench message_store` (building the file takes about a minute; it is
//! kept in the system's temporary directory and removed at the end).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use switchboard_control_plane::store::{self, StoreConfig};
use switchboard_engine::journal::{Batch, Durability, Record};
use switchboard_protocol::history::Page;
use switchboard_protocol::{Format, Position};

/// Publications in the channel.
const DEPTH: u64 = 1_000_000;
/// Publications per commit while filling (each commit is stamped with its own time).
const PER_COMMIT: u64 = 10_000;
const EPOCH: u64 = 7;

/// A small deterministic generator (xorshift), so runs read the same positions.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Makes the page a timed read asks for.
type PageOf = Box<dyn Fn(&mut Rng) -> Page>;

fn pages(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("sb-bench-pages-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = StoreConfig {
        path: dir.join("bench.db"),
        ..StoreConfig::default()
    };
    let ns = [switchboard_benches::namespace_policy(
        "chat",
        Durability::Sync,
        64,
    )];
    let mut opened = store::open(&cfg, &ns, 3_600_000).expect("store opens");
    let channel: Arc<str> = Arc::from("chat:case-1");
    let data = bytes::Bytes::from(vec![b'x'; 64]);
    let started = Instant::now();
    // When each commit began (its publications are stamped at or just after it).
    let mut stamps = Vec::new();
    for commit in 0..DEPTH / PER_COMMIT {
        stamps.push(now_ms());
        let records = (1..=PER_COMMIT)
            .map(|i| Record {
                channel: channel.clone(),
                epoch: EPOCH,
                offset: commit * PER_COMMIT + i,
                format: Format::MsgPack,
                data: data.clone(),
                meta: None,
                key: None,
                from: None,
                author: None,
                event: None,
                revises: None,
                keep: 64,
            })
            .collect();
        let batch = Batch {
            shard: 0,
            seq: commit,
            notify: false,
            records,
            marks: Vec::new(),
            sessions: Vec::new(),
        };
        opened.write_now(std::slice::from_ref(&batch)).unwrap();
        opened.archive_now().unwrap();
        // Commits apart in time, so time ranges select runs of offsets.
        std::thread::sleep(Duration::from_millis(2));
    }
    eprintln!(
        "message_store: {DEPTH} publications in one channel written and archived in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let top = Position {
        epoch: EPOCH,
        offset: DEPTH,
    };
    let newest = Page {
        epoch: Some(EPOCH),
        reverse: true,
        ..Page::default()
    };
    let cases: [(&str, PageOf); 4] = [
        ("newest_first_from_the_top", Box::new(move |_| newest)),
        (
            "oldest_first_after_a_random_offset",
            Box::new(|r| Page {
                epoch: Some(EPOCH),
                after: r.below(DEPTH - 100),
                ..Page::default()
            }),
        ),
        (
            "newest_first_before_a_random_offset",
            Box::new(|r| Page {
                epoch: Some(EPOCH),
                before: Some(101 + r.below(DEPTH - 100)),
                reverse: true,
                ..Page::default()
            }),
        ),
        (
            "a_random_time_range",
            Box::new(move |r| {
                let from = stamps[r.below(stamps.len() as u64) as usize];
                Page {
                    epoch: Some(EPOCH),
                    from_ms: Some(from),
                    to_ms: Some(from + 1000),
                    ..Page::default()
                }
            }),
        ),
    ];
    let mut g = c.benchmark_group("history_page_at_1m");
    for (name, make) in &cases {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut latency = hdrhistogram::Histogram::<u64>::new(3).unwrap();
        g.bench_function(BenchmarkId::new(*name, 100), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let page = make(&mut rng);
                    let t = Instant::now();
                    let (entries, _) = opened.read_page(&channel, &page, top).unwrap();
                    let took = t.elapsed();
                    assert!(!entries.is_empty(), "{page:?}");
                    spent += took;
                    let _ = latency.record(took.as_nanos() as u64);
                }
                spent
            })
        });
        eprintln!(
            "history_page_at_1m/{name}: p50 {:.1} µs, p99 {:.1} µs over {} reads",
            latency.value_at_quantile(0.5) as f64 / 1e3,
            latency.value_at_quantile(0.99) as f64 / 1e3,
            latency.len()
        );
    }
    g.finish();
    drop(opened);
    let _ = std::fs::remove_dir_all(&dir);
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(Duration::from_secs(4));
    targets = pages
}
criterion_main!(benches);
