//! Notifications over real sockets on two shards and a real SQLite file: created by
//! the server API for a user, many users and a topic; pushed live to every connected
//! device with the unread count; listed, marked read on one device and the count
//! pushed to the others; counts right after a restart; progress notifications
//! coalesce for a slow client; malformed requests refused with JSON errors.

mod common;

use common::*;
use serde_json::{json, Value};

async fn notification(c: &mut Client) -> Value {
    c.next_push(&["notification"]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_reach_every_device_and_counts_survive_a_restart() {
    let store = temp_store();
    let cfg = |c: &mut switchboard_control_plane::Config| {
        c.store.path = store.clone();
        c.notifications.public_topics = vec!["news".into(), "team:*".into()];
    };
    let server = start(cfg);
    let (addr, admin) = (server.ws_addr(), server.admin_addr());
    let mut phone = client_on_shard(addr, Fmt::Json, &token("ann", None), 0).await;
    let mut laptop = client_on_shard(addr, Fmt::MsgPack, &token("ann", None), 1).await;

    // One user: every device gets it, with the unread count.
    let (st, r) = api(
        admin,
        "POST",
        "/api/notifications",
        &json!({"user": "ann", "kind": "message", "data": {"text": "hello"}}),
    )
    .await;
    assert_eq!((st, &r["recipients"]), (200, &json!(1)), "{r}");
    let first = r["id"].as_u64().unwrap();
    for c in [&mut phone, &mut laptop] {
        let n = notification(c).await;
        assert_eq!(n["notification"]["id"], json!(first), "{n}");
        assert_eq!(n["notification"]["data"]["text"], json!("hello"), "{n}");
        assert_eq!(n["unread"], json!(1), "{n}");
    }
    // Many users; bob is offline and keeps it.
    let (st, r) = api(
        admin,
        "POST",
        "/api/notifications",
        &json!({"users": ["ann", "bob", "ann"], "kind": "invoice", "data": 42}),
    )
    .await;
    assert_eq!((st, &r["recipients"]), (200, &json!(2)), "{r}");
    assert_eq!(notification(&mut phone).await["unread"], json!(2));
    assert_eq!(notification(&mut laptop).await["unread"], json!(2));

    // Topics: a client subscribes itself to a public topic, not to others; the API
    // subscribes users to any topic.
    let r = phone
        .call(json!({"cmd": "notifications_subscribe", "topic": "news"}))
        .await;
    assert_eq!(r["result"]["topics"], json!(["news"]), "{r}");
    let r = phone
        .call(json!({"cmd": "notifications_subscribe", "topic": "billing"}))
        .await;
    assert_eq!(r["error"]["code"], json!(103), "{r}");
    let granted = token_with("ann", |c| {
        c.extra
            .insert("topics".into(), json!(["billing", "alerts:*"]));
    });
    let mut tablet = Client::connect(addr, Fmt::Json, &granted).await;
    let r = tablet
        .call(json!({"cmd": "notifications_subscribe", "topic": "alerts:db"}))
        .await;
    assert_eq!(r["result"]["topics"], json!(["alerts:db", "news"]), "{r}");
    let (st, r) = api(
        admin,
        "POST",
        "/api/users/bob/topics",
        &json!({"subscribe": ["news", "ops"]}),
    )
    .await;
    assert_eq!((st, &r["topics"]), (200, &json!(["news", "ops"])), "{r}");
    let (st, r) = api(
        admin,
        "POST",
        "/api/notifications",
        &json!({"topic": "news", "kind": "news", "data": {"title": "launch"}}),
    )
    .await;
    assert_eq!((st, &r["recipients"]), (200, &json!(2)), "{r}");
    let news = r["id"].as_u64().unwrap();
    let n = notification(&mut laptop).await;
    assert_eq!(
        (&n["notification"]["topic"], &n["unread"]),
        (&json!("news"), &json!(3)),
        "{n}"
    );
    notification(&mut phone).await;
    let r = phone
        .call(json!({"cmd": "notifications_unsubscribe", "topic": "news"}))
        .await;
    assert_eq!(r["result"]["topics"], json!(["alerts:db"]), "{r}");

    // Mark one read on the phone: the laptop hears the new count.
    let r = phone
        .call(json!({"cmd": "notifications_read", "notification": first}))
        .await;
    assert_eq!(r["result"]["unread"], json!(2), "{r}");
    let p = laptop.next_push(&["notifications_read"]).await;
    assert_eq!(
        (&p["notification"], &p["unread"]),
        (&json!(first), &json!(2)),
        "{p}"
    );
    // Reading it again changes nothing; an unknown id is 112.
    let r = phone
        .call(json!({"cmd": "notifications_read", "notification": first}))
        .await;
    assert_eq!(r["result"]["unread"], json!(2), "{r}");
    let r = phone
        .call(json!({"cmd": "notifications_read", "notification": 999_999}))
        .await;
    assert_eq!(r["error"]["code"], json!(112), "{r}");
    let r = laptop.call(json!({"cmd": "notifications"})).await;
    let list = &r["result"]["notifications"];
    assert_eq!(r["result"]["unread"], json!(2), "{r}");
    assert_eq!(list.as_array().unwrap().len(), 3, "{r}");
    assert_eq!(list[0]["id"], json!(news), "newest first: {r}");
    assert_eq!(list[2]["read"], json!(true), "{r}");
    let r = laptop
        .call(json!({"cmd": "notifications", "unread": true, "limit": 1}))
        .await;
    assert_eq!(r["result"]["notifications"][0]["id"], json!(news), "{r}");
    let r = laptop
        .call(json!({"cmd": "notifications", "before": news}))
        .await;
    assert_eq!(
        r["result"]["notifications"].as_array().unwrap().len(),
        2,
        "{r}"
    );
    drop((phone, laptop, tablet));
    server.shutdown();
    server.wait();

    // After a restart: the counts are the same, for ann and for bob (who was never
    // connected), and reading all on one device reaches the other.
    let server = start(cfg);
    let (addr, admin) = (server.ws_addr(), server.admin_addr());
    let mut phone = client_on_shard(addr, Fmt::Json, &token("ann", None), 0).await;
    let mut laptop = client_on_shard(addr, Fmt::Json, &token("ann", None), 1).await;
    let r = phone.call(json!({"cmd": "notifications"})).await;
    assert_eq!(r["result"]["unread"], json!(2), "{r}");
    let (st, r) = api(admin, "GET", "/api/notifications?user=bob", &json!(null)).await;
    assert_eq!((st, &r["unread"]), (200, &json!(2)), "{r}");
    let r = phone
        .call(json!({"cmd": "notifications_read", "all": true}))
        .await;
    assert_eq!(r["result"]["unread"], json!(0), "{r}");
    let p = laptop.next_push(&["notifications_read"]).await;
    assert_eq!((&p["all"], &p["unread"]), (&json!(true), &json!(0)), "{p}");
    let (st, r) = api(
        admin,
        "POST",
        "/api/notifications/read",
        &json!({"user": "bob", "notification": news}),
    )
    .await;
    assert_eq!((st, &r["unread"]), (200, &json!(1)), "{r}");
    // Topic subscriptions are stored too.
    let (st, r) = api(
        admin,
        "POST",
        "/api/notifications",
        &json!({"topic": "ops", "data": "restarted"}),
    )
    .await;
    assert_eq!((st, &r["recipients"]), (200, &json!(1)), "{r}");
    let (_, r) = api(admin, "GET", "/api/notifications?user=bob", &json!(null)).await;
    assert_eq!(r["unread"], json!(2), "{r}");
    assert_eq!(r["notifications"][0]["kind"], json!("message"), "{r}");
    server.shutdown();
    server.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_notifications_coalesce_for_a_slow_client() {
    let server = start(|c| c.engine.max_outbound_bytes = 128 << 20);
    let (addr, admin) = (server.ws_addr(), server.admin_addr());
    let mut slow = Client::connect(addr, Fmt::Json, &token("ann", None)).await;
    let mut quick = Client::connect(addr, Fmt::Json, &token("ann", None)).await;
    let r = slow
        .call(json!({"cmd": "subscribe", "channel": "bulk:x"}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    // The slow connection stops reading while 32 MB of publications queue up behind
    // what the kernel buffers hold.
    let chunk = "x".repeat(512 * 1024);
    for _ in 0..64 {
        let (st, r) = api(
            admin,
            "POST",
            "/api/publish",
            &json!({"channel": "bulk:x", "data": chunk}),
        )
        .await;
        assert_eq!(st, 200, "{r}");
    }
    for pct in 1..=100 {
        let state = if pct == 100 { "complete" } else { "running" };
        let (st, r) = api(
            admin,
            "POST",
            "/api/notifications",
            &json!({"user": "ann", "kind": "progress", "key": "analysis:7",
                    "data": {"percent": pct, "state": state}}),
        )
        .await;
        assert_eq!(st, 200, "{r}");
        assert_eq!(r["updated"], json!(pct > 1), "{r}");
    }
    // The connection that keeps up sees the steps in order up to the last (two that
    // arrive within one write pass coalesce for it too).
    let mut steps = Vec::new();
    loop {
        let n = notification(&mut quick).await;
        assert_eq!(n["unread"], json!(1), "one notification that changes: {n}");
        let pct = n["notification"]["data"]["percent"].as_u64().unwrap();
        assert!(
            steps.last().is_none_or(|&p| p < pct),
            "{steps:?} then {pct}"
        );
        steps.push(pct);
        if pct == 100 {
            break;
        }
    }
    // The slow one gets the latest, not a backlog of stale steps.
    let mut seen = Vec::new();
    loop {
        let n = notification(&mut slow).await;
        let pct = n["notification"]["data"]["percent"].as_u64().unwrap();
        seen.push(pct);
        if pct == 100 {
            break;
        }
    }
    assert!(seen.len() <= 5, "stale steps delivered: {seen:?}");
    assert!(steps.len() > seen.len(), "{steps:?} vs {seen:?}");
    assert!(metric(admin, "switchboard_pushes_coalesced_total").await >= 90);
    let r = quick.call(json!({"cmd": "notifications"})).await;
    let list = r["result"]["notifications"].as_array().unwrap().clone();
    assert_eq!(list.len(), 1, "{r}");
    assert_eq!(list[0]["data"]["state"], json!("complete"), "{r}");
    assert_eq!(list[0]["key"], json!("analysis:7"), "{r}");
    server.shutdown();
    server.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_notification_requests_get_json_errors() {
    let server = start(|_| {});
    let (addr, admin) = (server.ws_addr(), server.admin_addr());
    for (body, field) in [
        (json!({"kind": "x"}), "user"),
        (json!({"user": "a", "topic": "t"}), "user"),
        (json!({"users": []}), "users"),
        (json!({"topic": "a b"}), "topic"),
        (json!({"user": "a", "kind": ""}), "kind"),
        (
            json!({"user": "a", "kind": "progress", "data": {"percent": 5}}),
            "key",
        ),
        (
            json!({"user": "a", "kind": "progress", "key": "k", "data": {"percent": 150}}),
            "data.percent",
        ),
        (json!({"user": "a", "colour": "red"}), "expected"),
        (json!({"user": 5}), "expected"),
    ] {
        let (st, r) = api(admin, "POST", "/api/notifications", &body).await;
        assert_eq!(st, 400, "{body}: {r}");
        let message = r["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(field), "{body}: {r}");
    }
    for (path, body) in [
        ("/api/notifications/read", json!({"user": "a"})),
        (
            "/api/notifications/read",
            json!({"user": "a", "notification": 1, "all": true}),
        ),
        ("/api/users/a/topics", json!({"subscribe": ["a b"]})),
        ("/api/users/a/topics", json!({"subscribe": "news"})),
    ] {
        let (st, r) = api(admin, "POST", path, &body).await;
        assert_eq!(st, 400, "{path} {body}: {r}");
        assert!(r["error"]["message"].is_string(), "{r}");
    }
    let (st, r) = api(
        admin,
        "POST",
        "/api/notifications/read",
        &json!({"user": "a", "notification": 77}),
    )
    .await;
    assert_eq!((st, &r["error"]["code"]), (404, &json!("not_found")), "{r}");
    let (st, _) = api(admin, "GET", "/api/notifications", &json!(null)).await;
    assert_eq!(st, 400);
    let (st, _) = http(admin, "GET", "/api/notifications?user=a", &[], "").await;
    assert_eq!(st, 401);
    // Malformed commands are answered, the connection stays.
    let mut c = Client::connect(addr, Fmt::MsgPack, &token("ann", None)).await;
    for cmd in [
        json!({"cmd": "notifications", "limit": "ten"}),
        json!({"cmd": "notifications_read"}),
        json!({"cmd": "notifications_subscribe", "topic": ""}),
    ] {
        let r = c.call(cmd.clone()).await;
        assert_eq!(r["error"]["code"], json!(104), "{cmd}: {r}");
    }
    let r = c.call(json!({"cmd": "notifications"})).await;
    assert_eq!(r["result"]["unread"], json!(0), "{r}");
    server.shutdown();
    server.wait();
}
