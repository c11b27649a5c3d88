//! Criterion benches of the per-message and per-connection hot paths.
//!
//! `cargo bench -p switchboard-benches` runs them all; add a filter to run one group
//! (`cargo bench -p switchboard-benches -- fanout`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use switchboard_benches::{drain, fanout_core};
use switchboard_engine::{Now, Publication};
use switchboard_protocol::envelope::{self, Command, Payload, Request};
use switchboard_protocol::frame::{self, Check, FrameBuilder, OpCode, Role};
use switchboard_protocol::{mask, Format};

/// A position as a long-lived channel would have it.
const POS: switchboard_protocol::Position = switchboard_protocol::Position {
    epoch: 0x1234_5678_9abc_def0,
    offset: 1_234_567,
};

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
                key: None,
                meta: None,
                reply: true,
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
                        envelope::encode_publication(format, "room:lobby", POS, black_box(p))
                            .unwrap(),
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
                        envelope::encode_publication(other, "room:lobby", POS, black_box(p))
                            .unwrap(),
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
        position: POS,
        frames: [
            Some(
                envelope::encode_publication(
                    Format::MsgPack,
                    "room:big",
                    POS,
                    Payload {
                        format: Format::MsgPack,
                        raw: &data,
                    },
                )
                .unwrap(),
            ),
            None,
            None,
        ],
        created: Instant::now(),
        droppable: false,
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
                Now::read(),
            )
            .unwrap()
        })
    });
    g.finish();
}

fn channel_index(c: &mut Criterion) {
    use switchboard_engine::channels::ChannelIndex;
    let mut g = c.benchmark_group("channel_index");
    g.bench_function("subscribe_then_unsubscribe_10k_slots", |b| {
        let mut ix = ChannelIndex::default();
        b.iter(|| {
            for slot in 0..10_000u32 {
                black_box(ix.subscribe("room:big", slot, Format::MsgPack));
            }
            for slot in 0..10_000u32 {
                black_box(ix.unsubscribe("room:big", slot, Format::MsgPack));
            }
        })
    });
    let mut ix = ChannelIndex::default();
    for ch in 0..10_000u32 {
        ix.subscribe(&format!("room:{ch}"), ch, Format::MsgPack);
    }
    ix.set_remote("room:77".into(), 1, 1);
    g.bench_function("lookup_local_and_remote_among_10k_channels", |b| {
        b.iter(|| {
            let name = black_box("room:77");
            black_box((ix.local(name).map(|e| e.formats()), ix.remote(name)))
        })
    });
    g.finish();
}

fn cross_shard(c: &mut Criterion) {
    use switchboard_engine::{Mesh, ShardMsg};
    let mut g = c.benchmark_group("cross_shard");
    let mesh = Mesh::new(2, 65_536).unwrap();
    let publication = Arc::new(Publication {
        channel: "room:x".into(),
        position: POS,
        frames: [
            Some(bytes::Bytes::from_static(&[0x82, 0x01, 0x00])),
            None,
            None,
        ],
        created: Instant::now(),
        droppable: false,
    });
    g.throughput(Throughput::Elements(1000));
    // Same thread: the cost of the queue operations and one coalesced eventfd wake-up.
    g.bench_function("push_pop_1000_publications_with_wakeup", |b| {
        let inbox = mesh.inbox(1);
        b.iter(|| {
            for _ in 0..1000 {
                let _ = inbox.push(ShardMsg::Publish(publication.clone()));
            }
            inbox.clear_wakeup();
            while let Some(m) = inbox.pop() {
                black_box(m);
            }
        })
    });
    // Producer here, consumer on another thread: the handoff as shards see it.
    g.bench_function("handoff_1000_to_another_thread", |b| {
        b.iter_custom(|iters| {
            let total = iters * 1000;
            let consumer_mesh = mesh.clone();
            let consumer = std::thread::spawn(move || {
                let inbox = consumer_mesh.inbox(0);
                let mut got = 0u64;
                while got < total {
                    match inbox.pop() {
                        Some(m) => {
                            black_box(m);
                            got += 1;
                        }
                        None => std::hint::spin_loop(),
                    }
                }
                inbox.clear_wakeup();
            });
            let start = Instant::now();
            let inbox = mesh.inbox(0);
            for _ in 0..total {
                let mut msg = ShardMsg::Publish(publication.clone());
                while let Err(back) = inbox.push(msg) {
                    msg = back;
                    std::hint::spin_loop();
                }
            }
            consumer.join().unwrap();
            start.elapsed()
        })
    });
    g.finish();
}

