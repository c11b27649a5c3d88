//! Criterion benches of the per-message and per-connection hot paths.
//!
//! `cargo bench -p switchboard-benches` runs them all; add a filter to run one group
//! (`cargo bench -p switchboard-benches -- fanout`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use switchboard_benches::{drain, fanout_core};
use switchboard_engine::Publication;
use switchboard_protocol::envelope::{self, Command, Payload, Request};
use switchboard_protocol::frame::{self, Check, FrameBuilder, OpCode, Role};
use switchboard_protocol::{mask, Format};

fn payload64() -> Vec<u8> {
    rmp_serde::to_vec_named(&serde_json_value()).unwrap()
}

fn serde_json_value() -> std::collections::BTreeMap<&'static str, String> {
    // About 64 bytes once encoded.
    [("text", "x".repeat(40)), ("from", "alice".to_string())]
        .into_iter()
        .collect()
}

fn masked_stream(frames: usize, size: usize) -> Vec<u8> {
    let payload = vec![0xabu8; size];
    (0..frames)
        .flat_map(|i| {
            frame::encode_masked(true, OpCode::Binary, &payload, [1, 2, 3, (i & 0xff) as u8])
        })
        .collect()
}

fn frame_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_decode");
    for size in [64usize, 1024, 16 * 1024] {
        let stream = masked_stream(100, size);
        g.throughput(Throughput::Elements(100));
        g.bench_with_input(
            BenchmarkId::new("switchboard", size),
            &stream,
            |b, stream| {
                b.iter_batched_ref(
                    || BytesMut::from(&stream[..]),
                    |buf| {
                        while let Ok(Check::Complete(h)) = frame::check(buf, Role::Server, 1 << 20)
                        {
                            black_box(frame::take(buf, &h));
                        }
                    },
                    criterion::BatchSize::SmallInput,
                )
            },
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        g.bench_with_input(
            BenchmarkId::new("fastwebsockets", size),
            &stream,
            |b, stream| {
                b.iter(|| {
                    rt.block_on(async {
                        let mut ws = fastwebsockets::WebSocket::after_handshake(
                            tokio::io::join(&stream[..], tokio::io::sink()),
                            fastwebsockets::Role::Server,
                        );
                        ws.set_auto_close(false);
                        ws.set_auto_pong(false);
                        for _ in 0..100 {
                            black_box(ws.read_frame().await.unwrap());
                        }
                    })
                })
            },
        );
    }
    g.finish();
}

fn frame_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_encode");
    let payload = vec![0xabu8; 64];
    g.bench_function("encode_64B", |b| {
        b.iter(|| black_box(frame::encode(OpCode::Binary, black_box(&payload))))
    });
    g.bench_function("builder_64B", |b| {
        b.iter(|| {
            let mut fb = FrameBuilder::with_capacity(64);
            fb.extend(black_box(&payload));
            black_box(fb.finish(OpCode::Binary))
        })
    });
    g.finish();
}

fn unmask(c: &mut Criterion) {
    let mut g = c.benchmark_group("unmask");
    for size in [64usize, 1024, 65536] {
        let mut buf = vec![0x5au8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::new("word", size), |b| {
            b.iter(|| mask::apply(black_box(&mut buf), [1, 2, 3, 4]))
        });
        g.bench_function(BenchmarkId::new("bytewise", size), |b| {
            b.iter(|| mask::apply_bytewise(black_box(&mut buf), [1, 2, 3, 4]))
        });
    }
    g.finish();
}

fn envelopes(c: &mut Criterion) {
    let mut g = c.benchmark_group("envelope");
    let mp_data = payload64();
    let json_data = serde_json::to_vec(&serde_json_value()).unwrap();
    for (format, data) in [(Format::MsgPack, &mp_data), (Format::Json, &json_data)] {
        let req = Request {
            id: 7,
            command: Command::Publish {
                channel: "room:lobby".into(),
                data: Payload { format, raw: data },
            },
        };
        let bytes = envelope::encode_request(format, &req);
        g.bench_function(
            BenchmarkId::new("decode_publish", format!("{format:?}")),
            |b| b.iter(|| black_box(envelope::decode_request(format, black_box(&bytes)).unwrap())),
        );
        let p = Payload { format, raw: data };
        g.bench_function(
            BenchmarkId::new("encode_publication_same_format", format!("{format:?}")),
            |b| {
                b.iter(|| {
                    black_box(
                        envelope::encode_publication(format, "room:lobby", black_box(p)).unwrap(),
                    )
                })
            },
        );
        let other = if format == Format::Json {
            Format::MsgPack
        } else {
            Format::Json
        };
        g.bench_function(
            BenchmarkId::new("encode_publication_transcoded_from", format!("{format:?}")),
            |b| {
                b.iter(|| {
                    black_box(
                        envelope::encode_publication(other, "room:lobby", black_box(p)).unwrap(),
                    )
                })
            },
        );
        g.bench_function(
            BenchmarkId::new("encode_reply", format!("{format:?}")),
            |b| {
                b.iter(|| {
                    black_box(envelope::encode_result(
                        format,
                        black_box(7),
                        &envelope::Empty {},
                    ))
                })
            },
        );
    }
    g.finish();
}

fn fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout");
    let subscribers = 10_000;
    let (mut core, _rx) = fanout_core(subscribers, "room:big");
    let data = payload64();
    let publication = Publication {
        channel: "room:big".into(),
        frames: [
            Some(
                envelope::encode_publication(
                    Format::MsgPack,
                    "room:big",
                    Payload {
                        format: Format::MsgPack,
                        raw: &data,
                    },
                )
                .unwrap(),
            ),
            None,
        ],
        created: Instant::now(),
    };
    let publication = Arc::new(publication);
    g.throughput(Throughput::Elements(subscribers as u64));
    // Only the delivery is timed; after each round the queues are emptied as a flush
    // would (untimed), so every round sees the steady state of one frame per queue.
    let mut timed =
        |b: &mut criterion::Bencher<'_>,
         round: &mut dyn FnMut(&mut switchboard_engine::ShardCore)| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    let start = Instant::now();
                    round(&mut core);
                    total += start.elapsed();
                    if i % 64 == 63 {
                        drain(&mut core);
                    }
                    let _ = core.take_latency_samples();
                }
                drain(&mut core);
                total
            })
        };
    g.bench_function("deliver_to_10k_local_subscribers", |b| {
        timed(b, &mut |core| core.deliver(black_box(&publication)))
    });
    g.bench_function("publish_encode_and_deliver_10k", |b| {
        timed(b, &mut |core| {
            core.publish(
                "room:big",
                Payload {
                    format: Format::MsgPack,
                    raw: black_box(&data),
                },
            )
            .unwrap()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = frame_decode, frame_encode, unmask, envelopes, fanout
}
criterion_main!(benches);
