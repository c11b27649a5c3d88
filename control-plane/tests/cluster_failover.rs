//! A node killed with SIGKILL (a separate process) while nodes share a real
//! `redis-server`: its client reconnects to another node with its reconnect token (the
//! key is shared through Redis) and the positions it had, and recovers exactly what it
//! missed — publications acknowledged by the killed node before it died and those made
//! elsewhere meanwhile — with nothing lost and nothing twice.

mod common;

use std::time::Duration;

use serde_json::{json, Value};
use switchboard_control_plane::Server;

use common::{Client, Fmt, RedisServer};

fn node(redis: &RedisServer, id: &str) -> Server {
    common::cluster_node(redis, id, |_| {})
}

async fn publish(c: &mut Client, n: u64) -> Value {
    let r = c
        .call(json!({"cmd": "publish", "channel": "room:7", "data": {"n": n}}))
        .await;
    r.get("result").cloned().unwrap_or_else(|| panic!("{r}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_client_resumes_on_another_node_with_nothing_lost() {
    let redis = RedisServer::start();
    let n1 = node(&redis, "n1");
    let (mut n2, n2_ws, _) = common::cluster_process(&redis, "n2", "");

    // Bob on n2, subscribed; ann publishes through n1, cat through n2.
    let mut bob = Client::open(n2_ws, Fmt::Json).await;
    let r = bob
        .call(json!({"cmd": "connect", "token": common::token("bob", None)}))
        .await;
    let token = r["result"]["reconnect_token"].as_str().unwrap().to_string();
    let start = bob
        .call(json!({"cmd": "subscribe", "channel": "room:7"}))
        .await["result"]
        .clone();
    let mut ann = Client::connect(n1.ws_addr(), Fmt::Json, &common::token("ann", None)).await;
    let mut cat = Client::connect(n2_ws, Fmt::Json, &common::token("cat", None)).await;
    publish(&mut ann, 1).await;
    let seen = tokio::time::timeout(common::TIMEOUT, bob.next_publication())
        .await
        .unwrap();
    assert_eq!(seen["offset"], 1, "{seen}");
    // Acknowledged by n2 just before it dies: bob may not have received it.
    let acked = publish(&mut cat, 2).await;
    assert_eq!(acked["offset"], 2);
    n2.kill().unwrap();
    n2.wait().unwrap();
    // Published elsewhere while bob is away.
    publish(&mut ann, 3).await;
    publish(&mut ann, 4).await;

    // Bob reconnects to n1 with his token and the last position he saw.
    let mut back = Client::open(n1.ws_addr(), Fmt::Json).await;
    let positions = json!({"room:7": {"epoch": start["epoch"], "offset": 1}});
    let r = back
        .call(json!({"cmd": "connect", "reconnect": token, "positions": positions}))
        .await;
    assert_eq!(r["result"]["resumed"], true, "{r}");
    let sub = tokio::time::timeout(common::TIMEOUT, back.next_push(&["subscribed"]))
        .await
        .unwrap();
    assert_eq!(sub["recovered"], true, "{sub}");
    let offsets: Vec<u64> = sub["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [2, 3, 4], "{sub}");
    // And live from there.
    publish(&mut ann, 5).await;
    let p = tokio::time::timeout(common::TIMEOUT, back.next_publication())
        .await
        .unwrap();
    assert_eq!(p["offset"], 5, "{p}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    n1.shutdown();
}
