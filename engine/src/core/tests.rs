//! Unit tests of the shard core, driven without sockets.

use super::conn::*;
use super::*;
use std::sync::Arc;

use bytes::BytesMut;
use switchboard_protocol::envelope::{self, CallAction};
use switchboard_protocol::frame::{self, Check, OpCode, Role};
use switchboard_protocol::Format;

use crate::auth::{ControlRequest, Identity};
use crate::config::EngineConfig;
use crate::control::{ControlCommand, Push, PushTo};
use crate::limits::{LimitEvent, LimitTable, Scope};
use crate::mesh::{Mesh, ShardMsg};
use crate::metrics::{CloseKind, ShardMetrics};
use crate::presence::ClientId;
use std::io::IoSlice;
use switchboard_protocol::envelope::ServerMessage;

const UPGRADE: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: switchboard.v1.json\r\n\r\n";

struct Harness {
    core: ShardCore,
    control: crossbeam_channel::Receiver<ControlRequest>,
    /// The virtual clock at tick 0.
    start: Now,
    /// The virtual clock now (advanced by [`Harness::tick`]).
    clock: Now,
}

fn harness(tweak: impl FnOnce(&mut EngineConfig)) -> Harness {
    let mut cfg = EngineConfig {
        shards: 1,
        tick_ms: 10,
        ping_interval_ms: 100,
        pong_timeout_ms: 50,
        auth_timeout_ms: 200,
        handshake_timeout_ms: 100,
        close_timeout_ms: 100,
        ..EngineConfig::default()
    };
    tweak(&mut cfg);
    let (tx, rx) = crossbeam_channel::bounded(8);
    let start = Now::at(crate::clock::mono(), 1_800_000_000_000);
    let core = ShardCore::new(
        0,
        Arc::new(cfg),
        Mesh::new(1, 64).unwrap(),
        tx,
        Arc::new(ShardMetrics::default()),
        start,
    );
    Harness {
        core,
        control: rx,
        start,
        clock: start,
    }
}

impl Harness {
    /// Advance the virtual clock to `tick` (10 ms each) and run the shard's timer.
    fn tick(&mut self, tick: u64) {
        self.clock = self.start.later(tick * 10);
        self.core.on_tick(tick, self.clock);
    }

    fn read(&mut self, key: ConnKey, bytes: &[u8]) {
        let mut buf = BytesMut::from(bytes);
        self.core.on_read(key.slot, &mut buf, self.clock);
        assert!(buf.is_empty());
    }

    /// Everything queued for `key`, as written to a socket.
    fn written(&mut self, key: ConnKey) -> Vec<u8> {
        let mut out = Vec::new();
        while !self.core.out_mut(key.slot).unwrap().is_empty() {
            let len = {
                let q = self.core.out_mut(key.slot).unwrap();
                let mut slices = [IoSlice::new(&[]); 64];
                let n = q.fill(&mut slices);
                for s in &slices[..n] {
                    out.extend_from_slice(s);
                }
                slices[..n].iter().map(|s| s.len()).sum::<usize>()
            };
            self.core.written(key.slot, len);
        }
        self.core.flushed(key.slot);
        out
    }

    fn open(&mut self) -> ConnKey {
        let key = self
            .core
            .admit("127.0.0.1".parse().unwrap(), self.clock)
            .unwrap();
        self.read(key, UPGRADE);
        assert!(self.written(key).starts_with(b"HTTP/1.1 101"));
        self.read(
            key,
            &frame::encode_masked(
                true,
                OpCode::Text,
                br#"{"id":1,"cmd":"connect","token":"t"}"#,
                [9, 8, 7, 6],
            ),
        );
        let Ok(ControlRequest::Authenticate {
            conn,
            req_id,
            token,
            ..
        }) = self.control.try_recv()
        else {
            panic!("expected an authentication request")
        };
        assert_eq!((conn, req_id, token.as_str()), (key, 1, "t"));
        let identity = Identity {
            user: "u".into(),
            channels: None,
            expires_at: None,
            send_to: None,
            schedule: false,
            claims: Vec::new(),
        };
        self.core.on_message(
            ShardMsg::AuthDone {
                conn: key,
                req_id: 1,
                result: Ok(Arc::new(identity)),
            },
            self.clock,
        );
        assert_eq!(self.core.state(key), Some(ConnState::Open));
        let _ = self.written(key);
        key
    }
}

/// Server frames in `bytes`: (opcode, payload).
fn frames(bytes: &[u8]) -> Vec<(OpCode, Vec<u8>)> {
    let mut buf = BytesMut::from(bytes);
    let mut out = vec![];
    while let Ok(Check::Complete(h)) = frame::check(&buf, Role::Client, usize::MAX) {
        let f = frame::take(&mut buf, &h);
        out.push((f.opcode, f.payload.to_vec()));
    }
    assert!(buf.is_empty());
    out
}

