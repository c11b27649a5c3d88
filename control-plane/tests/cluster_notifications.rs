//! Notifications and unread counts kept in a real `redis-server` (installed by `bash
//! .ci/run`, started here on a free port, killed by PID) by nodes that share it — or,
//! in `.ci/run`'s PostgreSQL pass, in the database they share: a
//! notification created through any node reaches the user's devices on every node
//! with one unread count, is listed on every node, marked read on one and cleared on
//! the others; a progress notification updated through two nodes stays one
//! notification; topics subscribed on one node are notified through another; a node
//! that restarts finds them all.

mod common;

use serde_json::{json, Value};
use switchboard_control_plane::Server;

use common::{api, Client, Fmt, RedisServer};

fn node(redis: &RedisServer, id: &str, store: &std::path::Path) -> Server {
    let store = store.to_path_buf();
    common::cluster_node(redis, id, move |c| {
        // Each node's own SQLite file; on PostgreSQL the nodes share one database.
        if !common::postgres_under_test() {
            c.store.path = store;
        }
        c.notifications.public_topics = vec!["news".into()];
    })
}

async fn notification(c: &mut Client) -> Value {
    tokio::time::timeout(common::TIMEOUT, c.next_push(&["notification"]))
        .await
        .expect("a notification in time")
}

async fn create(admin: std::net::SocketAddr, body: Value) -> Value {
    let (status, r) = api(admin, "POST", "/api/notifications", &body).await;
    assert_eq!(status, 200, "{r}");
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_and_unread_counts_are_one_across_nodes() {
    let redis = RedisServer::start();
    let (s1, s2) = (common::temp_store(), common::temp_store());
    let n1 = node(&redis, "n1", &s1);
    let n2 = node(&redis, "n2", &s2);
    let mut phone = Client::connect(n1.ws_addr(), Fmt::Json, &common::token("ann", None)).await;
    let mut laptop = Client::connect(n2.ws_addr(), Fmt::MsgPack, &common::token("ann", None)).await;
    // Ann's personal channel links on both nodes before the first push.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    // Through n1, then n2: both devices get each, with one count.
    let first = create(
        n1.admin_addr(),
        json!({"user": "ann", "kind": "message", "data": "a"}),
    )
    .await;
    let first = first["id"].as_u64().unwrap();
    for c in [&mut phone, &mut laptop] {
        let n = notification(c).await;
        assert_eq!(
            (&n["notification"]["id"], &n["unread"]),
            (&json!(first), &json!(1)),
            "{n}"
        );
    }
    let second = create(
        n2.admin_addr(),
        json!({"users": ["ann", "bob"], "kind": "invoice", "data": 42}),
    )
    .await;
    assert_eq!(second["recipients"], 2, "{second}");
    let second = second["id"].as_u64().unwrap();
    assert!(second > first, "{first} {second}");
    for c in [&mut phone, &mut laptop] {
        assert_eq!(notification(c).await["unread"], json!(2));
    }

    // Listed on either node, newest first.
    let r = phone.call(json!({"cmd": "notifications"})).await;
    let ids: Vec<u64> = r["result"]["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_u64().unwrap())
        .collect();
    assert_eq!(
        (ids, &r["result"]["unread"]),
        (vec![second, first], &json!(2)),
        "{r}"
    );
    let (status, r) = api(
        n1.admin_addr(),
        "GET",
        "/api/notifications?user=bob",
        &json!(null),
    )
    .await;
    assert_eq!(
        (status, &r["unread"]),
        (200, &json!(1)),
        "bob was never connected: {r}"
    );

    // Read on n2: the count drops everywhere, and the phone on n1 is told.
    let r = laptop
        .call(json!({"cmd": "notifications_read", "notification": first}))
        .await;
    assert_eq!(r["result"]["unread"], json!(1), "{r}");
    let p = tokio::time::timeout(common::TIMEOUT, phone.next_push(&["notifications_read"]))
        .await
        .unwrap();
    assert_eq!(
        (&p["notification"], &p["unread"]),
        (&json!(first), &json!(1)),
        "{p}"
    );
    let r = phone
        .call(json!({"cmd": "notifications", "unread": true}))
        .await;
    assert_eq!(
        r["result"]["notifications"].as_array().unwrap().len(),
        1,
        "{r}"
    );
    let r = phone
        .call(json!({"cmd": "notifications_read", "notification": 12345}))
        .await;
    assert_eq!(r["error"]["code"], 112, "{r}");

    // A task's progress, updated through both nodes, is one notification.
    let progress = |pct: u32, state: &str| {
        json!({"user": "ann", "kind": "progress", "key": "job:7",
               "data": {"percent": pct, "state": state}})
    };
    let a = create(n1.admin_addr(), progress(40, "running")).await;
    let b = create(n2.admin_addr(), progress(100, "complete")).await;
    assert_eq!(a["id"], b["id"], "{a} {b}");
    assert_eq!(
        (&a["updated"], &b["updated"]),
        (&json!(false), &json!(true))
    );
    let r = laptop
        .call(json!({"cmd": "notifications", "limit": 1}))
        .await;
    let top = &r["result"]["notifications"][0];
    assert_eq!(top["data"]["percent"], 100, "{r}");

    // A topic subscribed on n2 is notified through n1.
    let r = laptop
        .call(json!({"cmd": "notifications_subscribe", "topic": "news"}))
        .await;
    assert_eq!(r["result"]["topics"], json!(["news"]), "{r}");
    let t = create(
        n1.admin_addr(),
        json!({"topic": "news", "kind": "post", "data": "x"}),
    )
    .await;
    assert_eq!(t["recipients"], 1, "{t}");

    // n1 restarts: everything is still there.
    drop(phone);
    n1.shutdown();
    n1.wait();
    let n1 = node(&redis, "n1", &s1);
    let mut phone = Client::connect(n1.ws_addr(), Fmt::Json, &common::token("ann", None)).await;
    let r = phone.call(json!({"cmd": "notifications"})).await;
    assert_eq!(
        r["result"]["notifications"].as_array().unwrap().len(),
        4,
        "{r}"
    );
    let unread = r["result"]["unread"].as_u64().unwrap();
    assert_eq!(unread, 3, "{r}");
    let r = phone
        .call(json!({"cmd": "notifications_read", "all": true}))
        .await;
    assert_eq!(r["result"]["unread"], json!(0), "{r}");
    // (The laptop was told of its own read first.)
    let p = tokio::time::timeout(common::TIMEOUT, async {
        loop {
            let p = laptop.next_push(&["notifications_read"]).await;
            if p["all"] == json!(true) {
                return p;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(p["unread"], json!(0), "{p}");
    n1.shutdown();
    n2.shutdown();
}
