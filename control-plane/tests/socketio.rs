//! Socket.IO with the real `socket.io-client` from npm (Node), against a real server:
//! tokens (valid, expired, missing, in the query), acks with a timeout, binary
//! attachments, a polling-only client, the polling → WebSocket upgrade, and the backend
//! hooks (a real HTTP backend: connect hook, events hook, refusals, failures).
//!
//! The Node packages are installed by `bash .ci/run` (`npm ci` in
//! `tests/clients/node`); without them these tests fail and say so.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use axum::routing::post;
use axum::Json;
use serde_json::{json, Value};
use switchboard_engine::sio_config::SioNamespace;

/// A backend for the hooks: the application a team moves over with.
fn spawn_backend() -> SocketAddr {
    async fn connect(Json(call): Json<Value>) -> Json<Value> {
        if call["auth"]["role"] == "blocked" {
            return Json(json!({
                "accept": false,
                "message": "blocked by the app",
                "data": {"reason": "test"}
            }));
        }
        Json(json!({"emit": [{"event": "welcome", "args": [{"user": call["user"]}]}]}))
    }
    async fn event(Json(call): Json<Value>) -> (axum::http::StatusCode, Json<Value>) {
        let ok = axum::http::StatusCode::OK;
        match call["event"].as_str() {
            Some("echo") => (
                ok,
                Json(json!({"ack": call["args"], "attachments": call["attachments"]})),
            ),
            Some("slow") => {
                tokio::time::sleep(Duration::from_secs(2)).await;
                (ok, Json(json!({"ack": ["late"]})))
            }
            Some("notify") => (
                ok,
                Json(json!({"ack": ["ok"], "emit": [
                    {"event": "notified", "args": call["args"]},
                    {"event": "room_event", "args": call["args"], "to": "room:hooks"},
                    {"event": "user_event", "args": ["for you", 2], "user": call["user"]},
                ]})),
            ),
            _ => (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({})),
            ),
        }
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let app = axum::Router::new()
                .route("/connect", post(connect))
                .route("/event", post(event));
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    addr
}

const ADMIN_SECRET: &str = "integration-admin-secret-0123456789";

fn server(backend: SocketAddr) -> switchboard_control_plane::Server {
    common::start(|c| {
        c.admin.jwt_secret = Some(ADMIN_SECRET.into());
        c.socketio.ping_interval_ms = 300;
        c.socketio.ping_timeout_ms = 400;
        let hooked = SioNamespace {
            connect_url: format!("http://{backend}/connect"),
            events_url: format!("http://{backend}/event"),
            hook_timeout_ms: 1000,
            ..Default::default()
        };
        c.socketio.namespaces.insert("/".into(), hooked.clone());
        c.namespaces.insert(
            "notes".into(),
            switchboard_control_plane::config::NamespaceConfig {
                edits: true,
                ..Default::default()
            },
        );
        c.socketio.namespaces.insert(
            "/public".into(),
            SioNamespace {
                anonymous: true,
                ..hooked
            },
        );
    })
}

