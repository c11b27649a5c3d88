//! Presence over real sockets on two shards: join, status and leave events grouped by
//! user across devices and shards, counts and member lists, the grace period that keeps
//! a dropped user present (and a return within it silent), namespaces that track
//! presence without pushing events, and who may look.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use switchboard_control_plane::config::NamespaceConfig;
use switchboard_control_plane::{auth, Config};

fn presence_config(c: &mut Config) {
    c.engine.presence_grace_ms = 600;
    for (name, text) in [
        (
            "visit",
            r#"
            presence = true
            presence_rules = [{ role = "staff" }]
            "#,
        ),
        ("stage", "presence = true\npresence_events = false"),
    ] {
        let ns: NamespaceConfig = toml::from_str(text).expect("namespace parses");
        c.namespaces.insert(name.into(), ns);
    }
}

fn staff_token(sub: &str) -> String {
    auth::mint_with(
        SECRET,
        sub,
        Duration::from_secs(600),
        &Default::default(),
        |c| {
            c.extra.insert("role".into(), json!("staff"));
        },
    )
}

async fn connect_device(addr: std::net::SocketAddr, tok: &str, device: &str, shard: u64) -> Client {
    for _ in 0..200 {
        let mut c = Client::open(addr, Fmt::Json).await;
        let r = c
            .call(json!({"cmd": "connect", "token": tok, "device": device}))
            .await;
        if r["result"]["shard"] == json!(shard) {
            return c;
        }
    }
    panic!("no connection landed on shard {shard}");
}

/// The next presence push, or the next publication (a marker) if none comes first.
async fn next_presence_or_publication(c: &mut Client) -> Value {
    c.next_push(&["presence", "publication"]).await
}

