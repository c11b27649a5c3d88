//! Calls between users on different nodes sharing a real `redis-server` (installed by
//! `bash .ci/run`, started here on a free port, killed by PID): a call placed on one
//! node rings, is answered, signals both ways and ends from another; a room call rings
//! and is joined across nodes; when the node holding a call is killed (SIGKILL), the
//! participants on other nodes are told the call failed, and when a participant's
//! node goes, the call's node loses it and, after the grace period, fails the call.

mod common;

use std::time::Duration;

use serde_json::{json, Value};
use switchboard_control_plane::Server;

use common::{Client, Fmt, RedisServer};

fn node(redis: &RedisServer, id: &str) -> Server {
    common::cluster_node(redis, id, |c| {
        c.calls.grace_ms = 300;
    })
}

async fn user(server: &Server, who: &str, fmt: Fmt) -> Client {
    let tok = common::token_with(who, |c| {
        c.send_to = Some(vec!["*".into()]);
        c.channels = Some(vec!["room:*".into()]);
    });
    Client::connect(server.ws_addr(), fmt, &tok).await
}

async fn call_event(c: &mut Client, event: &str) -> Value {
    tokio::time::timeout(common::TIMEOUT, async {
        loop {
            let p = c.next_push(&["call"]).await;
            if p["event"] == json!(event) {
                return p;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no '{event}' call event in time"))
}

fn ok(r: Value) -> Value {
    r.get("result").cloned().unwrap_or_else(|| panic!("{r}"))
}

/// Wait until the registry holds `ids`, each with a tag (call ids name their node),
/// and every node has read it.
async fn registry_settles(redis: &RedisServer, ids: &[&str]) {
    let deadline = std::time::Instant::now() + common::TIMEOUT;
    let mut c = redis.connection();
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "registry never settled"
        );
        let tagged = ids.iter().all(|id| {
            let entry: Option<String> = redis::cmd("GET")
                .arg(format!("{{sb}}:node:{id}"))
                .query(&mut c)
                .unwrap();
            entry
                .and_then(|e| serde_json::from_str::<Value>(&e).ok())
                .is_some_and(|e| e["tag"].as_u64().unwrap_or(0) > 0)
        });
        if tagged {
            // Every node reads the registry at its next heartbeat (100 ms).
            return tokio::time::sleep(Duration::from_millis(300)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_between_users_on_different_nodes() {
    let redis = RedisServer::start();
    let (n1, n2) = (node(&redis, "n1"), node(&redis, "n2"));
    registry_settles(&redis, &["n1", "n2"]).await;
    let mut alice = user(&n1, "alice", Fmt::Json).await;
    let mut bob = user(&n2, "bob", Fmt::MsgPack).await;
    // Bob's personal channel links on n2 before the ring is sent.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let r = ok(alice
        .call(json!({"cmd": "call", "user": "bob", "media": "video"}))
        .await);
    let id = r["call"].as_u64().unwrap();
    assert!(id >> 33 > 0, "the id names n1: {id}");
    let ring = call_event(&mut bob, "ring").await;
    assert_eq!(ring["call"], json!(id), "{ring}");
    let alice_client = ring["from"]["client"].as_str().unwrap().to_string();

    // Bob answers on n2: the command goes to n1, which holds the call.
    let answer = ok(bob.call(json!({"cmd": "call_accept", "call": id})).await);
    assert_eq!(answer["state"], "accepted", "{answer}");
    let peers = answer["participants"].as_array().unwrap();
    let bob_client = peers[1]["client"].as_str().unwrap().to_string();
    assert!(bob_client.starts_with("n2/"), "{answer}");
    let accepted = call_event(&mut alice, "accepted").await;
    assert_eq!(accepted["by"]["client"], json!(bob_client), "{accepted}");

    // Signaling both ways, named and unnamed.
    let r = ok(alice
        .call(json!({"cmd": "call_signal", "call": id, "data": {"sdp": "offer"}}))
        .await);
    assert_eq!(r["state"], "accepted", "{r}");
    let s = call_event(&mut bob, "signal").await;
    assert_eq!(s["data"], json!({"sdp": "offer"}), "{s}");
    let r = ok(bob
        .call(json!({"cmd": "call_signal", "call": id, "to": alice_client, "data": {"sdp": "answer"}}))
        .await);
    assert_eq!(r["state"], "in_progress", "{r}");
    let s = call_event(&mut alice, "signal").await;
    assert_eq!(s["from"]["client"], json!(bob_client), "{s}");
    let r = ok(alice
        .call(json!({"cmd": "call_signal", "call": id, "to": bob_client, "data": {"ice": 1}}))
        .await);
    assert_eq!(r["state"], "in_progress", "{r}");
    assert_eq!(
        call_event(&mut bob, "signal").await["data"],
        json!({"ice": 1})
    );

    // A refusal comes back from the call's node as it would on one node.
    let r = bob
        .call(json!({"cmd": "call_signal", "call": id, "to": "n9/0.1.1", "data": 1}))
        .await;
    assert_eq!(r["error"]["code"], 112, "{r}");
    let r = bob
        .call(json!({"cmd": "call_accept", "call": id + 1}))
        .await;
    assert_eq!(r["error"]["code"], 112, "no such call on n1: {r}");

    // Bob hangs up on n2; alice on n1 is told; the call log on n1 has it.
    let r = ok(bob
        .call(json!({"cmd": "call_end", "call": id, "reason": "bye"}))
        .await);
    assert_eq!(r["state"], "ended", "{r}");
    let ended = call_event(&mut alice, "ended").await;
    assert_eq!(ended["outcome"], "completed", "{ended}");
    let (status, log) = common::api(n1.admin_addr(), "GET", "/api/calls/log", &json!(null)).await;
    assert_eq!(status, 200, "{log}");
    assert_eq!(log["calls"][0]["outcome"], "completed", "{log}");
    assert_eq!(
        log["calls"][0]["participants"],
        json!(["alice", "bob"]),
        "{log}"
    );

    // A room call placed on n2 rings subscribers on n1, who join it from there.
    ok(alice
        .call(json!({"cmd": "subscribe", "channel": "room:7"}))
        .await);
    ok(bob
        .call(json!({"cmd": "subscribe", "channel": "room:7"}))
        .await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = ok(bob.call(json!({"cmd": "call", "channel": "room:7"})).await);
    let room_call = r["call"].as_u64().unwrap();
    let ring = call_event(&mut alice, "ring").await;
    assert_eq!(ring["room"], "room:7", "{ring}");
    let r = ok(alice
        .call(json!({"cmd": "call_accept", "call": room_call}))
        .await);
    assert_eq!(r["state"], "accepted", "{r}");
    let joined = call_event(&mut bob, "accepted").await;
    assert!(
        joined["by"]["client"].as_str().unwrap().starts_with("n1/"),
        "{joined}"
    );
    n1.shutdown();
    n2.shutdown();
}

/// A node as a process of its own (to be killed), and its WebSocket address.
fn node_process(redis: &RedisServer, id: &str) -> (std::process::Child, std::net::SocketAddr) {
    let (child, ws, _) = common::cluster_process(redis, id, "[calls]\ngrace_ms = 300\n");
    (child, ws)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_end_for_the_others_when_a_node_is_killed() {
    let redis = RedisServer::start();
    let n1 = node(&redis, "n1");
    let (mut n2, n2_ws) = node_process(&redis, "n2");
    let (mut n3, n3_ws) = node_process(&redis, "n3");
    registry_settles(&redis, &["n1", "n2", "n3"]).await;
    let tok = |who: &str| common::token_with(who, |c| c.send_to = Some(vec!["*".into()]));
    let mut alice = Client::connect(n1.ws_addr(), Fmt::Json, &tok("alice")).await;
    let mut bob = Client::connect(n2_ws, Fmt::Json, &tok("bob")).await;
    let mut carl = Client::connect(n3_ws, Fmt::Json, &tok("carl")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A call held by n2 between bob (n2) and alice (n1), and one held by n3 between
    // carl (n3) and alice.
    let id = ok(bob.call(json!({"cmd": "call", "user": "alice"})).await)["call"]
        .as_u64()
        .unwrap();
    call_event(&mut alice, "ring").await;
    ok(alice.call(json!({"cmd": "call_accept", "call": id})).await);
    let id3 = ok(carl.call(json!({"cmd": "call", "user": "alice"})).await)["call"]
        .as_u64()
        .unwrap();
    call_event(&mut alice, "ring").await;
    ok(alice.call(json!({"cmd": "call_accept", "call": id3})).await);
    call_event(&mut carl, "accepted").await;

    // n2, which holds the first call, is killed: alice is told it failed.
    n2.kill().unwrap();
    let _ = n2.wait();
    let ended = call_event(&mut alice, "ended").await;
    assert_eq!(
        (&ended["call"], &ended["outcome"]),
        (&json!(id), &json!("failed")),
        "{ended}"
    );
    let r = alice
        .call(json!({"cmd": "call_signal", "call": id, "data": 1}))
        .await;
    assert_eq!(
        r["error"]["code"], 112,
        "the call is gone with its node: {r}"
    );

    // alice's node, n1, goes: n3 loses her, then fails the call after the grace
    // period.
    n1.shutdown();
    let lost = call_event(&mut carl, "participant_lost").await;
    assert_eq!(lost["call"], json!(id3), "{lost}");
    let ended = call_event(&mut carl, "ended").await;
    assert_eq!(ended["outcome"], "failed", "{ended}");
    drop(alice);
    n3.kill().unwrap();
    let _ = n3.wait();
}
