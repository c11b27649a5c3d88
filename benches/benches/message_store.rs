//! The message store at depth, SQLite against PostgreSQL on the same machine: one channel
//! holding 1,000,000 stored publications (64-byte payloads), then
//! - `history_page_at_1m/<store>/<case>`: pages of 100 read as the history reader reads
//!   them (one transaction, nothing from memory) at random positions — newest first from
//!   the top, oldest first after a random offset, newest first before one, a random time
//!   range. Criterion reports the mean; each case also prints its p50 and p99 over every
//!   read it timed (hdrhistogram), the numbers `docs/BENCHMARKS.md` quotes.
//! - `group_commit/<store>/1024`: one group commit of 1,024 publications over 16
//!   channels (what the writer does for a burst of `sync` publishes): publications/s.
//!
//! `cargo bench -p switchboard-benches --bench message_store` (filling each store takes
//! a minute or so). SQLite is a file in the system's temporary directory; PostgreSQL a
//! throwaway server (`store::postgres::TempServer`: the Debian package's binaries, a fresh
//! cluster, default settings, fsync on). Both are removed at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use switchboard_control_plane::store::postgres::{self as pgstore, PgStore, TempServer};
use switchboard_control_plane::store::{self, StoreConfig};
use switchboard_engine::journal::{Batch, Durability, Record};
use switchboard_engine::streams::Entry;
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

/// A store under test: write a batch (stamped now), read a page.
trait Store {
    fn write(&mut self, batch: &Batch);
    fn page(&mut self, page: &Page, top: Position) -> Vec<Entry>;
}

struct Sqlite(store::Opened);

impl Store for Sqlite {
    fn write(&mut self, batch: &Batch) {
        self.0.write_now(std::slice::from_ref(batch)).unwrap();
        self.0.archive_now().unwrap();
    }
    fn page(&mut self, page: &Page, top: Position) -> Vec<Entry> {
        self.0.read_page("chat:case-1", page, top).unwrap().0
    }
}

struct Postgres(PgStore);

impl Store for Postgres {
    fn write(&mut self, batch: &Batch) {
        let now = now_ms() as i64;
        pgstore::journal::write(&mut self.0.client, "", std::slice::from_ref(batch), now).unwrap();
    }
    fn page(&mut self, page: &Page, top: Position) -> Vec<Entry> {
        pgstore::pages::read(&mut self.0, "chat:case-1", page, top, &[])
            .unwrap()
            .unwrap()
            .entries
    }
}

fn batch(seq: u64, records: impl Iterator<Item = (Arc<str>, u64)>, data: &bytes::Bytes) -> Batch {
    Batch {
        shard: 0,
        seq,
        notify: true,
        records: records
            .map(|(channel, offset)| Record {
                channel,
                epoch: EPOCH,
                offset,
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
            .collect(),
        marks: Vec::new(),
        sessions: Vec::new(),
    }
}

/// Fill `s` with `DEPTH` publications of one channel; when each commit began.
fn fill(name: &str, s: &mut dyn Store) -> Vec<u64> {
    let channel: Arc<str> = Arc::from("chat:case-1");
    let data = bytes::Bytes::from(vec![b'x'; 64]);
    let started = Instant::now();
    let mut stamps = Vec::new();
    for commit in 0..DEPTH / PER_COMMIT {
        stamps.push(now_ms());
        let offsets = (1..=PER_COMMIT).map(|i| (channel.clone(), commit * PER_COMMIT + i));
        s.write(&batch(commit, offsets, &data));
        // Commits apart in time, so time ranges select runs of offsets.
        std::thread::sleep(Duration::from_millis(2));
    }
    eprintln!(
        "message_store/{name}: {DEPTH} publications in one channel written in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    stamps
}

fn cases(stamps: Vec<u64>) -> [(&'static str, PageOf); 4] {
    let newest = Page {
        epoch: Some(EPOCH),
        reverse: true,
        ..Page::default()
    };
    [
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
    ]
}

fn measure(c: &mut Criterion, name: &str, s: &mut dyn Store) {
    let stamps = fill(name, s);
    let top = Position {
        epoch: EPOCH,
        offset: DEPTH,
    };
    let mut g = c.benchmark_group("history_page_at_1m");
    for (case, make) in &cases(stamps) {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut latency = hdrhistogram::Histogram::<u64>::new(3).unwrap();
        g.bench_function(BenchmarkId::new(format!("{name}/{case}"), 100), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let page = make(&mut rng);
                    let t = Instant::now();
                    let entries = s.page(&page, top);
                    let took = t.elapsed();
                    assert!(!entries.is_empty(), "{page:?}");
                    spent += took;
                    let _ = latency.record(took.as_nanos() as u64);
                }
                spent
            })
        });
        eprintln!(
            "history_page_at_1m/{name}/{case}: p50 {:.1} µs, p99 {:.1} µs over {} reads",
            latency.value_at_quantile(0.5) as f64 / 1e3,
            latency.value_at_quantile(0.99) as f64 / 1e3,
            latency.len()
        );
    }
    g.finish();
    // Group commits of 1,024 over 16 other channels, as a burst of `sync` publishes.
    let channels: Vec<Arc<str>> = (0..16).map(|i| Arc::from(format!("chat:w-{i}"))).collect();
    let data = bytes::Bytes::from(vec![b'x'; 64]);
    let mut next = 0u64;
    let mut g = c.benchmark_group("group_commit");
    g.throughput(Throughput::Elements(1024));
    g.bench_function(BenchmarkId::new(name, 1024), |b| {
        b.iter(|| {
            let first = next;
            next += 1024;
            let offsets = (0..1024u64).map(|i| (channels[i as usize % 16].clone(), first + i + 1));
            s.write(&batch(first, offsets, &data));
        })
    });
    g.finish();
}

fn stores(c: &mut Criterion) {
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
    let mut sqlite = Sqlite(store::open(&cfg, &ns, 3_600_000, "").expect("store opens"));
    measure(c, "sqlite", &mut sqlite);
    drop(sqlite);
    let _ = std::fs::remove_dir_all(&dir);

    let server = TempServer::start().expect("a PostgreSQL server");
    let url = server.database("bench").expect("a database");
    let mut pg = PgStore::connect(&url, Duration::from_secs(5)).expect("connects");
    pgstore::migrate(&mut pg).expect("migrates");
    let mut pg = Postgres(pg);
    measure(c, "postgres", &mut pg);
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
    targets = stores
}
criterion_main!(benches);
