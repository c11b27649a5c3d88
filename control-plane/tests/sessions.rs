//! Sessions and users on a real SQLite file: inbox backlogs and per-device cursors
//! (across a restart), direct messages from clients and the server API with the sender
//! stamped by the server, receipts (stored, pushed, queried, kept across a restart),
//! reconnect tokens (resume with recovery after a restart, forged and expired tokens
//! refused plainly), and scheduled messages (fire on time after a restart, cancel).

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::{json, Value};
use switchboard_control_plane::config::NamespaceConfig;
use switchboard_control_plane::Config;
use switchboard_engine::Durability;

/// A token for `sub` that may send direct messages to `send_to` and schedule.
fn rich_token(sub: &str, send_to: Option<&[&str]>, schedule: bool) -> String {
    token_with(sub, |c| {
        c.send_to = send_to.map(|s| s.iter().map(|u| u.to_string()).collect());
        c.schedule = Some(schedule);
    })
}

fn ledger(c: &mut Config) {
    c.namespaces.insert(
        "ledger".into(),
        NamespaceConfig {
            durability: Durability::Sync,
            history_size: Some(1000),
            history_ttl_ms: Some(3_600_000),
            ..Default::default()
        },
    );
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Connect with `cmd` (a `connect` command); returns the client and the result.
async fn connect_with(addr: std::net::SocketAddr, cmd: Value) -> (Client, Value) {
    let mut c = Client::open(addr, Fmt::Json).await;
    let r = c.call(cmd).await;
    (c, r)
}

fn offsets(v: &Value) -> Vec<u64> {
    v["publications"]
        .as_array()
        .unwrap_or_else(|| panic!("no publications in {v}"))
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_backlog_per_device_cursors_and_direct_messages() {
    let store = temp_store();
    let server = start(|c| c.store.path = store.clone());
    let (addr, admin) = (server.ws_addr(), server.admin_addr());
    let alice = rich_token("alice", Some(&["bob", "carol"]), false);
    let bob = rich_token("bob", None, false);

    let mut phone = connect_with(
        addr,
        json!({"cmd": "connect", "token": bob, "device": "phone"}),
    )
    .await
    .0;
    let inbox = phone.next_push(&["inbox"]).await;
    assert_eq!(inbox["channel"], json!("inbox:bob"), "{inbox}");
    assert_eq!(inbox["recovered"], json!(true), "{inbox}");
    assert!(offsets(&inbox).is_empty(), "{inbox}");

    // Direct messages: the server stamps the sender; a retry with the same id is not
    // delivered twice.
    let mut a = Client::connect(addr, Fmt::MsgPack, &alice).await;
    for i in 1..=3u64 {
        let r = a
            .call(json!({"cmd": "send", "user": "bob", "data": {"text": i}, "key": format!("m{i}"), "meta": {"cid": i}}))
            .await;
        assert_eq!(r["result"]["offset"], json!(i), "{r}");
    }
    let r = a
        .call(json!({"cmd": "send", "user": "bob", "data": {"text": 3}, "key": "m3"}))
        .await;
    assert_eq!(r["result"]["duplicate"], json!(true), "{r}");
    for i in 1..=3u64 {
        let p = phone.next_publication().await;
        assert_eq!(
            (&p["channel"], &p["offset"], &p["from"], &p["meta"]),
            (
                &json!("inbox:bob"),
                &json!(i),
                &json!("alice"),
                &json!({"cid": i})
            ),
            "{p}"
        );
    }
    // Not allowed: sending to someone the token does not name, reading or writing
    // another inbox, publishing into an inbox directly.
    let r = a
        .call(json!({"cmd": "send", "user": "mallory", "data": 1}))
        .await;
    assert_eq!(r["error"]["code"], json!(103), "{r}");
    let r = phone
        .call(json!({"cmd": "send", "user": "alice", "data": 1}))
        .await;
    assert_eq!(r["error"]["code"], json!(103), "{r}");
    let r = phone
        .call(json!({"cmd": "subscribe", "channel": "inbox:alice"}))
        .await;
    assert_eq!(r["error"]["code"], json!(103), "{r}");
    let r = phone
        .call(json!({"cmd": "publish", "channel": "inbox:bob", "data": 1}))
        .await;
    assert_eq!(r["error"]["code"], json!(103), "{r}");

    // The phone processed up to 2; a second device has no cursor yet.
    let r = phone.call(json!({"cmd": "ack", "offset": 2})).await;
    assert_eq!(r["result"], json!({}), "{r}");
    let (mut laptop, r) = connect_with(
        addr,
        json!({"cmd": "connect", "token": bob, "device": "laptop"}),
    )
    .await;
    assert_eq!(r["result"]["device"], json!("laptop"), "{r}");
    let inbox = laptop.next_push(&["inbox"]).await;
    assert_eq!(offsets(&inbox), [1, 2, 3], "{inbox}");
    assert_eq!(inbox["publications"][0]["from"], json!("alice"), "{inbox}");
    drop(phone);

    // While the phone is away: the server API sends to bob and carol in one call.
    let (status, body) = api(
        admin,
        "POST",
        "/api/send",
        &json!({"users": ["bob", "carol"], "data": {"text": "maintenance at 5"}, "from": "ops"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["offset"], json!(4), "{body}");
    assert_eq!(body["results"][1]["offset"], json!(1), "{body}");
    let live = laptop.next_publication().await;
    assert_eq!(
        (&live["offset"], &live["from"]),
        (&json!(4), &json!("ops")),
        "{live}"
    );
    let (status, body) = api(admin, "POST", "/api/send", &json!({"users": [], "data": 1})).await;
    assert_eq!(status, 400, "{body}");

    // Back on the phone: exactly what it had not acknowledged.
    let mut phone = connect_with(
        addr,
        json!({"cmd": "connect", "token": bob, "device": "phone"}),
    )
    .await
    .0;
    let inbox = phone.next_push(&["inbox"]).await;
    assert_eq!(offsets(&inbox), [3, 4], "{inbox}");
    assert_eq!(inbox["recovered"], json!(true), "{inbox}");
    let r = phone.call(json!({"cmd": "ack", "offset": 4})).await;
    assert!(r.get("result").is_some(), "{r}");
    // A connection without a device id cannot keep a cursor.
    let mut plain = Client::connect(addr, Fmt::Json, &bob).await;
    let r = plain.call(json!({"cmd": "ack", "offset": 4})).await;
    assert_eq!(r["error"]["code"], json!(104), "{r}");
    // It gets no inbox on its own, but may subscribe to it (and read its history).
    let r = plain
        .call(json!({"cmd": "subscribe", "channel": "inbox:bob"}))
        .await;
    assert_eq!(r["result"]["offset"], json!(4), "{r}");
    let r = plain
        .call(json!({"cmd": "history", "channel": "inbox:bob", "since": 2}))
        .await;
    assert_eq!(offsets(&r["result"]), [3, 4], "{r}");
    drop((phone, laptop, plain, a));
    // Cursors are written with the next batch; give the writer a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.shutdown();
    server.wait();

    // After a restart: inbox, cursors and senders are still there.
    let server = start(|c| c.store.path = store.clone());
    let addr = server.ws_addr();
    let mut phone = connect_with(
        addr,
        json!({"cmd": "connect", "token": bob, "device": "phone"}),
    )
    .await
    .0;
    let inbox = phone.next_push(&["inbox"]).await;
    assert!(
        offsets(&inbox).is_empty(),
        "the phone had acknowledged 4: {inbox}"
    );
    let (mut laptop, _) = connect_with(
        addr,
        json!({"cmd": "connect", "token": bob, "device": "laptop"}),
    )
    .await;
    let inbox = laptop.next_push(&["inbox"]).await;
    assert_eq!(offsets(&inbox), [1, 2, 3, 4], "{inbox}");
    assert_eq!(inbox["publications"][3]["from"], json!("ops"), "{inbox}");
    let carol = rich_token("carol", None, false);
    let (mut carol, _) = connect_with(
        addr,
        json!({"cmd": "connect", "token": carol, "device": "d"}),
    )
    .await;
    let inbox = carol.next_push(&["inbox"]).await;
    assert_eq!(offsets(&inbox), [1], "{inbox}");
    drop((phone, laptop, carol));
    server.shutdown();
    server.wait();
    let _ = std::fs::remove_dir_all(store.parent().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_are_stored_pushed_and_queryable() {
    let store = temp_store();
    let server = start(|c| c.store.path = store.clone());
    let (addr, admin) = (server.ws_addr(), server.admin_addr());
    let mut ann = Client::connect(addr, Fmt::Json, &token("ann", None)).await;
    let mut ben = Client::connect(addr, Fmt::MsgPack, &token("ben", None)).await;
    for c in [&mut ann, &mut ben] {
        let r = c
            .call(json!({"cmd": "subscribe", "channel": "chat:r"}))
            .await;
        assert!(r.get("result").is_some(), "{r}");
    }
    let mut epoch = json!(null);
    for i in 1..=3 {
        let r = ann
            .call(json!({"cmd": "publish", "channel": "chat:r", "data": i}))
            .await;
        epoch = r["result"]["epoch"].clone();
    }
    let r = ben
        .call(json!({"cmd": "receipt", "channel": "chat:r", "delivered": 3, "read": 2}))
        .await;
    assert_eq!(r["result"], json!({}), "{r}");
    let push = ann.next_push(&["receipt"]).await;
    assert_eq!(
        (
            &push["channel"],
            &push["user"],
            &push["delivered"],
            &push["read"],
            &push["epoch"]
        ),
        (
            &json!("chat:r"),
            &json!("ben"),
            &json!(3),
            &json!(2),
            &epoch
        ),
        "{push}"
    );
    // Going back does nothing; beyond the channel's top is clamped.
    let r = ben
        .call(json!({"cmd": "receipt", "channel": "chat:r", "read": 1}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    let r = ann
        .call(json!({"cmd": "receipt", "channel": "chat:r", "read": 99}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    let r = ann
        .call(json!({"cmd": "receipts", "channel": "chat:r"}))
        .await;
    let list = &r["result"]["receipts"];
    assert_eq!(list[0]["user"], json!("ann"), "{r}");
    assert_eq!(
        (&list[0]["delivered"], &list[0]["read"]),
        (&json!(3), &json!(3)),
        "{r}"
    );
    assert_eq!(
        (&list[1]["user"], &list[1]["read"]),
        (&json!("ben"), &json!(2)),
        "{r}"
    );
    assert_eq!(r["result"]["offset"], json!(3), "{r}");
    // Refusals: a channel the token does not allow, a receipt with no offsets.
    let mut limited = Client::connect(addr, Fmt::Json, &token("lim", Some(&["room:*"]))).await;
    let r = limited
        .call(json!({"cmd": "receipts", "channel": "chat:r"}))
        .await;
    assert_eq!(r["error"]["code"], json!(103), "{r}");
    let r = limited
        .call(json!({"cmd": "receipt", "channel": "room:1"}))
        .await;
    assert_eq!(r["error"]["code"], json!(104), "{r}");
    // Written with the next batch; then a clean restart keeps them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop((ann, ben, limited));
    server.shutdown();
    server.wait();

    let server = start(|c| c.store.path = store.clone());
    let admin2 = server.admin_addr();
    let (status, body) = api(admin2, "GET", "/api/receipts?channel=chat:r", &json!(null)).await;
    assert_eq!(status, 200, "{body}");
    let list = body["receipts"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{body}");
    assert_eq!(
        (&list[1]["user"], &list[1]["delivered"], &list[1]["read"]),
        (&json!("ben"), &json!(3), &json!(2))
    );
    assert_eq!(
        list[1]["epoch"], epoch,
        "receipts keep the epoch they were given in"
    );
    let (status, _) = api(
        admin2,
        "GET",
        "/api/receipts?channel=bad%20name",
        &json!(null),
    )
    .await;
    assert_eq!(status, 400);
    let _ = admin;
    server.shutdown();
    server.wait();
    let _ = std::fs::remove_dir_all(store.parent().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_token_resumes_subscriptions_with_recovery_after_a_restart() {
    let store = temp_store();
    let tweak = |c: &mut Config| {
        ledger(c);
        c.store.path = store.clone();
        // Heartbeat visits at least every 700 ms renew a 2 s token after 1 s.
        c.engine.ping_interval_ms = 300;
        c.engine.pong_timeout_ms = 400;
        c.engine.reconnect_ttl_ms = 2_000;
    };
    let server = start(tweak);
    let addr = server.ws_addr();
    let (mut c, r) = connect_with(
        addr,
        json!({"cmd": "connect", "token": token("rita", Some(&["ledger:*"])), "device": "tab"}),
    )
    .await;
    let first = r["result"]["reconnect_token"].as_str().unwrap().to_string();
    assert!(
        r["result"]["reconnect_expires_at"].as_u64().unwrap() > now_ms(),
        "{r}"
    );
    assert_eq!(r["result"]["resumed"], json!(false), "{r}");
    for ch in ["ledger:a", "ledger:b"] {
        let r = c.call(json!({"cmd": "subscribe", "channel": ch})).await;
        assert!(r.get("result").is_some(), "{r}");
    }
    let r = c
        .call(json!({"cmd": "publish", "channel": "ledger:a", "data": 1}))
        .await;
    let epoch = r["result"]["epoch"].clone();
    let seen = c.next_publication().await;
    assert_eq!(seen["offset"], json!(1));
    // The renewed token names the subscriptions.
    let renewed = c.next_push(&["reconnect"]).await;
    let token = renewed["token"].as_str().unwrap().to_string();
    assert_ne!(token, first);
    // Missed while away: two more before the restart, two after.
    for i in 2..=3 {
        c.call(json!({"cmd": "publish", "channel": "ledger:a", "data": i}))
            .await;
    }
    drop(c);
    server.shutdown();
    server.wait();
    let server = start(tweak);
    let (addr, admin) = (server.ws_addr(), server.admin_addr());
    for i in 4..=5 {
        let (status, body) = api(
            admin,
            "POST",
            "/api/publish",
            &json!({"channel": "ledger:a", "data": i}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }

    // Forged, and garbage: refused with 101, and the connection may still connect.
    let mut forged = token.clone();
    forged.pop();
    forged.push(if token.ends_with('A') { 'B' } else { 'A' });
    let (mut c, r) = connect_with(addr, json!({"cmd": "connect", "reconnect": forged})).await;
    assert_eq!(r["error"]["code"], json!(101), "{r}");
    let r = c
        .call(json!({"cmd": "connect", "reconnect": "v1.e30.AAAA"}))
        .await;
    assert_eq!(r["error"]["code"], json!(101), "{r}");
    let many: serde_json::Map<String, Value> = (0..300)
        .map(|i| (format!("ledger:{i}"), json!({"epoch": epoch, "offset": 0})))
        .collect();
    let r = c
        .call(json!({"cmd": "connect", "reconnect": token, "positions": many}))
        .await;
    assert_eq!(r["error"]["code"], json!(110), "{r}");
    let r = c
        .call(json!({"cmd": "connect", "token": token_for("rita")}))
        .await;
    assert_eq!(r["result"]["resumed"], json!(false), "{r}");
    drop(c);

    // The real one, after the restart: no JWT, subscriptions back, ledger:a recovered
    // from the position the client names.
    let (mut c, r) = connect_with(
        addr,
        json!({"cmd": "connect", "reconnect": token,
               "positions": {"ledger:a": {"epoch": epoch, "offset": 1}}}),
    )
    .await;
    assert_eq!(r["result"]["resumed"], json!(true), "{r}");
    assert_eq!(
        (&r["result"]["user"], &r["result"]["device"]),
        (&json!("rita"), &json!("tab")),
        "{r}"
    );
    let mut restored = std::collections::BTreeMap::new();
    while restored.len() < 2 {
        let p = c.next_push(&["subscribed"]).await;
        restored.insert(p["channel"].as_str().unwrap().to_string(), p);
    }
    let a = &restored["ledger:a"];
    assert_eq!(
        (&a["recovered"], &a["epoch"]),
        (&json!(true), &epoch),
        "{a}"
    );
    assert_eq!(offsets(a), [2, 3, 4, 5], "{a}");
    assert!(
        restored["ledger:b"].get("recovered").is_none(),
        "{}",
        restored["ledger:b"]
    );
    // Live from there, with the permissions of the original token.
    let r = c
        .call(json!({"cmd": "publish", "channel": "ledger:a", "data": 6}))
        .await;
    assert_eq!(r["result"]["offset"], json!(6), "{r}");
    assert_eq!(c.next_publication().await["offset"], json!(6));
    let r = c
        .call(json!({"cmd": "subscribe", "channel": "room:1"}))
        .await;
    assert_eq!(
        r["error"]["code"],
        json!(103),
        "the token's channel patterns still apply: {r}"
    );
    drop(c);

    assert_eq!(metric(admin, "switchboard_sessions_resumed_total").await, 1);
    assert_eq!(
        metric(admin, "switchboard_reconnect_tokens_refused_total").await,
        2
    );
    // Expired: 109, told to connect with a token.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let (_c, r) = connect_with(addr, json!({"cmd": "connect", "reconnect": first})).await;
    assert_eq!(r["error"]["code"], json!(109), "{r}");
    server.shutdown();
    server.wait();
    let _ = std::fs::remove_dir_all(store.parent().unwrap());
}

fn token_for(sub: &str) -> String {
    token(sub, Some(&["ledger:*"]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_messages_fire_on_time_after_a_restart_and_can_be_cancelled() {
    let store = temp_store();
    let server = start(|c| c.store.path = store.clone());
    let (addr, admin) = (server.ws_addr(), server.admin_addr());
    let mut planner =
        Client::connect(addr, Fmt::Json, &rich_token("pat", Some(&["*"]), true)).await;
    let due = now_ms() + 2_500;
    let r = planner
        .call(json!({"cmd": "schedule", "channel": "chat:rem", "data": {"text": "follow up"}, "meta": {"k": 1}, "at": due}))
        .await;
    let first = r["result"]["schedule"]
        .as_u64()
        .unwrap_or_else(|| panic!("{r}"));
    assert_eq!(r["result"]["at"], json!(due), "{r}");
    let r = planner
        .call(json!({"cmd": "schedule", "user": "quinn", "data": "see you", "delay": 2_500}))
        .await;
    assert!(r["result"]["schedule"].is_u64(), "{r}");
    let r = planner
        .call(json!({"cmd": "schedule", "channel": "chat:rem", "data": "never", "delay": 60_000}))
        .await;
    let later = r["result"]["schedule"].as_u64().unwrap();
    let r = planner
        .call(json!({"cmd": "unschedule", "schedule": later}))
        .await;
    assert_eq!(r["result"], json!({}), "{r}");
    let r = planner
        .call(json!({"cmd": "unschedule", "schedule": later}))
        .await;
    assert_eq!(r["error"]["code"], json!(112), "cancelled already: {r}");
    // Refusals: no scheduling right, someone else's, a malformed command.
    let mut other = Client::connect(addr, Fmt::Json, &token("oli", None)).await;
    let r = other
        .call(json!({"cmd": "schedule", "channel": "chat:rem", "data": 1, "delay": 10}))
        .await;
    assert_eq!(r["error"]["code"], json!(103), "{r}");
    let mut other = Client::connect(addr, Fmt::Json, &rich_token("oli", None, true)).await;
    let r = other
        .call(json!({"cmd": "unschedule", "schedule": first}))
        .await;
    assert_eq!(r["error"]["code"], json!(112), "not oli's: {r}");
    let r = other
        .call(json!({"cmd": "schedule", "channel": "chat:rem", "data": 1}))
        .await;
    assert_eq!(r["error"]["code"], json!(104), "{r}");
    // The server API schedules too.
    let (status, body) = api(
        admin,
        "POST",
        "/api/schedule",
        &json!({"channel": "chat:rem", "data": "from the backend", "delay_ms": 2_500}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api(
        admin,
        "POST",
        "/api/schedule",
        &json!({"channel": "chat:rem", "data": 1}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    drop((planner, other));
    // Stopped before anything is due.
    server.shutdown();
    server.wait();

    let server = start(|c| c.store.path = store.clone());
    let (addr, admin) = (server.ws_addr(), server.admin_addr());
    let mut sub = Client::connect(addr, Fmt::Json, &token("sam", None)).await;
    let r = sub
        .call(json!({"cmd": "subscribe", "channel": "chat:rem"}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    let mut quinn = connect_with(
        addr,
        json!({"cmd": "connect", "token": token("quinn", None), "device": "q"}),
    )
    .await
    .0;
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "scheduled messages did not fire: {got:?}"
        );
        let p = tokio::time::timeout(Duration::from_secs(8), sub.next_publication())
            .await
            .expect("a scheduled publication");
        got.push((now_ms(), p));
    }
    for (at, p) in &got {
        assert!(*at + 50 >= due, "fired early: {at} < {due}: {p}");
        assert!(*at <= due + 2_000, "fired late: {at} > {due} + 2 s: {p}");
    }
    let texts: Vec<&Value> = got.iter().map(|(_, p)| &p["data"]).collect();
    assert!(texts.contains(&&json!({"text": "follow up"})), "{texts:?}");
    assert!(texts.contains(&&json!("from the backend")), "{texts:?}");
    // The direct message went to quinn's inbox, from pat.
    let mut dm = None;
    while dm.is_none() {
        let p = tokio::time::timeout(Duration::from_secs(8), quinn.next_event())
            .await
            .expect("quinn's scheduled message");
        if let Event::Msg(m) = p {
            if m["push"] == json!("publication") {
                dm = Some(m);
            } else if m["push"] == json!("inbox") && !offsets(&m).is_empty() {
                dm = Some(m["publications"][0].clone());
            }
        }
    }
    let dm = dm.unwrap();
    assert_eq!(
        (&dm["data"], &dm["from"]),
        (&json!("see you"), &json!("pat")),
        "{dm}"
    );
    // What the server API reports, and what it refuses.
    let (status, body) = api(admin, "GET", "/api/schedule?all=true", &json!(null)).await;
    assert_eq!(status, 200, "{body}");
    let list = body["scheduled"].as_array().unwrap();
    let state = |id: u64| {
        list.iter()
            .find(|s| s["id"] == json!(id))
            .map(|s| s["state"].clone())
    };
    assert_eq!(state(first), Some(json!("fired")), "{body}");
    assert_eq!(state(later), Some(json!("cancelled")), "{body}");
    assert!(list
        .iter()
        .filter(|s| s["state"] == json!("fired"))
        .all(|s| s["offset"].is_u64()));
    let (status, _) = api(
        admin,
        "DELETE",
        &format!("/api/schedule/{first}"),
        &json!(null),
    )
    .await;
    assert_eq!(status, 409);
    let (status, _) = api(admin, "DELETE", "/api/schedule/999999", &json!(null)).await;
    assert_eq!(status, 404);
    let (status, body) = api(admin, "GET", "/api/schedule", &json!(null)).await;
    assert_eq!(body["scheduled"], json!([]), "{status} {body}");
    drop((sub, quinn));
    server.shutdown();
    server.wait();
    let _ = std::fs::remove_dir_all(store.parent().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_reads_an_inbox_s_devices_and_clears_what_is_pending() {
    let server = start(|c| c.admin.jwt_secret = Some("inbox-admin-secret-0123456789".into()));
    let (addr, admin) = (server.ws_addr(), server.admin_addr());
    let bob = rich_token("bob", None, false);
    let mut phone = connect_with(
        addr,
        json!({"cmd": "connect", "token": bob, "device": "phone"}),
    )
    .await
    .0;
    phone.next_push(&["inbox"]).await;
    for i in 1..=3 {
        let body = json!({"users": ["bob"], "data": i, "from": "ops"});
        let (st, r) = api(admin, "POST", "/api/send", &body).await;
        assert_eq!(st, 200, "{r}");
    }
    for _ in 0..3 {
        phone.next_publication().await;
    }
    let r = phone.call(json!({"cmd": "ack", "offset": 1})).await;
    assert_eq!(r["result"], json!({}), "{r}");
    let (_laptop, _) = connect_with(
        addr,
        json!({"cmd": "connect", "token": bob, "device": "laptop"}),
    )
    .await;
    let (st, stats) = api(admin, "GET", "/api/users/bob/inbox/stats", &Value::Null).await;
    assert_eq!(st, 200, "{stats}");
    assert_eq!(stats["channel"], "inbox:bob");
    assert_eq!(stats["offset"], 3);
    assert_eq!(stats["devices"][0]["device"], "phone", "{stats}");
    assert_eq!(stats["devices"][0]["pending"], 2, "{stats}");

    // Cleared: the phone's cursor moves to the latest message, audited.
    let (st, r) = api(admin, "DELETE", "/api/users/bob/inbox", &Value::Null).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["cleared"], 1, "{r}");
    let (_, stats) = api(admin, "GET", "/api/users/bob/inbox/stats", &Value::Null).await;
    assert!(
        stats["devices"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["pending"] == 0),
        "{stats}"
    );
    // The phone comes back: nothing pending.
    drop(phone);
    let mut phone = connect_with(
        addr,
        json!({"cmd": "connect", "token": bob, "device": "phone"}),
    )
    .await
    .0;
    let inbox = phone.next_push(&["inbox"]).await;
    assert!(offsets(&inbox).is_empty(), "{inbox}");
    let (st, audit) = admin_request(
        admin,
        "inbox-admin-secret-0123456789",
        "GET",
        "/admin/audit",
        "",
    )
    .await;
    assert_eq!(st, 200);
    assert!(audit.to_string().contains("\"inbox.clear\""), "{audit}");
    let (st, _) = api(admin, "GET", "/api/users/%20/inbox/stats", &Value::Null).await;
    assert_eq!(st, 400);
    server.shutdown();
    server.wait();
}
