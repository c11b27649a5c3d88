//! The AI tap on the shard's publish path: what a namespace with a fail-open pipeline
//! adds to sequencing and delivering a publication (the copy handed to the pipeline's
//! queue), and what it costs when that queue is full (the drop path a slow model puts
//! every publication on). A room of 10 subscribers, 64-byte payloads.
//!
//! `cargo bench -p switchboard-benches --bench ai_tap`

use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use switchboard_benches::{drain, fanout_core_on, namespace_policy};
use switchboard_engine::ai_tap::{AiMode, AiTap, TapSpec};
use switchboard_engine::journal::Durability;
use switchboard_engine::{EngineConfig, Mesh, Now, ShardCore};
use switchboard_protocol::{Format, Payload};

const CHANNEL: &str = "intake:room-1";

/// A one-shard core with 10 subscribers of [`CHANNEL`], and its tap (if any).
fn core(tap: Option<AiTap>) -> ShardCore {
    let cfg = EngineConfig {
        shards: 1,
        max_outbound_bytes: 64 * 1024 * 1024,
        namespaces: vec![namespace_policy("intake", Durability::None, 64)],
        rate_limits: Vec::new(),
        ..EngineConfig::default()
    };
    let mesh = Mesh::new(1, 1024).expect("eventfd");
    if let Some(tap) = tap {
        mesh.attach_ai(tap).expect("first tap");
    }
    let ((core, _control), _) =
        fanout_core_on(mesh, cfg, 10, CHANNEL, Durability::None, Format::MsgPack);
    core
}

fn spec(queue: usize) -> TapSpec {
    TapSpec {
        namespace: "intake".into(),
        mode: AiMode::Open,
        bot: "assistant".into(),
        workers: 1,
        queue,
    }
}

fn tap(c: &mut Criterion) {
    let mut g = c.benchmark_group("ai_tap");
    g.throughput(Throughput::Elements(1));
    let data = rmp_serde::to_vec(&"I need a visa for my wife, can you help me?").unwrap();
    let publish = |core: &mut ShardCore| {
        core.publish(
            CHANNEL,
            Payload {
                format: Format::MsgPack,
                raw: black_box(&data),
            },
            Now::read(),
        )
        .unwrap()
    };
    // Each case: publish (timed), then empty the subscribers' queues and the tap's
    // queue as a flush and the pipeline would (untimed), every 64 publications.
    let mut run =
        |name: &str, core: &mut ShardCore, rx: Option<&crossbeam_channel::Receiver<_>>| {
            g.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for i in 0..iters {
                        let start = Instant::now();
                        publish(core);
                        total += start.elapsed();
                        if i % 64 == 63 {
                            drain(core);
                            if let Some(rx) = rx {
                                while rx.try_recv().is_ok() {}
                            }
                            let _ = core.take_latency_samples();
                        }
                    }
                    drain(core);
                    total
                })
            });
        };
    let mut plain = core(None);
    run("publish_to_10_without_a_pipeline", &mut plain, None);
    let (open, mut queues) = AiTap::new(&[spec(1024)]);
    let rx = queues.remove(0).receivers.remove(0);
    let mut tapped = core(Some(open));
    run("publish_to_10_with_a_pipeline", &mut tapped, Some(&rx));
    let (full, mut queues) = AiTap::new(&[spec(1)]);
    let full_rx = queues.remove(0).receivers.remove(0);
    let mut dropping = core(Some(full));
    publish(&mut dropping);
    assert_eq!(full_rx.len(), 1, "the queue is full from here on");
    run(
        "publish_to_10_with_a_full_pipeline_queue",
        &mut dropping,
        None,
    );
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = tap
}
criterion_main!(benches);