/// Run a scenario of `tests/clients/node/sio_client.mjs`; its JSON report.
fn node(scenario: &str, url: &str, args: &[&str]) -> Value {
    let dir = common::node_clients();
    let out = Command::new("node")
        .current_dir(dir)
        .arg("sio_client.mjs")
        .arg(scenario)
        .arg(url)
        .args(args)
        .output()
        .expect("node must be installed to run this test (bash .ci/run checks)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!(
            "{scenario}: no report; stdout {stdout}; stderr {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(out.status.success(), "{scenario} failed: {report}");
    report
}

fn url(server: &switchboard_control_plane::Server) -> String {
    format!("http://{}", server.ws_addr())
}

#[test]
fn tokens_valid_expired_missing_and_in_the_query() {
    let server = server(spawn_backend());
    let valid = common::token("ann", None);
    let expired = common::token_with("ann", |c| c.exp = Some(1_000));
    let r = node("tokens", &url(&server), &[&valid, &expired]);
    assert_eq!(r["valid"]["connected"], true, "{r}");
    assert_eq!(r["query"]["connected"], true, "{r}");
    assert_eq!(r["expired"]["connected"], false, "{r}");
    assert!(
        r["expired"]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{r}"
    );
    assert_eq!(r["expired"]["data"]["code"], 109, "{r}");
    assert_eq!(r["missing"]["connected"], false, "{r}");
    assert_eq!(r["missing"]["data"]["code"], 101, "{r}");
    assert_eq!(r["garbage"]["data"]["code"], 101, "{r}");
    server.shutdown();
}

#[test]
fn acks_timeouts_failures_and_emits_through_the_events_hook() {
    let server = server(spawn_backend());
    let r = node("acks", &url(&server), &[&common::token("ann", None)]);
    assert_eq!(r["connect"]["connected"], true, "{r}");
    assert_eq!(r["welcome"], json!({"user": "ann"}), "{r}");
    assert_eq!(r["echo"], json!({"a": 1}), "the ack's first argument: {r}");
    assert_eq!(r["timeout"], "operation has timed out", "{r}");
    assert_eq!(r["failed"]["error"]["code"], 503, "{r}");
    assert!(
        r["failed"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("500"),
        "{r}"
    );
    assert_eq!(r["notify_ack"], "ok", "{r}");
    assert_eq!(r["notified"], json!([{"x": 1}]), "{r}");
    assert_eq!(r["room_event"], json!([{"x": 1}]), "to the room: {r}");
    assert_eq!(r["user_event"], json!([["for you", 2]]), "to the user: {r}");
    server.shutdown();
}

/// A Socket.IO client (WebSocket, then polling-only) and a native client share a room:
/// each one's messages reach the other, typing too, and the acks carry positions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_are_shared_with_native_clients() {
    use std::io::BufRead;
    let server = server(spawn_backend());
    let addr = server.ws_addr();
    for transport in ["websocket", "polling"] {
        let token = common::token("ann", Some(&["room:*"]));
        let dir = common::node_clients();
        let mut child = Command::new("node")
            .current_dir(dir)
            .args(["sio_client.mjs", "rooms", &url(&server), &token, transport])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("node must be installed to run this test");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut native =
            common::Client::connect(addr, common::Fmt::Json, &common::token("bob", None)).await;
        let r = native
            .call(json!({"cmd": "subscribe", "channel": "room:1"}))
            .await;
        assert!(r.get("result").is_some(), "{r}");
        let line = tokio::time::timeout(common::TIMEOUT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(line, r#"{"step":"joined"}"#);
        let r = native
            .call(json!({"cmd": "publish", "channel": "room:1", "data": {"text": "from native"}}))
            .await;
        assert!(r.get("result").is_some(), "{r}");
        let r = native
            .call(json!({"cmd": "typing", "channel": "room:1"}))
            .await;
        assert!(r.get("result").is_some(), "{r}");
        // A backend publishes with an event name: Socket.IO clients get that event.
        let body = json!({"channel": "room:1", "data": {"pct": 10}, "event": "analysis_progress"});
        let (status, r) = common::api(server.admin_addr(), "POST", "/api/publish", &body).await;
        assert_eq!(status, 200, "{r}");
        let mut named = None;
        let from_sio = loop {
            let p = tokio::time::timeout(common::TIMEOUT, native.next_publication())
                .await
                .unwrap();
            if p["data"]["pct"] == 10 {
                named = Some(p.clone());
            }
            if p["data"]["text"] == "from socket.io" {
                break p;
            }
        };
        let named = named.expect("the named publication reached the native client");
        assert_eq!(named["event"], "analysis_progress", "{named}");
        let report = tokio::time::timeout(common::TIMEOUT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        let r: Value = serde_json::from_str(&report).unwrap();
        assert!(child.wait().unwrap().success(), "{r}");
        assert!(r["join"]["epoch"].is_string(), "{transport}: {r}");
        assert_eq!(r["join_denied"]["error"]["code"], 103, "{transport}: {r}");
        assert_eq!(r["received"]["channel"], "room:1", "{transport}: {r}");
        assert_eq!(r["received"]["data"], json!({"text": "from native"}), "{r}");
        assert_eq!(r["typing"]["channel"], "room:1", "{transport}: {r}");
        assert_eq!(r["progress"], json!([{"pct": 10}]), "{transport}: {r}");
        assert_eq!(r["sent"]["offset"], from_sio["offset"], "{transport}: {r}");
        let history = r["history"]["publications"].as_array().unwrap();
        assert!(history.len() >= 2, "{transport}: {r}");
        assert_eq!(
            from_sio["from"],
            Value::Null,
            "a publication, not a direct message"
        );
    }
    server.shutdown();
}

#[test]
fn message_history_pages_with_a_cursor() {
    let server = server(spawn_backend());
    let r = node("history", &url(&server), &[&common::token("ann", None)]);
    assert_eq!(r["connect"]["connected"], json!(true), "{r}");
    assert_eq!(
        r["offsets"],
        json!((1..=12).rev().collect::<Vec<u64>>()),
        "{r}"
    );
    assert_eq!(r["bad_limit"]["error"]["code"], json!(104), "{r}");
    assert!(
        r["bad_cursor"]["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("unknown cursor")),
        "{r}"
    );
    // message:edit and message:delete, seen by members as message:edited/deleted.
    assert_eq!(r["edit"]["offset"], json!(2), "{r}");
    assert_eq!(
        (&r["edited"]["edit"], &r["edited"]["data"]),
        (&json!(1), &json!({"text": "final"})),
        "{r}"
    );
    assert_eq!(r["deleted"]["delete"], json!(1), "{r}");
    assert_eq!(r["after"][0]["data"], Value::Null, "{r}");
    assert!(r["after"][0]["deleted_ms"].is_u64(), "{r}");
    server.shutdown();
    server.wait();
}

#[test]
fn binary_attachments_travel_both_ways() {
    let server = server(spawn_backend());
    let r = node("binary", &url(&server), &[&common::token("ann", None)]);
    assert_eq!(r["bytes"], json!([0, 1, 2, 250, 255]), "{r}");
    assert_eq!(r["text"], "text", "{r}");
    server.shutdown();
}

#[test]
fn a_polling_only_client_works_across_shards() {
    let server = server(spawn_backend());
    let r = node("polling", &url(&server), &[&common::token("ann", None)]);
    assert_eq!(r["transport"], "polling", "{r}");
    assert_eq!(r["echoes"], json!((0..20).collect::<Vec<_>>()), "{r}");
    assert_eq!(r["after_idle"], "still here", "{r}");
    server.shutdown();
}

#[test]
fn polling_upgrades_to_websocket() {
    let server = server(spawn_backend());
    for _ in 0..3 {
        // Three clients: the upgrade's WebSocket and the session land on either shard.
        let r = node("upgrade", &url(&server), &[&common::token("ann", None)]);
        assert_eq!(r["first_transport"], "polling", "{r}");
        assert_eq!(r["transport"], "websocket", "{r}");
        assert_eq!(r["echo"], "after upgrade", "{r}");
    }
    server.shutdown();
}

#[test]
fn the_connect_hook_refuses_and_unknown_namespaces_are_refused() {
    let server = server(spawn_backend());
    let r = node("refused", &url(&server), &[]);
    assert_eq!(r["blocked"]["connected"], false, "{r}");
    assert_eq!(r["blocked"]["message"], "blocked by the app", "{r}");
    assert_eq!(r["blocked"]["data"], json!({"reason": "test"}), "{r}");
    assert_eq!(
        r["unknown_namespace"]["message"], "Invalid namespace",
        "{r}"
    );
    server.shutdown();
}

/// Revoking a user ends its Socket.IO sessions for good, over WebSocket and over
/// polling (a DISCONNECT before the close: the client does not reconnect).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_users_are_disconnected_for_good() {
    use std::io::BufRead;
    let server = server(spawn_backend());
    let admin = switchboard_control_plane::auth::mint_admin(
        ADMIN_SECRET,
        "ops",
        Duration::from_secs(600),
        "admin",
    );
    for (user, transport) in [("eve", "websocket"), ("mallory", "polling")] {
        let iat = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            - 30;
        let token = common::token_with(user, |c| c.iat = Some(iat));
        let dir = common::node_clients();
        let mut child = Command::new("node")
            .current_dir(dir)
            .args([
                "sio_client.mjs",
                "revoked",
                &url(&server),
                &token,
                transport,
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("node must be installed to run this test");
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        assert_eq!(first, r#"{"step":"connected"}"#, "{transport}");
        let auth = format!("Bearer {admin}");
        let body = format!(r#"{{"user": "{user}"}}"#);
        let (status, text) = common::http(
            server.admin_addr(),
            "POST",
            "/admin/revoke",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            &body,
        )
        .await;
        assert_eq!(status, 200, "{text}");
        let report = lines.next().unwrap().unwrap();
        let r: Value = serde_json::from_str(&report).unwrap();
        assert!(child.wait().unwrap().success(), "{r}");
        assert_eq!(r["reason"], "io server disconnect", "{transport}: {r}");
        assert_eq!(r["reconnected"], false, "{transport}: {r}");
    }
    server.shutdown();
}
