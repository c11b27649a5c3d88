//! Per-user rate limits across nodes sharing a real `redis-server` (installed by
//! `bash .ci/run`, started here on a free port, killed by PID): a user connected to
//! two nodes has one budget, not one per node; another user is not charged for it.

mod common;

use std::time::Duration;

use serde_json::{json, Value};
use switchboard_control_plane::Server;
use switchboard_engine::limits::{LimitEvent, LimitRule, Scope};

use common::{Client, Fmt, RedisServer};

fn node(redis: &RedisServer, id: &str) -> Server {
    common::cluster_node(redis, id, |c| {
        // Six publishes a minute per user, whatever the node.
        c.engine.rate_limits = vec![LimitRule::new(Scope::User, LimitEvent::Publish, 6, 60_000)];
    })
}

async fn publish(c: &mut Client, n: u32) -> Value {
    c.call(json!({"cmd": "publish", "channel": "room:1", "data": n}))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_on_two_nodes_has_one_budget() {
    let redis = RedisServer::start();
    let (n1, n2) = (node(&redis, "n1"), node(&redis, "n2"));
    let tok = common::token("ann", None);
    let mut phone = Client::connect(n1.ws_addr(), Fmt::Json, &tok).await;
    let mut laptop = Client::connect(n2.ws_addr(), Fmt::MsgPack, &tok).await;
    let mut bob = Client::connect(n2.ws_addr(), Fmt::Json, &common::token("bob", None)).await;

    for n in 0..4 {
        let r = publish(&mut phone, n).await;
        assert!(r.get("result").is_some(), "{r}");
    }
    // n1 reports every 250 ms; n2 counts it against ann there.
    tokio::time::sleep(Duration::from_millis(800)).await;
    for n in 4..6 {
        let r = publish(&mut laptop, n).await;
        assert!(r.get("result").is_some(), "{r}");
    }
    let r = publish(&mut laptop, 6).await;
    assert_eq!(r["error"]["code"], 114, "the seventh on n2: {r}");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let r = publish(&mut phone, 7).await;
    assert_eq!(r["error"]["code"], 114, "and on n1: {r}");
    // Bob, on n2 too, has his own budget.
    for n in 0..6 {
        let r = publish(&mut bob, n).await;
        assert!(r.get("result").is_some(), "{r}");
    }
    n1.shutdown();
    n2.shutdown();
}
