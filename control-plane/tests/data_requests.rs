//! Data requests through the admin API on a real SQLite store: a user's messages
//! (channel publications with attachment metadata, direct messages, some archived,
//! some still in the log) and notifications exported as JSON; the user erased — its
//! connections closed, what it published redacted in memory and on disk with every
//! position kept, its inbox, receipts and notifications gone — both audited, and still
//! so after a restart.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use switchboard_control_plane::auth;
use switchboard_control_plane::config::NamespaceConfig;
use switchboard_engine::Durability;

const ADMIN_SECRET: &str = "integration-admin-secret-0123456789";

fn configure(c: &mut switchboard_control_plane::Config, store: &std::path::Path) {
    c.namespaces.insert(
        "chat".into(),
        NamespaceConfig {
            durability: Durability::Sync,
            ..Default::default()
        },
    );
    c.admin.jwt_secret = Some(ADMIN_SECRET.into());
    c.store.archive_after_ms = 200;
    c.store.path = store.to_owned();
}

async fn as_admin(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, Value) {
    let token = auth::mint_admin(ADMIN_SECRET, "dpo", Duration::from_secs(600), "admin");
    let bearer = format!("Bearer {token}");
    let (st, text) = http(addr, method, path, &[("Authorization", &bearer)], "").await;
    (
        st,
        serde_json::from_str(&text).unwrap_or(json!({"raw": text})),
    )
}

