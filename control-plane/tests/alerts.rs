//! Alerts inside the server: rules on its own metrics fire and resolve on their own,
//! are listed with their history by the admin API, and reach a webhook receiver (a
//! local HTTP server speaking Slack's incoming-webhook format: JSON with `text`, `ok`).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use switchboard_control_plane::alerts::{AlertMetric, AlertRule, Level};

const ADMIN_SECRET: &str = "alerts-admin-secret-0123456789";

/// A webhook receiver: every POSTed body, in order.
fn receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/hooks/switchboard",
        listener.local_addr().unwrap()
    );
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut len = 0;
            let mut line = String::new();
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            assert!(request_line.starts_with("POST /hooks/switchboard HTTP/1.1"));
            loop {
                line.clear();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            sink.lock()
                .unwrap()
                .push(serde_json::from_slice(&body).unwrap());
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        }
    });
    (url, got)
}

async fn admin_get(admin: std::net::SocketAddr, bearer: &str, path: &str) -> (u16, Value) {
    let (st, text) = http(admin, "GET", path, &[("Authorization", bearer)], "").await;
    (st, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn wait_for(got: &Arc<Mutex<Vec<Value>>>, rule: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found = got
            .lock()
            .unwrap()
            .iter()
            .find(|n| n["alert"]["rule"] == json!(rule) && n["alert"]["state"] == json!(state))
            .cloned();
        if let Some(n) = found {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "no {rule} {state} notice: {:?}",
            got.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_fire_resolve_and_reach_the_webhook() {
    let (url, got) = receiver();
    let server = start(|c| {
        c.admin.jwt_secret = Some(ADMIN_SECRET.into());
        c.alerts.interval_ms = 100;
        c.alerts.webhooks = vec![url];
        c.alerts.rules = vec![
            AlertRule {
                name: "busy".into(),
                metric: AlertMetric::Connections,
                above: 1.0,
                for_ms: 0,
                level: Level::Warning,
            },
            AlertRule {
                name: "errors".into(),
                metric: AlertMetric::ErrorRate,
                above: 0.5,
                for_ms: 0,
                level: Level::Critical,
            },
        ];
    });
    let (addr, admin) = (server.ws_addr(), server.admin_addr());
    let ops = switchboard_control_plane::auth::mint_admin(
        ADMIN_SECRET,
        "ops",
        Duration::from_secs(60),
        "admin",
    );
    let bearer = format!("Bearer {ops}");
    let mut a = Client::connect(addr, Fmt::Json, &token("ann", None)).await;
    let b = Client::connect(addr, Fmt::Json, &token("bob", None)).await;
    let fired = wait_for(&got, "busy", "firing").await;
    assert!(
        fired["text"]
            .as_str()
            .unwrap()
            .starts_with("[WARNING] busy firing"),
        "{fired}"
    );
    assert_eq!(fired["alert"]["value"], json!(2.0), "{fired}");
    let (st, r) = admin_get(admin, &bearer, "/admin/alerts").await;
    assert_eq!(st, 200);
    assert_eq!(r["active"][0]["rule"], json!("busy"), "{r}");

    // Every command in an interval fails: the error rate fires, then resolves.
    for _ in 0..20 {
        a.call(json!({"cmd": "nope"})).await;
    }
    let fired = wait_for(&got, "errors", "firing").await;
    assert_eq!(fired["alert"]["level"], json!("critical"), "{fired}");
    wait_for(&got, "errors", "resolved").await;

    drop((a, b));
    wait_for(&got, "busy", "resolved").await;
    let (_, r) = admin_get(admin, &bearer, "/admin/alerts").await;
    assert_eq!(r["active"], json!([]), "{r}");
    let history: Vec<(String, String)> = r["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["rule"].as_str().unwrap().into(),
                n["state"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(history.len(), 4, "{r}");
    assert_eq!(
        history[0],
        ("busy".into(), "resolved".into()),
        "newest first: {r}"
    );
    let (_, r) = admin_get(admin, &bearer, "/admin/breakers").await;
    let hooks = r["breakers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == json!("webhooks"))
        .cloned()
        .unwrap();
    assert_eq!(
        (&hooks["state"], &hooks["sent"]),
        (&json!("closed"), &json!(4)),
        "{r}"
    );
    let (st, _) = http(admin, "GET", "/admin/alerts", &[], "").await;
    assert_eq!(st, 401);
    server.shutdown();
    server.wait();
}
