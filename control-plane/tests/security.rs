//! Protection at the edges: the origin allow-list for browser upgrades, security
//! headers and request ids on every HTTP response, and secrets never written to the
//! logs (the real binary, at trace level, fed bad tokens and keys).

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The raw response (head and body) of one HTTP request.
async fn raw_http(addr: std::net::SocketAddr, request: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(TIMEOUT, s.read_to_end(&mut out))
        .await
        .expect("a response in time")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_origins_are_checked_against_the_allow_list() {
    let server = start(|c| {
        c.engine.allowed_origins = vec![
            "https://app.example.com".into(),
            "https://*.example.org".into(),
        ];
    });
    let addr = server.ws_addr();
    for origin in ["https://app.example.com", "https://eu.example.org"] {
        let (_, head) = upgrade(addr, None, &format!("Origin: {origin}\r\n")).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{origin}: {head}");
    }
    // Not a browser (no Origin): allowed.
    let (_, head) = upgrade(addr, None, "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    for origin in ["https://evil.example.net", "http://app.example.com", "null"] {
        let (mut s, head) = upgrade(addr, None, &format!("Origin: {origin}\r\n")).await;
        assert!(
            head.starts_with("HTTP/1.1 403 Forbidden"),
            "{origin}: {head}"
        );
        assert!(head.contains("X-Content-Type-Options: nosniff"), "{head}");
        let mut body = String::new();
        let _ = s.read_to_string(&mut body).await;
        assert_eq!(body.trim(), "origin not allowed");
    }
    assert!(
        metric(
            server.admin_addr(),
            "switchboard_closes_total{shard=\"0\",reason=\"handshake_rejected\"}"
        )
        .await
            + metric(
                server.admin_addr(),
                "switchboard_closes_total{shard=\"1\",reason=\"handshake_rejected\"}"
            )
            .await
            >= 3
    );
    server.shutdown();
    server.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_rate_per_address_is_limited() {
    let server = start(|c| c.engine.max_connection_rate_per_ip = 3);
    let addr = server.ws_addr();
    let mut held = Vec::new();
    for _ in 0..3 {
        let (s, head) = upgrade(addr, None, "").await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        held.push(s);
    }
    let (_, head) = upgrade(addr, None, "").await;
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
    assert!(head.contains("Retry-After: 1"), "{head}");
    // A second later the budget is back.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (_, head) = upgrade(addr, None, "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    server.shutdown();
    server.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_http_response_has_security_headers_and_a_request_id() {
    let server = start(|_| {});
    let admin = server.admin_addr();
    for (request, status) in [
        ("GET /health/live HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", 200),
        ("GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", 200),
        ("GET /nope HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", 404),
        ("POST /api/publish HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}", 401),
        ("GET /admin/audit HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", 403),
    ] {
        let text = raw_http(admin, request).await;
        let head = text.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
        assert!(head.starts_with(&format!("http/1.1 {status}")), "{request}: {head}");
        for h in [
            "x-content-type-options: nosniff",
            "x-frame-options: deny",
            "referrer-policy: no-referrer",
            "content-security-policy: default-src 'none'; frame-ancestors 'none'",
            "cache-control: no-store",
            "x-request-id: ",
        ] {
            assert!(head.contains(h), "{request}: missing {h}: {head}");
        }
    }
    // A well-formed request id is kept; a bad one is replaced.
    let text = raw_http(
        admin,
        "GET /health/live HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Request-Id: trace-42\r\n\r\n",
    )
    .await;
    assert!(
        text.to_ascii_lowercase()
            .contains("x-request-id: trace-42\r\n"),
        "{text}"
    );
    let text = raw_http(
        admin,
        "GET /health/live HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Request-Id: <script>\r\n\r\n",
    )
    .await;
    assert!(!text.contains("<script>"), "{text}");
    server.shutdown();
    server.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_request_ids_and_security_events() {
    let hmac = "json-log-test-hmac-secret-0123";
    let (child, ws, admin) = spawn_binary(&[
        ("RUST_LOG", "info,switchboard_engine=debug"),
        ("SWITCHBOARD_LOG__FORMAT", "json"),
        ("SWITCHBOARD_AUTH__HMAC_SECRET", hmac),
        ("SWITCHBOARD_ADMIN__API_KEY", "json-log-test-api-key-0123"),
    ]);
    let forged = switchboard_control_plane::auth::mint(
        "not-the-secret-0123456789",
        "mallory",
        None,
        Duration::from_secs(60),
        &Default::default(),
    );
    let mut c = Client::open(ws, Fmt::Json).await;
    let r = c.call(json!({"cmd": "connect", "token": forged})).await;
    assert_eq!(r["error"]["code"], json!(101), "{r}");
    let (st, _) = http(
        admin,
        "GET",
        "/api/calls",
        &[
            ("Authorization", "Bearer wrong-key-000000000"),
            ("X-Request-Id", "trace-77"),
        ],
        "",
    )
    .await;
    assert_eq!(st, 401);
    // A connection's lifecycle is logged (debug) under the client id its connect
    // reply gave it.
    let good = switchboard_control_plane::auth::mint(
        hmac,
        "ann",
        None,
        Duration::from_secs(60),
        &Default::default(),
    );
    let mut ann = Client::open(ws, Fmt::Json).await;
    let r = ann.call(json!({"cmd": "connect", "token": good})).await;
    let ann_id = r["result"]["client"].as_str().unwrap().to_string();
    ann.call(json!({"cmd": "nope"})).await;
    drop((c, ann));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = stop_binary(child);
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 3, "{logs}");
    let token_refused = lines
        .iter()
        .find(|l| l["fields"]["message"] == json!("token refused"))
        .unwrap_or_else(|| panic!("no token refusal logged: {logs}"));
    assert_eq!(
        token_refused["target"],
        json!("security"),
        "{token_refused}"
    );
    let client = token_refused["fields"]["client"].as_str().unwrap();
    assert_eq!(client.split('.').count(), 3, "a client id: {client}");
    let key_refused = lines
        .iter()
        .find(|l| l["target"] == json!("security") && l["span"]["request_id"] == json!("trace-77"))
        .unwrap_or_else(|| panic!("no API key refusal with the request id: {logs}"));
    assert_eq!(
        key_refused["span"]["path"],
        json!("/api/calls"),
        "{key_refused}"
    );
    let lifecycle: Vec<(&str, &str)> = lines
        .iter()
        .filter(|l| l["fields"]["client"] == json!(ann_id))
        .map(|l| {
            (
                l["fields"]["message"].as_str().unwrap(),
                l["fields"]["user"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        lifecycle,
        [("connection opened", "ann"), ("connection closed", "ann")],
        "{logs}"
    );
    assert!(!logs.contains(&forged) && !logs.contains(hmac) && !logs.contains(&good));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_logs() {
    let hmac = "log-test-hmac-secret-9f8e7d6c5b4a";
    let api_key = "log-test-api-key-1a2b3c4d5e6f";
    let admin_secret = "log-test-admin-secret-0a9b8c7d6e5f";
    // A webhook URL carries its secret in the path (Slack's do); nothing listens on
    // port 1, so delivery fails and is logged — by host only.
    let webhook_path = "services/T0/B0/log-test-webhook-path-secret";
    let webhooks = format!(r#"["http://127.0.0.1:1/{webhook_path}"]"#);
    let (child, ws, admin) = spawn_binary(&[
        ("RUST_LOG", "trace"),
        ("SWITCHBOARD_AUTH__HMAC_SECRET", hmac),
        ("SWITCHBOARD_ADMIN__API_KEY", api_key),
        ("SWITCHBOARD_ADMIN__JWT_SECRET", admin_secret),
        ("SWITCHBOARD_ALERTS__WEBHOOKS", &webhooks),
        ("SWITCHBOARD_ALERTS__INTERVAL_MS", "50"),
        (
            "SWITCHBOARD_ALERTS__RULES",
            r#"[{name = "busy", metric = "connections", above = 0, for_ms = 0, level = "info"}]"#,
        ),
    ]);
    // A good token, a forged one, the API key and admin tokens, right and wrong.
    let good = switchboard_control_plane::auth::mint(
        hmac,
        "ann",
        None,
        Duration::from_secs(60),
        &Default::default(),
    );
    let forged = switchboard_control_plane::auth::mint(
        "some-other-secret-0123456789",
        "ann",
        None,
        Duration::from_secs(60),
        &Default::default(),
    );
    let mut c = Client::connect(ws, Fmt::Json, &good).await;
    c.call(json!({"cmd": "publish", "channel": "room:1", "data": 1}))
        .await;
    let mut bad = Client::open(ws, Fmt::Json).await;
    bad.call(json!({"cmd": "connect", "token": forged})).await;
    let bearer = format!("Bearer {api_key}");
    http(
        admin,
        "POST",
        "/api/publish",
        &[("Authorization", &bearer)],
        r#"{"channel":"room:1","data":2}"#,
    )
    .await;
    http(
        admin,
        "POST",
        "/api/publish",
        &[("Authorization", "Bearer wrong-key-000000000")],
        "{}",
    )
    .await;
    let admin_token = switchboard_control_plane::auth::mint_admin(
        admin_secret,
        "ops",
        Duration::from_secs(60),
        "admin",
    );
    let admin_bearer = format!("Bearer {admin_token}");
    let (st, _) = http(
        admin,
        "GET",
        "/admin/rate-limits",
        &[("Authorization", &admin_bearer)],
        "",
    )
    .await;
    assert_eq!(st, 200);
    let wrong_admin = format!("Bearer {forged}");
    http(
        admin,
        "GET",
        "/admin/audit",
        &[("Authorization", &wrong_admin)],
        "",
    )
    .await;
    // Give the alert a few intervals to fire and its delivery to fail.
    tokio::time::sleep(Duration::from_millis(400)).await;
    drop((c, bad));
    let logs = stop_binary(child);
    assert!(logs.len() > 1000, "trace logs were written: {logs}");
    assert!(
        logs.contains("webhook delivery failed"),
        "the failed webhook was logged: {logs}"
    );
    for secret in [
        hmac,
        api_key,
        admin_secret,
        &good,
        &forged,
        &admin_token,
        webhook_path,
    ] {
        let leaks: Vec<&str> = logs.lines().filter(|l| l.contains(secret)).collect();
        assert!(
            leaks.is_empty(),
            "a secret reached the logs: {secret}\n{}",
            leaks.join("\n")
        );
    }
}
