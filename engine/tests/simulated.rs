//! Shards and clients on a simulated network with a virtual clock (see `sim`): timing
//! behaviour — heartbeats, recovery after a reconnect, slow consumers — checked without
//! sockets or sleeping, on two shards so cross-shard paths are in play.

mod sim;

use serde_json::Value;
use sim::Sim;
use switchboard_engine::EngineConfig;
use switchboard_protocol::frame::{self, OpCode};

fn config() -> EngineConfig {
    EngineConfig {
        tick_ms: 10,
        ping_interval_ms: 1_000,
        pong_timeout_ms: 500,
        reconnect_secret: Some(std::sync::Arc::from(
            &b"sim-reconnect-secret-0123456789"[..],
        )),
        reconnect_ttl_ms: 60_000,
        ..EngineConfig::default()
    }
}

#[test]
fn a_silent_peer_is_pinged_then_closed_while_one_that_answers_stays() {
    let mut sim = Sim::new(2, config());
    let (silent, _) = sim.connect(0, "silent");
    let (lively, _) = sim.connect(1, "lively");
    let mut pings = 0;
    // 3 s of virtual time in 100 ms steps; `lively` answers every ping with a pong.
    for _ in 0..30 {
        sim.advance(100);
        for (op, payload) in sim.control_frames(lively) {
            if op == OpCode::Ping {
                pings += 1;
                let pong = frame::encode_masked(true, OpCode::Pong, &payload, [1, 2, 3, 4]);
                sim.send_raw(lively, &pong);
            }
        }
    }
    assert!(pings >= 2, "pinged every ping interval of silence: {pings}");
    assert!(sim.is_open(lively), "a peer that answers stays");
    assert_eq!(sim.close_code(silent), Some(4004), "heartbeat timeout");
    assert!(sim.is_gone(silent), "closed and dropped by its shard");
    // It was closed at ping interval + pong timeout (1.5 s), not before.
    let mut sim = Sim::new(1, config());
    let (quiet, _) = sim.connect(0, "quiet");
    sim.advance(1_400);
    assert!(
        sim.is_open(quiet),
        "still within ping interval + pong timeout"
    );
    sim.advance(200);
    assert!(!sim.is_open(quiet), "past it");
}