fn jwt(c: &mut Criterion) {
    use switchboard_control_plane::auth::{mint, Verifier};
    use switchboard_control_plane::config::AuthConfig;
    let mut g = c.benchmark_group("jwt");
    let cfg = AuthConfig::default();
    let secret = "bench-secret-0123456789abcdef";
    let verifier = Verifier::new(&cfg, Some(secret)).unwrap();
    let token = mint(
        secret,
        "alice",
        Some(vec!["room:*".into()]),
        Duration::from_secs(3600),
        &cfg,
    );
    g.bench_function("verify_hs256", |b| {
        b.iter(|| black_box(verifier.verify(black_box(&token)).unwrap()))
    });
    g.finish();
}

fn heartbeat_wheel(c: &mut Criterion) {
    let mut g = c.benchmark_group("heartbeat_wheel");
    g.sample_size(10);
    g.throughput(Throughput::Elements(20_000));
    g.bench_function("tick_with_20k_connections_due", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                // 20,000 open connections, all due at the same tick (untimed setup).
                let (mut core, _rx) = fanout_core(20_000, "room:hb");
                let due = core_tick_of_first_visit();
                let start = Instant::now();
                core.on_tick(black_box(due), Now::read());
                total += start.elapsed();
            }
            total
        })
    });
    g.finish();
}

/// `fanout_core` admits every connection at tick 0 with the default handshake timeout
/// (5 s at 100 ms ticks): their first wheel visit is tick 50.
/// Preparing one connection's write: the epoll backend points `IoSlice`s at the queue
/// (`fill`); the io_uring backend pins the frames in the queue and points the send
/// operation's iovecs at them, then advances and unpins on the completion. Per
/// connection per turn, for 1 and 8 queued frames; both include advancing the queue
/// after the write and queueing the next frames.
fn outq_write_prep(c: &mut Criterion) {
    use std::io::IoSlice;
    use switchboard_engine::outq::OutQueue;
    let mut g = c.benchmark_group("outq_write_prep");
    let frame = bytes::Bytes::from(vec![0x82u8; 80]);
    for frames in [1usize, 8] {
        let mut q = OutQueue::default();
        let refill = |q: &mut OutQueue| {
            while q.len() < frames {
                q.push(frame.clone(), 1 << 20).unwrap();
            }
        };
        refill(&mut q);
        let total = frames * frame.len();
        g.bench_with_input(BenchmarkId::new("epoll_fill", frames), &frames, |b, _| {
            b.iter(|| {
                {
                    let mut slices = [IoSlice::new(&[]); 64];
                    let n = q.fill(&mut slices);
                    black_box(&slices[..n]);
                }
                // The write: everything went.
                q.advance(total);
                refill(&mut q);
            })
        });
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; 32];
        g.bench_with_input(
            BenchmarkId::new("uring_pin_send_complete", frames),
            &frames,
            |b, _| {
                b.iter(|| {
                    let (n, offset) = q.pin(32);
                    for (i, f) in q.frames().take(n).enumerate() {
                        let s = if i == 0 { &f[offset..] } else { &f[..] };
                        iov[i] = libc::iovec {
                            iov_base: s.as_ptr().cast_mut().cast(),
                            iov_len: s.len(),
                        };
                    }
                    black_box(&iov[..n]);
                    // The completion: everything went.
                    q.advance(total);
                    q.unpin();
                    refill(&mut q);
                })
            },
        );
    }
    g.finish();
}