fn attachment(n: u32) -> Value {
    json!({"attachments": [{"name": format!("scan-{n}.pdf"), "type": "application/pdf",
        "size": 48213, "url": format!("https://files.example/scan-{n}.pdf")}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_is_exported_then_erased_and_stays_erased() {
    let store = temp_store();
    let server = start(|c| configure(c, &store));
    let (ws, admin) = (server.ws_addr(), server.admin_addr());
    let tok = |who: &str| token_with(who, |c| c.send_to = Some(vec!["*".into()]));
    let mut ann = Client::connect(ws, Fmt::Json, &tok("ann")).await;
    let mut bob = Client::connect(ws, Fmt::Json, &tok("bob")).await;
    for n in 1..=3 {
        let r = ann
            .call(json!({"cmd": "publish", "channel": "chat:visit-1",
                "data": {"text": format!("ann {n}")}, "meta": attachment(n)}))
            .await;
        assert!(r["result"]["offset"].is_u64(), "{r}");
    }
    // Attachment metadata of the wrong shape is refused at the edge.
    let bad = json!({"attachments": [{"name": "x", "size": -1, "url": "https://x"}]});
    let r = ann
        .call(json!({"cmd": "publish", "channel": "chat:visit-1", "data": 1, "meta": bad}))
        .await;
    assert_eq!(r["error"]["code"], json!(104), "{r}");
    let r = bob
        .call(json!({"cmd": "publish", "channel": "chat:visit-1", "data": {"text": "bob 1"}}))
        .await;
    assert_eq!(r["result"]["offset"], json!(4), "{r}");
    let r = ann
        .call(json!({"cmd": "send", "user": "bob", "data": {"text": "private to bob"}}))
        .await;
    assert!(r["result"]["offset"].is_u64(), "{r}");
    let r = bob
        .call(json!({"cmd": "send", "user": "ann", "data": {"text": "private to ann"}}))
        .await;
    assert!(r["result"]["offset"].is_u64(), "{r}");
    let (st, n) = api(
        admin,
        "POST",
        "/api/notifications",
        &json!({"user": "ann", "kind": "visit", "data": {"at": "10:00"}}),
    )
    .await;
    assert_eq!(st, 200, "{n}");
    // Archived by now; one more stays in the log's tail.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let r = ann
        .call(json!({"cmd": "publish", "channel": "chat:visit-1", "data": {"text": "ann 4"}}))
        .await;
    assert_eq!(r["result"]["offset"], json!(5), "{r}");

    let (st, export) = as_admin(admin, "GET", "/admin/users/ann/export").await;
    assert_eq!(st, 200, "{export}");
    let texts: Vec<&str> = export["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        ["ann 1", "ann 2", "ann 3", "ann 4", "private to bob"],
        "{export}"
    );
    let first = &export["messages"][0];
    assert_eq!(first["channel"], json!("chat:visit-1"));
    assert_eq!(first["meta"], attachment(1), "attachment metadata kept");
    assert!(first["at_ms"].as_u64().unwrap() > 0);
    assert_eq!(export["messages"][4]["channel"], json!("inbox:bob"));
    assert_eq!(
        export["notifications"][0]["kind"],
        json!("visit"),
        "{export}"
    );

    let (st, erased) = as_admin(admin, "POST", "/admin/users/ann/erase").await;
    assert_eq!(st, 200, "{erased}");
    assert_eq!(erased["disconnected"], json!(1), "{erased}");
    assert_eq!(erased["stored"]["redacted"], json!(5), "{erased}");
    assert_eq!(erased["stored"]["inbox_deleted"], json!(1), "{erased}");
    assert_eq!(erased["notifications"], json!(1), "{erased}");
    let (_, code, _) = ann.expect_close().await;
    assert_eq!(code, 4011, "revoked");

    // Bob's view: ann's messages redacted in place, his own intact, no gap.
    let check = |h: &Value| {
        let pubs = h["publications"].as_array().unwrap();
        let offsets: Vec<u64> = pubs.iter().map(|p| p["offset"].as_u64().unwrap()).collect();
        assert_eq!(offsets, [1, 2, 3, 4, 5], "{h}");
        for i in [0, 1, 2, 4] {
            assert_eq!(pubs[i]["data"], Value::Null, "{h}");
            assert_eq!(pubs[i]["meta"], json!({"redacted": true}), "{h}");
        }
        assert_eq!(pubs[3]["data"], json!({"text": "bob 1"}), "{h}");
    };
    let (st, h) = api(
        admin,
        "GET",
        "/api/history?channel=chat:visit-1",
        &Value::Null,
    )
    .await;
    assert_eq!(st, 200, "{h}");
    check(&h);
    let r = bob
        .call(json!({"cmd": "history", "channel": "inbox:bob"}))
        .await;
    assert_eq!(r["result"]["publications"][0]["data"], Value::Null, "{r}");
    let (st, inbox) = api(admin, "GET", "/api/users/ann/inbox", &Value::Null).await;
    assert_eq!(st, 200, "{inbox}");
    assert_eq!(inbox["publications"], json!([]), "{inbox}");
    let (_, again) = as_admin(admin, "GET", "/admin/users/ann/export").await;
    assert_eq!(
        (&again["messages"], &again["notifications"]),
        (&json!([]), &json!([])),
        "{again}"
    );
    let (_, audit) = as_admin(admin, "GET", "/admin/audit?limit=10").await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in ["user.export", "user.erase", "revoke"] {
        assert!(actions.iter().any(|x| x.starts_with(a)), "{a}: {audit}");
    }

    // From the store, after a restart: still erased.
    server.shutdown();
    server.wait();
    let server = start(|c| configure(c, &store));
    let (st, h) = api(
        server.admin_addr(),
        "GET",
        "/api/history?channel=chat:visit-1",
        &Value::Null,
    )
    .await;
    assert_eq!(st, 200, "{h}");
    check(&h);
    let left = store_count(
        &store,
        "SELECT (SELECT COUNT(*) FROM archive WHERE author = 'ann' OR sender = 'ann'
              OR channel = 'inbox:ann')
              + (SELECT COUNT(*) FROM log WHERE author = 'ann' OR sender = 'ann'
              OR channel = 'inbox:ann')",
        "SELECT COUNT(*) FROM publications WHERE author = 'ann' OR sender = 'ann'
              OR channel = 'inbox:ann'",
    );
    assert_eq!(left, 0, "nothing of ann's left on disk");
    server.shutdown();
    server.wait();
    let _ = std::fs::remove_dir_all(store.parent().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_data_requests_get_clear_errors() {
    let store = temp_store();
    let server = start(|c| configure(c, &store));
    let admin = server.admin_addr();
    let long = "u".repeat(129);
    for (method, path) in [
        ("GET", format!("/admin/users/{long}/export")),
        ("POST", format!("/admin/users/{long}/erase")),
    ] {
        let (st, body) = as_admin(admin, method, &path).await;
        assert_eq!(st, 400, "{method} {path}: {body}");
        assert!(
            body["error"].is_object() || body["message"].is_string(),
            "{body}"
        );
    }
    // Without an admin token: refused, nothing erased.
    let (st, _) = http(admin, "POST", "/admin/users/ann/erase", &[], "").await;
    assert_eq!(st, 401);
    let (st, _) = http(admin, "GET", "/admin/users/ann/export", &[], "").await;
    assert_eq!(st, 401);
    server.shutdown();
    server.wait();
    let _ = std::fs::remove_dir_all(store.parent().unwrap());
}
