//! Namespaces' access rules over JWT claims (channel templates, required claim values)
//! for subscribe, publish and history, checked on every command and kept by a resumed
//! session; the personal channel every connection joins; server-side subscribe and
//! unsubscribe of all of a user's connections across shards.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use switchboard_control_plane::config::NamespaceConfig;
use switchboard_control_plane::{auth, Config};

fn rules(c: &mut Config) {
    for (name, text) in [
        (
            "case",
            r#"
            subscribe = [{ channel = "case:{team}:*" }, { role = "admin" }]
            publish = [{ channel = "case:{team}:*", role = ["provider", "admin"] }]
            history = [{ role = "admin" }]
            "#,
        ),
        ("chat", r#"subscribe = [{ channel = "chat:{sub}:*" }]"#),
        ("visit", r#"subscribe = [{ role = "admin" }]"#),
    ] {
        let ns: NamespaceConfig = toml::from_str(text).expect("rules parse");
        c.namespaces.insert(name.into(), ns);
    }
}

/// A token for `sub` with custom claims (and `channels` patterns).
fn claims_token(sub: &str, claims: Value, channels: Option<&[&str]>) -> String {
    auth::mint_with(
        SECRET,
        sub,
        Duration::from_secs(600),
        &Default::default(),
        |c| {
            c.channels = channels.map(|l| l.iter().map(|s| s.to_string()).collect());
            if let Value::Object(map) = claims {
                c.extra = map.into_iter().collect();
            }
        },
    )
}

fn code(r: &Value) -> Value {
    r["error"]["code"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_rules_decide_subscribe_publish_and_history() {
    let server = start(rules);
    let addr = server.ws_addr();
    let nurse_tok = claims_token("n1", json!({"team": ["t1", "t2"], "role": "nurse"}), None);
    let mut nurse = Client::open(addr, Fmt::Json).await;
    let r = nurse
        .call(json!({"cmd": "connect", "token": nurse_tok}))
        .await;
    let reconnect = r["result"]["reconnect_token"].as_str().unwrap().to_string();
    let mut doc = Client::connect(
        addr,
        Fmt::MsgPack,
        &claims_token("d1", json!({"team": "t1", "role": "provider"}), None),
    )
    .await;
    let mut admin = Client::connect(
        addr,
        Fmt::Json,
        &claims_token("root", json!({"role": "admin", "level": 3}), None),
    )
    .await;

    let r = nurse
        .call(json!({"cmd": "subscribe", "channel": "case:t1:7"}))
        .await;
    assert!(r.get("result").is_some(), "team t1 is the nurse's: {r}");
    let r = nurse
        .call(json!({"cmd": "subscribe", "channel": "case:t3:7"}))
        .await;
    assert_eq!(code(&r), json!(103), "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("subscribe rules"),
        "{r}"
    );
    let r = nurse
        .call(json!({"cmd": "publish", "channel": "case:t1:7", "data": 1}))
        .await;
    assert_eq!(code(&r), json!(103), "nurses read only: {r}");
    let r = nurse
        .call(json!({"cmd": "history", "channel": "case:t1:7"}))
        .await;
    assert_eq!(code(&r), json!(103), "history is for admins: {r}");
    let r = nurse
        .call(json!({"cmd": "receipts", "channel": "case:t3:7"}))
        .await;
    assert_eq!(code(&r), json!(103), "receipts need read access: {r}");

    let r = doc
        .call(json!({"cmd": "publish", "channel": "case:t1:7", "data": "note"}))
        .await;
    assert_eq!(r["result"]["offset"], json!(1), "{r}");
    assert_eq!(nurse.next_publication().await["data"], json!("note"));
    let r = doc
        .call(json!({"cmd": "publish", "channel": "case:t2:7", "data": 1}))
        .await;
    assert_eq!(code(&r), json!(103), "not the provider's team: {r}");
    let r = admin
        .call(json!({"cmd": "history", "channel": "case:t1:7"}))
        .await;
    assert_eq!(r["result"]["publications"][0]["data"], json!("note"), "{r}");
    let r = admin
        .call(json!({"cmd": "subscribe", "channel": "case:any:1"}))
        .await;
    assert!(r.get("result").is_some(), "{r}");

    // {sub} is the user id, exactly.
    let r = doc
        .call(json!({"cmd": "subscribe", "channel": "chat:d1:inbox"}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    let r = doc
        .call(json!({"cmd": "subscribe", "channel": "chat:d10:inbox"}))
        .await;
    assert_eq!(code(&r), json!(103), "{r}");
    // Without rules for the action, the token's `channels` claim decides.
    let mut limited = Client::connect(
        addr,
        Fmt::Json,
        &claims_token("l1", json!({}), Some(&["room:*", "chat:*"])),
    )
    .await;
    let r = limited
        .call(json!({"cmd": "subscribe", "channel": "room:1"}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    let r = limited
        .call(json!({"cmd": "subscribe", "channel": "news:1"}))
        .await;
    assert_eq!(code(&r), json!(103), "{r}");
    let r = limited
        .call(json!({"cmd": "publish", "channel": "chat:x:1", "data": 1}))
        .await;
    assert!(r.get("result").is_some(), "chat has no publish rules: {r}");

    // A resumed session keeps the claims: team t2 yes, t3 no.
    drop(nurse);
    let mut back = Client::open(addr, Fmt::Json).await;
    let r = back
        .call(json!({"cmd": "connect", "reconnect": reconnect}))
        .await;
    assert_eq!(r["result"]["resumed"], json!(true), "{r}");
    let r = back
        .call(json!({"cmd": "subscribe", "channel": "case:t2:9"}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    let r = back
        .call(json!({"cmd": "subscribe", "channel": "case:t3:9"}))
        .await;
    assert_eq!(code(&r), json!(103), "{r}");
    drop((back, doc, admin, limited));
    server.shutdown();
    server.wait();
}

/// A POST to the server API, with the key or without.
async fn post(admin: std::net::SocketAddr, path: &str, body: &Value, key: bool) -> (u16, Value) {
    if key {
        return api(admin, "POST", path, body).await;
    }
    let (status, text) = http(admin, "POST", path, &[], &body.to_string()).await;
    (
        status,
        serde_json::from_str(&text).unwrap_or(json!({"raw": text})),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_channel_and_server_side_subscriptions() {
    let server = start(rules);
    let (addr, admin) = (server.ws_addr(), server.admin_addr());
    let bob_tok = token("bob", Some(&["room:*"]));
    // Bob on both shards.
    let mut bobs = vec![
        client_on_shard(addr, Fmt::Json, &bob_tok, 0).await,
        client_on_shard(addr, Fmt::MsgPack, &bob_tok, 1).await,
    ];
    let mut alice = Client::connect(addr, Fmt::Json, &token("alice", None)).await;

    // The personal channel: every connection of the user has joined it.
    let (status, body) = post(
        admin,
        "/api/publish",
        &json!({"channel": "user:bob", "data": "ping"}),
        true,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for b in bobs.iter_mut() {
        let p = b.next_publication().await;
        assert_eq!(
            (&p["channel"], &p["data"]),
            (&json!("user:bob"), &json!("ping")),
            "{p}"
        );
    }
    let r = alice
        .call(json!({"cmd": "subscribe", "channel": "user:bob"}))
        .await;
    assert_eq!(code(&r), json!(103), "{r}");
    let r = alice
        .call(json!({"cmd": "publish", "channel": "user:bob", "data": 1}))
        .await;
    assert_eq!(code(&r), json!(103), "{r}");
    let r = bobs[0]
        .call(json!({"cmd": "subscribe", "channel": "user:bob"}))
        .await;
    assert_eq!(code(&r), json!(106), "joined already: {r}");
    // A third connection of bob on a shard that already has one: all three get it.
    bobs.push(client_on_shard(addr, Fmt::Json, &bob_tok, 0).await);
    post(
        admin,
        "/api/publish",
        &json!({"channel": "user:bob", "data": "pong"}),
        true,
    )
    .await;
    for b in bobs.iter_mut() {
        assert_eq!(b.next_publication().await["data"], json!("pong"));
    }
    drop(bobs.pop());
    let r = alice
        .call(json!({"cmd": "history", "channel": "user:alice"}))
        .await;
    assert!(
        r.get("result").is_some(),
        "one's own personal channel is readable: {r}"
    );

    // The visit room's rules refuse bob; the backend puts him in anyway.
    let r = bobs[0]
        .call(json!({"cmd": "subscribe", "channel": "visit:42"}))
        .await;
    assert_eq!(code(&r), json!(103), "{r}");
    let (status, body) = post(
        admin,
        "/api/users/bob/subscribe",
        &json!({"channel": "visit:42"}),
        true,
    )
    .await;
    assert_eq!((status, &body["connections"]), (200, &json!(2)), "{body}");
    for b in bobs.iter_mut() {
        let p = b.next_push(&["subscribed"]).await;
        assert_eq!(
            (&p["channel"], &p["offset"]),
            (&json!("visit:42"), &json!(0)),
            "{p}"
        );
    }
    let (status, body) = post(
        admin,
        "/api/users/bob/subscribe",
        &json!({"channel": "visit:42"}),
        true,
    )
    .await;
    assert_eq!(
        (status, &body["connections"]),
        (200, &json!(0)),
        "already in: {body}"
    );
    post(
        admin,
        "/api/publish",
        &json!({"channel": "visit:42", "data": "doctor joined"}),
        true,
    )
    .await;
    for b in bobs.iter_mut() {
        let p = b.next_publication().await;
        assert_eq!(
            (&p["channel"], &p["data"]),
            (&json!("visit:42"), &json!("doctor joined")),
            "{p}"
        );
    }

    // And takes him out: told with a push, nothing more arrives from the room.
    let (status, body) = post(
        admin,
        "/api/users/bob/unsubscribe",
        &json!({"channel": "visit:42"}),
        true,
    )
    .await;
    assert_eq!((status, &body["connections"]), (200, &json!(2)), "{body}");
    for b in bobs.iter_mut() {
        let p = b.next_push(&["unsubscribed"]).await;
        assert_eq!(p["channel"], json!("visit:42"), "{p}");
    }
    post(
        admin,
        "/api/publish",
        &json!({"channel": "visit:42", "data": "after"}),
        true,
    )
    .await;
    post(
        admin,
        "/api/publish",
        &json!({"channel": "user:bob", "data": "marker"}),
        true,
    )
    .await;
    for b in bobs.iter_mut() {
        let p = b.next_publication().await;
        assert_eq!(
            p["data"],
            json!("marker"),
            "the room's publication must not arrive: {p}"
        );
    }

    // Refusals.
    let (status, body) = post(
        admin,
        "/api/users/bob/subscribe",
        &json!({"channel": "bad name"}),
        true,
    )
    .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("invalid_channel")),
        "{body}"
    );
    let (status, _) = post(
        admin,
        "/api/users/bob/subscribe",
        &json!({"chan": "x"}),
        true,
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = post(
        admin,
        "/api/users/bob/subscribe",
        &json!({"channel": "x:1"}),
        false,
    )
    .await;
    assert_eq!(status, 401);
    let (status, body) = post(
        admin,
        "/api/users/nobody/subscribe",
        &json!({"channel": "x:1"}),
        true,
    )
    .await;
    assert_eq!((status, &body["connections"]), (200, &json!(0)), "{body}");
    drop((bobs, alice));
    server.shutdown();
    server.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_api_refuses_malformed_requests_with_json_errors() {
    let server = start(rules);
    let admin = server.admin_addr();
    let auth = format!("Bearer {API_KEY}");
    let raw = |method: &'static str, path: &'static str, body: &'static str| {
        let auth = auth.clone();
        async move {
            let (status, text) = http(admin, method, path, &[("Authorization", &auth)], body).await;
            let v: Value =
                serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON error: {text}"));
            (status, v)
        }
    };
    for (method, path, body, want) in [
        ("POST", "/api/send", "not json", "bad_request"),
        ("POST", "/api/send", r#"{"user":"bob"}"#, "bad_request"),
        (
            "POST",
            "/api/send",
            r#"{"user":"bob","users":["x"],"data":1}"#,
            "bad_request",
        ),
        (
            "POST",
            "/api/send",
            r#"{"user":"bob","data":1,"key":""}"#,
            "invalid_key",
        ),
        (
            "POST",
            "/api/schedule",
            r#"{"channel":"c:1","data":1,"at":1,"delay_ms":1}"#,
            "bad_request",
        ),
        (
            "POST",
            "/api/schedule",
            r#"{"channel":"bad name","data":1,"delay_ms":1}"#,
            "bad_request",
        ),
        (
            "POST",
            "/api/schedule",
            r#"{"channel":"c:1","user":"u","data":1,"delay_ms":1}"#,
            "bad_request",
        ),
        ("DELETE", "/api/schedule/abc", "", "bad_request"),
        ("GET", "/api/presence", "", "bad_request"),
        (
            "GET",
            "/api/presence?channel=bad%20name",
            "",
            "invalid_channel",
        ),
        ("GET", "/api/receipts", "", "bad_request"),
        (
            "POST",
            "/api/users/bob/subscribe",
            r#"{"channel":"x:1","since":{"epoch":"zz","offset":1}}"#,
            "bad_request",
        ),
        ("POST", "/api/users/bob/unsubscribe", "[]", "bad_request"),
    ] {
        let (status, v) = raw(method, path, body).await;
        assert_eq!(status, 400, "{method} {path} {body}: {v}");
        assert_eq!(
            v["error"]["code"],
            json!(want),
            "{method} {path} {body}: {v}"
        );
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
    }
    // Without the key, every new endpoint refuses.
    for (method, path) in [
        ("POST", "/api/send"),
        ("POST", "/api/schedule"),
        ("GET", "/api/schedule"),
        ("GET", "/api/receipts?channel=a:1"),
        ("GET", "/api/presence?channel=a:1"),
        ("POST", "/api/users/bob/subscribe"),
    ] {
        let (status, _) = http(admin, method, path, &[], "{}").await;
        assert_eq!(status, 401, "{method} {path}");
    }
    server.shutdown();
    server.wait();
}