/// The owner shard's per-publication stream work: the channel's next position, plus
/// (with history on) keeping the payload, among 10,000 live channels.
fn streams(c: &mut Criterion) {
    use switchboard_engine::streams::{Entry, Streams};
    let mut g = c.benchmark_group("streams");
    let names: Vec<String> = (0..10_000).map(|i| format!("room:{i}")).collect();
    let mut st = Streams::new(7);
    for n in &names {
        st.next(n, 0);
    }
    let payload = bytes::Bytes::from(payload64());
    let mut i = 0usize;
    g.bench_function("next_position_among_10k_channels", |b| {
        b.iter(|| {
            i = (i + 1) % names.len();
            black_box(st.next(black_box(&names[i]), 1))
        })
    });
    g.bench_function("next_position_and_retain_64_of_history", |b| {
        b.iter(|| {
            i = (i + 1) % names.len();
            let pos = st.next(&names[i], 1);
            let entry = Entry {
                offset: pos.offset,
                tick: 1,
                data: bytes::Bytes::copy_from_slice(&payload),
                meta: None,
                format: Format::MsgPack,
                from: None,
                author: None,
                event: None,
                revises: None,
                revised: None,
            };
            st.retain(&names[i], entry, 64, 3000);
        })
    });
    g.finish();
}

/// What durability costs the owner shard per publication (100 local subscribers, 64 B):
/// `none` sequences, keeps and delivers; `async` also hands a record to the store's
/// batch (handed over at the end of each simulated loop turn of 64 publications, and
/// taken off the channel as the writer would).
fn durability(c: &mut Criterion) {
    use switchboard_benches::fanout_core_in;
    use switchboard_engine::journal::Durability;
    let mut g = c.benchmark_group("durability");
    let data = payload64();
    for (name, durability) in [("none", Durability::None), ("async", Durability::Async)] {
        let ((mut core, _rx), store) = fanout_core_in(100, "feed:bench", durability);
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::new("publish_to_100_local", name), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    let start = Instant::now();
                    core.publish(
                        "feed:bench",
                        Payload {
                            format: Format::MsgPack,
                            raw: &data,
                        },
                        Now::read(),
                    )
                    .unwrap();
                    if i % 64 == 63 {
                        core.end_turn();
                    }
                    total += start.elapsed();
                    if i % 64 == 63 {
                        drain(&mut core);
                        let _ = core.take_latency_samples();
                        if let Some((link, rx)) = &store {
                            while let Ok(batch) = rx.try_recv() {
                                link.state().stored(batch.records.len());
                            }
                        }
                    }
                }
                core.end_turn();
                drain(&mut core);
                total
            })
        });
    }
    g.finish();
}

