//! Call signaling over real sockets on two shards: ringing every device of the callee,
//! a race of two devices accepting (exactly one wins, the other is told), signaling
//! relayed to the right connection, `in_progress` after both sides signaled, quality
//! reports, the admin list and the stored call log; glare (two users calling each other
//! at once) resolving to one call; a missed call after the ring timeout (both sides
//! told, a `missed_call` notification); a dropped participant coming back within the
//! grace period and the call failing after it; room calls; refusals.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn caller_token(sub: &str, may_call: &[&str]) -> String {
    token_with(sub, |c| {
        c.send_to = Some(may_call.iter().map(|s| s.to_string()).collect());
    })
}

async fn call_event(c: &mut Client, event: &str) -> Value {
    loop {
        let p = c.next_push(&["call"]).await;
        if p["event"] == json!(event) {
            return p;
        }
    }
}

/// Read the replies of two commands sent back to back.
async fn two_replies(c1: &mut Client, id1: u64, c2: &mut Client, id2: u64) -> (Value, Value) {
    async fn reply(c: &mut Client, id: u64) -> Value {
        let mut kept = std::collections::VecDeque::new();
        let reply = loop {
            match c.next_event().await {
                Event::Msg(m) if m.get("id") == Some(&json!(id)) => break m,
                Event::Msg(m) => kept.push_back(Event::Msg(m)),
                e => panic!("expected reply {id}, got {e:?}"),
            }
        };
        kept.extend(c.backlog.drain(..));
        c.backlog = kept;
        reply
    }
    (reply(c1, id1).await, reply(c2, id2).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_race_to_accept_signaling_quality_and_the_call_log() {
    let server = start(|_| {});
    let (addr, admin) = (server.ws_addr(), server.admin_addr());
    let mut ann = client_on_shard(addr, Fmt::Json, &caller_token("ann", &["bob"]), 0).await;
    let mut phone = client_on_shard(addr, Fmt::Json, &caller_token("bob", &[]), 0).await;
    let mut laptop = client_on_shard(addr, Fmt::MsgPack, &caller_token("bob", &[]), 1).await;

    let r = ann
        .call(json!({"cmd": "call", "user": "bob", "media": "video", "data": {"title": "visit"}}))
        .await;
    assert_eq!(r["result"]["state"], json!("ringing"), "{r}");
    let id = r["result"]["call"].as_u64().unwrap();
    for c in [&mut phone, &mut laptop] {
        let ring = call_event(c, "ring").await;
        assert_eq!(ring["call"], json!(id), "{ring}");
        assert_eq!(ring["from"]["user"], json!("ann"), "{ring}");
        assert_eq!(ring["media"], json!("video"), "{ring}");
        assert_eq!(ring["data"]["title"], json!("visit"), "{ring}");
    }
    // Both devices accept at once: exactly one wins.
    phone
        .send(&json!({"id": 900, "cmd": "call_accept", "call": id}))
        .await;
    laptop
        .send(&json!({"id": 901, "cmd": "call_accept", "call": id}))
        .await;
    let (a, b) = two_replies(&mut phone, 900, &mut laptop, 901).await;
    let (winner, loser, won) = match (a.get("result"), b.get("result")) {
        (Some(_), None) => (&mut phone, &mut laptop, a.clone()),
        (None, Some(_)) => (&mut laptop, &mut phone, b.clone()),
        _ => panic!("exactly one accept must win: {a} {b}"),
    };
    let lost = if won == a { &b } else { &a };
    assert_eq!(lost["error"]["code"], json!(113), "{lost}");
    assert_eq!(won["result"]["state"], json!("accepted"), "{won}");
    // Answers computed by the call worker are counted by command and result too.
    let results = "switchboard_command_results_total{command=\"call_action\",result=";
    assert_eq!(metric(admin, &format!("{results}\"ok\"}}")).await, 1);
    assert_eq!(metric(admin, &format!("{results}\"rejected\"}}")).await, 1);
    let winner_client = won["result"]["participants"][1]["client"].clone();
    let accepted = call_event(&mut ann, "accepted").await;
    assert_eq!(accepted["by"]["client"], winner_client, "{accepted}");
    // The other device stops ringing: it is told who answered.
    let told = call_event(loser, "accepted").await;
    assert_eq!(told["by"]["client"], winner_client, "{told}");

    // Signaling goes to the other participant only.
    let r = ann
        .call(json!({"cmd": "call_signal", "call": id, "data": {"sdp": "offer"}}))
        .await;
    assert_eq!(r["result"]["state"], json!("accepted"), "{r}");
    let s = call_event(winner, "signal").await;
    assert_eq!(s["data"]["sdp"], json!("offer"), "{s}");
    assert_eq!(s["from"]["user"], json!("ann"), "{s}");
    let r = winner
        .call(json!({"cmd": "call_signal", "call": id, "data": {"sdp": "answer"}}))
        .await;
    assert_eq!(r["result"]["state"], json!("in_progress"), "{r}");
    assert_eq!(
        call_event(&mut ann, "signal").await["data"]["sdp"],
        json!("answer")
    );
    let r = winner
        .call(json!({"cmd": "call_signal", "call": id, "data": {"candidate": "c1"}}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    assert_eq!(
        call_event(&mut ann, "signal").await["data"]["candidate"],
        json!("c1")
    );
    // The device that lost cannot signal; it is not in the call.
    let r = loser
        .call(json!({"cmd": "call_signal", "call": id, "data": 1}))
        .await;
    assert_eq!(r["error"]["code"], json!(103), "{r}");
    let r = ann
        .call(json!({"cmd": "call_quality", "call": id, "data": {"rtt_ms": 42, "loss": 0.01}}))
        .await;
    assert!(r.get("result").is_some(), "{r}");

    let (st, r) = api(admin, "GET", "/api/calls", &json!(null)).await;
    assert_eq!(st, 200, "{r}");
    let calls = r["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{r}");
    assert_eq!(calls[0]["state"], json!("in_progress"), "{r}");
    assert_eq!(calls[0]["participants"].as_array().unwrap().len(), 2, "{r}");
    assert_eq!(
        calls[0]["participants"][0]["quality"]["rtt_ms"],
        json!(42),
        "{r}"
    );

    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = ann
        .call(json!({"cmd": "call_end", "call": id, "reason": "bye"}))
        .await;
    assert_eq!(r["result"]["state"], json!("ended"), "{r}");
    assert!(r["result"]["duration_ms"].as_u64().unwrap() >= 50, "{r}");
    let ended = call_event(winner, "ended").await;
    assert_eq!(
        (&ended["outcome"], &ended["reason"]),
        (&json!("completed"), &json!("bye")),
        "{ended}"
    );
    let r = ann.call(json!({"cmd": "call_end", "call": id})).await;
    assert_eq!(r["error"]["code"], json!(112), "over: {r}");
    let (_, r) = api(admin, "GET", "/api/calls", &json!(null)).await;
    assert_eq!(r["calls"], json!([]), "{r}");
    let (st, r) = api(admin, "GET", "/api/calls/log?user=bob", &json!(null)).await;
    assert_eq!(st, 200, "{r}");
    let log = &r["calls"][0];
    assert_eq!(
        (&log["id"], &log["caller"], &log["callee"], &log["outcome"]),
        (
            &json!(id),
            &json!("ann"),
            &json!("bob"),
            &json!("completed")
        ),
        "{r}"
    );
    assert!(log["duration_ms"].as_u64().unwrap() >= 50, "{r}");
    assert_eq!(log["participants"], json!(["ann", "bob"]), "{r}");
    server.shutdown();
    server.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glare_resolves_to_one_call() {
    let server = start(|c| c.calls.max_per_user = 1);
    let (addr, admin) = (server.ws_addr(), server.admin_addr());
    let mut ann = client_on_shard(addr, Fmt::Json, &caller_token("ann", &["bob"]), 0).await;
    let mut bob = client_on_shard(addr, Fmt::MsgPack, &caller_token("bob", &["ann"]), 1).await;
    ann.send(&json!({"id": 500, "cmd": "call", "user": "bob"}))
        .await;
    bob.send(&json!({"id": 501, "cmd": "call", "user": "ann"}))
        .await;
    let (a, b) = two_replies(&mut ann, 500, &mut bob, 501).await;
    assert_eq!(
        a["result"]["call"], b["result"]["call"],
        "one call: {a} {b}"
    );
    let states = [a["result"]["state"].clone(), b["result"]["state"].clone()];
    assert!(
        states.contains(&json!("ringing")) && states.contains(&json!("accepted")),
        "{a} {b}"
    );
    let second = if a["result"]["state"] == json!("accepted") {
        &a
    } else {
        &b
    };
    assert_eq!(second["result"]["glare"], json!(true), "{second}");
    let (_, r) = api(admin, "GET", "/api/calls", &json!(null)).await;
    let calls = r["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{r}");
    assert_eq!(calls[0]["state"], json!("accepted"), "{r}");
    // Both sides can signal at once.
    let r = bob
        .call(json!({"cmd": "call_signal", "call": calls[0]["id"], "data": "offer"}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    assert_eq!(call_event(&mut ann, "signal").await["data"], json!("offer"));
    // One call at a time each (calls.max_per_user = 1).
    let r = ann.call(json!({"cmd": "call", "user": "bob"})).await;
    assert_eq!(r["error"]["code"], json!(110), "{r}");
    server.shutdown();
    server.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_call_is_missed_and_rejection_cancel() {
    let server = start(|c| c.calls.ring_timeout_ms = 600);
    let (addr, admin) = (server.ws_addr(), server.admin_addr());
    let mut ann = client_on_shard(addr, Fmt::Json, &caller_token("ann", &["*"]), 0).await;
    let mut carl = client_on_shard(addr, Fmt::Json, &caller_token("carl", &[]), 1).await;
    let started = Instant::now();
    let r = ann.call(json!({"cmd": "call", "user": "carl"})).await;
    let id = r["result"]["call"].as_u64().unwrap();
    call_event(&mut carl, "ring").await;
    let missed = call_event(&mut ann, "missed").await;
    assert_eq!(missed["call"], json!(id), "{missed}");
    assert!(started.elapsed() >= Duration::from_millis(550), "too early");
    call_event(&mut carl, "missed").await;
    let n = carl.next_push(&["notification"]).await;
    assert_eq!(n["notification"]["kind"], json!("missed_call"), "{n}");
    assert_eq!(n["notification"]["data"]["from"], json!("ann"), "{n}");
    let r = carl.call(json!({"cmd": "call_accept", "call": id})).await;
    assert_eq!(r["error"]["code"], json!(112), "{r}");

    // Rejected: the caller is told, with the reason.
    let r = ann.call(json!({"cmd": "call", "user": "carl"})).await;
    let rejected_id = r["result"]["call"].as_u64().unwrap();
    call_event(&mut carl, "ring").await;
    let r = carl
        .call(json!({"cmd": "call_reject", "call": rejected_id, "reason": "busy"}))
        .await;
    assert_eq!(r["result"], json!({}), "{r}");
    let e = call_event(&mut ann, "rejected").await;
    assert_eq!(e["reason"], json!("busy"), "{e}");

    // Cancelled by the caller while ringing: the callee stops ringing.
    let r = ann.call(json!({"cmd": "call", "user": "carl"})).await;
    let cancelled_id = r["result"]["call"].as_u64().unwrap();
    call_event(&mut carl, "ring").await;
    let r = ann
        .call(json!({"cmd": "call_end", "call": cancelled_id}))
        .await;
    assert_eq!(r["result"]["state"], json!("ended"), "{r}");
    let e = call_event(&mut carl, "ended").await;
    assert_eq!(e["outcome"], json!("cancelled"), "{e}");

    let (_, r) = api(
        admin,
        "GET",
        "/api/calls/log?user=ann&limit=3",
        &json!(null),
    )
    .await;
    let outcomes: Vec<&Value> = r["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["outcome"])
        .collect();
    assert_eq!(
        outcomes,
        [&json!("cancelled"), &json!("rejected"), &json!("missed")],
        "{r}"
    );
    server.shutdown();
    server.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_participant_gets_a_grace_period() {
    let server = start(|c| c.calls.grace_ms = 700);
    let (addr, admin) = (server.ws_addr(), server.admin_addr());
    let mut ann = client_on_shard(addr, Fmt::Json, &caller_token("ann", &["bob"]), 0).await;
    let bob_token = caller_token("bob", &[]);
    let mut bob = client_on_shard(addr, Fmt::Json, &bob_token, 1).await;
    let r = ann.call(json!({"cmd": "call", "user": "bob"})).await;
    let id = r["result"]["call"].as_u64().unwrap();
    call_event(&mut bob, "ring").await;
    let r = bob.call(json!({"cmd": "call_accept", "call": id})).await;
    assert_eq!(r["result"]["state"], json!("accepted"), "{r}");
    call_event(&mut ann, "accepted").await;

    // A network blip: bob's connection drops without a close, and comes back.
    drop(bob);
    let lost = call_event(&mut ann, "participant_lost").await;
    assert_eq!(lost["from"]["user"], json!("bob"), "{lost}");
    let mut bob = client_on_shard(addr, Fmt::Json, &bob_token, 0).await;
    let r = bob.call(json!({"cmd": "call_accept", "call": id})).await;
    assert_eq!(r["result"]["state"], json!("accepted"), "came back: {r}");
    let back = call_event(&mut ann, "rejoined").await;
    assert_eq!(
        back["from"]["client"],
        r["result"]["participants"][1]["client"]
    );
    let r = ann
        .call(json!({"cmd": "call_signal", "call": id, "data": "after"}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    assert_eq!(call_event(&mut bob, "signal").await["data"], json!("after"));

    // Dropped again and not back in time: the call fails.
    drop(bob);
    call_event(&mut ann, "participant_lost").await;
    let started = Instant::now();
    let ended = call_event(&mut ann, "ended").await;
    assert_eq!(ended["outcome"], json!("failed"), "{ended}");
    assert!(started.elapsed() >= Duration::from_millis(500), "no grace");
    let (_, r) = api(admin, "GET", "/api/calls/log", &json!(null)).await;
    assert_eq!(r["calls"][0]["outcome"], json!("failed"), "{r}");
    assert_eq!(r["calls"][0]["reason"], json!("participant lost"), "{r}");

    // A clean close ends the call at once.
    let mut bob = client_on_shard(addr, Fmt::Json, &bob_token, 1).await;
    let r = ann.call(json!({"cmd": "call", "user": "bob"})).await;
    let id = r["result"]["call"].as_u64().unwrap();
    call_event(&mut bob, "ring").await;
    bob.call(json!({"cmd": "call_accept", "call": id})).await;
    bob.ws
        .write_frame(fastwebsockets::Frame::close(1000, b"bye"))
        .await
        .unwrap();
    let ended = call_event(&mut ann, "ended").await;
    assert_eq!(ended["outcome"], json!("completed"), "{ended}");
    server.shutdown();
    server.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_calls_and_refusals() {
    let server = start(|_| {});
    let addr = server.ws_addr();
    let mut ann = client_on_shard(
        addr,
        Fmt::Json,
        &token_with("ann", |c| c.channels = Some(vec!["room:*".into()])),
        0,
    )
    .await;
    let mut bob = client_on_shard(addr, Fmt::MsgPack, &caller_token("bob", &[]), 1).await;
    let mut cat = client_on_shard(addr, Fmt::Json, &caller_token("cat", &[]), 0).await;
    let dan_token = token_with("dan", |c| c.channels = Some(vec!["lobby:*".into()]));
    let mut dan = Client::connect(addr, Fmt::Json, &dan_token).await;
    for c in [&mut ann, &mut bob, &mut cat] {
        let r = c
            .call(json!({"cmd": "subscribe", "channel": "room:1"}))
            .await;
        assert!(r.get("result").is_some(), "{r}");
    }
    let r = ann
        .call(json!({"cmd": "call", "channel": "room:1", "media": "audio"}))
        .await;
    let id = r["result"]["call"].as_u64().unwrap();
    let ring = call_event(&mut bob, "ring").await;
    assert_eq!(ring["room"], json!("room:1"), "{ring}");
    call_event(&mut cat, "ring").await;
    let r = bob.call(json!({"cmd": "call_accept", "call": id})).await;
    assert_eq!(r["result"]["state"], json!("accepted"), "{r}");
    call_event(&mut ann, "accepted").await;
    let r = cat.call(json!({"cmd": "call_accept", "call": id})).await;
    assert_eq!(
        r["result"]["participants"].as_array().unwrap().len(),
        3,
        "{r}"
    );
    let cat_client = r["result"]["participants"][2]["client"].clone();
    call_event(&mut ann, "joined").await;
    call_event(&mut bob, "joined").await;
    // Not subscribed to the room: cannot join.
    let r = dan.call(json!({"cmd": "call_accept", "call": id})).await;
    assert_eq!(r["error"]["code"], json!(103), "{r}");
    // Signaling to one participant.
    let r = bob
        .call(json!({"cmd": "call_signal", "call": id, "to": cat_client, "data": "for cat"}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    assert_eq!(
        call_event(&mut cat, "signal").await["data"],
        json!("for cat")
    );
    let r = bob
        .call(json!({"cmd": "call_signal", "call": id, "to": "9.9.9", "data": 1}))
        .await;
    assert_eq!(r["error"]["code"], json!(112), "{r}");
    let r = bob
        .call(json!({"cmd": "call_signal", "call": id, "to": "x", "data": 1}))
        .await;
    assert_eq!(r["error"]["code"], json!(104), "{r}");
    // Leaving: the others go on; the last one out ends it.
    let r = cat.call(json!({"cmd": "call_end", "call": id})).await;
    assert_eq!(r["result"]["state"], json!("accepted"), "{r}");
    assert_eq!(
        call_event(&mut ann, "left").await["from"]["user"],
        json!("cat")
    );
    ann.call(json!({"cmd": "call_end", "call": id})).await;
    call_event(&mut bob, "left").await;
    let r = bob.call(json!({"cmd": "call_end", "call": id})).await;
    assert_eq!(r["result"]["state"], json!("ended"), "{r}");

    // Refusals.
    for (who, cmd, code) in [
        ("dan", json!({"cmd": "call", "user": "ann"}), 103),
        ("bob", json!({"cmd": "call", "user": "bob"}), 104),
        ("dan", json!({"cmd": "call", "channel": "room:1"}), 103),
        ("ann", json!({"cmd": "call", "channel": "bad name"}), 104),
        ("ann", json!({"cmd": "call_accept", "call": 123456}), 112),
        (
            "ann",
            json!({"cmd": "call", "user": "x", "channel": "room:1"}),
            104,
        ),
        ("ann", json!({"cmd": "call_signal", "call": 1}), 104),
        ("ann", json!({"cmd": "call_end", "call": "one"}), 104),
    ] {
        let c = match who {
            "dan" => &mut dan,
            "bob" => &mut bob,
            _ => &mut ann,
        };
        let r = c.call(cmd.clone()).await;
        assert_eq!(r["error"]["code"], json!(code), "{cmd}: {r}");
    }
    // Before the answer: no signaling; someone else cannot reject or end it.
    let ann_calls = caller_token("ann", &["bob"]);
    let mut ann2 = Client::connect(addr, Fmt::Json, &ann_calls).await;
    let r = ann2.call(json!({"cmd": "call", "user": "bob"})).await;
    let id = r["result"]["call"].as_u64().unwrap();
    let r = ann2
        .call(json!({"cmd": "call_signal", "call": id, "data": "early"}))
        .await;
    assert_eq!(r["error"]["code"], json!(113), "{r}");
    let r = cat.call(json!({"cmd": "call_reject", "call": id})).await;
    assert_eq!(r["error"]["code"], json!(103), "{r}");
    let r = cat.call(json!({"cmd": "call_end", "call": id})).await;
    assert_eq!(r["error"]["code"], json!(103), "{r}");
    let r = bob.call(json!({"cmd": "call_reject", "call": id})).await;
    assert_eq!(r["result"], json!({}), "{r}");
    let r = bob.call(json!({"cmd": "call_reject", "call": id})).await;
    assert_eq!(r["error"]["code"], json!(112), "{r}");
    server.shutdown();
    server.wait();
}