async fn subscribe(c: &mut Client, channel: &str) {
    let r = c
        .call(json!({"cmd": "subscribe", "channel": channel}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
}

/// Publish a marker and expect it to be the next thing `watcher` sees (nothing else
/// was pushed before it).
async fn expect_quiet(watcher: &mut Client, publisher: &mut Client, channel: &str, marker: &str) {
    let r = publisher
        .call(json!({"cmd": "publish", "channel": channel, "data": marker}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    let m = next_presence_or_publication(watcher).await;
    assert_eq!(
        m["data"],
        json!(marker),
        "expected no presence event first: {m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_events_counts_grace_and_rules() {
    let server = start(presence_config);
    let (addr, admin) = (server.ws_addr(), server.admin_addr());
    let staff = staff_token("wes");
    let mut w = connect_device(addr, &staff, "desk", 0).await;
    subscribe(&mut w, "visit:1").await;
    // The channel is at home on w's shard (its first user), where w's subscription is
    // in place when its own join is pushed: w sees its own join first.
    let own = next_presence_or_publication(&mut w).await;
    assert_eq!(
        (&own["event"], &own["user"]),
        (&json!("join"), &json!("wes")),
        "{own}"
    );

    // Bob arrives on shard 1 with his phone: one join.
    let bob = token("bob", None);
    let mut phone = connect_device(addr, &bob, "phone", 1).await;
    subscribe(&mut phone, "visit:1").await;
    let e = next_presence_or_publication(&mut w).await;
    assert_eq!(
        (&e["channel"], &e["event"], &e["user"], &e["status"]),
        (
            &json!("visit:1"),
            &json!("join"),
            &json!("bob"),
            &json!("online")
        ),
        "{e}"
    );
    // His laptop on shard 0: no event, he is already here.
    let mut laptop = connect_device(addr, &bob, "laptop", 0).await;
    subscribe(&mut laptop, "visit:1").await;
    expect_quiet(&mut w, &mut phone, "visit:1", "m1").await;
    let r = w
        .call(json!({"cmd": "presence_count", "channel": "visit:1"}))
        .await;
    assert_eq!(
        (&r["result"]["users"], &r["result"]["connections"]),
        (&json!(2), &json!(3)),
        "{r}"
    );
    assert!(r["result"].get("members").is_none(), "{r}");

    // A status change without rejoining.
    let r = laptop
        .call(json!({"cmd": "status", "status": "away"}))
        .await;
    assert_eq!(r["result"], json!({}), "{r}");
    let e = next_presence_or_publication(&mut w).await;
    assert_eq!(
        (&e["event"], &e["user"], &e["status"]),
        (&json!("status"), &json!("bob"), &json!("away")),
        "{e}"
    );
    let r = w
        .call(json!({"cmd": "presence", "channel": "visit:1"}))
        .await;
    let members = r["result"]["members"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"));
    assert_eq!(members[0]["user"], json!("bob"), "{r}");
    assert_eq!(members[0]["status"], json!("away"), "{r}");
    let devices: Vec<&Value> = members[0]["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["device"])
        .collect();
    assert_eq!(devices.len(), 2, "{r}");
    assert!(
        devices.contains(&&json!("phone")) && devices.contains(&&json!("laptop")),
        "{r}"
    );
    let r = w
        .call(json!({"cmd": "status", "status": "x".repeat(33)}))
        .await;
    assert_eq!(r["error"]["code"], json!(104), "{r}");

    // Leaving: the laptop unsubscribes (he is still here), the phone says goodbye.
    let r = laptop
        .call(json!({"cmd": "unsubscribe", "channel": "visit:1"}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    expect_quiet(&mut w, &mut laptop, "visit:1", "m2").await;
    phone
        .ws
        .write_frame(fastwebsockets::Frame::close(1000, b""))
        .await
        .unwrap();
    let e = next_presence_or_publication(&mut w).await;
    assert_eq!(
        (&e["event"], &e["user"]),
        (&json!("leave"), &json!("bob")),
        "{e}"
    );
    assert!(e["last_seen"].as_u64().is_some(), "{e}");

    // Carol drops without a goodbye: still present during the grace period, and her
    // return on the same device within it is silent.
    let carol = token("carol", None);
    let mut c1 = connect_device(addr, &carol, "tablet", 1).await;
    subscribe(&mut c1, "visit:1").await;
    let e = next_presence_or_publication(&mut w).await;
    assert_eq!(
        (&e["event"], &e["user"]),
        (&json!("join"), &json!("carol")),
        "{e}"
    );
    drop(c1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = w
        .call(json!({"cmd": "presence", "channel": "visit:1"}))
        .await;
    let carol_entry = r["result"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user"] == json!("carol"))
        .cloned()
        .unwrap_or_else(|| panic!("carol lingers: {r}"));
    assert_eq!(
        carol_entry["connections"][0]["lingering"],
        json!(true),
        "{r}"
    );
    let mut c2 = connect_device(addr, &carol, "tablet", 0).await;
    subscribe(&mut c2, "visit:1").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    expect_quiet(&mut w, &mut laptop, "visit:1", "m3").await;
    let r = w
        .call(json!({"cmd": "presence_count", "channel": "visit:1"}))
        .await;
    assert_eq!(
        (&r["result"]["users"], &r["result"]["connections"]),
        (&json!(2), &json!(2)),
        "{r}"
    );
    // Dropped again and not back: one leave, after the grace period.
    drop(c2);
    let started = std::time::Instant::now();
    let e = next_presence_or_publication(&mut w).await;
    assert_eq!(
        (&e["event"], &e["user"]),
        (&json!("leave"), &json!("carol")),
        "{e}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "left before the grace period"
    );

    // A namespace that tracks presence without events, one without presence, rules.
    subscribe(&mut w, "stage:1").await;
    subscribe(&mut laptop, "stage:1").await;
    expect_quiet(&mut w, &mut laptop, "stage:1", "m4").await;
    let r = w
        .call(json!({"cmd": "presence_count", "channel": "stage:1"}))
        .await;
    assert_eq!(r["result"]["users"], json!(2), "{r}");
    let r = w
        .call(json!({"cmd": "presence", "channel": "room:1"}))
        .await;
    assert_eq!(r["error"]["code"], json!(104), "{r}");
    let r = laptop
        .call(json!({"cmd": "presence", "channel": "visit:1"}))
        .await;
    assert_eq!(
        r["error"]["code"],
        json!(103),
        "presence rules: staff only: {r}"
    );

    // The server API sees it too.
    let auth = format!("Bearer {API_KEY}");
    let (status, body) = http(
        admin,
        "GET",
        "/api/presence?channel=visit:1",
        &[("Authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["users"], json!(1), "{v}");
    assert!(
        v["last_seen"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e[0] == json!("carol")),
        "{v}"
    );
    drop((w, laptop));
    server.shutdown();
    server.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_follow_a_users_own_presence() {
    let server = start(|c| {
        presence_config(c);
        c.engine.user_presence_namespace = "online".into();
    });
    let addr = server.ws_addr();
    let mut friend = connect_device(addr, &token("fay", None), "f", 0).await;
    subscribe(&mut friend, "online:bob").await;
    let r = friend
        .call(json!({"cmd": "presence_count", "channel": "online:bob"}))
        .await;
    assert_eq!(r["result"]["users"], json!(0), "bob is offline: {r}");

    let bob = token("bob", None);
    let mut phone = connect_device(addr, &bob, "phone", 1).await;
    let e = next_presence_or_publication(&mut friend).await;
    assert_eq!(
        (&e["channel"], &e["event"], &e["user"]),
        (&json!("online:bob"), &json!("join"), &json!("bob")),
        "{e}"
    );
    // Status changes reach contacts though bob subscribed to nothing.
    phone
        .call(json!({"cmd": "status", "status": "in_call"}))
        .await;
    let e = next_presence_or_publication(&mut friend).await;
    assert_eq!(
        (&e["event"], &e["status"]),
        (&json!("status"), &json!("in_call")),
        "{e}"
    );
    let mut laptop = connect_device(addr, &bob, "laptop", 0).await;
    // Attempts of connect_device that landed on the other shard were dropped without a
    // goodbye: each lingers for the grace period (600 ms), then goes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let r = loop {
        let r = friend
            .call(json!({"cmd": "presence", "channel": "online:bob"}))
            .await;
        let n = r["result"]["members"][0]["connections"]
            .as_array()
            .map(Vec::len);
        if n == Some(2) || std::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let m = &r["result"]["members"][0];
    assert_eq!(
        (&m["user"], &m["status"]),
        (&json!("bob"), &json!("in_call")),
        "{r}"
    );
    assert_eq!(m["connections"].as_array().unwrap().len(), 2, "{r}");
    // Gone: the laptop says goodbye, the phone drops; leave only after the grace period.
    laptop
        .ws
        .write_frame(fastwebsockets::Frame::close(1000, b""))
        .await
        .unwrap();
    drop(phone);
    let started = std::time::Instant::now();
    let e = next_presence_or_publication(&mut friend).await;
    assert_eq!(
        (&e["event"], &e["user"]),
        (&json!("leave"), &json!("bob")),
        "{e}"
    );
    assert!(started.elapsed() >= Duration::from_millis(400), "{e}");
    drop((friend, laptop));
    server.shutdown();
    server.wait();
}