/// The store's group commit: one SQLite transaction (WAL, synchronous=FULL, so one
/// fsync) per batch of 1, 64 or 1024 publications of 64 B, on a real file in the
/// temp directory; and 1024 publications spread over 1,000 channels (each channel's
/// entries in the log's indexes land in a different place). Throughput is
/// publications per second.
fn group_commit(c: &mut Criterion) {
    use switchboard_control_plane::store::{self, StoreConfig};
    use switchboard_engine::journal::{Batch, Durability, Record};
    let dir = std::env::temp_dir().join(format!("sb-bench-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = StoreConfig {
        path: dir.join("bench.db"),
        ..StoreConfig::default()
    };
    let ns = [switchboard_benches::namespace_policy(
        "ledger",
        Durability::Sync,
        10_000,
    )];
    let mut opened = store::open(&cfg, &ns, 3_600_000, "").expect("store opens");
    let channels: Vec<Arc<str>> = (0..1000)
        .map(|i| Arc::from(format!("ledger:bench-{i}")))
        .collect();
    let data = bytes::Bytes::from(payload64());
    let mut offset = 0u64;
    // One commit of `size` publications over the first `spread` channels, in turn.
    let mut commit = |opened: &mut store::Opened, size: usize, spread: usize| {
        let records = (0..size)
            .map(|_| {
                offset += 1;
                Record {
                    channel: channels[offset as usize % spread].clone(),
                    epoch: 7,
                    offset,
                    format: Format::MsgPack,
                    data: data.clone(),
                    meta: None,
                    key: None,
                    from: None,
                    author: None,
                    event: None,
                    revises: None,
                    keep: 10_000,
                }
            })
            .collect();
        let batch = Batch {
            shard: 0,
            seq: offset,
            notify: true,
            records,
            marks: Vec::new(),
            sessions: Vec::new(),
        };
        opened.write_now(std::slice::from_ref(&batch)).unwrap();
    };
    let mut g = c.benchmark_group("group_commit");
    for (name, size, spread) in [
        ("publications_per_transaction", 1usize, 1usize),
        ("publications_per_transaction", 64, 1),
        ("publications_per_transaction", 1024, 1),
        ("publications_over_1000_channels", 1024, 1000),
    ] {
        g.throughput(Throughput::Elements(size as u64));
        g.bench_function(BenchmarkId::new(name, size), |b| {
            b.iter(|| commit(&mut opened, size, spread))
        });
    }
    // Moving the log's tail to the archive (between commits, on the writer): commits of
    // 1,024 publications over 1,000 channels, then one pass; with 1 and 16 rows a
    // channel (a pass starts at 16 a channel, or after `store.archive_after_ms`).
    opened.archive_now().unwrap();
    for commits in [1usize, 16] {
        g.throughput(Throughput::Elements((commits * 1024) as u64));
        g.bench_function(
            BenchmarkId::new("archive_pass_over_1000_channels", commits * 1024),
            |b| {
                b.iter_custom(|iters| {
                    let mut spent = std::time::Duration::ZERO;
                    for _ in 0..iters {
                        for _ in 0..commits {
                            commit(&mut opened, 1024, 1000);
                        }
                        let started = std::time::Instant::now();
                        assert_eq!(opened.archive_now().unwrap(), commits * 1024);
                        spent += started.elapsed();
                    }
                    spent
                })
            },
        );
    }
    g.finish();
    drop(opened);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Per connection: the reconnect token every `connect` returns, and its check when a
/// client resumes. Per receipt: moving a user's receipt and encoding the push.
fn sessions(c: &mut Criterion) {
    use switchboard_engine::marks::Marks;
    use switchboard_engine::session::Sessions;
    use switchboard_engine::Identity;
    let mut g = c.benchmark_group("sessions");
    let s = Sessions::new(&[7u8; 32]);
    let identity = Identity {
        user: "user-12345".into(),
        channels: Some(vec!["chat:*".into(), "user:user-12345".into()]),
        expires_at: Some(4_000_000_000),
        send_to: Some(vec!["*".into()]),
        schedule: false,
        claims: Vec::new(),
    };
    let channels: Vec<String> = (0..20).map(|i| format!("chat:room-{i}")).collect();
    g.bench_function("issue_token_at_connect", |b| {
        b.iter(|| {
            s.issue(
                black_box(&identity),
                Some("phone"),
                std::iter::empty(),
                1 << 50,
                None,
            )
        })
    });
    g.bench_function("issue_token_20_channels", |b| {
        b.iter(|| {
            s.issue(
                black_box(&identity),
                Some("phone"),
                channels.iter().map(String::as_str),
                1 << 50,
                None,
            )
        })
    });
    let (token, _) = s.issue(
        &identity,
        Some("phone"),
        channels.iter().map(String::as_str),
        1 << 50,
        None,
    );
    g.bench_function("check_token_20_channels", |b| {
        b.iter(|| s.check(black_box(&token), 1).unwrap())
    });
    let mut marks = Marks::new();
    let channel: Arc<str> = "chat:room-1".into();
    let mut read = 0u64;
    g.bench_function("receipt_move_and_encode_push", |b| {
        b.iter(|| {
            read += 1;
            let r = marks
                .set_receipt(&channel, "user-12345", 7, None, Some(read), read)
                .unwrap();
            #[derive(serde::Serialize)]
            struct Push<'a> {
                push: &'static str,
                channel: &'a str,
                user: &'a str,
                delivered: u64,
                read: u64,
            }
            envelope::encode_push(
                Format::MsgPack,
                &Push {
                    push: "receipt",
                    channel: &channel,
                    user: "user-12345",
                    delivered: r.delivered,
                    read: r.read,
                },
            )
        })
    });
    g.finish();
}

/// Per subscription on a presence channel: the owner's table with 10,000 members —
/// a member joining and leaving, a status change, and the count members ask for.
fn presence(c: &mut Criterion) {
    use switchboard_engine::presence::{ClientId, Presence};
    let cid = |shard: u16, slot: u32| ClientId {
        shard,
        slot,
        gen: 1,
    };
    let mut g = c.benchmark_group("presence");
    let mut p = Presence::new();
    let channel: Arc<str> = "visit:big".into();
    let online: Arc<str> = "online".into();
    let away: Arc<str> = "away".into();
    let users: Vec<Arc<str>> = (0..10_000).map(|i| format!("user-{i}").into()).collect();
    for (i, u) in users.iter().enumerate() {
        let id = ClientId {
            shard: 0,
            slot: i as u32,
            gen: 1,
        };
        p.join(&channel, u, id, None, &online, 1);
    }
    let newcomer: Arc<str> = "newcomer".into();
    g.bench_function("join_and_leave_in_10k_member_channel", |b| {
        b.iter(|| {
            let e = p.join(&channel, &newcomer, cid(1, 1), Some("phone"), &online, 2);
            let l = p.leave("visit:big", &newcomer, cid(1, 1), None, 3);
            black_box((e, l))
        })
    });
    let mut flip = false;
    g.bench_function("status_change_in_10k_member_channel", |b| {
        b.iter(|| {
            flip = !flip;
            let s = if flip { &away } else { &online };
            black_box(p.status("visit:big", &users[5000], cid(0, 5000), s))
        })
    });
    g.bench_function("count_10k_member_channel", |b| {
        b.iter(|| black_box(p.count(black_box("visit:big"))))
    });
    g.finish();
}

/// Per command (every publish and subscribe): the namespace's access rules.
fn access(c: &mut Criterion) {
    use switchboard_engine::access::{Access, Action, NamespaceRules, RuleConfig};
    use switchboard_engine::Identity;
    let mut g = c.benchmark_group("access");
    let rule = |channel: Option<&str>, claims: &[(&str, &[&str])]| RuleConfig {
        channel: channel.map(str::to_string),
        claims: claims
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect(),
    };
    let case = NamespaceRules {
        publish: Some(vec![
            rule(Some("case:{team}:*"), &[("role", &["provider", "admin"])]),
            rule(None, &[("role", &["admin"])]),
        ]),
        ..Default::default()
    };
    let a = Access::new([("case", &case)]).unwrap();
    let identity = Identity {
        user: "d1".into(),
        channels: None,
        expires_at: None,
        send_to: None,
        schedule: false,
        claims: vec![
            ("team".into(), vec!["t1".into(), "t2".into(), "t3".into()]),
            ("role".into(), vec!["provider".into()]),
        ],
    };
    g.bench_function("publish_rule_with_template_allowed", |b| {
        b.iter(|| {
            a.check(
                black_box(&identity),
                black_box("case:t3:visit-42"),
                Action::Publish,
            )
        })
    });
    g.bench_function("publish_rule_with_template_denied", |b| {
        b.iter(|| {
            a.check(
                black_box(&identity),
                black_box("case:t9:visit-42"),
                Action::Publish,
            )
        })
    });
    g.bench_function("namespace_without_rules", |b| {
        b.iter(|| {
            a.check(
                black_box(&identity),
                black_box("room:lobby"),
                Action::Publish,
            )
        })
    });
    g.finish();
}

/// Control-plane pushes on a shard: a notification to 1,000 users' connections, a
/// progress update coalesced into a slow connection's deep queue, one call signal.
fn notifications(c: &mut Criterion) {
    use std::net::{IpAddr, Ipv4Addr};
    use switchboard_engine::control::{frames, Push, PushTo};
    use switchboard_engine::presence::ClientId;
    use switchboard_engine::{EngineConfig, Identity, Mesh, ShardMetrics, ShardMsg};
    let mut g = c.benchmark_group("notifications");
    let cfg = EngineConfig {
        shards: 1,
        max_outbound_bytes: 64 * 1024 * 1024,
        ..EngineConfig::default()
    };
    let (tx, _rx) = crossbeam_channel::bounded(16);
    let mut core = switchboard_engine::ShardCore::new(
        0,
        Arc::new(cfg),
        Mesh::new(1, 1024).expect("eventfd"),
        tx,
        Arc::new(ShardMetrics::default()),
        Now::read(),
    );
    let users: Vec<Arc<str>> = (0..1000).map(|i| format!("user-{i}").into()).collect();
    let mut keys = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let identity = Arc::new(Identity {
            user: u.clone(),
            channels: None,
            expires_at: None,
            send_to: None,
            schedule: false,
            claims: Vec::new(),
        });
        let peer = IpAddr::V4(Ipv4Addr::from(0x7f00_0000 + (i as u32 % 250) + 1));
        keys.push(core.open_for_test(peer, Format::MsgPack, identity));
    }
    drain(&mut core);
    let push = serde_json::json!({"push": "notification", "notification": {"id": 1, "kind": "message", "data": {"text": "hello"}}, "unread": 3});
    let f = frames(&push);
    let to_all = Arc::new(Push {
        to: PushTo::Users(users.iter().map(|u| (u.clone(), f.clone())).collect()),
        coalesce: None,
    });
    g.throughput(Throughput::Elements(1000));
    g.bench_function("push_to_1000_users", |b| {
        b.iter(|| {
            core.on_message(ShardMsg::Push(to_all.clone()), Now::read());
            drain(&mut core);
        })
    });
    g.throughput(Throughput::Elements(1));
    // A slow connection with 1,000 frames waiting; each progress update replaces the
    // previous one in place (the worst case: it is at the back of the queue).
    let slow = keys[0];
    let filler = frames(&serde_json::json!({"push": "publication", "data": 1}));
    for _ in 0..1000 {
        core.on_message(
            ShardMsg::Push(Arc::new(Push {
                to: PushTo::Users(vec![(users[0].clone(), filler.clone())]),
                coalesce: None,
            })),
            Now::read(),
        );
    }
    let progress = |pct: u32| {
        Arc::new(Push {
            to: PushTo::Users(vec![(
                users[0].clone(),
                frames(&serde_json::json!({"push": "notification", "percent": pct})),
            )]),
            coalesce: Some(Arc::from("notification:job")),
        })
    };
    let (p1, p2) = (progress(1), progress(2));
    core.on_message(ShardMsg::Push(p1.clone()), Now::read());
    let mut flip = false;
    g.bench_function("coalesce_progress_behind_1000_frames", |b| {
        b.iter(|| {
            flip = !flip;
            core.on_message(
                ShardMsg::Push(if flip { p2.clone() } else { p1.clone() }),
                Now::read(),
            );
        })
    });
    assert!(core.out_mut(slow.slot).unwrap().len() == 1001);
    drain(&mut core);
    let signal = Arc::new(Push {
        to: PushTo::Client(
            ClientId {
                shard: 0,
                slot: keys[1].slot,
                gen: keys[1].gen,
            },
            frames(
                &serde_json::json!({"push": "call", "event": "signal", "call": 1, "data": {"candidate": "candidate:1 1 UDP 2122252543 192.0.2.1 54321 typ host"}}),
            ),
        ),
        coalesce: None,
    });
    g.bench_function("call_signal_to_one_connection", |b| {
        b.iter(|| {
            core.on_message(ShardMsg::Push(signal.clone()), Now::read());
            drain(&mut core);
        })
    });
    g.finish();
}

