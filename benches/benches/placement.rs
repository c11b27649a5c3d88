//! Where a channel's messages go: the home lookup every publish, subscribe, presence
//! and inbox command makes (`engine/src/placement.rs`), against the plain hash it
//! replaced. Run: `cargo bench -p switchboard-benches --bench placement`.

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use switchboard_engine::placement::{Placement, DEFAULT_SLOTS};
use switchboard_engine::streams;

fn placement(c: &mut Criterion) {
    let mut g = c.benchmark_group("placement");
    let names: Vec<String> = (0..10_000).map(|i| format!("lt:echo:{i}")).collect();
    let table = Placement::new(2, DEFAULT_SLOTS);
    for (i, n) in names.iter().enumerate() {
        table.home(n, (i % 2) as u16);
    }
    let mut i = 0usize;
    g.bench_function("home_of_a_claimed_channel_among_10k", |b| {
        b.iter(|| {
            i = (i + 1) % names.len();
            black_box(table.home(black_box(&names[i]), 0))
        })
    });
    g.bench_function("hash_owner_among_10k_(before)", |b| {
        b.iter(|| {
            i = (i + 1) % names.len();
            black_box(streams::owner(black_box(&names[i]), 2))
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = placement
}
criterion_main!(benches);
