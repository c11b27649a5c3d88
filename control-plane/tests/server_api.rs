//! The server API for backends: API keys with scopes, the user and connection routes
//! (status, inbox, broadcast, disconnect, revoke), and the OpenAPI document checked
//! against the real routes both ways (every route in the source is documented, every
//! documented operation answers, and refuses without credentials).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use switchboard_control_plane::config::ApiKeyConfig;

const ADMIN_SECRET: &str = "server-api-admin-secret-0123456789";
const READER: &str = "reader-key-0123456789abcdef";
const PUBLISHER: &str = "publisher-key-0123456789abc";
const OPS: &str = "ops-key-0123456789abcdefgh";

fn keys() -> Vec<ApiKeyConfig> {
    let key = |name: &str, key: &str, scopes: &[&str]| ApiKeyConfig {
        name: name.into(),
        key: key.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
    };
    vec![
        key("reader", READER, &["read"]),
        key("publisher", PUBLISHER, &["publish", "send"]),
        key("ops", OPS, &["users", "read"]),
    ]
}

async fn call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let auth = bearer.map(|b| format!("Bearer {b}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a));
    }
    let (st, text) = http(addr, method, path, &headers, body).await;
    (
        st,
        serde_json::from_str(&text).unwrap_or(json!({"raw": text})),
    )
}

