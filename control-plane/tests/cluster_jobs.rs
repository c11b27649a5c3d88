//! Scheduled messages kept in a real `redis-server` (installed by `bash .ci/run`,
//! started here on a free port, killed by PID) by nodes that share it — or, in
//! `.ci/run`'s PostgreSQL pass, in the database they share, claimed for a lease: a message
//! scheduled through a node that is then killed (SIGKILL) still fires, from another
//! node, once; any node lists and cancels any node's scheduled messages; a user's own
//! `schedule` and `unschedule` work across nodes; many messages due at once with
//! three nodes racing to fire them are each published exactly once.

mod common;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchboard_control_plane::Server;

use common::{Client, Fmt, RedisServer};

fn node(redis: &RedisServer, id: &str) -> Server {
    common::cluster_node(redis, id, |_| {})
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

async fn schedule(admin: std::net::SocketAddr, channel: &str, data: Value, delay_ms: u64) -> u64 {
    let body = json!({"channel": channel, "data": data, "delay_ms": delay_ms});
    let (status, r) = common::api(admin, "POST", "/api/schedule", &body).await;
    assert_eq!(status, 200, "{r}");
    r["schedule"].as_u64().unwrap()
}

async fn listed(admin: std::net::SocketAddr, all: bool) -> Vec<Value> {
    let path = if all {
        "/api/schedule?all=true"
    } else {
        "/api/schedule"
    };
    let (status, r) = common::api(admin, "GET", path, &json!(null)).await;
    assert_eq!(status, 200, "{r}");
    r["scheduled"].as_array().unwrap().clone()
}

async fn subscriber(server: &Server, channel: &str) -> Client {
    let mut c = Client::connect(server.ws_addr(), Fmt::Json, &common::token("sam", None)).await;
    let r = c
        .call(json!({"cmd": "subscribe", "channel": channel}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    c
}

/// Publications `c` receives within `quiet` of each other (at most `secs` in all).
async fn publications(c: &mut Client, quiet: Duration, secs: u64) -> Vec<Value> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        match tokio::time::timeout(quiet, c.next_publication()).await {
            Ok(p) => got.push(p),
            Err(_) if !got.is_empty() => break,
            Err(_) => {}
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_messages_outlive_the_node_that_took_them() {
    let redis = RedisServer::start();
    let n2 = node(&redis, "n2");
    // n1 is a process of its own, to be killed.
    let (mut n1, _, n1_admin) = common::cluster_process(&redis, "n1", "");
    let mut sam = subscriber(&n2, "room:1").await;

    // Two messages through n1: one due in 1.5 s, one in an hour.
    let soon = schedule(n1_admin, "room:1", json!({"n": "soon"}), 1_500).await;
    let later = schedule(n1_admin, "room:1", json!({"n": "later"}), 3_600_000).await;
    // Kept in Redis (ids from 2^40), or in the PostgreSQL store the nodes share.
    assert!(
        (soon >= 1 << 40 || common::postgres_under_test()) && later > soon,
        "ids kept in Redis: {soon} {later}"
    );
    // n2 lists both, by due time, and cancels the later one.
    let pending = listed(n2.admin_addr(), false).await;
    let ids: Vec<u64> = pending.iter().map(|j| j["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, [soon, later], "{pending:?}");
    assert_eq!(pending[0]["channel"], "room:1", "{pending:?}");
    let (status, r) = common::api(
        n2.admin_addr(),
        "DELETE",
        &format!("/api/schedule/{later}"),
        &json!(null),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    let (status, r) = common::api(
        n2.admin_addr(),
        "DELETE",
        &format!("/api/schedule/{later}"),
        &json!(null),
    )
    .await;
    assert_eq!(status, 409, "cancelled already: {r}");

    // n1 is killed before the first is due: n2 fires it, once.
    n1.kill().unwrap();
    let _ = n1.wait();
    let got = publications(&mut sam, Duration::from_millis(1_500), 10).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["data"], json!({"n": "soon"}), "{got:?}");
    let all = listed(n2.admin_addr(), true).await;
    let state = |id: u64| {
        all.iter()
            .find(|j| j["id"] == json!(id))
            .map(|j| j["state"].clone())
    };
    assert_eq!(state(soon), Some(json!("fired")), "{all:?}");
    assert_eq!(state(later), Some(json!("cancelled")), "{all:?}");
    let fired = all.iter().find(|j| j["id"] == json!(soon)).unwrap();
    assert_eq!(fired["offset"], 1, "{fired}");
    n2.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_due_at_once_fire_once_each_across_nodes() {
    let redis = RedisServer::start();
    let nodes = [node(&redis, "n1"), node(&redis, "n2"), node(&redis, "n3")];
    let mut sam = subscriber(&nodes[2], "room:2").await;

    // A user's own schedule on n1, cancelled by the same user on n2.
    let tok = common::token_with("ann", |c| c.schedule = Some(true));
    let mut ann1 = Client::connect(nodes[0].ws_addr(), Fmt::MsgPack, &tok).await;
    let r = ann1
        .call(json!({"cmd": "schedule", "channel": "room:2", "data": "never", "delay": 60_000}))
        .await;
    let mine = r["result"]["schedule"]
        .as_u64()
        .unwrap_or_else(|| panic!("{r}"));
    let mut ann2 = Client::connect(nodes[1].ws_addr(), Fmt::Json, &tok).await;
    let r = ann2
        .call(json!({"cmd": "unschedule", "schedule": mine}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    let mut bob = Client::connect(nodes[1].ws_addr(), Fmt::Json, &common::token("bob", None)).await;
    let r = bob
        .call(json!({"cmd": "unschedule", "schedule": mine}))
        .await;
    assert_eq!(r["error"]["code"], 112, "not bob's: {r}");

    // Thirty messages through every node, all due within a few ms of each other.
    let at = now_ms() + 1_000;
    for i in 0..30u64 {
        let admin = nodes[i as usize % 3].admin_addr();
        let body = json!({"channel": "room:2", "data": {"i": i}, "at": at + i % 3});
        let (status, r) = common::api(admin, "POST", "/api/schedule", &body).await;
        assert_eq!(status, 200, "{r}");
    }
    let got = publications(&mut sam, Duration::from_millis(1_500), 15).await;
    let mut seen: Vec<u64> = got
        .iter()
        .map(|p| p["data"]["i"].as_u64().unwrap())
        .collect();
    seen.sort();
    assert_eq!(seen, (0..30).collect::<Vec<_>>(), "each once: {got:?}");
    assert!(listed(nodes[0].admin_addr(), false).await.is_empty());
    for n in nodes {
        n.shutdown();
    }
}
