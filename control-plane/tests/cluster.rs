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
    let token = switchboard_control_plane::auth::mint_admin(
        ADMIN_SECRET,
        "ops",
        Duration::from_secs(600),
        "admin",
    );
    let auth = format!("Bearer {token}");
    let (status, text) = common::http(
        server.admin_addr(),
        "GET",
        path,
        &[("Authorization", &auth)],
        "",
    )
    .await;
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
    // Back: the nodes find each other again.
    redis.restart();
    until_listed(&n1, &["n1", "n2"]).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while ready(&n2).await.1["status"] != "ready" {
        assert!(Instant::now() < deadline, "n2 never ready again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    let token = switchboard_control_plane::auth::mint_admin(
        ADMIN_SECRET,
        "ops",
        Duration::from_secs(600),
        "admin",
    );
    let auth = format!("Bearer {token}");
    let (status, text) = common::http(
        server.admin_addr(),
        "POST",
        path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body,
    )
    .await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
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
    n1.shutdown();
    n2.shutdown();
}