/// `(METHOD, path)` of every route registered in the control plane's source.
fn source_routes() -> BTreeSet<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
        for part in flat.split(".route(").skip(1) {
            let Some(path) = part
                .trim_start()
                .strip_prefix('"')
                .and_then(|p| p.split('"').next())
            else {
                continue;
            };
            let handlers = part.split(')').take(6).collect::<Vec<_>>().join(")");
            let handlers = handlers.split(".route(").next().unwrap();
            for m in ["get", "post", "put", "delete"] {
                if handlers.contains(&format!(" {m}("))
                    || handlers.contains(&format!(".{m}("))
                    || handlers.contains(&format!(", {m}("))
                {
                    out.insert((m.to_uppercase(), path.to_string()));
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_matches_the_routes() {
    let server = start(|c| c.admin.jwt_secret = Some(ADMIN_SECRET.into()));
    let admin = server.admin_addr();
    let (st, doc) = call(admin, "GET", "/api/openapi.json", None, "").await;
    assert_eq!(st, 200, "served without a key");
    assert_eq!(doc["openapi"], json!("3.1.0"));
    let mut documented = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let routes = source_routes();
    assert!(routes.len() >= 30, "{routes:?}");
    let missing: Vec<_> = routes.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "routes without documentation: {missing:?}"
    );
    let extra: Vec<_> = documented.difference(&routes).collect();
    assert!(extra.is_empty(), "documented but not routed: {extra:?}");

    // Every documented operation answers (not the 404 fallback, not 405), and the
    // protected ones refuse a request without credentials.
    let admin_token = switchboard_control_plane::auth::mint_admin(
        ADMIN_SECRET,
        "ops",
        Duration::from_secs(60),
        "admin",
    );
    for (method, path) in &documented {
        let concrete = path
            .replace("{user}", "nobody")
            .replace("{client}", "0.1.1")
            .replace("{id}", "1")
            .replace("{index}", "0")
            .replace("{name}", "store");
        let op = &doc["paths"][path][method.to_lowercase()];
        let public = op["security"] == json!([]);
        let cred = if path.starts_with("/admin/") {
            &admin_token
        } else {
            API_KEY
        };
        // Stopping the server is tested on its own (tests/admin.rs).
        let (st, r) = if path == "/admin/shutdown" {
            (200, json!({}))
        } else {
            call(admin, method, &concrete, Some(cred), "").await
        };
        assert!(st != 405, "{method} {path}: 405");
        assert!(
            !(st == 404 && r["error"]["message"] == json!("no such endpoint")),
            "{method} {path}: not routed"
        );
        if !public {
            let (st, _) = call(admin, method, &concrete, None, "").await;
            assert!(
                st == 401 || st == 403,
                "{method} {path}: {st} without credentials"
            );
        }
    }
    server.shutdown();
    server.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_have_scopes() {
    let server = start(|c| c.admin.api_keys = keys());
    let admin = server.admin_addr();
    let publish = r#"{"channel": "room:1", "data": 1}"#;
    for (key, method, path, body, status) in [
        (READER, "GET", "/api/history?channel=room:1", "", 200),
        (READER, "POST", "/api/publish", publish, 403),
        (PUBLISHER, "POST", "/api/publish", publish, 200),
        (PUBLISHER, "GET", "/api/history?channel=room:1", "", 403),
        (PUBLISHER, "POST", "/api/users/ann/disconnect", "{}", 403),
        (OPS, "POST", "/api/users/ann/disconnect", "{}", 200),
        (OPS, "POST", "/api/publish", publish, 403),
        (API_KEY, "POST", "/api/publish", publish, 200),
        ("unknown-key-0123456789", "GET", "/api/calls", "", 401),
    ] {
        let (st, r) = call(admin, method, path, Some(key), body).await;
        assert_eq!(st, status, "{key} {method} {path}: {r}");
        if st == 403 {
            assert!(
                r["error"]["message"].as_str().unwrap().contains("scope"),
                "{r}"
            );
        }
    }
    assert!(metric(admin, "switchboard_api_refused_total").await >= 5);
    server.shutdown();
    server.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_status_inbox_broadcast_disconnect_and_revoke() {
    let server = start(|c| {
        c.admin.api_keys = keys();
        c.admin.jwt_secret = Some(ADMIN_SECRET.into());
    });
    let (addr, admin) = (server.ws_addr(), server.admin_addr());
    let mut phone = Client::open(addr, Fmt::Json).await;
    let r = phone
        .call(json!({"cmd": "connect", "token": token("ann", None), "device": "phone"}))
        .await;
    let phone_id = r["result"]["client"].as_str().unwrap().to_string();
    let mut laptop = client_on_shard(addr, Fmt::MsgPack, &token("ann", None), 1).await;
    let mut other = client_on_shard(addr, Fmt::Json, &token("bob", None), 0).await;

    let (st, r) = call(admin, "GET", "/api/users/ann", Some(READER), "").await;
    assert_eq!((st, &r["online"]), (200, &json!(true)), "{r}");
    let conns = r["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 2, "{r}");
    assert!(conns.iter().any(|c| c["device"] == json!("phone")), "{r}");
    let (_, r) = call(admin, "GET", "/api/users/zed", Some(READER), "").await;
    assert_eq!(
        (&r["online"], &r["last_seen"]),
        (&json!(false), &Value::Null),
        "{r}"
    );

    // A broadcast reaches everyone on both shards.
    let (st, _) = call(
        admin,
        "POST",
        "/api/broadcast",
        Some(PUBLISHER),
        r#"{"data": {"notice": "v2 is out"}}"#,
    )
    .await;
    assert_eq!(st, 200);
    for c in [&mut phone, &mut laptop, &mut other] {
        let p = c.next_push(&["broadcast"]).await;
        assert_eq!(p["data"]["notice"], json!("v2 is out"), "{p}");
    }

    // The pending inbox: what the device has not acknowledged.
    for n in 1..=3 {
        let (st, r) = call(
            admin,
            "POST",
            "/api/send",
            Some(PUBLISHER),
            &json!({"user": "ann", "data": n, "from": "desk"}).to_string(),
        )
        .await;
        assert_eq!(st, 200, "{r}");
    }
    let (st, r) = call(
        admin,
        "GET",
        "/api/users/ann/inbox?since=1",
        Some(READER),
        "",
    )
    .await;
    assert_eq!(st, 200, "{r}");
    let data: Vec<&Value> = r["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["data"])
        .collect();
    assert_eq!(data, [&json!(2), &json!(3)], "{r}");

    // Disconnect one connection, then the user; a user's status shows when it left.
    let path = format!("/api/connections/{phone_id}/disconnect");
    let (st, r) = call(admin, "POST", &path, Some(OPS), r#"{"reason": "moved"}"#).await;
    assert_eq!((st, &r["disconnected"]), (200, &json!(1)), "{r}");
    let (_, code, reason) = phone.expect_close().await;
    assert_eq!((code, reason.as_str()), (4009, "moved"));
    let (st, r) = call(admin, "POST", "/api/users/ann/disconnect", Some(OPS), "{}").await;
    assert_eq!((st, &r["disconnected"]), (200, &json!(1)), "{r}");
    assert_eq!(laptop.expect_close().await.1, 4009);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, r) = call(admin, "GET", "/api/users/ann", Some(READER), "").await;
    assert_eq!(r["online"], json!(false), "{r}");
    assert!(r["last_seen"].as_u64().is_some(), "{r}");

    // Revoke through the server API, recorded as the key's action.
    let (st, r) = call(admin, "POST", "/api/users/bob/revoke", Some(OPS), "").await;
    assert_eq!((st, &r["disconnected"]), (200, &json!(1)), "{r}");
    assert_eq!(other.expect_close().await.1, 4011);
    let admin_token = switchboard_control_plane::auth::mint_admin(
        ADMIN_SECRET,
        "auditor",
        Duration::from_secs(60),
        "admin",
    );
    let (_, r) = call(admin, "GET", "/admin/audit", Some(&admin_token), "").await;
    let actors: BTreeSet<&str> = r["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["actor"].as_str().unwrap())
        .collect();
    assert_eq!(actors, BTreeSet::from(["api:ops"]), "{r}");
    for (path, body) in [
        ("/api/connections/nope/disconnect", "{}"),
        ("/api/users/ann/disconnect", r#"{"reason": 5}"#),
        ("/api/broadcast", r#"{"dat": 1}"#),
    ] {
        let key = if path.contains("broadcast") {
            PUBLISHER
        } else {
            OPS
        };
        let (st, r) = call(admin, "POST", path, Some(key), body).await;
        assert_eq!(st, 400, "{path}: {r}");
    }
    for (path, status) in [
        ("/api/users/ann/inbox?since=x", 400),
        (&format!("/api/users/{}", "u".repeat(200)) as &str, 400),
    ] {
        let (st, r) = call(admin, "GET", path, Some(READER), "").await;
        assert_eq!(st, status, "{path}: {r}");
    }
    // Validation errors name the JSON path of the bad field.
    for (path, body, field) in [
        ("/api/send", r#"{"users": ["a", 5], "data": 1}"#, "users[1]"),
        ("/api/publish", r#"{"channel": 7, "data": 1}"#, "channel"),
        (
            "/api/schedule",
            r#"{"channel": "c", "data": 1, "at": "soon"}"#,
            "at",
        ),
    ] {
        let (st, r) = call(admin, "POST", path, Some(API_KEY), body).await;
        assert_eq!(
            (st, &r["error"]["field"]),
            (400, &json!(field)),
            "{path}: {r}"
        );
    }
    server.shutdown();
    server.wait();
}
