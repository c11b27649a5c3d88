//! Socket.IO hot paths (issue 17): an event's way in (Socket.IO packet → vocabulary →
//! native command), a polling body's packets, and encode-once fan-out to Socket.IO
//! subscribers beside the same fan-out to native MessagePack subscribers, in the same
//! run (the target: Socket.IO within 1.3× of native per delivery), and the same
//! Socket.IO fan-out with connection state recovery on (each event carries its offset,
//! the shard logs the delivery).
//!
//! Run: `cargo bench -p switchboard-benches --bench socketio`.

use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use serde_json::value::RawValue;
use switchboard_benches::{drain, fanout_core_with};
use switchboard_engine::{Durability, Now};
use switchboard_protocol::envelope::{self, decode_request};
use switchboard_protocol::{engineio, sio_events, socketio, Format, Payload, Position};

const POS: Position = Position {
    epoch: 0x0123_4567_89ab_cdef,
    offset: 42,
};

/// A chat message's event, 64 bytes of text in `data`.
fn send_event() -> String {
    let text = "x".repeat(64);
    format!(r#"42["message:send",{{"channel":"room:1","data":{{"text":"{text}"}}}}]"#)
}

fn inbound(c: &mut Criterion) {
    let mut g = c.benchmark_group("socketio_in");
    let event = send_event();
    // The Socket.IO packet (after the Engine.IO `4`), as the session sees it.
    let packet = &event[1..];
    g.bench_function("decode_packet", |b| {
        b.iter(|| socketio::decode(black_box(packet), 10).unwrap())
    });
    g.bench_function("event_to_native_command", |b| {
        b.iter(|| {
            let p = socketio::decode(black_box(packet), 10).unwrap();
            let name = socketio::event_name(p.data).unwrap();
            let args: Vec<&RawValue> = socketio::args(p.data).unwrap();
            let envs = sio_events::envelopes(&name, 7, u32::MAX, &args[1..])
                .unwrap()
                .unwrap();
            let req = decode_request(Format::Json, &envs[0]).unwrap();
            black_box(req.id);
        })
    });
    let body: Vec<u8> = (0..10)
        .map(|_| event.as_str())
        .collect::<Vec<_>>()
        .join("\u{1e}")
        .into_bytes();
    g.throughput(Throughput::Elements(10));
    g.bench_function("polling_body_10_packets", |b| {
        b.iter(|| {
            engineio::decode_payload(black_box(&body), 256)
                .unwrap()
                .len()
        })
    });
    g.finish();
}

fn fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("socketio_fanout");
    let subscribers = 10_000;
    let data = br#"{"text":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#;
    let json = Payload {
        format: Format::Json,
        raw: data,
    };
    g.bench_function("encode_publication_socketio", |b| {
        b.iter(|| envelope::encode_publication(Format::SocketIo, "room:big", POS, black_box(json)))
    });
    g.bench_function("encode_publication_json", |b| {
        b.iter(|| envelope::encode_publication(Format::Json, "room:big", POS, black_box(json)))
    });
    g.bench_function("encode_recoverable_publication_socketio", |b| {
        b.iter(|| {
            envelope::encode_recoverable_publication(
                Format::SocketIo,
                "room:big",
                POS,
                None,
                None,
                black_box(json),
                None,
            )
        })
    });
    g.throughput(Throughput::Elements(subscribers as u64));
    for (format, recovery_ms) in [
        (Format::SocketIo, 0),
        (Format::MsgPack, 0),
        (Format::SocketIo, 120_000),
    ] {
        let ((mut core, _rx), _) =
            fanout_core_with(subscribers, "room:big", Durability::None, format, |c| {
                c.socketio.recovery_ms = recovery_ms
            });
        let mut name = format!("publish_encode_and_deliver_10k_{format:?}").to_lowercase();
        if recovery_ms > 0 {
            name.push_str("_recovery");
        }
        g.bench_function(&name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    let start = Instant::now();
                    core.publish("room:big", black_box(json), Now::read())
                        .unwrap();
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
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = inbound, fanout
}
criterion_main!(benches);