/// Per command while rate limits exist: the bucket check on its own, the shared
/// per-user buckets on their own, and a whole
/// `publish` command through a shard (decode, checks, sequencing, reply) without rules
/// and with a connection and a user rule that never refuse.
fn rate_limits(c: &mut Criterion) {
    use std::net::{IpAddr, Ipv4Addr};
    use switchboard_engine::limits::{Bucket, LimitEvent, LimitRule, LimitTable, Scope};
    let mut g = c.benchmark_group("rate_limits");
    let rule = |scope, event| LimitRule::new(scope, event, u32::MAX / 2, 1);
    let mut premium = rule(Scope::User, LimitEvent::Publish);
    premium.tier = Some("premium".into());
    let rules = vec![
        rule(Scope::Connection, LimitEvent::Publish),
        rule(Scope::User, LimitEvent::Command),
        premium,
    ];
    let table = LimitTable::new(rules).unwrap();
    let mut bucket = Bucket::default();
    let mut now = 0u32;
    g.bench_function("rule_lookup_check_and_take", |b| {
        b.iter(|| {
            now = now.wrapping_add(1);
            let r = table
                .rule(black_box(Some("gold")), Scope::User, LimitEvent::Command)
                .unwrap();
            if bucket.check(r, now).is_ok() {
                bucket.take(r, now);
            }
        })
    });
    // The per-user buckets shared by the shards: probe, then one compare-and-swap per
    // rule (here: the user's command and publish rules).
    let users = switchboard_engine::limits::UserBuckets::new(100_000);
    let user = users.key("publisher");
    let user_rules = [
        (
            LimitEvent::Command,
            table.rule(None, Scope::User, LimitEvent::Command).unwrap(),
        ),
        (
            LimitEvent::Publish,
            table
                .rule(Some("premium"), Scope::User, LimitEvent::Publish)
                .unwrap(),
        ),
    ];
    g.bench_function("shared_user_take_two_rules", |b| {
        b.iter(|| {
            now = now.wrapping_add(1);
            black_box(users.take(black_box(user), &user_rules, now, 1_000))
        })
    });
    let (mut core, _rx) = fanout_core(0, "room:quiet");
    let identity = Arc::new(switchboard_engine::Identity {
        user: "publisher".into(),
        channels: None,
        expires_at: None,
        send_to: None,
        schedule: false,
        claims: vec![("tier".into(), vec!["gold".into()])],
    });
    let key = core.open_for_test(IpAddr::V4(Ipv4Addr::LOCALHOST), Format::MsgPack, identity);
    let command = envelope::encode_request(
        Format::MsgPack,
        &Request {
            id: 7,
            command: Command::Publish {
                channel: "room:quiet".into(),
                data: Payload {
                    format: Format::MsgPack,
                    raw: &payload64(),
                },
                key: None,
                meta: None,
                reply: true,
            },
        },
    );
    let frame = frame::encode_masked(true, OpCode::Binary, &command, [1, 2, 3, 4]);
    let mut run = |name: &str, core: &mut switchboard_engine::ShardCore| {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut buf = BytesMut::from(&frame[..]);
                core.on_read(key.slot, &mut buf, Now::read());
                drain(core);
            })
        });
    };
    run("publish_command_without_rules", &mut core);
    core.set_rate_limits(Arc::new(
        LimitTable::new(vec![rule(Scope::Connection, LimitEvent::Publish)]).unwrap(),
    ));
    run("publish_command_with_a_connection_rule", &mut core);
    core.set_rate_limits(Arc::new(table.clone()));
    run("publish_command_with_connection_and_user_rules", &mut core);
    g.finish();
}