#[test]
fn a_reconnect_on_another_shard_recovers_exactly_what_was_missed() {
    let mut cfg = config();
    cfg.ping_interval_ms = 600_000; // the writer stays quiet for a while
    let mut sim = Sim::new(2, cfg);
    let channel = "room:recover";
    let owner = sim.owner(channel);
    let (reader, connected) = sim.connect(1 - owner, "reader");
    let token = connected["result"]["reconnect_token"]
        .as_str()
        .expect("a reconnect token")
        .to_string();
    let (writer, _) = sim.connect(owner, "writer");
    sim.command(
        reader,
        &format!(r#"{{"id":2,"cmd":"subscribe","channel":"{channel}"}}"#),
    );
    let sub = sim.reply(reader, 2);
    let epoch = sub["result"]["epoch"].as_str().unwrap().to_string();
    let publish = |sim: &mut Sim, id: u64, text: &str| {
        sim.command(
            writer,
            &format!(r#"{{"id":{id},"cmd":"publish","channel":"{channel}","data":"{text}"}}"#),
        );
        sim.reply(writer, id)["result"]["offset"].as_u64().unwrap()
    };
    for (id, text) in [(10, "one"), (11, "two"), (12, "three")] {
        publish(&mut sim, id, text);
    }
    let seen = publications(sim.messages(reader));
    assert_eq!(
        seen,
        vec![(1, "one".into()), (2, "two".into()), (3, "three".into())]
    );
    // The reader's network goes; two more publications while it is away (30 s).
    sim.drop_client(reader);
    sim.advance(15_000);
    publish(&mut sim, 13, "four");
    sim.advance(15_000);
    publish(&mut sim, 14, "five");
    // It comes back on the other shard with its token and last position.
    let back = sim.dial(owner);
    sim.command(
        back,
        &format!(
            r#"{{"id":1,"cmd":"connect","reconnect":"{token}","positions":{{"{channel}":{{"epoch":"{epoch}","offset":3}}}}}}"#
        ),
    );
    let msgs = sim.messages(back);
    let connect = msgs.iter().find(|m| m["id"] == 1).expect("connect reply");
    assert_eq!(connect["result"]["resumed"], true, "{connect}");
    let restored = msgs
        .iter()
        .find(|m| m["push"] == "subscribed" && m["channel"] == channel)
        .unwrap_or_else(|| panic!("subscription restored: {msgs:?}"));
    assert_eq!(restored["recovered"], true, "{restored}");
    let missed: Vec<(u64, String)> = restored["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["offset"].as_u64().unwrap(),
                p["data"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(missed, vec![(4, "four".into()), (5, "five".into())]);
    // Live again: the next publication arrives once, in order.
    publish(&mut sim, 15, "six");
    assert_eq!(publications(sim.messages(back)), vec![(6, "six".into())]);
    // Past the token's life, the same token is refused.
    sim.advance(61_000);
    let late = sim.dial(owner);
    sim.command(
        late,
        &format!(r#"{{"id":1,"cmd":"connect","reconnect":"{token}"}}"#),
    );
    let refused = sim.reply(late, 1);
    assert!(
        refused["error"]["code"].is_u64(),
        "expired token refused: {refused}"
    );
}

#[test]
fn a_slow_consumer_is_closed_while_the_others_keep_up() {
    let mut cfg = config();
    cfg.max_outbound_bytes = 32 * 1024;
    cfg.ping_interval_ms = 600_000;
    let mut sim = Sim::new(2, cfg);
    sim.link_bytes = 16 * 1024;
    let channel = "room:busy";
    let mut readers = Vec::new();
    for (i, user) in ["a", "b", "c", "d"].into_iter().enumerate() {
        let (c, _) = sim.connect(i % 2, user);
        sim.command(
            c,
            &format!(r#"{{"id":2,"cmd":"subscribe","channel":"{channel}"}}"#),
        );
        sim.reply(c, 2);
        readers.push(c);
    }
    let slow = readers.pop().unwrap();
    sim.set_reading(slow, false);
    let (writer, _) = sim.connect(0, "writer");
    let text = "x".repeat(1_000);
    let mut got = vec![Vec::new(); readers.len()];
    for i in 0..100u64 {
        sim.command(
            writer,
            &format!(
                r#"{{"id":{},"cmd":"publish","channel":"{channel}","data":"{text}"}}"#,
                100 + i
            ),
        );
        sim.advance(10);
        for (n, &r) in readers.iter().enumerate() {
            got[n].extend(publications(sim.messages(r)).into_iter().map(|(o, _)| o));
        }
    }
    for (n, offsets) in got.iter().enumerate() {
        assert_eq!(
            *offsets,
            (1..=100).collect::<Vec<u64>>(),
            "reader {n} got every one, in order"
        );
    }
    assert!(!sim.is_open(slow), "the slow consumer was closed");
    // It reads at last: what it had, then the reason and the close code.
    sim.set_reading(slow, true);
    let msgs = sim.messages(slow);
    let last = msgs.last().expect("a disconnect push");
    assert_eq!(last["push"], "disconnect", "{last}");
    assert_eq!(last["code"], 4003, "{last}");
    assert_eq!(sim.close_code(slow), Some(4003));
    let offsets: Vec<u64> = publications(msgs).into_iter().map(|(o, _)| o).collect();
    assert!(
        offsets.windows(2).all(|w| w[1] == w[0] + 1) && offsets.len() < 100,
        "in order, and not all of them: {offsets:?}"
    );
}

/// `(offset, data)` of the publication pushes among `msgs`.
fn publications(msgs: Vec<Value>) -> Vec<(u64, String)> {
    msgs.into_iter()
        .filter(|m| m["push"] == "publication")
        .map(|m| {
            (
                m["offset"].as_u64().unwrap(),
                m["data"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_channel_lives_on_the_shard_that_used_it_first() {
    let mut sim = Sim::new(2, config());
    // Channels a hash would put on shard 0, first used from shard 1.
    let channels: Vec<String> = (0..)
        .map(|i| format!("room:placed:{i}"))
        .filter(|c| switchboard_engine::streams::owner(c, 2) == 0)
        .take(3)
        .collect();
    let (near, _) = sim.connect(1, "near");
    for (i, c) in channels.iter().enumerate() {
        let id = 10 + i as u64;
        sim.command(
            near,
            &format!(r#"{{"id":{id},"cmd":"subscribe","channel":"{c}"}}"#),
        );
        assert_eq!(sim.reply(near, id)["result"]["offset"], 0);
        assert_eq!(sim.owner(c), 1, "{c}: home where it was first used");
    }
    let streams = |sim: &Sim, shard: usize| {
        sim.shards[shard]
            .metrics()
            .streams
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    // A subscriber on the other shard is served from the home, in order.
    let (far, _) = sim.connect(0, "far");
    sim.command(
        far,
        &format!(
            r#"{{"id":2,"cmd":"subscribe","channel":"{}"}}"#,
            channels[0]
        ),
    );
    assert_eq!(sim.reply(far, 2)["result"]["offset"], 0);
    for (id, text) in [(20, "a"), (21, "b")] {
        sim.command(
            near,
            &format!(
                r#"{{"id":{id},"cmd":"publish","channel":"{}","data":"{text}"}}"#,
                channels[0]
            ),
        );
    }
    let got = sim.messages(near);
    let reply = got.iter().find(|m| m["id"] == 21).expect("publish reply");
    assert_eq!(reply["result"]["offset"], 2);
    let want = vec![(1, "a".to_string()), (2, "b".to_string())];
    assert_eq!(publications(got), want);
    assert_eq!(publications(sim.messages(far)), want);
    // A publication from the far shard crosses to the home and back, still in order.
    sim.command(
        far,
        &format!(
            r#"{{"id":3,"cmd":"publish","channel":"{}","data":"c"}}"#,
            channels[0]
        ),
    );
    let got = sim.messages(far);
    let reply = got.iter().find(|m| m["id"] == 3).expect("publish reply");
    assert_eq!(reply["result"]["offset"], 3);
    assert_eq!(publications(got), vec![(3, "c".into())]);
    assert_eq!(publications(sim.messages(near)), vec![(3, "c".into())]);
    sim.advance(1_000); // the gauge is refreshed by the shards' timers
    assert_eq!((streams(&sim, 0), streams(&sim, 1)), (0, 3));
}
