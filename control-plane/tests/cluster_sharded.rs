//! Nodes sharing a real Redis Cluster of three masters (three `redis-server`s with
//! `--cluster-enabled yes`, joined by `redis-cli --cluster create`): channels spread
//! over the masters by slot, their records travel on sharded pub/sub
//! (`SSUBSCRIBE`/`SPUBLISH`: only the owning master carries a channel), publications,
//! history and presence work across nodes as on one Redis, admin actions still reach
//! every node, and each node holds a bounded number of connections per master
//! however many channels it subscribes to.

mod common;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchboard_control_plane::config::NamespaceConfig;
use switchboard_control_plane::Server;

use common::{Client, Fmt, RedisServer};

/// Three masters joined into one cluster (every slot covered).
fn redis_cluster() -> Vec<RedisServer> {
    let masters: Vec<RedisServer> = (0..3)
        .map(|_| {
            RedisServer::start_with(&[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "cluster-nodes.txt",
                "--cluster-node-timeout",
                "2000",
            ])
        })
        .collect();
    let addrs: Vec<String> = masters
        .iter()
        .map(|m| format!("127.0.0.1:{}", m.port))
        .collect();
    let out = std::process::Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli must be installed (the redis-tools package, beside redis-server)");
    assert!(
        out.status.success(),
        "redis-cli --cluster create: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    for m in &masters {
        loop {
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query(&mut m.connection())
                .unwrap();
            if info.contains("cluster_state:ok") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster never became ok: {info}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    masters
}

fn node(masters: &[RedisServer], id: &str) -> Server {
    let seeds: Vec<String> = masters
        .iter()
        .map(|m| format!("127.0.0.1:{}", m.port))
        .collect();
    common::start(|c| {
        c.cluster.redis_cluster = seeds;
        c.cluster.node_id = id.into();
        c.cluster.heartbeat_ms = 100;
        c.cluster.node_ttl_ms = 400;
        let ns: NamespaceConfig = toml::from_str("presence = true").unwrap();
        c.namespaces.insert("visit".into(), ns);
    })
}

async fn linked(server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = common::http(server.admin_addr(), "GET", "/health/ready", &[], "").await;
        let v: Value = serde_json::from_str(&text).unwrap();
        if v["cluster"]["shared_channels"] == "linked" && v["cluster"]["bus"] == "linked" {
            return;
        }
        assert!(Instant::now() < deadline, "never linked: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The master that serves `channel`'s slot, and how many nodes subscribe there.
fn shard_subscribers(masters: &[RedisServer], channel: &str) -> Vec<u64> {
    let topic = format!("{{sb:ch:{channel}}}:t");
    masters
        .iter()
        .map(|m| {
            let v: Vec<(String, u64)> = redis::cmd("PUBSUB")
                .arg("SHARDNUMSUB")
                .arg(&topic)
                .query(&mut m.connection())
                .unwrap();
            v[0].1
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_share_a_redis_cluster_with_sharded_pub_sub() {
    let masters = redis_cluster();
    let n1 = node(&masters, "n1");
    let n2 = node(&masters, "n2");
    linked(&n1).await;
    linked(&n2).await;
    let tok = |u: &str| common::token(u, None);
    let mut ann = Client::connect(n1.ws_addr(), Fmt::Json, &tok("ann")).await;
    let mut bob = Client::connect(n2.ws_addr(), Fmt::MsgPack, &tok("bob")).await;

    // Thirty channels: their slots land on every master.
    let channels: Vec<String> = (0..30).map(|i| format!("room:{i}")).collect();
    for ch in &channels {
        let r = bob.call(json!({"cmd": "subscribe", "channel": ch})).await;
        assert_eq!(r["result"]["offset"], 0, "{r}");
    }
    let mut per_master = [0usize; 3];
    for ch in &channels {
        let subs = shard_subscribers(&masters, ch);
        // Exactly one master carries the channel, with one subscriber: n2.
        assert_eq!(subs.iter().sum::<u64>(), 1, "{ch}: {subs:?}");
        per_master[subs.iter().position(|&n| n == 1).unwrap()] += 1;
    }
    assert!(per_master.iter().all(|&n| n > 0), "{per_master:?}");

    // Published on n1, each channel's record reaches bob on n2, in order.
    for (i, ch) in channels.iter().enumerate() {
        let r = ann
            .call(json!({"cmd": "publish", "channel": ch, "data": {"i": i}}))
            .await;
        assert_eq!(r["result"]["offset"], 1, "{r}");
    }
    let mut got = std::collections::BTreeSet::new();
    while got.len() < channels.len() {
        let p = tokio::time::timeout(common::TIMEOUT, bob.next_publication())
            .await
            .expect("every channel's publication");
        assert_eq!(p["offset"], 1, "{p}");
        got.insert(p["channel"].as_str().unwrap().to_string());
    }
    // History on a node that never subscribed.
    let h = ann
        .call(json!({"cmd": "history", "channel": "room:7", "limit": 5}))
        .await;
    assert_eq!(
        h["result"]["publications"][0]["data"],
        json!({"i": 7}),
        "{h}"
    );

    // Presence across nodes.
    let r = ann
        .call(json!({"cmd": "subscribe", "channel": "visit:1"}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    let r = bob
        .call(json!({"cmd": "subscribe", "channel": "visit:1"}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    let e = tokio::time::timeout(common::TIMEOUT, ann.next_push(&["presence"]))
        .await
        .expect("bob's join");
    assert_eq!(
        (&e["event"], &e["user"]),
        (&json!("join"), &json!("bob")),
        "{e}"
    );

    // A bounded number of connections per master, whatever the channel count.
    for m in &masters {
        let clients: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query(&mut m.connection())
            .unwrap();
        let n = clients.lines().count();
        assert!(n <= 2 * 6 + 2, "{n} connections on a master: {clients}");
    }
    n1.shutdown();
    n2.shutdown();
}