/// A masked client text frame with `json`.
fn cmd(json: &str) -> Vec<u8> {
    frame::encode_masked(true, OpCode::Text, json.as_bytes(), [1, 2, 3, 4])
}

#[test]
fn typing_is_dropped_first_under_backpressure() {
    let mut h = harness(|c| c.max_outbound_bytes = 4096);
    let (typist, slow) = (h.open(), h.open());
    for k in [typist, slow] {
        h.read(k, &cmd(r#"{"id":2,"cmd":"subscribe","channel":"room:1"}"#));
        let _ = h.written(k);
    }
    // Fill the slow subscriber's queue past half its limit (nothing is written).
    let pad = "x".repeat(700);
    for i in 0..4 {
        let publish = format!(
            r#"{{"id":{},"cmd":"publish","channel":"room:1","data":"{pad}"}}"#,
            10 + i
        );
        h.read(typist, &cmd(&publish));
    }
    let _ = h.written(typist);
    assert!(h.core.out_mut(slow.slot).unwrap().charged() > 2048);
    h.read(
        typist,
        &cmd(r#"{"id":20,"cmd":"typing","channel":"room:1"}"#),
    );
    assert_eq!(
        h.core.state(slow),
        Some(ConnState::Open),
        "not a slow consumer"
    );
    assert_eq!(
        h.core
            .metrics()
            .ephemeral_dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let typed = h.written(typist);
    assert!(
        String::from_utf8_lossy(&typed).contains(r#""typing":true"#),
        "the typist's own connection (queue empty) gets it"
    );
    // The slow one gets its publications, and no typing.
    let out = String::from_utf8_lossy(&h.written(slow)).into_owned();
    assert_eq!(out.matches(r#""push":"publication""#).count(), 4);
    assert!(!out.contains("typing"), "{out}");
}

#[test]
fn control_pushes_reach_users_clients_and_channels_and_coalesce() {
    let mut h = harness(|_| {});
    let (a, b) = (h.open(), h.open());
    h.read(b, &cmd(r#"{"id":2,"cmd":"subscribe","channel":"room:1"}"#));
    let _ = h.written(b);
    let push = |to: PushTo, key: Option<&str>| {
        ShardMsg::Push(Arc::new(Push {
            to,
            coalesce: key.map(Arc::from),
        }))
    };
    let f = |n: u32| crate::control::frames(&serde_json::json!({"push": "x", "n": n}));
    let ns = |bytes: Vec<u8>| -> Vec<u64> {
        frames(&bytes)
            .iter()
            .map(|(_, p)| {
                let v: serde_json::Value = serde_json::from_slice(p).unwrap();
                v["n"].as_u64().unwrap()
            })
            .collect()
    };
    // Every connection of a user.
    h.core.on_message(
        push(PushTo::Users(vec![(Arc::from("u"), f(1))]), None),
        h.clock,
    );
    assert_eq!((ns(h.written(a)), ns(h.written(b))), (vec![1], vec![1]));
    h.core.on_message(
        push(PushTo::Users(vec![(Arc::from("v"), f(9))]), None),
        h.clock,
    );
    // One connection, and only while it is the same connection.
    let client = |k: ConnKey, gen: u32| ClientId {
        shard: 0,
        slot: k.slot,
        gen,
    };
    h.core
        .on_message(push(PushTo::Client(client(a, a.gen), f(2)), None), h.clock);
    h.core.on_message(
        push(PushTo::Client(client(a, a.gen + 1), f(3)), None),
        h.clock,
    );
    assert_eq!((ns(h.written(a)), ns(h.written(b))), (vec![2], vec![]));
    // A channel's subscribers, but the one left out.
    let channel = |except| PushTo::Channel {
        channel: Arc::from("room:1"),
        except,
        frames: f(4),
    };
    h.core
        .on_message(push(channel(Some(client(b, b.gen))), None), h.clock);
    assert!(h.written(b).is_empty());
    h.core.on_message(push(channel(None), None), h.clock);
    assert_eq!((ns(h.written(a)), ns(h.written(b))), (vec![], vec![4]));
    // Coalescing: while unwritten, each push of a key replaces the previous one.
    for n in 5..=7 {
        h.core.on_message(
            push(
                PushTo::Users(vec![(Arc::from("u"), f(n))]),
                Some("progress"),
            ),
            h.clock,
        );
    }
    assert_eq!(ns(h.written(a)), vec![7]);
    let metrics = h.core.metrics().clone();
    let coalesced = &metrics.coalesced;
    assert_eq!(coalesced.load(std::sync::atomic::Ordering::Relaxed), 4);
    h.core.on_message(
        push(
            PushTo::Users(vec![(Arc::from("u"), f(8))]),
            Some("progress"),
        ),
        h.clock,
    );
    assert_eq!(ns(h.written(a)), vec![8], "written ones are not replaced");
    assert_eq!(
        ns(h.written(b)),
        vec![8],
        "b, still not written, gets the latest"
    );
    assert_eq!(coalesced.load(std::sync::atomic::Ordering::Relaxed), 5);
}

#[test]
fn call_commands_are_forwarded_and_departures_reported() {
    let mut h = harness(|_| {});
    let a = h.open();
    h.read(a, &cmd(r#"{"id":2,"cmd":"call_accept","call":7}"#));
    let Ok(ControlRequest::Command { caller, cmd: c, .. }) = h.control.try_recv() else {
        panic!("expected a forwarded command")
    };
    assert_eq!((&*caller.user, caller.client.slot), ("u", a.slot));
    assert!(matches!(
        c,
        ControlCommand::CallAction {
            call: 7,
            action: CallAction::Accept,
            ..
        }
    ));
    h.read(
        a,
        &cmd(r#"{"id":3,"cmd":"call_signal","call":7,"to":"0.1","data":1}"#),
    );
    assert!(String::from_utf8_lossy(&h.written(a)).contains("104"));
    h.core.on_eof(a.slot, h.clock);
    let Ok(ControlRequest::Gone { caller, graceful }) = h.control.try_recv() else {
        panic!("expected a departure")
    };
    assert_eq!((caller.client.slot, graceful), (a.slot, false));
    // A connection that never took part in a call is not reported.
    let b = h.open();
    h.core.on_eof(b.slot, h.clock);
    assert!(h.control.try_recv().is_err());
}

#[test]
fn rate_limits_refuse_with_retry_after_share_user_buckets_and_disconnect() {
    // User buckets in the table the shards share, and kept by the shard.
    for users in [32_768, 0] {
        rate_limits_with(users);
    }
}

fn rate_limits_with(users: u32) {
    use crate::limits::LimitRule;
    let rule = LimitRule::new;
    let mut h = harness(|c| {
        c.rate_limits = vec![
            rule(Scope::Connection, LimitEvent::Publish, 3, 90),
            rule(Scope::User, LimitEvent::Command, 5, 1000),
        ];
        c.rate_limit_disconnect_after = 3;
        c.rate_limit_users = users;
    });
    let (a, b) = (h.open(), h.open());
    let publish = |id: u32| {
        cmd(&format!(
            r#"{{"id":{id},"cmd":"publish","channel":"room:1","data":1}}"#
        ))
    };
    let reply = |h: &mut Harness, k: ConnKey| -> serde_json::Value {
        let out = h.written(k);
        let f = frames(&out);
        serde_json::from_slice(&f.last().expect("a reply").1).unwrap()
    };
    for id in 10..13 {
        h.read(a, &publish(id));
        assert!(reply(&mut h, a).get("result").is_some());
    }
    h.read(a, &publish(13));
    let r = reply(&mut h, a);
    assert_eq!(r["error"]["code"], 114, "{r}");
    assert_eq!(r["error"]["retry_after_ms"], 30, "{r}");
    assert_eq!(r["error"]["message"], "rate limit exceeded: publish");
    // 30 ms later one publish fits again (the refused one took nothing).
    h.tick(3);
    h.read(a, &publish(14));
    assert!(reply(&mut h, a).get("result").is_some());
    // The user's bucket is shared by its connections: b has its own connection
    // bucket but the user has used 4 of 5 commands.
    h.read(b, &publish(15));
    assert!(reply(&mut h, b).get("result").is_some());
    h.read(b, &publish(16));
    let r = reply(&mut h, b);
    assert_eq!(
        r["error"]["message"], "rate limit exceeded: commands",
        "{r}"
    );
    assert!(r["error"]["retry_after_ms"].as_u64().unwrap() > 100, "{r}");
    // Refused three times in a row: closed with 4008.
    h.read(b, &publish(17));
    assert_eq!(reply(&mut h, b)["error"]["code"], 114);
    h.read(b, &publish(18));
    let out = h.written(b);
    let f = frames(&out);
    assert_eq!(f.last().unwrap().0, OpCode::Close);
    assert_eq!(&f.last().unwrap().1[..2], &4008u16.to_be_bytes());
    assert_eq!(
        h.core.metrics().closes[CloseKind::RateLimited as usize]
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(
        h.core.metrics().rate_limited[LimitEvent::Command.index()]
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );
    // New rules at runtime: none, and a publishes freely.
    h.core
        .on_message(ShardMsg::Limits(Arc::new(LimitTable::default())), h.clock);
    for id in 20..30 {
        h.read(a, &publish(id));
        assert!(reply(&mut h, a).get("result").is_some());
    }
}

#[test]
fn user_connections_inline_then_listed() {
    let mut u = UserConns::default();
    u.add(3);
    assert_eq!(u.slots(), [3]);
    u.add(5);
    u.add(7);
    assert_eq!(u.slots(), [3, 5, 7]);
    assert!(!u.remove(5));
    assert!(!u.remove(3));
    assert!(matches!(u, UserConns::One([7])));
    assert!(!u.remove(9), "another slot leaves it");
    assert!(u.remove(7));
}

#[test]
fn ping_then_heartbeat_timeout() {
    let mut h = harness(|_| {});
    let key = h.open();
    h.tick(5);
    assert!(h.written(key).is_empty(), "nothing due yet");
    h.tick(10); // ping interval (100 ms = 10 ticks) of silence
    assert_eq!(frames(&h.written(key)), vec![(OpCode::Ping, vec![])]);
    h.tick(14);
    assert!(h.written(key).is_empty(), "one ping per silence");
    h.tick(15); // + pong timeout
    let f = frames(&h.written(key));
    assert_eq!(f.len(), 2);
    assert!(matches!(
        envelope::decode_server_message(Format::Json, &f[0].1).unwrap(),
        ServerMessage::Disconnect { code: 4004, .. }
    ));
    assert_eq!(f[1].0, OpCode::Close);
    assert_eq!(&f[1].1[..2], &4004u16.to_be_bytes());
    assert_eq!(h.core.state(key), Some(ConnState::Draining));
    h.tick(30); // close timeout: give up on the peer
    assert_eq!(h.core.state(key), Some(ConnState::Closed));
    h.core.remove(key.slot);
    assert_eq!(h.core.connections(), 0);
}

#[test]
fn activity_postpones_the_ping() {
    let mut h = harness(|_| {});
    let key = h.open();
    for tick in [6, 12, 18, 24] {
        h.tick(tick);
        h.read(
            key,
            &frame::encode_masked(true, OpCode::Pong, b"", [1, 1, 1, 1]),
        );
        assert!(
            h.written(key).is_empty(),
            "no ping at tick {tick}: the client is talking"
        );
    }
    h.tick(34);
    assert_eq!(frames(&h.written(key)), vec![(OpCode::Ping, vec![])]);
}

#[test]
fn handshake_and_auth_timeouts() {
    let mut h = harness(|_| {});
    let trickle = h.core.admit("127.0.0.1".parse().unwrap(), h.clock).unwrap();
    h.read(trickle, b"GET / HTTP/1.1\r\n");
    let idle = h.core.admit("127.0.0.2".parse().unwrap(), h.clock).unwrap();
    h.read(idle, UPGRADE);
    let _ = h.written(idle);
    h.tick(10);
    assert_eq!(
        h.core.state(trickle),
        Some(ConnState::Closed),
        "handshake timeout"
    );
    assert_eq!(h.core.state(idle), Some(ConnState::AwaitingConnect));
    h.tick(20);
    let f = frames(&h.written(idle));
    assert_eq!(&f.last().unwrap().1[..2], &4002u16.to_be_bytes());
}

#[test]
fn bytes_split_anywhere_make_the_same_commands() {
    let mut h = harness(|_| {});
    let key = h.open();
    let sub = frame::encode_masked(
        true,
        OpCode::Text,
        br#"{"id":2,"cmd":"subscribe","channel":"a"}"#,
        [1, 2, 3, 4],
    );
    let publ = frame::encode_masked(
        true,
        OpCode::Text,
        br#"{"id":3,"cmd":"publish","channel":"a","data":[1]}"#,
        [5, 6, 7, 8],
    );
    let stream: Vec<u8> = [sub, publ].concat();
    for b in stream.chunks(3) {
        h.read(key, b);
    }
    let f = frames(&h.written(key));
    let texts: Vec<String> = f
        .iter()
        .map(|(_, p)| String::from_utf8(p.clone()).unwrap())
        .collect();
    // The epoch is random per shard start; the offset is the channel's first.
    let epoch = texts[2]
        .split("\"epoch\":\"")
        .nth(1)
        .and_then(|r| r.get(..16))
        .expect("the publish reply carries the position")
        .to_string();
    assert_eq!(
        texts,
        vec![
            format!(r#"{{"id":2,"result":{{"epoch":"{epoch}","offset":0}}}}"#),
            format!(
                r#"{{"push":"publication","channel":"a","epoch":"{epoch}","offset":1,"data":[1]}}"#
            ),
            format!(r#"{{"id":3,"result":{{"epoch":"{epoch}","offset":1}}}}"#),
        ]
    );
}