/// The echo scenario's server work per round trip, without the sockets: 1,000
/// connections each subscribed to its own channel (history on, 64 kept), each in turn
/// sending one masked publish frame to its channel; the core decodes it, sequences it,
/// keeps it, queues it to the publisher and (with `reply`) answers. Compare with
/// `loadtest run echo` (docs/BENCHMARKS.md "Against uWebSockets").
fn echo(c: &mut Criterion) {
    use std::net::{IpAddr, Ipv4Addr};
    let mut g = c.benchmark_group("echo");
    let (mut core, _rx) = fanout_core(0, "lt:unused");
    let identity = switchboard_benches::identity("echo");
    let data = payload64();
    let mut conns = Vec::new();
    for i in 0..1000u32 {
        let peer = IpAddr::V4(Ipv4Addr::from(0x7f00_0001 + i % 250));
        let key = core.open_for_test(peer, Format::MsgPack, identity.clone());
        let channel = format!("lt:echo-{i}");
        core.subscribe_for_test(key, &channel);
        let frames: Vec<Vec<u8>> = [true, false]
            .into_iter()
            .map(|reply| {
                let command = envelope::encode_request(
                    Format::MsgPack,
                    &Request {
                        id: 7,
                        command: Command::Publish {
                            channel: channel.as_str().into(),
                            data: Payload {
                                format: Format::MsgPack,
                                raw: &data,
                            },
                            key: None,
                            meta: None,
                            reply,
                        },
                    },
                );
                frame::encode_masked(true, OpCode::Binary, &command, [1, 2, 3, 4])
            })
            .collect();
        conns.push((key, frames));
    }
    drain(&mut core);
    for (name, which) in [("round_trip_among_1000_channels", 0), ("no_reply", 1)] {
        let mut i = 0;
        let mut buf = BytesMut::with_capacity(64 * 1024);
        g.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % conns.len();
                let (key, frames) = &conns[i];
                buf.extend_from_slice(&frames[which]);
                core.on_read(key.slot, &mut buf, Now::read());
                core.end_turn();
                drain(&mut core);
            })
        });
    }
    g.finish();
}

fn core_tick_of_first_visit() -> u64 {
    50
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = frame_decode, frame_encode, unmask, envelopes, fanout, channel_index, cross_shard, jwt, heartbeat_wheel, outq_write_prep, streams, durability, group_commit, sessions, presence, access, notifications, rate_limits, echo
}
criterion_main!(benches);
