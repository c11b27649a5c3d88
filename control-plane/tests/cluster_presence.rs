//! Presence and typing as the union of nodes sharing a real `redis-server`: a user on
//! another node joins, changes status and types where everyone sees it; a user
//! connected to two nodes joins once and leaves once; a node killed with SIGKILL takes
//! its users' presence with it (their `leave` events go out) within the registry's
//! TTL plus the janitor's second.

mod common;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchboard_control_plane::config::NamespaceConfig;
use switchboard_control_plane::{Config, Server};

use common::{Client, Fmt, RedisServer};

fn presence(c: &mut Config, redis: &RedisServer, id: &str) {
    c.cluster.redis_url = redis.url();
    c.cluster.node_id = id.into();
    c.cluster.heartbeat_ms = 100;
    c.cluster.node_ttl_ms = 400;
    // A dropped connection lingers this long before its user leaves.
    c.engine.presence_grace_ms = 300;
    let ns: NamespaceConfig = toml::from_str("presence = true").unwrap();
    c.namespaces.insert("visit".into(), ns);
}

fn node(redis: &RedisServer, id: &str) -> Server {
    common::start(|c| presence(c, redis, id))
}

async fn subscribe(c: &mut Client, channel: &str) {
    let r = c
        .call(json!({"cmd": "subscribe", "channel": channel}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
}

async fn event(c: &mut Client) -> Value {
    tokio::time::timeout(Duration::from_secs(5), c.next_push(&["presence"]))
        .await
        .expect("a presence event in time")
}

async fn members(c: &mut Client, channel: &str) -> Vec<String> {
    let r = c.call(json!({"cmd": "presence", "channel": channel})).await;
    r["result"]["members"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .map(|m| m["user"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_the_union_of_nodes_and_a_killed_node_leaves() {
    let redis = RedisServer::start();
    let n1 = node(&redis, "n1");
    let n2 = node(&redis, "n2");
    // The third node is a process of its own, to be killed.
    let (mut n3, n3_ws, _) =
        common::cluster_process(&redis, "n3", "[namespaces.visit]\npresence = true\n");

    let mut wes = Client::connect(n1.ws_addr(), Fmt::Json, &common::token("wes", None)).await;
    subscribe(&mut wes, "visit:1").await;
    // Bob on n2: wes, on n1, sees him join.
    let mut bob = Client::connect(n2.ws_addr(), Fmt::MsgPack, &common::token("bob", None)).await;
    subscribe(&mut bob, "visit:1").await;
    let e = event(&mut wes).await;
    assert_eq!(
        (&e["event"], &e["user"]),
        (&json!("join"), &json!("bob")),
        "{e}"
    );
    // Bob's second device, on n3: no second join.
    let mut bob3 = Client::connect(n3_ws, Fmt::Json, &common::token("bob", None)).await;
    subscribe(&mut bob3, "visit:1").await;
    // Cat on n3.
    let mut cat = Client::connect(n3_ws, Fmt::Json, &common::token("cat", None)).await;
    subscribe(&mut cat, "visit:1").await;
    let e = event(&mut wes).await;
    assert_eq!(
        (&e["event"], &e["user"]),
        (&json!("join"), &json!("cat")),
        "{e}"
    );
    // The list on any node is the union.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut on_n2 = members(&mut bob, "visit:1").await;
        on_n2.sort();
        if on_n2 == ["bob", "cat", "wes"] {
            break;
        }
        assert!(Instant::now() < deadline, "{on_n2:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Bob's two devices (two nodes) are one user with two connections.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = wes
            .call(json!({"cmd": "presence", "channel": "visit:1"}))
            .await;
        let bob_connections = r["result"]["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["user"] == "bob")
            .map_or(0, |m| m["connections"].as_array().unwrap().len());
        if bob_connections == 2 && r["result"]["connections"] == 4 {
            assert_eq!(r["result"]["users"], 3, "{r}");
            break;
        }
        assert!(Instant::now() < deadline, "{r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A status set on n2 and typing on n3 reach wes on n1.
    let r = bob.call(json!({"cmd": "status", "status": "away"})).await;
    assert!(r.get("result").is_some(), "{r}");
    let e = event(&mut wes).await;
    assert_eq!(
        (&e["event"], &e["status"]),
        (&json!("status"), &json!("away")),
        "{e}"
    );
    let r = cat
        .call(json!({"cmd": "typing", "channel": "visit:1"}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    let t = tokio::time::timeout(Duration::from_secs(5), wes.next_push(&["typing"]))
        .await
        .expect("typing in time");
    assert_eq!(
        (&t["user"], &t["typing"]),
        (&json!("cat"), &json!(true)),
        "{t}"
    );

    // n3 is killed: cat (only there) leaves; bob stays (his n2 device), no leave.
    n3.kill().unwrap();
    n3.wait().unwrap();
    let killed = Instant::now();
    let e = event(&mut wes).await;
    assert_eq!(
        (&e["event"], &e["user"]),
        (&json!("leave"), &json!("cat")),
        "{e}"
    );
    assert!(
        killed.elapsed() < Duration::from_secs(4),
        "{:?}",
        killed.elapsed()
    );
    let mut left = members(&mut wes, "visit:1").await;
    left.sort();
    assert_eq!(left, ["bob", "wes"]);

    // Bob's last device leaves: one leave.
    drop(bob);
    let e = event(&mut wes).await;
    assert_eq!(
        (&e["event"], &e["user"]),
        (&json!("leave"), &json!("bob")),
        "{e}"
    );
    drop(bob3);
    n1.shutdown();
    n2.shutdown();
}
