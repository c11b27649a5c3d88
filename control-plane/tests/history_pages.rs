//! Paging through a stored channel's history on a real SQLite file, past what the owner
//! shard keeps in memory: newest first and oldest first with cursors, by position and by
//! time, through the protocol (JSON and MessagePack) and the server API, after a restart;
//! bad page requests get clear errors.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::{json, Value};
use switchboard_control_plane::config::NamespaceConfig;
use switchboard_engine::Durability;

/// Publications per batch; batches are apart in time, so a time range selects one.
const BATCH: u64 = 500;
const BATCHES: u64 = 4;

fn chat_namespace(c: &mut switchboard_control_plane::Config) {
    c.namespaces.insert(
        "chat".into(),
        NamespaceConfig {
            durability: Durability::Sync,
            // Memory keeps 16: every page below the newest 16 is read from the store.
            history_size: Some(16),
            ..Default::default()
        },
    );
    c.store.archive_after_ms = 200;
    // Thousands of publications a second from one user.
    c.engine.rate_limits = vec![];
}

fn start_chat(store: &std::path::Path) -> switchboard_control_plane::Server {
    start(|c| {
        chat_namespace(c);
        c.store.path = store.to_owned();
    })
}

/// Stop `server` and remove its store.
fn stop(server: switchboard_control_plane::Server, store: &std::path::Path) {
    server.shutdown();
    server.wait();
    let _ = std::fs::remove_dir_all(store.parent().unwrap());
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Publish `BATCHES` batches of `{"n": offset}` to `channel`; the wall-clock time after
/// each batch was acknowledged (every publication of batch k is stored after mark k-1
/// and at or before mark k).
async fn publish_batches(client: &mut Client, channel: &str) -> Vec<u64> {
    let mut marks = Vec::new();
    let mut n = 0;
    for _ in 0..BATCHES {
        for _ in 0..BATCH - 1 {
            n += 1;
            client
                .send(
                    &json!({"id": 1_000_000 + n, "cmd": "publish", "channel": channel,
                    "data": {"n": n}, "reply": false}),
                )
                .await;
        }
        n += 1;
        let r = client
            .call(json!({"cmd": "publish", "channel": channel, "data": {"n": n}}))
            .await;
        if r.get("closed").is_some() {
            panic!("closed: {:?}", client.expect_close().await);
        }
        assert_eq!(r["result"]["offset"], json!(n), "{r}");
        marks.push(now_ms());
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    }
    marks
}

/// Follow cursors from `first` (a `history` command) to the end; every offset seen, in
/// order, checking each publication's data.
async fn pages(client: &mut Client, first: Value) -> Vec<u64> {
    let mut offsets = Vec::new();
    let mut cmd = first.clone();
    for _ in 0..100 {
        let r = client.call(cmd.clone()).await;
        let result = &r["result"];
        assert!(result["publications"].is_array(), "{r}");
        for p in result["publications"].as_array().unwrap() {
            let o = p["offset"].as_u64().unwrap();
            assert_eq!(p["data"], json!({"n": o}), "{p}");
            offsets.push(o);
        }
        match result.get("cursor") {
            Some(c) => {
                cmd = json!({"cmd": "history", "channel": first["channel"], "cursor": c});
                if let Some(limit) = first.get("limit") {
                    cmd["limit"] = limit.clone();
                }
            }
            None => return offsets,
        }
    }
    panic!("more than 100 pages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_reach_past_memory_into_the_store_both_ways_and_by_time() {
    let store = temp_store();
    let server = start_chat(&store);
    let (ws, admin) = (server.ws_addr(), server.admin_addr());
    let mut c = Client::connect(ws, Fmt::Json, &token("ann", None)).await;
    let marks = publish_batches(&mut c, "chat:long").await;
    let total = BATCH * BATCHES;

    // Newest first, 300 a page, from the top to offset 1: no gap, no repeat.
    let back = pages(
        &mut c,
        json!({"cmd": "history", "channel": "chat:long", "reverse": true, "limit": 300}),
    )
    .await;
    assert_eq!(back, (1..=total).rev().collect::<Vec<_>>());
    // Oldest first, the largest page.
    let fwd = pages(
        &mut c,
        json!({"cmd": "history", "channel": "chat:long", "limit": 1000}),
    )
    .await;
    assert_eq!(fwd, (1..=total).collect::<Vec<_>>());
    assert!(metric(admin, "switchboard_store_history_pages_total").await >= 4);

    // By position, deep in the store.
    let r = c
        .call(json!({"cmd": "history", "channel": "chat:long", "after": 1500, "limit": 3}))
        .await;
    let offsets: Vec<_> = r["result"]["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [1501, 1502, 1503], "{r}");
    assert!(r["result"]["cursor"].is_string(), "{r}");
    let r = c
        .call(json!({"cmd": "history", "channel": "chat:long", "before": 100, "reverse": true, "limit": 2}))
        .await;
    assert_eq!(r["result"]["publications"][0]["offset"], json!(99), "{r}");
    assert_eq!(r["result"]["publications"][1]["offset"], json!(98), "{r}");

    // By time: the second batch exactly, either way, in pages of 200.
    let second: Vec<u64> = (BATCH + 1..=2 * BATCH).collect();
    let range = json!({"cmd": "history", "channel": "chat:long", "from_ms": marks[0] + 1,
        "to_ms": marks[1], "limit": 200});
    assert_eq!(pages(&mut c, range.clone()).await, second);
    let mut newest_first = range.clone();
    newest_first["reverse"] = json!(true);
    let mut rev = second.clone();
    rev.reverse();
    assert_eq!(pages(&mut c, newest_first).await, rev);
    // From a time on, until the newest (memory included).
    let tail = pages(
        &mut c,
        json!({"cmd": "history", "channel": "chat:long", "from_ms": marks[2] + 1, "limit": 1000}),
    )
    .await;
    assert_eq!(tail, (3 * BATCH + 1..=total).collect::<Vec<_>>());

    // MessagePack pages carry the cursor too.
    let mut m = Client::connect(ws, Fmt::MsgPack, &token("bob", None)).await;
    let r = m
        .call(json!({"cmd": "history", "channel": "chat:long", "reverse": true, "limit": 50, "before": 1000}))
        .await;
    assert_eq!(
        r["result"]["publications"].as_array().unwrap().len(),
        50,
        "{r}"
    );
    let r = m
        .call(json!({"cmd": "history", "channel": "chat:long", "cursor": r["result"]["cursor"], "limit": 50}))
        .await;
    assert_eq!(r["result"]["publications"][0]["offset"], json!(949), "{r}");

    // The server API pages the same way.
    let (st, h) = api(
        admin,
        "GET",
        "/api/history?channel=chat:long&reverse=true&limit=2&before=3",
        &Value::Null,
    )
    .await;
    assert_eq!(st, 200, "{h}");
    assert_eq!(h["publications"][0]["data"], json!({"n": 2}), "{h}");
    assert_eq!(h["publications"][1]["data"], json!({"n": 1}), "{h}");
    assert!(h.get("cursor").is_none(), "nothing before offset 1: {h}");
    let (st, h) = api(
        admin,
        "GET",
        &format!(
            "/api/history?channel=chat:long&limit=1&from_ms={}",
            marks[0] + 1
        ),
        &Value::Null,
    )
    .await;
    assert_eq!(st, 200, "{h}");
    assert_eq!(h["publications"][0]["offset"], json!(BATCH + 1), "{h}");
    let cursor = h["cursor"].as_str().unwrap().to_string();
    let (st, h) = api(
        admin,
        "GET",
        &format!("/api/history?channel=chat:long&limit=1&cursor={cursor}"),
        &Value::Null,
    )
    .await;
    assert_eq!(st, 200, "{h}");
    assert_eq!(h["publications"][0]["offset"], json!(BATCH + 2), "{h}");

    // A restart loses nothing: the same history, from the store.
    server.shutdown();
    server.wait();
    let server = start_chat(&store);
    let mut c = Client::connect(server.ws_addr(), Fmt::Json, &token("ann", None)).await;
    let back = pages(
        &mut c,
        json!({"cmd": "history", "channel": "chat:long", "reverse": true, "limit": 1000}),
    )
    .await;
    assert_eq!(
        back.iter().copied().collect::<BTreeSet<_>>().len(),
        total as usize
    );
    assert_eq!(back.first(), Some(&total));
    stop(server, &store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_page_requests_get_clear_errors() {
    let store = temp_store();
    let server = start_chat(&store);
    let (ws, admin) = (server.ws_addr(), server.admin_addr());
    let mut c = Client::connect(ws, Fmt::Json, &token("ann", None)).await;
    for n in 1..=40 {
        let r = c
            .call(json!({"cmd": "publish", "channel": "chat:a", "data": {"n": n}}))
            .await;
        assert!(r["result"]["offset"].is_u64(), "{r}");
    }
    let page = c
        .call(json!({"cmd": "history", "channel": "chat:a", "limit": 5}))
        .await;
    let cursor = page["result"]["cursor"].clone();
    assert!(cursor.is_string(), "{page}");
    let refused = [
        (
            json!({"limit": -1}),
            104,
            "'limit' must be an integer from 1 to 1000",
        ),
        (
            json!({"limit": 0}),
            104,
            "'limit' must be an integer from 1 to 1000",
        ),
        (
            json!({"limit": 1_000_000}),
            104,
            "'limit' must be an integer from 1 to 1000",
        ),
        (json!({"cursor": "not-a-cursor"}), 104, "unknown cursor"),
        (
            json!({"cursor": cursor, "after": 3}),
            104,
            "'cursor' continues a page",
        ),
        (
            json!({"after": 41}),
            104,
            "'after' 41 is beyond the channel's latest offset 40",
        ),
        (
            json!({"before": 99, "reverse": true}),
            104,
            "'before' 99 is beyond",
        ),
        (
            json!({"epoch": "00000000000000ff"}),
            112,
            "epoch 00000000000000ff of this channel is not stored",
        ),
    ];
    for (extra, code, why) in refused {
        let mut cmd = json!({"cmd": "history", "channel": "chat:a"});
        for (k, v) in extra.as_object().unwrap() {
            cmd[k] = v.clone();
        }
        let r = c.call(cmd.clone()).await;
        assert_eq!(r["error"]["code"], json!(code), "{cmd} → {r}");
        let message = r["error"]["message"].as_str().unwrap_or_default();
        assert!(message.starts_with(why), "{cmd} → {r}");
    }
    // A cursor from another channel.
    let r = c
        .call(json!({"cmd": "history", "channel": "chat:b", "cursor": cursor}))
        .await;
    assert_eq!(
        r["error"]["message"],
        json!("the cursor belongs to another channel"),
        "{r}"
    );
    // The same through the server API: 400 and 404 with a JSON error.
    for (query, status) in [
        ("limit=-5", 400),
        ("limit=5000", 400),
        ("cursor=zzz", 400),
        ("after=1000", 400),
        ("epoch=00000000000000ff", 404),
    ] {
        let (st, body) = api(
            admin,
            "GET",
            &format!("/api/history?channel=chat:a&{query}"),
            &Value::Null,
        )
        .await;
        assert_eq!(st, status, "{query}: {body}");
        assert!(
            body["error"].is_object() || body["message"].is_string(),
            "{query}: {body}"
        );
    }
    // The connection still works.
    let r = c
        .call(json!({"cmd": "history", "channel": "chat:a", "reverse": true, "limit": 1}))
        .await;
    assert_eq!(r["result"]["publications"][0]["offset"], json!(40), "{r}");
    stop(server, &store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_outlives_the_memory_window_and_is_read_from_the_store() {
    let store = temp_store();
    let server = start(|c| {
        chat_namespace(c);
        // Memory forgets after 300 ms; the store keeps everything (no retention set).
        c.namespaces.get_mut("chat").unwrap().history_ttl_ms = Some(300);
        c.store.path = store.clone();
    });
    let mut c = Client::connect(server.ws_addr(), Fmt::Json, &token("ann", None)).await;
    for n in 1..=30 {
        let r = c
            .call(json!({"cmd": "publish", "channel": "chat:old", "data": {"n": n}}))
            .await;
        assert_eq!(r["result"]["offset"], json!(n), "{r}");
    }
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let all = pages(
        &mut c,
        json!({"cmd": "history", "channel": "chat:old", "reverse": true, "limit": 7}),
    )
    .await;
    assert_eq!(all, (1..=30).rev().collect::<Vec<_>>());
    stop(server, &store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_stored_channel_continues_its_epoch_and_keeps_its_history() {
    let store = temp_store();
    let quiet = |c: &mut switchboard_control_plane::Config| {
        chat_namespace(c);
        c.namespaces.get_mut("chat").unwrap().history_ttl_ms = Some(200);
        // Streams idle this long are forgotten by their shard (default: an hour).
        c.engine.stream_idle_ms = 300;
        c.store.path = store.clone();
    };
    let server = start(quiet);
    let admin = server.admin_addr();
    let publish = |n: u64| json!({"channel": "chat:visit", "data": {"n": n}});
    let mut epoch = Value::Null;
    for n in 1..=5 {
        let (st, r) = api(admin, "POST", "/api/publish", &publish(n)).await;
        assert_eq!((st, &r["offset"]), (200, &json!(n)), "{r}");
        epoch = r["epoch"].clone();
    }
    // Idle past the stream's idle time: the shard forgets the stream, not its position.
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    let (st, r) = api(admin, "POST", "/api/publish", &publish(6)).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!((&r["epoch"], &r["offset"]), (&epoch, &json!(6)), "{r}");
    server.shutdown();
    server.wait();
    // After a restart long after (for the stream): read back as dormant, continued.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let server = start(quiet);
    let (st, r) = api(server.admin_addr(), "POST", "/api/publish", &publish(7)).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!((&r["epoch"], &r["offset"]), (&epoch, &json!(7)), "{r}");
    let mut c = Client::connect(server.ws_addr(), Fmt::Json, &token("ann", None)).await;
    let all = pages(
        &mut c,
        json!({"cmd": "history", "channel": "chat:visit", "reverse": true, "limit": 3}),
    )
    .await;
    assert_eq!(all, (1..=7).rev().collect::<Vec<_>>());
    stop(server, &store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_recovers_from_the_store_what_memory_no_longer_keeps() {
    let store = temp_store();
    let server = start_chat(&store);
    let ws = server.ws_addr();
    let mut ann = Client::connect(ws, Fmt::Json, &token("ann", None)).await;
    let mut epoch = Value::Null;
    for n in 1..=100 {
        let r = ann
            .call(json!({"cmd": "publish", "channel": "chat:gap", "data": {"n": n}}))
            .await;
        epoch = r["result"]["epoch"].clone();
    }
    // Away since offset 10 (memory keeps the newest 16): the store supplies the rest,
    // while 200 more are published; every offset arrives once, in order.
    let mut sub = Client::connect(ws, Fmt::MsgPack, &token("bob", None)).await;
    sub.send(&json!({"id": 7, "cmd": "subscribe", "channel": "chat:gap",
        "since": {"epoch": epoch, "offset": 10}}))
        .await;
    for n in 101..=300 {
        ann.send(
            &json!({"id": 1000 + n, "cmd": "publish", "channel": "chat:gap",
            "data": {"n": n}, "reply": false}),
        )
        .await;
    }
    let mut seen = Vec::new();
    let mut replied = false;
    while seen.last() != Some(&300) {
        match sub.next_event().await {
            Event::Msg(m) if m.get("id") == Some(&json!(7)) => {
                assert_eq!(m["result"]["recovered"], json!(true), "{m}");
                for p in m["result"]["publications"].as_array().unwrap() {
                    assert_eq!(p["data"]["n"], p["offset"], "{p}");
                    seen.push(p["offset"].as_u64().unwrap());
                }
                replied = true;
            }
            Event::Msg(m) if m.get("push") == Some(&json!("publication")) => {
                assert!(replied, "a publication before the subscribe's answer: {m}");
                seen.push(m["offset"].as_u64().unwrap());
            }
            Event::Msg(_) => {}
            e => panic!("{e:?}"),
        }
    }
    assert_eq!(seen, (11..=300).collect::<Vec<u64>>());
    assert!(metric(server.admin_addr(), "switchboard_store_history_pages_total").await >= 1);
    stop(server, &store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_away_for_long_gets_its_whole_inbox_backlog_from_the_store() {
    let store = temp_store();
    let server = start(|c| {
        chat_namespace(c);
        // The inbox keeps 10 in memory; the store keeps them all.
        c.inbox.history_size = 10;
        c.store.path = store.clone();
    });
    let ws = server.ws_addr();
    let bob = token("bob", None);
    let mut phone = Client::open(ws, Fmt::Json).await;
    let r = phone
        .call(json!({"cmd": "connect", "token": bob, "device": "phone"}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    phone.next_push(&["inbox"]).await;
    let sender = token_with("ann", |c| c.send_to = Some(vec!["bob".into()]));
    let mut ann = Client::connect(ws, Fmt::Json, &sender).await;
    for n in 1..=5 {
        ann.call(json!({"cmd": "send", "user": "bob", "data": {"n": n}}))
            .await;
        phone.next_publication().await;
    }
    let r = phone.call(json!({"cmd": "ack", "offset": 5})).await;
    assert!(r.get("result").is_some(), "{r}");
    drop(phone);
    for n in 6..=60 {
        let r = ann
            .call(json!({"cmd": "send", "user": "bob", "data": {"n": n}}))
            .await;
        assert_eq!(r["result"]["offset"], json!(n), "{r}");
    }
    let mut phone = Client::open(ws, Fmt::MsgPack).await;
    phone
        .call(json!({"cmd": "connect", "token": bob, "device": "phone"}))
        .await;
    let inbox = phone.next_push(&["inbox"]).await;
    assert_eq!(inbox["recovered"], json!(true), "{inbox}");
    let got: Vec<u64> = inbox["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(got, (6..=60).collect::<Vec<u64>>(), "{inbox}");
    assert_eq!(inbox["publications"][0]["from"], json!("ann"), "{inbox}");
    stop(server, &store);
}
