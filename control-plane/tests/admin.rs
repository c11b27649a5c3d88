//! The admin API over real HTTP and WebSocket connections: admin tokens (separate key,
//! role claim) and their refusals; rate limits changed at runtime taking effect on
//! connected clients within a second, premium tiers from a token claim, rules removed;
//! validation errors naming the field; every action in the audit log.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use switchboard_control_plane::auth;

const ADMIN_SECRET: &str = "integration-admin-secret-0123456789";

fn admin_token(sub: &str, role: &str) -> String {
    auth::mint_admin(ADMIN_SECRET, sub, Duration::from_secs(600), role)
}

async fn admin_call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(b) = &bearer {
        headers.push(("Authorization", b));
    }
    let (status, text) = http(addr, method, path, &headers, body).await;
    let v = serde_json::from_str(&text).unwrap_or_else(|_| json!({"raw": text}));
    (status, v)
}

async fn publish(c: &mut Client, n: u32) -> Value {
    c.call(json!({"cmd": "publish", "channel": "chat:1", "data": n}))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_tokens_are_checked_and_refusals_are_clear() {
    // Without the default rules, so the listing starts empty.
    let server = start(|c| {
        c.admin.jwt_secret = Some(ADMIN_SECRET.into());
        c.engine.rate_limits = vec![];
    });
    let admin = server.admin_addr();
    let path = "/admin/rate-limits";
    let expired = auth::mint_with(
        ADMIN_SECRET,
        "ops",
        Duration::from_secs(0),
        &Default::default(),
        |c| {
            c.exp = Some(1);
            c.extra.insert("role".into(), json!("admin"));
        },
    );
    let client_token = token("ops", None);
    let cases: [(Option<&str>, u16, &str); 6] = [
        (None, 401, "unauthorized"),
        (Some("not-a-jwt"), 401, "unauthorized"),
        (Some(&client_token), 401, "unauthorized"),
        (Some(&expired), 401, "token_expired"),
        (Some(&admin_token("ops", "viewer")), 403, "forbidden"),
        (Some(API_KEY), 401, "unauthorized"),
    ];
    for (token, status, code) in cases {
        let (st, r) = admin_call(admin, "GET", path, token, "").await;
        assert_eq!(
            (st, &r["error"]["code"]),
            (status, &json!(code)),
            "{token:?}: {r}"
        );
    }
    let listed = admin_token("ops", "admin");
    let (st, r) = admin_call(admin, "GET", path, Some(&listed), "").await;
    assert_eq!((st, &r["rules"]), (200, &json!([])), "{r}");
    // A token with a list of roles including admin.
    let roles = auth::mint_with(
        ADMIN_SECRET,
        "ops",
        Duration::from_secs(60),
        &Default::default(),
        |c| {
            c.extra.insert("role".into(), json!(["viewer", "admin"]));
        },
    );
    let (st, _) = admin_call(admin, "GET", path, Some(&roles), "").await;
    assert_eq!(st, 200);
    server.shutdown();
    server.wait();

    // No admin key configured: the admin API is off.
    let server = start(|_| {});
    let (st, r) = admin_call(server.admin_addr(), "GET", path, Some(&listed), "").await;
    assert_eq!(
        (st, &r["error"]["code"]),
        (403, &json!("admin_disabled")),
        "{r}"
    );
    server.shutdown();
    server.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_change_at_runtime_with_tiers_and_audit() {
    let server = start(|c| {
        c.admin.jwt_secret = Some(ADMIN_SECRET.into());
        c.engine.rate_limit_disconnect_after = 0;
        // From no rules (the defaults would count the first publishes below).
        c.engine.rate_limits = vec![];
    });
    let (addr, admin) = (server.ws_addr(), server.admin_addr());
    let ops = admin_token("ops-ann", "admin");
    let mut basic = client_on_shard(addr, Fmt::Json, &token("bob", None), 0).await;
    let premium_token = token_with("pat", |c| {
        c.extra.insert("tier".into(), json!("premium"));
    });
    let mut premium = client_on_shard(addr, Fmt::MsgPack, &premium_token, 1).await;
    for n in 0..10 {
        assert!(publish(&mut basic, n).await.get("result").is_some());
    }

    // 3 publishes a minute per user, 20 for the premium tier.
    let rules = json!({"rules": [
        {"scope": "user", "event": "publish", "rate": 3, "per_ms": 60000},
        {"scope": "user", "event": "publish", "rate": 20, "per_ms": 60000, "tier": "premium"},
    ]});
    let changed = Instant::now();
    let (st, r) = admin_call(
        admin,
        "PUT",
        "/admin/rate-limits",
        Some(&ops),
        &rules.to_string(),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["rules"].as_array().unwrap().len(), 2, "{r}");
    // In force within a second: the fourth publish is refused with a retry time.
    let mut accepted = 0;
    let refused = loop {
        let r = publish(&mut basic, 100).await;
        match r.get("result") {
            Some(_) => accepted += 1,
            None => break r,
        }
        assert!(accepted <= 3, "the limit did not apply: {r}");
    };
    assert!(changed.elapsed() < Duration::from_secs(1));
    assert_eq!(refused["error"]["code"], json!(114), "{refused}");
    let retry = refused["error"]["retry_after_ms"].as_u64().unwrap();
    assert!(
        (10_000..=20_000).contains(&retry),
        "one every 20 s: {refused}"
    );
    // A user's budget is one budget across shards: bob's connection on the other shard
    // finds it spent.
    let mut bob_elsewhere = client_on_shard(addr, Fmt::Json, &token("bob", None), 1).await;
    let r = publish(&mut bob_elsewhere, 101).await;
    assert_eq!(r["error"]["code"], json!(114), "{r}");
    drop(bob_elsewhere);
    // Other commands are not limited by a publish rule.
    let r = basic
        .call(json!({"cmd": "subscribe", "channel": "chat:2"}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    // The premium tier gets its own budget.
    for n in 0..20 {
        let r = publish(&mut premium, n).await;
        assert!(r.get("result").is_some(), "premium {n}: {r}");
    }
    assert_eq!(publish(&mut premium, 21).await["error"]["code"], json!(114));
    assert!(
        metric(
            admin,
            "switchboard_rate_limited_total{shard=\"0\",event=\"publish\"}"
        )
        .await
            >= 1
    );
    assert!(
        metric(
            admin,
            "switchboard_command_results_total{command=\"publish\",result=\"rate_limited\"}"
        )
        .await
            >= 1
    );

    // Add a connection rule on subscribes, then remove the default publish rule.
    let (st, r) = admin_call(
        admin,
        "POST",
        "/admin/rate-limits",
        Some(&ops),
        r#"{"scope": "connection", "event": "subscribe", "rate": 1, "per_ms": 60000}"#,
    )
    .await;
    assert_eq!((st, r["rules"].as_array().unwrap().len()), (200, 3), "{r}");
    let r = basic
        .call(json!({"cmd": "subscribe", "channel": "chat:3"}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    let r = basic
        .call(json!({"cmd": "subscribe", "channel": "chat:4"}))
        .await;
    assert_eq!(
        r["error"]["message"],
        json!("rate limit exceeded: subscribe"),
        "{r}"
    );
    let (st, r) = admin_call(admin, "DELETE", "/admin/rate-limits/0", Some(&ops), "").await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["rules"][0]["tier"], json!("premium"), "{r}");
    let r = publish(&mut basic, 200).await;
    assert!(
        r.get("result").is_some(),
        "no default publish rule now: {r}"
    );
    let (st, r) = admin_call(admin, "DELETE", "/admin/rate-limits/9", Some(&ops), "").await;
    assert_eq!((st, &r["error"]["code"]), (404, &json!("not_found")), "{r}");

    // Validation errors name the field; nothing changes.
    for (body, field) in [
        (
            r#"{"rules": [{"scope": "room", "event": "publish", "rate": 1, "per_ms": 1}]}"#,
            "rules[0].scope",
        ),
        (
            r#"{"rules": [{"scope": "user", "event": "publish", "rate": -1, "per_ms": 1}]}"#,
            "rules[0].rate",
        ),
        (
            r#"{"rules": [{"scope": "user", "event": "publish", "rate": 1, "per_ms": 1}, {"scope": "user", "event": "send", "rate": 0, "per_ms": 1}]}"#,
            "rules[1]",
        ),
        (
            r#"{"rules": [{"scope": "user", "event": "publish", "rate": 1, "per_ms": 1, "colour": 1}]}"#,
            "rules[0].colour",
        ),
        (r#"{"rulez": []}"#, "rulez"),
        ("not json", ""),
    ] {
        let (st, r) = admin_call(admin, "PUT", "/admin/rate-limits", Some(&ops), body).await;
        assert_eq!(st, 400, "{body}: {r}");
        assert_eq!(r["error"]["field"], json!(field), "{body}: {r}");
        assert!(
            r["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{r}"
        );
    }
    let (_, r) = admin_call(admin, "GET", "/admin/rate-limits", Some(&ops), "").await;
    assert_eq!(r["rules"].as_array().unwrap().len(), 2, "unchanged: {r}");

    // The audit log: who did what, newest first, filterable.
    let (st, r) = admin_call(admin, "GET", "/admin/audit", Some(&ops), "").await;
    assert_eq!(st, 200, "{r}");
    let actions: Vec<&str> = r["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        &actions[actions.len() - 3..],
        [
            "rate_limits.remove",
            "rate_limits.add",
            "rate_limits.replace"
        ],
        "{r}"
    );
    let first = &r["entries"][actions.len() - 1];
    assert_eq!(
        (&first["actor"], &first["result"]),
        (&json!("ops-ann"), &json!("ok")),
        "{r}"
    );
    assert_eq!(first["detail"]["rules"][0]["rate"], json!(3), "{r}");
    let (_, r) = admin_call(
        admin,
        "GET",
        "/admin/audit?action=rate_limits.add&limit=5",
        Some(&ops),
        "",
    )
    .await;
    assert_eq!(r["entries"].as_array().unwrap().len(), 1, "{r}");
    let (st, _) = admin_call(admin, "GET", "/admin/audit?limit=x", Some(&ops), "").await;
    assert_eq!(st, 400);
    server.shutdown();
    server.wait();
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token for `sub` issued at `iat` (Unix seconds).
fn token_issued(sub: &str, iat: u64) -> String {
    token_with(sub, |c| c.iat = Some(iat))
}

async fn client_of(admin: std::net::SocketAddr, ops: &str, user: &str) -> Vec<String> {
    let path = format!("/admin/connections?user={user}");
    let (st, r) = admin_call(admin, "GET", &path, Some(ops), "").await;
    assert_eq!(st, 200, "{r}");
    r["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_list_disconnect_maintain_and_revoke() {
    let store = temp_store();
    let cfg = |c: &mut switchboard_control_plane::Config| {
        c.admin.jwt_secret = Some(ADMIN_SECRET.into());
        c.store.path = store.clone();
    };
    let server = start(cfg);
    let (addr, admin) = (server.ws_addr(), server.admin_addr());
    let ops = admin_token("ops-ann", "admin");
    let mut ann1 = client_on_shard(addr, Fmt::Json, &token("ann", None), 0).await;
    let mut ann2 = client_on_shard(addr, Fmt::MsgPack, &token("ann", None), 1).await;
    let mut bob = Client::connect(addr, Fmt::Json, &token("bob", None)).await;
    let r = ann1
        .call(json!({"cmd": "subscribe", "channel": "chat:1"}))
        .await;
    assert!(r.get("result").is_some(), "{r}");

    // Listing with filters and pages; one connection in detail.
    let (st, r) = admin_call(admin, "GET", "/admin/connections", Some(&ops), "").await;
    assert_eq!(
        (st, r["connections"].as_array().unwrap().len()),
        (200, 3),
        "{r}"
    );
    assert_eq!(client_of(admin, &ops, "ann").await.len(), 2);
    let (_, r) = admin_call(
        admin,
        "GET",
        "/admin/connections?channel=chat:1",
        Some(&ops),
        "",
    )
    .await;
    let listed = &r["connections"];
    assert_eq!(listed.as_array().unwrap().len(), 1, "{r}");
    assert_eq!(
        (&listed[0]["user"], &listed[0]["ip"], &listed[0]["format"]),
        (&json!("ann"), &json!("127.0.0.1"), &json!("json")),
        "{r}"
    );
    let (_, r) = admin_call(admin, "GET", "/admin/connections?limit=2", Some(&ops), "").await;
    assert_eq!(r["next_offset"], json!(2), "{r}");
    let (_, r) = admin_call(
        admin,
        "GET",
        "/admin/connections?limit=2&offset=2",
        Some(&ops),
        "",
    )
    .await;
    assert_eq!(
        (
            r["connections"].as_array().unwrap().len(),
            &r["next_offset"]
        ),
        (1, &Value::Null),
        "{r}"
    );
    let ann1_id = listed[0]["client"].as_str().unwrap().to_string();
    let (st, r) = admin_call(
        admin,
        "GET",
        &format!("/admin/connections/{ann1_id}"),
        Some(&ops),
        "",
    )
    .await;
    assert_eq!((st, &r["channels"]), (200, &json!(["chat:1"])), "{r}");
    for (path, status) in [
        ("/admin/connections/9.9.9", 404),
        ("/admin/connections/x", 400),
        ("/admin/connections?ip=nope", 400),
        ("/admin/connections?limit=-1", 400),
    ] {
        let (st, r) = admin_call(admin, "GET", path, Some(&ops), "").await;
        assert_eq!(st, status, "{path}: {r}");
    }

    // Force disconnect one connection, then a user with spread reconnect hints.
    let bob_id = client_of(admin, &ops, "bob").await.remove(0);
    let body = json!({"client": bob_id, "reason": "bye"}).to_string();
    let (st, r) = admin_call(admin, "POST", "/admin/disconnect", Some(&ops), &body).await;
    assert_eq!((st, &r["disconnected"]), (200, &json!(1)), "{r}");
    let (push, code, reason) = bob.expect_close().await;
    assert_eq!((code, reason.as_str()), (4009, "bye"));
    assert_eq!(push.unwrap()["reconnect"], json!(true));
    let body = json!({"user": "ann", "spread_ms": 5000, "reason": "rebalancing"}).to_string();
    let (_, r) = admin_call(admin, "POST", "/admin/disconnect", Some(&ops), &body).await;
    assert_eq!(r["disconnected"], json!(2), "{r}");
    for c in [&mut ann1, &mut ann2] {
        let (push, code, _) = c.expect_close().await;
        let push = push.unwrap();
        assert_eq!(code, 4009);
        assert!(
            push["reconnect_after_ms"].as_u64().unwrap() < 5000,
            "{push}"
        );
    }
    for body in [
        json!({}),
        json!({"user": "a", "all": true}),
        json!({"client": "1.2"}),
        json!({"all": true, "reason": "x".repeat(200)}),
    ] {
        let (st, r) = admin_call(
            admin,
            "POST",
            "/admin/disconnect",
            Some(&ops),
            &body.to_string(),
        )
        .await;
        assert_eq!(st, 400, "{body}: {r}");
    }

    // Maintenance: connected clients are told; new ones are turned away with a hint.
    let mut carl = Client::connect(addr, Fmt::Json, &token("carl", None)).await;
    let body = json!({"on": true, "message": "upgrade", "retry_after_ms": 60000}).to_string();
    let (st, r) = admin_call(admin, "POST", "/admin/maintenance", Some(&ops), &body).await;
    assert_eq!((st, &r["told"]), (200, &json!(1)), "{r}");
    let p = carl.next_push(&["maintenance"]).await;
    assert_eq!(
        (&p["on"], &p["message"], &p["retry_after_ms"]),
        (&json!(true), &json!("upgrade"), &json!(60000)),
        "{p}"
    );
    let mut refused = Client::open(addr, Fmt::Json).await;
    let (push, code, reason) = refused.expect_close().await;
    assert_eq!((code, reason.as_str()), (4010, "maintenance: upgrade"));
    assert_eq!(push.unwrap()["reconnect_after_ms"], json!(60000));
    let (_, r) = admin_call(admin, "GET", "/admin/maintenance", Some(&ops), "").await;
    assert_eq!(r["on"], json!(true), "{r}");
    // Not ready while in maintenance (load balancers send new clients elsewhere).
    let (st, r) = admin_call(admin, "GET", "/health/ready", None, "").await;
    assert_eq!((st, &r["status"]), (503, &json!("maintenance")), "{r}");
    let (st, r) = admin_call(admin, "GET", "/admin/health", Some(&ops), "").await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["maintenance"]["message"], json!("upgrade"), "{r}");
    assert_eq!(r["shards"].as_array().unwrap().len(), 2, "{r}");
    assert_eq!(r["store"]["circuit"], json!("closed"), "{r}");
    let (st, _) = admin_call(admin, "GET", "/admin/health", None, "").await;
    assert_eq!(st, 401);
    let (st, _) = admin_call(
        admin,
        "POST",
        "/admin/maintenance",
        Some(&ops),
        r#"{"on": false}"#,
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(carl.next_push(&["maintenance"]).await["on"], json!(false));
    let (st, _) = admin_call(admin, "GET", "/health/ready", None, "").await;
    assert_eq!(st, 200);
    Client::connect(addr, Fmt::Json, &token("carl", None)).await;

    // Revoking a user: its connections close and its older tokens are refused
    // (JWTs and reconnect tokens), also after a restart; a new token works.
    let old = token_issued("dave", now_s() - 30);
    let mut dave = Client::open(addr, Fmt::Json).await;
    let r = dave.call(json!({"cmd": "connect", "token": old})).await;
    let reconnect = r["result"]["reconnect_token"].as_str().unwrap().to_string();
    let (st, r) = admin_call(
        admin,
        "POST",
        "/admin/revoke",
        Some(&ops),
        r#"{"user": "dave"}"#,
    )
    .await;
    assert_eq!((st, &r["disconnected"]), (200, &json!(1)), "{r}");
    let (push, code, _) = dave.expect_close().await;
    assert_eq!((code, &push.unwrap()["reconnect"]), (4011, &json!(false)));
    let refused_connect = |tok: Value| async move {
        let mut c = Client::open(addr, Fmt::Json).await;
        c.call(json!({"cmd": "connect", "token": tok})).await
    };
    let r = refused_connect(json!(old)).await;
    assert_eq!(r["error"]["code"], json!(101), "{r}");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("revoked"),
        "{r}"
    );
    let mut c = Client::open(addr, Fmt::Json).await;
    let r = c
        .call(json!({"cmd": "connect", "reconnect": reconnect}))
        .await;
    assert_eq!(r["error"]["code"], json!(101), "{r}");
    let fresh = token_issued("dave", now_s() + 1);
    Client::connect(addr, Fmt::Json, &fresh).await;
    let (st, _) = admin_call(
        admin,
        "POST",
        "/admin/revoke",
        Some(&ops),
        r#"{"user": ""}"#,
    )
    .await;
    assert_eq!(st, 400);

    let (_, r) = admin_call(admin, "GET", "/admin/audit", Some(&ops), "").await;
    let actions: Vec<&str> = r["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "revoke",
            "maintenance",
            "maintenance",
            "disconnect.user",
            "disconnect.connection"
        ],
        "{r}"
    );
    assert_eq!(r["entries"][0]["target"], json!("dave"), "{r}");
    assert_eq!(r["entries"][3]["detail"]["disconnected"], json!(2), "{r}");
    server.shutdown();
    server.wait();

    let server = start(cfg);
    let r = {
        let mut c = Client::open(server.ws_addr(), Fmt::Json).await;
        c.call(json!({"cmd": "connect", "token": old})).await
    };
    assert_eq!(
        r["error"]["code"],
        json!(101),
        "still revoked after a restart: {r}"
    );
    Client::connect(server.ws_addr(), Fmt::Json, &fresh).await;
    server.shutdown();
    server.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breakers_drain_and_shutdown() {
    let server = start(|c| c.admin.jwt_secret = Some(ADMIN_SECRET.into()));
    let (addr, admin) = (server.ws_addr(), server.admin_addr());
    let ops = admin_token("ops-ann", "admin");
    let (st, r) = admin_call(admin, "GET", "/admin/breakers", Some(&ops), "").await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(
        (&r["breakers"][0]["name"], &r["breakers"][0]["state"]),
        (&json!("store"), &json!("closed")),
        "{r}"
    );
    let (st, r) = admin_call(admin, "POST", "/admin/breakers/store/reset", Some(&ops), "").await;
    assert_eq!((st, &r["state"]), (200, &json!("closed")), "{r}");
    let (st, r) = admin_call(
        admin,
        "POST",
        "/admin/breakers/webhooks/reset",
        Some(&ops),
        "",
    )
    .await;
    assert_eq!((st, &r["was"]), (200, &json!("closed")), "{r}");
    let (st, _) = admin_call(admin, "POST", "/admin/breakers/redis/reset", Some(&ops), "").await;
    assert_eq!(st, 404);

    // Drain: everyone is moved away with spread hints, newcomers are turned away.
    let mut a = client_on_shard(addr, Fmt::Json, &token("ann", None), 0).await;
    let mut b = client_on_shard(addr, Fmt::MsgPack, &token("bob", None), 1).await;
    let (st, r) = admin_call(
        admin,
        "POST",
        "/admin/drain",
        Some(&ops),
        r#"{"spread_ms": 2000}"#,
    )
    .await;
    assert_eq!((st, &r["disconnected"]), (200, &json!(2)), "{r}");
    for c in [&mut a, &mut b] {
        let (push, code, _) = c.expect_close().await;
        assert_eq!(code, 4009);
        assert!(push.unwrap()["reconnect_after_ms"].as_u64().unwrap() < 2000);
    }
    let mut late = Client::open(addr, Fmt::Json).await;
    assert_eq!(late.expect_close().await.1, 4010);
    let (st, _) = admin_call(admin, "GET", "/health/ready", None, "").await;
    assert_eq!(st, 503);
    let (st, _) = admin_call(
        admin,
        "POST",
        "/admin/drain",
        Some(&ops),
        r#"{"spread": 1}"#,
    )
    .await;
    assert_eq!(st, 400);
    for body in [r#"{"on": "yes"}"#, r#"{"on": true, "message": ""}"#, "{"] {
        let (st, r) = admin_call(admin, "POST", "/admin/maintenance", Some(&ops), body).await;
        assert_eq!(st, 400, "{body}: {r}");
    }

    // Shutdown through the API: clients get 1001, the server stops.
    admin_call(
        admin,
        "POST",
        "/admin/maintenance",
        Some(&ops),
        r#"{"on": false}"#,
    )
    .await;
    let mut c = Client::connect(addr, Fmt::Json, &token("carl", None)).await;
    let (st, _) = admin_call(admin, "POST", "/admin/shutdown", None, "").await;
    assert_eq!(st, 401);
    let (st, r) = admin_call(admin, "POST", "/admin/shutdown", Some(&ops), "").await;
    assert_eq!((st, &r["stopping"]), (200, &json!(true)), "{r}");
    assert_eq!(c.expect_close().await.1, 1001);
    tokio::task::spawn_blocking(move || server.wait())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_to_stopped_shards_answer_at_once_and_the_process_still_stops() {
    // A scrape or an admin listing that reaches the shards after they stopped used to
    // wait forever on an inbox nobody drains, and held the HTTP server (and so the
    // process) open on SIGTERM.
    let server = start(|c| c.admin.jwt_secret = Some(ADMIN_SECRET.into()));
    let admin = server.admin_addr();
    let ops = admin_token("ops", "admin");
    server.shutdown();
    server.engine().join();
    let started = std::time::Instant::now();
    let (st, text) = http(admin, "GET", "/metrics", &[], "").await;
    assert_eq!(st, 200, "{text}");
    assert!(text.contains("switchboard_connections"), "{text}");
    let (st, r) = admin_call(admin, "GET", "/admin/connections", Some(&ops), "").await;
    assert_eq!(
        (st, r["error"]["code"].as_str()),
        (503, Some("overloaded")),
        "{r}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered after {:?}",
        started.elapsed()
    );
    tokio::task::spawn_blocking(move || server.wait())
        .await
        .unwrap();
}
