//! Nodes sharing a real `redis-server` (installed by `bash .ci/run`, started here on a
//! free port and killed by PID): the node registry (`GET /admin/nodes`) — three nodes
//! see each other, a node that stops cleanly leaves at once, a node that stops
//! refreshing (as a SIGKILLed one does) vanishes after `node_ttl_ms` — and Redis going
//! away and coming back (`/health/ready` degraded, not down; `switchboard_redis_up`).

mod common;

use std::time::{Duration, Instant};

use serde_json::Value;
use switchboard_control_plane::Server;

const ADMIN_SECRET: &str = "integration-admin-secret-0123456789";

fn node(redis: &common::RedisServer, id: &str) -> Server {
    let url = redis.url();
    common::start(|c| {
        c.admin.jwt_secret = Some(ADMIN_SECRET.into());
        c.cluster.redis_url = url;
        c.cluster.node_id = id.into();
        c.cluster.heartbeat_ms = 100;
        c.cluster.node_ttl_ms = 400;
    })
}

async fn admin_get(server: &Server, path: &str) -> (u16, Value) {
    admin_call(server, "GET", path, "").await
}

/// An admin API call with an admin token; the status and JSON answer.
async fn admin_call(server: &Server, method: &str, path: &str, body: &str) -> (u16, Value) {
    let token = switchboard_control_plane::auth::mint_admin(
        ADMIN_SECRET,
        "ops",
        Duration::from_secs(600),
        "admin",
    );
    let auth = format!("Bearer {token}");
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    let (status, text) = common::http(server.admin_addr(), method, path, &headers, body).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The ids `server` lists in `/admin/nodes`.
async fn listed(server: &Server) -> Vec<String> {
    let (status, v) = admin_get(server, "/admin/nodes").await;
    assert_eq!(status, 200, "{v}");
    v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_string())
        .collect()
}

