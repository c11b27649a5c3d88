//! Hot paths of channels shared by nodes through Redis (docs/SCALING.md): the owner
//! shard delivering a record that came from Redis to 10,000 local subscribers (encode
//! once, refcount bumps), handing publications to the cluster thread (one batch per
//! turn), and the record codec the cluster thread runs per publication.
//!
//! Run: `cargo bench -p switchboard-benches --bench cluster`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use switchboard_benches::{drain, fanout_core_on};
use switchboard_control_plane::cluster::streams;
use switchboard_engine::cluster::{ClusterLink, ClusterMsg, RemoteRecord, SharedPublish};
use switchboard_engine::journal::Durability;
use switchboard_engine::{EngineConfig, Mesh, Now, PublishReply, ShardMsg};
use switchboard_protocol::{Format, Payload, Position};

const EPOCH: u64 = 0x00c0_ffee;

fn config() -> EngineConfig {
    EngineConfig {
        shards: 1,
        max_outbound_bytes: 64 * 1024 * 1024,
        namespaces: vec![switchboard_benches::namespace_policy(
            "room",
            Durability::None,
            64,
        )],
        rate_limits: Vec::new(),
        ..EngineConfig::default()
    }
}

fn record(offset: u64, data: &Bytes) -> RemoteRecord {
    RemoteRecord {
        position: Position {
            epoch: EPOCH,
            offset,
        },
        sent_ms: 0,
        format: Format::MsgPack,
        data: data.clone(),
        meta: None,
        from: None,
        event: None,
        author: Some(Arc::from("ann")),
        revises: None,
    }
}

fn shared(c: &mut Criterion) {
    let mut g = c.benchmark_group("shared");
    let subscribers = 10_000;
    let mesh = Mesh::new(1, 1024).expect("eventfd");
    let (link, mut batches) = ClusterLink::new(1 << 20);
    mesh.attach_cluster(link).expect("first link");
    let ((mut core, _control), _) = fanout_core_on(
        mesh,
        config(),
        subscribers,
        "room:big",
        Durability::None,
        Format::MsgPack,
    );
    // Redis is up and the channel's stream was read: it is live.
    let now = Now::read();
    core.on_message(ShardMsg::Cluster(Box::new(ClusterMsg::Up { gen: 1 })), now);
    let linked = ClusterMsg::Linked {
        channel: "room:big".into(),
        gen: 1,
        subscribed: true,
        top: Some(Position {
            epoch: EPOCH,
            offset: 0,
        }),
        records: Vec::new(),
        marks: Vec::new(),
    };
    core.on_message(ShardMsg::Cluster(Box::new(linked)), now);
    core.end_turn();
    while batches.try_recv().is_ok() {}
    drain(&mut core);
    // 64 bytes of MessagePack: a bin8 of 62 bytes.
    let mut raw = vec![0xc4u8, 62];
    raw.resize(64, 0x5a);
    let data = Bytes::from(raw);
    let mut offset = 0u64;
    g.throughput(Throughput::Elements(subscribers as u64));
    g.bench_function("deliver_record_to_10k_local_subscribers", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for i in 0..iters {
                offset += 1;
                let msg = ClusterMsg::Record {
                    channel: "room:big".into(),
                    record: record(offset, &data),
                };
                let start = Instant::now();
                core.on_message(ShardMsg::Cluster(Box::new(msg)), Now::read());
                total += start.elapsed();
                if i % 64 == 63 {
                    drain(&mut core);
                }
                let _ = core.take_latency_samples();
            }
            drain(&mut core);
            total
        })
    });
    g.throughput(Throughput::Elements(64));
    g.bench_function("hand_64_publications_to_redis", |b| {
        b.iter(|| {
            for _ in 0..64 {
                let p = Payload {
                    format: Format::MsgPack,
                    raw: black_box(&data[..]),
                };
                core.publish("room:big", p, Now::read()).unwrap();
            }
            core.end_turn();
            while batches.try_recv().is_ok() {}
        })
    });
    g.finish();

    let mut g = c.benchmark_group("shared_codec");
    let publish = SharedPublish {
        channel: Arc::from("room:big"),
        data: data.clone(),
        meta: None,
        format: Format::MsgPack,
        from: Some("ann".into()),
        event: None,
        author: Some("ann".into()),
        revises: None,
        key: None,
        keep: 64,
        ttl_ms: 0,
        sync: false,
        stored: false,
        created: Instant::now(),
        reply: PublishReply::None,
    };
    let mut rec = b"0000000000c0ffee:12345:".to_vec();
    rec.extend(streams::encode_payload(&publish, 1));
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_payload_64b", |b| {
        b.iter(|| streams::encode_payload(black_box(&publish), 1))
    });
    g.bench_function("decode_record_64b", |b| {
        b.iter(|| streams::decode(black_box(&rec)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, shared);
criterion_main!(benches);
