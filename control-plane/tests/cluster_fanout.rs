//! Channels shared by nodes through a real `redis-server` (installed by `bash
//! .ci/run`, started here on a free port, killed by PID): a publication on any node
//! reaches subscribers on every node — native clients in both formats and a real
//! `socket.io-client` — with one sequence of positions for the whole cluster, history
//! and recovery on any node, one Redis subscription per interested node (not per
//! subscriber), idempotency keys deduplicated across nodes, and Redis restarted
//! mid-traffic: nodes keep serving alone, and the epoch moves for channels published
//! meanwhile, so subscribers see the gap instead of missing messages silently; `sync`
//! namespaces check Redis's persistence and refuse publications while it is away.

mod common;

use std::io::BufRead;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchboard_control_plane::Server;

use common::{Client, Fmt, RedisServer};

fn node(redis: &RedisServer, id: &str) -> Server {
    common::cluster_node(redis, id, |_| {})
}

/// Wait until `check` holds (polling), or fail naming `what`.
async fn eventually(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many nodes subscribe to `channel`'s topic in Redis.
fn topic_subscribers(redis: &RedisServer, channel: &str) -> u64 {
    let mut c = redis.connection();
    let (_, n): (String, u64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(format!("{{sb:ch:{channel}}}:t"))
        .query::<Vec<(String, u64)>>(&mut c)
        .unwrap()
        .into_iter()
        .next()
        .unwrap();
    n
}

async fn subscribe(c: &mut Client, channel: &str) -> Value {
    let r = c
        .call(json!({"cmd": "subscribe", "channel": channel}))
        .await;
    r.get("result").cloned().unwrap_or_else(|| panic!("{r}"))
}

async fn publish(c: &mut Client, channel: &str, data: Value) -> Value {
    let r = c
        .call(json!({"cmd": "publish", "channel": channel, "data": data}))
        .await;
    r.get("result").cloned().unwrap_or_else(|| panic!("{r}"))
}

async fn next(c: &mut Client) -> Value {
    tokio::time::timeout(common::TIMEOUT, c.next_publication())
        .await
        .expect("a publication in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publications_reach_every_node_in_one_order() {
    let redis = RedisServer::start();
    let nodes = [node(&redis, "n1"), node(&redis, "n2"), node(&redis, "n3")];
    let tok = |u: &str| common::token(u, None);
    let mut ann = Client::connect(nodes[0].ws_addr(), Fmt::Json, &tok("ann")).await;
    let mut bob = Client::connect(nodes[1].ws_addr(), Fmt::Json, &tok("bob")).await;
    let mut cat = Client::connect(nodes[2].ws_addr(), Fmt::MsgPack, &tok("cat")).await;
    let mut dan = Client::connect(nodes[2].ws_addr(), Fmt::Json, &tok("dan")).await;

    // Subscribers on two nodes start in the epoch Redis gave the channel.
    let at_bob = subscribe(&mut bob, "room:1").await;
    let at_cat = subscribe(&mut cat, "room:1").await;
    let at_dan = subscribe(&mut dan, "room:1").await;
    assert_eq!(at_bob["epoch"], at_cat["epoch"], "{at_bob} {at_cat}");
    assert_eq!(at_cat, at_dan);
    assert_eq!(at_bob["offset"], 0);
    // One Redis subscription per interested node, however many subscribers.
    assert_eq!(topic_subscribers(&redis, "room:1"), 2);

    // A Socket.IO client on the third node, in the same room.
    let token = tok("eve");
    let mut sio = Command::new("node")
        .current_dir(common::node_clients())
        .args([
            "sio_client.mjs",
            "listen",
            &format!("http://{}", nodes[2].ws_addr()),
            &token,
            "room:1",
            "2",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node must be installed to run this test");
    let mut lines = std::io::BufReader::new(sio.stdout.take().unwrap()).lines();
    let joined = tokio::task::spawn_blocking(move || {
        let l = lines.next().unwrap().unwrap();
        (l, lines)
    });
    let (line, lines) = tokio::time::timeout(common::TIMEOUT, joined)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(line, r#"{"step":"joined"}"#);

    // Published on n1 (no subscriber there) and on n2: one order for everyone.
    let p1 = publish(&mut ann, "room:1", json!({"n": 1})).await;
    let p2 = publish(&mut bob, "room:1", json!({"n": 2})).await;
    assert_eq!(p1["epoch"], at_bob["epoch"], "{p1}");
    assert_eq!(p1["offset"], 1, "{p1}");
    assert_eq!(p2["offset"], 2, "{p2}");
    for c in [&mut bob, &mut cat, &mut dan] {
        let a = next(c).await;
        let b = next(c).await;
        assert_eq!(
            (a["data"]["n"].clone(), a["offset"].clone()),
            (json!(1), json!(1)),
            "{a}"
        );
        assert_eq!(
            (b["data"]["n"].clone(), b["offset"].clone()),
            (json!(2), json!(2)),
            "{b}"
        );
        assert_eq!(a["epoch"], at_bob["epoch"]);
    }
    // The Socket.IO client got both, then sent one through its own node.
    let report = tokio::task::spawn_blocking(move || {
        let mut lines = lines;
        lines.next().unwrap().unwrap()
    });
    let report: Value = serde_json::from_str(
        &tokio::time::timeout(common::TIMEOUT, report)
            .await
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert!(sio.wait().unwrap().success(), "{report}");
    let got = report["received"].as_array().unwrap();
    // Its own message may come back before its ack.
    assert!(got.len() >= 2, "{report}");
    assert_eq!(got[0]["data"], json!({"n": 1}), "{report}");
    assert_eq!(got[1]["data"], json!({"n": 2}), "{report}");
    assert_eq!(report["sent"]["offset"], 3, "{report}");
    let p3 = next(&mut bob).await;
    assert_eq!(p3["data"]["text"], "from socket.io", "{p3}");
    assert_eq!(p3["offset"], 3);

    // Redis forgets an idle stream, as a node does (engine.stream_idle_ms, 1 h).
    for key in ["{sb:ch:room:1}:s", "{sb:ch:room:1}:h"] {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query(&mut redis.connection())
            .unwrap();
        assert!(ttl > 3_000_000 && ttl <= 3_600_000, "{key}: {ttl}");
    }

    // History on a node that never subscribed, and recovery on another node.
    let h = ann
        .call(json!({"cmd": "history", "channel": "room:1", "limit": 10}))
        .await;
    let list = h["result"]["publications"].as_array().unwrap();
    assert_eq!(list.len(), 3, "{h}");
    assert_eq!(list[0]["data"], json!({"n": 1}), "{h}");
    let since = json!({"epoch": at_bob["epoch"], "offset": 1});
    let r = ann
        .call(json!({"cmd": "subscribe", "channel": "room:1", "since": since}))
        .await;
    assert_eq!(r["result"]["recovered"], true, "{r}");
    let missed: Vec<Value> = r["result"]["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].clone())
        .collect();
    assert_eq!(missed, vec![json!(2), json!(3)], "{r}");
    assert_eq!(topic_subscribers(&redis, "room:1"), 3);

    // A retry with the same idempotency key through another node: the original
    // position, delivered once.
    let first = ann
        .call(json!({"cmd": "publish", "channel": "room:1", "data": {"n": 4}, "key": "k-4"}))
        .await;
    let retry = dan
        .call(json!({"cmd": "publish", "channel": "room:1", "data": {"n": 4}, "key": "k-4"}))
        .await;
    assert_eq!(first["result"]["offset"], 4, "{first}");
    assert_eq!(retry["result"]["offset"], 4, "{retry}");
    assert_eq!(retry["result"]["duplicate"], true, "{retry}");
    assert_eq!(next(&mut bob).await["offset"], 4);

    // The link's counters: n1 and n2 had their publications sequenced by Redis
    // (pipelines never outnumber them), n2 delivered records from Redis.
    let n1 = nodes[0].admin_addr();
    let sequenced = common::metric(n1, "switchboard_shared_sequenced_total").await;
    let pipelines = common::metric(n1, "switchboard_shared_pipelines_total").await;
    assert!(
        sequenced >= 2 && pipelines >= 1 && pipelines <= sequenced,
        "{sequenced} {pipelines}"
    );
    assert_eq!(common::metric(n1, "switchboard_shared_link_up").await, 1);
    assert!(common::metric(nodes[1].admin_addr(), "switchboard_shared_records_total").await >= 4);

    // Leaving: the node's subscription ends with its last subscriber.
    for c in [&mut cat, &mut dan] {
        let r = c
            .call(json!({"cmd": "unsubscribe", "channel": "room:1"}))
            .await;
        assert!(r.get("result").is_some(), "{r}");
    }
    let mut left = false;
    eventually(5, "n3 leaves the topic", || {
        left = topic_subscribers(&redis, "room:1") == 2;
        left
    })
    .await;
    for n in nodes {
        n.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_mid_traffic_moves_the_epoch() {
    let mut redis = RedisServer::start();
    let nodes = [node(&redis, "n1"), node(&redis, "n2")];
    let tok = |u: &str| common::token(u, None);
    let mut ann = Client::connect(nodes[0].ws_addr(), Fmt::Json, &tok("ann")).await;
    let mut bob = Client::connect(nodes[1].ws_addr(), Fmt::Json, &tok("bob")).await;
    let start = subscribe(&mut ann, "room:9").await;
    subscribe(&mut bob, "room:9").await;
    let p = publish(&mut ann, "room:9", json!({"n": 1})).await;
    assert_eq!(p["offset"], 1);
    assert_eq!(next(&mut bob).await["offset"], 1);
    assert_eq!(next(&mut ann).await["offset"], 1);

    // Redis goes away: n1 keeps serving its own subscribers, alone.
    redis.kill();
    let deadline = Instant::now() + Duration::from_secs(5);
    let alone = loop {
        let r = ann
            .call(json!({"cmd": "publish", "channel": "room:9", "data": {"n": 2}}))
            .await;
        if let Some(res) = r.get("result") {
            break res.clone();
        }
        assert!(Instant::now() < deadline, "never served alone: {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mine = next(&mut ann).await;
    assert_eq!(mine["data"]["n"], 2, "{mine}");
    assert_eq!(mine["offset"], alone["offset"]);

    // Redis is back (empty: a restart without persistence): the channel published
    // alone moves to a new epoch; the next publication shows it to everyone.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = bob
            .call(json!({"cmd": "publish", "channel": "room:9", "data": {"n": 3}}))
            .await;
        let epoch_moved = r["result"]["epoch"] != start["epoch"] && r.get("result").is_some();
        if epoch_moved {
            break r["result"].clone();
        }
        assert!(Instant::now() < deadline, "the epoch never moved: {r}");
    };
    // Both nodes' subscribers get it, in the new epoch: a gap they can see.
    for c in [&mut ann, &mut bob] {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let m = next(c).await;
            if m["epoch"] == after["epoch"] && m["data"]["n"] == 3 {
                break;
            }
            assert!(Instant::now() < deadline, "never saw the new epoch: {m}");
        }
    }
    for n in nodes {
        n.shutdown();
    }
}

/// A node with a `sync` namespace on `redis`.
fn sync_node(redis: &RedisServer, id: &str) -> Server {
    let url = redis.url();
    common::start(|c| {
        c.cluster.redis_url = url;
        c.cluster.node_id = id.into();
        c.store.path = common::temp_store();
        c.namespaces.insert(
            "ledger".into(),
            switchboard_control_plane::config::NamespaceConfig {
                durability: switchboard_engine::Durability::Sync,
                ..Default::default()
            },
        );
    })
}

async fn cluster_health(server: &Server) -> Value {
    let (_, text) = common::http(server.admin_addr(), "GET", "/health/ready", &[], "").await;
    serde_json::from_str::<Value>(&text).unwrap()["cluster"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_namespaces_check_redis_persistence_and_refuse_while_it_is_away() {
    // Without AOF fsync on every write, a `sync` acknowledgment could be lost: said.
    let mut loose = RedisServer::start();
    let n = sync_node(&loose, "loose");
    let mut warned = Value::Null;
    let deadline = Instant::now() + Duration::from_secs(5);
    while warned.is_null() {
        assert!(Instant::now() < deadline, "no warning");
        tokio::time::sleep(Duration::from_millis(50)).await;
        warned = cluster_health(&n).await["sync_warning"].clone();
    }
    assert!(warned.as_str().unwrap().contains("appendfsync"), "{warned}");
    // While Redis is away, a `sync` publication is refused, not acknowledged.
    let mut c = Client::connect(n.ws_addr(), Fmt::Json, &common::token("ann", None)).await;
    loose.kill();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = c
            .call(json!({"cmd": "publish", "channel": "ledger:1", "data": 1}))
            .await;
        if r["error"]["code"] == 111 {
            assert!(
                r["error"]["message"].as_str().unwrap().contains("Redis"),
                "{r}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "never refused: {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    n.shutdown();

    // With appendonly + appendfsync always, no warning; publications are answered
    // once Redis has them.
    let strict = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let n = sync_node(&strict, "strict");
    let deadline = Instant::now() + Duration::from_secs(5);
    while cluster_health(&n).await["shared_channels"] != "linked" {
        assert!(Instant::now() < deadline, "never linked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut c = Client::connect(n.ws_addr(), Fmt::Json, &common::token("ann", None)).await;
    let p = publish(&mut c, "ledger:1", json!({"n": 1})).await;
    assert_eq!(p["offset"], 1, "{p}");
    let h = cluster_health(&n).await;
    assert_eq!(h["sync_warning"], Value::Null, "{h}");
    assert_eq!(h["shared_channels"], "linked", "{h}");
    n.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_messages_personal_channels_and_pushes_reach_users_on_other_nodes() {
    let redis = RedisServer::start();
    let nodes = [node(&redis, "n1"), node(&redis, "n2")];
    // Bob's phone on n2: its inbox, and its personal channel, are n2's interest.
    let mut phone = Client::open(nodes[1].ws_addr(), Fmt::Json).await;
    let bob = common::token("bob", None);
    let r = phone
        .call(json!({"cmd": "connect", "token": bob, "device": "phone"}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    let inbox = phone.next_push(&["inbox"]).await;
    assert_eq!(inbox["channel"], "inbox:bob", "{inbox}");
    let mut linked = false;
    eventually(5, "n2 receives bob's personal channel", || {
        linked = topic_subscribers(&redis, "user:bob") == 1;
        linked
    })
    .await;

    // Alice on n1 sends a direct message: it reaches bob's inbox on n2, from alice.
    let alice = common::token_with("alice", |c| c.send_to = Some(vec!["bob".into()]));
    let mut a = Client::connect(nodes[0].ws_addr(), Fmt::MsgPack, &alice).await;
    let r = a
        .call(json!({"cmd": "send", "user": "bob", "data": {"text": "hi"}}))
        .await;
    assert_eq!(r["result"]["offset"], 1, "{r}");
    let p = next(&mut phone).await;
    assert_eq!(
        (&p["channel"], &p["from"], &p["data"]),
        (&json!("inbox:bob"), &json!("alice"), &json!({"text": "hi"})),
        "{p}"
    );

    // The server API on n1 publishes to bob's personal channel: his connection on n2
    // gets it.
    let body = json!({"channel": "user:bob", "data": {"note": 1}});
    let (status, r) = common::api(nodes[0].admin_addr(), "POST", "/api/publish", &body).await;
    assert_eq!(status, 200, "{r}");
    let p = next(&mut phone).await;
    assert_eq!(
        (&p["channel"], &p["data"]),
        (&json!("user:bob"), &json!({"note": 1})),
        "{p}"
    );

    // A notification created through n1's API reaches bob's connection on n2 (a push
    // on his personal channel's topic), once.
    let body = json!({"user": "bob", "kind": "message", "data": {"text": "hello"}});
    let (status, r) = common::api(nodes[0].admin_addr(), "POST", "/api/notifications", &body).await;
    assert_eq!(status, 200, "{r}");
    let n = tokio::time::timeout(common::TIMEOUT, phone.next_push(&["notification"]))
        .await
        .expect("the notification in time");
    assert_eq!(n["notification"]["data"]["text"], "hello", "{n}");
    let again = tokio::time::timeout(
        Duration::from_millis(300),
        phone.next_push(&["notification"]),
    )
    .await;
    assert!(again.is_err(), "delivered twice: {again:?}");

    // Bob leaves n2: n2 no longer receives his personal channel.
    drop(phone);
    eventually(5, "n2 leaves bob's personal channel", || {
        linked = topic_subscribers(&redis, "user:bob") == 0;
        linked
    })
    .await;
    for n in nodes {
        n.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_cursors_and_receipts_hold_on_every_node() {
    let redis = RedisServer::start();
    let nodes = [node(&redis, "n1"), node(&redis, "n2")];
    let bob = common::token("bob", None);
    let connect_phone = |addr| {
        let bob = bob.clone();
        async move {
            let mut phone = Client::open(addr, Fmt::Json).await;
            let r = phone
                .call(json!({"cmd": "connect", "token": bob, "device": "phone"}))
                .await;
            assert!(r.get("result").is_some(), "{r}");
            let inbox = phone.next_push(&["inbox"]).await;
            (phone, inbox)
        }
    };
    let (mut phone, _) = connect_phone(nodes[0].ws_addr()).await;
    let alice = common::token_with("alice", |c| c.send_to = Some(vec!["bob".into()]));
    let mut a = Client::connect(nodes[1].ws_addr(), Fmt::Json, &alice).await;
    for i in 1..=3 {
        let r = a
            .call(json!({"cmd": "send", "user": "bob", "data": {"i": i}}))
            .await;
        assert_eq!(r["result"]["offset"], i, "{r}");
        assert_eq!(next(&mut phone).await["offset"], i);
    }
    // The phone processed two on n1, then comes back through n2: its backlog there
    // starts after its cursor.
    let r = phone.call(json!({"cmd": "ack", "offset": 2})).await;
    assert!(r.get("result").is_some(), "{r}");
    drop(phone);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (mut phone, inbox) = connect_phone(nodes[1].ws_addr()).await;
        let offsets: Vec<Value> = inbox["publications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["offset"].clone())
            .collect();
        if offsets == [json!(3)] {
            let _ = phone.call(json!({"cmd": "ping"})).await;
            break;
        }
        assert!(Instant::now() < deadline, "backlog {inbox}");
    }

    // A read receipt on n1 reaches a subscriber on n2.
    let mut ben = Client::connect(nodes[0].ws_addr(), Fmt::Json, &common::token("ben", None)).await;
    let mut cat = Client::connect(nodes[1].ws_addr(), Fmt::Json, &common::token("cat", None)).await;
    subscribe(&mut ben, "chat:1").await;
    subscribe(&mut cat, "chat:1").await;
    publish(&mut cat, "chat:1", json!("hello")).await;
    assert_eq!(next(&mut ben).await["offset"], 1);
    let r = ben
        .call(json!({"cmd": "receipt", "channel": "chat:1", "read": 1}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    let p = tokio::time::timeout(common::TIMEOUT, cat.next_push(&["receipt"]))
        .await
        .expect("the receipt on n2");
    assert_eq!((&p["user"], &p["read"]), (&json!("ben"), &json!(1)), "{p}");
    for n in nodes {
        n.shutdown();
    }
}

/// Edits and deletions travel with their author between nodes: a publication made on
/// one node is edited by its author connected to another (the check reads the author
/// Redis carried), refused to someone else, and every node's subscribers and history
/// show the edit and then the deletion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_and_deletions_reach_every_node_with_their_author() {
    let redis = RedisServer::start();
    let chat = |c: &mut switchboard_control_plane::Config| {
        c.namespaces.insert(
            "chat".into(),
            toml::from_str("edits = true\nhistory_size = 16").expect("namespace parses"),
        );
    };
    let nodes = [
        common::cluster_node(&redis, "n1", chat),
        common::cluster_node(&redis, "n2", chat),
    ];
    let tok = |u: &str| common::token(u, None);
    let mut ann = Client::connect(nodes[0].ws_addr(), Fmt::Json, &tok("ann")).await;
    let mut ann_elsewhere = Client::connect(nodes[1].ws_addr(), Fmt::Json, &tok("ann")).await;
    let mut bob = Client::connect(nodes[1].ws_addr(), Fmt::MsgPack, &tok("bob")).await;
    let mut cat = Client::connect(nodes[1].ws_addr(), Fmt::Json, &tok("cat")).await;
    subscribe(&mut bob, "chat:room").await;
    subscribe(&mut ann, "chat:room").await;
    let first = publish(&mut ann, "chat:room", json!({"text": "helo"})).await;
    let offset = first["offset"].as_u64().unwrap();
    assert_eq!(next(&mut bob).await["data"], json!({"text": "helo"}));
    next(&mut ann).await;

    let r = cat
        .call(json!({"cmd": "edit", "channel": "chat:room", "offset": offset, "data": {"text": "cat was here"}}))
        .await;
    assert!(r.get("error").is_some(), "only its author edits it: {r}");
    let r = ann_elsewhere
        .call(json!({"cmd": "edit", "channel": "chat:room", "offset": offset, "data": {"text": "hello"}}))
        .await;
    assert!(
        r.get("result").is_some(),
        "its author, on another node: {r}"
    );
    let edit = next(&mut bob).await;
    assert_eq!(
        (&edit["edit"], &edit["data"]),
        (&json!(offset), &json!({"text": "hello"})),
        "{edit}"
    );
    assert_eq!(next(&mut ann).await["edit"], json!(offset));
    let r = ann
        .call(json!({"cmd": "delete", "channel": "chat:room", "offset": offset}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    assert_eq!(next(&mut bob).await["delete"], json!(offset));

    // History on either node: the original deleted, its revisions after it.
    for node in &nodes {
        let (st, h) = common::api(
            node.admin_addr(),
            "GET",
            "/api/history?channel=chat:room",
            &Value::Null,
        )
        .await;
        assert_eq!(st, 200, "{h}");
        let original = &h["publications"][0];
        assert_eq!(original["offset"], json!(offset), "{h}");
        assert_eq!(original["data"], Value::Null, "{h}");
        assert!(original["deleted_ms"].as_u64().is_some(), "{h}");
    }
    for n in nodes {
        n.shutdown();
        n.wait();
    }
}