/// Wait until `server` lists exactly `ids`.
async fn until_listed(server: &Server, ids: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = listed(server).await;
        if now == ids {
            return;
        }
        assert!(Instant::now() < deadline, "listed {now:?}, want {ids:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until `server`'s bus is subscribed (an action published before would not
/// reach it: the bus carries actions, it does not keep them, but revocations).
async fn until_bus(server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while ready(server).await.1["cluster"]["bus"] != "linked" {
        assert!(Instant::now() < deadline, "the bus never linked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn ready(server: &Server) -> (u16, Value) {
    let (status, text) = common::http(server.admin_addr(), "GET", "/health/ready", &[], "").await;
    (status, serde_json::from_str(&text).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_share_a_registry_and_survive_redis_going_away() {
    let mut redis = common::RedisServer::start();
    let nodes = [node(&redis, "n1"), node(&redis, "n2"), node(&redis, "n3")];
    for n in &nodes {
        until_listed(n, &["n1", "n2", "n3"]).await;
    }
    let (_, v) = admin_get(&nodes[0], "/admin/nodes").await;
    let n2 = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "n2")
        .unwrap()
        .clone();
    assert_eq!(n2["ws"], nodes[1].ws_addr().to_string(), "{v}");
    assert_eq!(n2["admin"], nodes[1].admin_addr().to_string(), "{v}");
    assert_eq!(n2["shards"], 2, "{v}");
    assert!(n2["last_heartbeat_ms_ago"].as_u64().unwrap() < 1_000, "{v}");
    assert_eq!(v["redis"], "up", "{v}");

    // A node that stops cleanly leaves at once (well inside its TTL).
    let [n1, n2, n3] = nodes;
    n3.shutdown();
    n3.wait();
    until_listed(&n1, &["n1", "n2"]).await;

    // A node that stops refreshing (killed) vanishes after node_ttl_ms.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let ghost = r#"{"id":"ghost","ws":"127.0.0.1:1","admin":"127.0.0.1:2","shards":1,"connections":0,"max_connections":1,"load":0.0,"started_ms":0,"heartbeat_ms":0,"version":"0"}"#;
    let mut conn = redis.connection();
    let _: () = redis::pipe()
        .cmd("SET")
        .arg("{sb}:node:ghost")
        .arg(ghost)
        .arg("PX")
        .arg(400)
        .ignore()
        .cmd("ZADD")
        .arg("{sb}:nodes")
        .arg(now)
        .arg("ghost")
        .ignore()
        .query(&mut conn)
        .unwrap();
    until_listed(&n1, &["ghost", "n1", "n2"]).await;
    until_listed(&n2, &["n1", "n2"]).await;

    // Redis goes away: still ready (local clients are served), degraded, and says so.
    redis.kill();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = ready(&n1).await;
        assert_eq!(status, 200, "{body}");
        if body["status"] == "degraded" {
            assert_eq!(body["cluster"]["redis"], "unreachable", "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "never degraded: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        common::metric(n1.admin_addr(), "switchboard_redis_up").await,
        0
    );
    let open = r#"switchboard_breaker_open{breaker="redis"}"#;
    assert_eq!(common::metric(n1.admin_addr(), open).await, 1);
    let (_, breakers) = admin_get(&n1, "/admin/breakers").await;
    let redis_breaker = breakers["breakers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "redis")
        .cloned()
        .unwrap_or_default();
    assert_eq!(redis_breaker["state"], "open", "{breakers}");
    // Back: both nodes see Redis again and find each other (a node shows the last
    // list it read while Redis is away, so wait for Redis first).
    redis.restart();
    for n in [&n1, &n2] {
        let deadline = Instant::now() + Duration::from_secs(5);
        while ready(n).await.1["status"] != "ready" {
            assert!(Instant::now() < deadline, "never ready again");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    until_listed(&n1, &["n1", "n2"]).await;
    assert_eq!(
        common::metric(n1.admin_addr(), "switchboard_redis_up").await,
        1
    );
    assert!(common::metric(n1.admin_addr(), "switchboard_redis_connects_total").await >= 1);
    n1.shutdown();
    n2.shutdown();
}

/// A node alone (no `redis_url`) needs nothing else and lists itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_alone_lists_itself() {
    let server = common::start(|c| c.admin.jwt_secret = Some(ADMIN_SECRET.into()));
    let (status, v) = admin_get(&server, "/admin/nodes").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["cluster"], false, "{v}");
    assert_eq!(v["nodes"].as_array().unwrap().len(), 1, "{v}");
    let (_, body) = ready(&server).await;
    assert_eq!(body["status"], "ready", "{body}");
    assert!(body["cluster"].is_null(), "{body}");
    server.shutdown();
}

async fn admin_post(server: &Server, path: &str, body: &str) -> (u16, Value) {
    admin_call(server, "POST", path, body).await
}

/// A token issued 30 s ago (a revocation now refuses it).
fn old_token(user: &str) -> String {
    let iat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 30;
    common::token_with(user, |c| c.iat = Some(iat))
}

/// An operator on one node disconnects and revokes users connected to another; a
/// revocation made while Redis is away reaches the other node when Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_actions_reach_every_node() {
    use common::{Client, Fmt};
    let mut redis = common::RedisServer::start();
    let (n1, n2) = (node(&redis, "n1"), node(&redis, "n2"));
    until_listed(&n1, &["n1", "n2"]).await;
    until_listed(&n2, &["n1", "n2"]).await;
    for n in [&n1, &n2] {
        until_bus(n).await;
    }

    // A broadcast through n1's server API reaches a client of n2.
    let mut ann = Client::connect(n2.ws_addr(), Fmt::Json, &common::token("ann", None)).await;
    let body = serde_json::json!({"data": {"notice": "hello everyone"}});
    let (status, v) = common::api(n1.admin_addr(), "POST", "/api/broadcast", &body).await;
    assert_eq!(status, 200, "{v}");
    let push = tokio::time::timeout(common::TIMEOUT, ann.next_push(&["broadcast"]))
        .await
        .expect("the broadcast reaches n2");
    assert_eq!(push["data"]["notice"], "hello everyone", "{push}");

    // Disconnect a user connected to n2, from n1.
    let mut bob = Client::connect(n2.ws_addr(), Fmt::Json, &common::token("bob", None)).await;
    let (status, v) = admin_post(&n1, "/admin/disconnect", r#"{"user":"bob"}"#).await;
    assert_eq!(status, 200, "{v}");
    let (_, code, _) = tokio::time::timeout(common::TIMEOUT, bob.expect_close())
        .await
        .expect("bob's connection on n2 closes");
    assert_eq!(code, 4009);

    // Revoke a user connected to n2, from n1: closed there, and refused there after.
    let eve_token = old_token("eve");
    let mut eve = Client::connect(n2.ws_addr(), Fmt::Json, &eve_token).await;
    let (status, v) = admin_post(&n1, "/admin/revoke", r#"{"user":"eve"}"#).await;
    assert_eq!(status, 200, "{v}");
    let (_, code, _) = tokio::time::timeout(common::TIMEOUT, eve.expect_close())
        .await
        .expect("eve's connection on n2 closes");
    assert_eq!(code, 4011);
    let mut again = Client::open(n2.ws_addr(), Fmt::Json).await;
    let r = again
        .call(serde_json::json!({"cmd": "connect", "token": eve_token}))
        .await;
    assert_eq!(r["error"]["code"], 101, "n2 refuses eve's old token: {r}");

    // Redis away: a revocation on n1 waits, and reaches n2 once Redis is back.
    redis.kill();
    let deadline = Instant::now() + Duration::from_secs(5);
    while ready(&n1).await.1["status"] != "degraded" {
        assert!(Instant::now() < deadline, "n1 never saw Redis go");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mallory_token = old_token("mallory");
    let mut mallory = Client::connect(n2.ws_addr(), Fmt::Json, &mallory_token).await;
    let (status, v) = admin_post(&n1, "/admin/revoke", r#"{"user":"mallory"}"#).await;
    assert_eq!(status, 200, "revoked on n1 while Redis is away: {v}");
    redis.restart();
    let (_, code, _) = tokio::time::timeout(Duration::from_secs(10), mallory.expect_close())
        .await
        .expect("mallory's connection on n2 closes once Redis is back");
    assert_eq!(code, 4011);
    for n in [&n1, &n2] {
        until_bus(n).await;
    }

    // Maintenance on n1 is maintenance on n2: new connections refused there (4010).
    let (status, v) = admin_post(
        &n1,
        "/admin/maintenance",
        r#"{"on":true,"message":"upgrading","retry_after_ms":5000}"#,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = ready(&n2).await;
        if status == 503 && body["status"] == "maintenance" {
            break;
        }
        assert!(Instant::now() < deadline, "n2 never in maintenance: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut refused = Client::open(n2.ws_addr(), Fmt::Json).await;
    let (_, code, reason) = tokio::time::timeout(common::TIMEOUT, refused.expect_close())
        .await
        .expect("a new connection to n2 is closed");
    assert_eq!((code, reason.as_str()), (4010, "maintenance: upgrading"));

    // Rate limits set on n1 are n2's too, and a node that joins later adopts both.
    let rules = r#"{"rules":[{"scope":"user","event":"publish","rate":3,"per_ms":60000}]}"#;
    let (status, v) = admin_call(&n1, "PUT", "/admin/rate-limits", rules).await;
    assert_eq!(status, 200, "{v}");
    let (_, want) = admin_get(&n1, "/admin/rate-limits").await;
    let n3 = node(&redis, "n3");
    for n in [&n2, &n3] {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (_, got) = admin_get(n, "/admin/rate-limits").await;
            let (_, health) = ready(n).await;
            if got == want && health["status"] == "maintenance" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "limits {got} (want {want}), health {health}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Maintenance off, everywhere.
    let (status, _) = admin_post(&n2, "/admin/maintenance", r#"{"on":false}"#).await;
    assert_eq!(status, 200);
    for n in [&n1, &n3] {
        let deadline = Instant::now() + Duration::from_secs(5);
        while ready(n).await.0 != 200 {
            assert!(Instant::now() < deadline, "maintenance never ended");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    n1.shutdown();
    n2.shutdown();
    n3.shutdown();
}

/// The cluster-wide stream script on a real Redis: concurrent publishers from several
/// connections get one gapless sequence per channel in one epoch, binary payloads come
/// back intact, history keeps the last `keep` in order, and subscribers of the topic
/// receive every record in sequence order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_streams_sequence_keep_and_publish_in_one_order() {
    use futures_util::StreamExt;
    use switchboard_control_plane::cluster::streams::{self, ChannelKeys, Sequencer};
    let redis = common::RedisServer::start();
    let client = redis::Client::open(redis.url()).unwrap();
    let keys = ChannelKeys::new("sb", "room:seq");
    let mut sub = client.get_async_pubsub().await.unwrap();
    sub.subscribe(&keys.topic).await.unwrap();
    let mut messages = sub.into_on_message();
    let mut tasks = Vec::new();
    for writer in 0..4u8 {
        let client = client.clone();
        let keys = keys.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let seq = Sequencer::new(false);
            let mut got = Vec::new();
            for i in 0..50u8 {
                let payload = [writer, i, 0, 0xff, b':'];
                let seed = 0x1000 + u64::from(writer);
                got.push(
                    seq.publish(&mut conn, &keys, seed, 32, &payload)
                        .await
                        .unwrap(),
                );
            }
            got
        }));
    }
    let mut positions = Vec::new();
    for t in tasks {
        positions.extend(t.await.unwrap());
    }
    let epoch = positions[0].epoch;
    assert!(positions.iter().all(|p| p.epoch == epoch), "one epoch");
    let mut offsets: Vec<u64> = positions.iter().map(|p| p.offset).collect();
    offsets.sort_unstable();
    assert_eq!(offsets, (1..=200).collect::<Vec<_>>(), "gapless, each once");
    // Subscribers see the records in sequence order.
    for want in 1..=200u64 {
        let m = tokio::time::timeout(common::TIMEOUT, messages.next())
            .await
            .unwrap()
            .unwrap();
        let (pos, payload) = streams::decode_record(m.get_payload_bytes()).unwrap();
        assert_eq!(pos.offset, want);
        assert_eq!(&payload[2..], &[0, 0xff, b':'], "binary payload intact");
    }
    // History: the last 32, oldest first; `after` filters.
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let (top, kept) = streams::history(&mut conn, &keys, None).await.unwrap();
    assert_eq!(top.unwrap().offset, 200);
    let kept_offsets: Vec<u64> = kept.iter().map(|(p, _)| p.offset).collect();
    assert_eq!(kept_offsets, (169..=200).collect::<Vec<_>>());
    let after = switchboard_protocol::Position { epoch, offset: 195 };
    let (_, tail) = streams::history(&mut conn, &keys, Some(after))
        .await
        .unwrap();
    assert_eq!(tail.len(), 5);
    let (none, empty) = streams::history(&mut conn, &ChannelKeys::new("sb", "quiet"), None)
        .await
        .unwrap();
    assert!(none.is_none() && empty.is_empty());
}

/// A Redis Sentinel on a free port watching `master` (killed by PID when dropped).
struct Sentinel {
    child: std::process::Child,
    port: u16,
}

impl Sentinel {
    fn watch(master: &common::RedisServer) -> Sentinel {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = master.dir().join(format!("sentinel-{port}.conf"));
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\nsentinel monitor m 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds m 300\nsentinel failover-timeout m 3000\n",
                master.port
            ),
        )
        .unwrap();
        let child = std::process::Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed (bash .ci/run installs it)");
        Sentinel { child, port }
    }

    fn query<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> redis::RedisResult<T> {
        let mut c =
            redis::Client::open(format!("redis://127.0.0.1:{}", self.port))?.get_connection()?;
        cmd.query(&mut c)
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Poll `check` every 50 ms for up to `secs`.
async fn eventually(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Nodes that find Redis through a Sentinel follow a failover: the master killed, the
/// replica promoted, the nodes link to it and keep their registry there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_follow_a_sentinel_failover() {
    let mut master = common::RedisServer::start();
    let replica =
        common::RedisServer::start_with(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
    eventually(10, "the replica never synced", || {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut replica.connection())
            .unwrap_or_default();
        info.contains("master_link_status:up")
    })
    .await;
    let sentinel = Sentinel::watch(&master);
    eventually(10, "the Sentinel never saw the replica", || {
        sentinel
            .query::<Vec<redis::Value>>(redis::cmd("SENTINEL").arg("replicas").arg("m"))
            .is_ok_and(|r| r.len() == 1)
    })
    .await;
    let through_sentinel = |id: &'static str| {
        let sentinels = vec![format!("127.0.0.1:{}", sentinel.port)];
        common::start(move |c| {
            c.admin.jwt_secret = Some(ADMIN_SECRET.into());
            c.cluster.sentinels = sentinels;
            c.cluster.sentinel_master = "m".into();
            c.cluster.node_id = id.into();
            c.cluster.heartbeat_ms = 100;
            c.cluster.node_ttl_ms = 400;
        })
    };
    let (n1, n2) = (through_sentinel("n1"), through_sentinel("n2"));
    until_listed(&n1, &["n1", "n2"]).await;
    until_listed(&n2, &["n1", "n2"]).await;

    master.kill();
    let killed_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as f64;
    eventually(20, "the replica was never promoted", || {
        redis::cmd("ROLE")
            .query::<Vec<redis::Value>>(&mut replica.connection())
            .is_ok_and(|r| matches!(r.first(), Some(redis::Value::BulkString(b)) if b == b"master"))
    })
    .await;
    for n in [&n1, &n2] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while ready(n).await.1["status"] != "ready" {
            assert!(
                Instant::now() < deadline,
                "a node never linked to the new master"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The nodes refresh their entries on the promoted server now (not just the copies
    // it replicated before the failover).
    eventually(5, "the nodes do not refresh on the new master", || {
        ["n1", "n2"].iter().all(|id| {
            redis::cmd("ZSCORE")
                .arg("{sb}:nodes")
                .arg(*id)
                .query::<Option<f64>>(&mut replica.connection())
                .is_ok_and(|at| at.is_some_and(|at| at > killed_ms))
        })
    })
    .await;
    until_listed(&n1, &["n1", "n2"]).await;
    n1.shutdown();
    n2.shutdown();
}
