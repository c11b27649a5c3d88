//! Alerts inside the server: rules on its own metrics fire and resolve on their own,
//! are listed with their history by the admin API, and reach a webhook receiver (a
//! local HTTP or HTTPS server speaking Slack's incoming-webhook format: JSON with
//! `text`, `ok`; the HTTPS one has a certificate from a private CA made here).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use switchboard_control_plane::alerts::{AlertMetric, AlertRule, Level};

const ADMIN_SECRET: &str = "alerts-admin-secret-0123456789";

/// A webhook receiver: every POSTed body, in order. With `tls` (a server config), it
/// speaks HTTPS.
fn receiver(tls: Option<Arc<rustls::ServerConfig>>) -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!(
        "{scheme}://{}/hooks/switchboard",
        listener.local_addr().unwrap()
    );
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            match &tls {
                None => serve(stream, &sink),
                Some(config) => {
                    let conn = rustls::ServerConnection::new(config.clone()).unwrap();
                    // A client that refuses the certificate ends here with an error.
                    serve(rustls::StreamOwned::new(conn, stream), &sink)
                }
            }
        }
    });
    (url, got)
}

/// Read one POST, keep its JSON body, answer 200.
fn serve(stream: impl Read + Write, sink: &Mutex<Vec<Value>>) {
    let mut reader = BufReader::new(stream);
    let mut len = 0;
    let mut line = String::new();
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    assert!(
        request_line.starts_with("POST /hooks/switchboard HTTP/1.1"),
        "{request_line:?}"
    );
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
    let stream = reader.get_mut();
    let _ =
        stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
    let _ = stream.flush();
}

/// A private CA (its PEM) and a server config whose certificate it issued for
/// 127.0.0.1 and localhost.
fn private_ca() -> (String, Arc<rustls::ServerConfig>) {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "switchboard test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone(), ca.der().clone()], key)
        .unwrap();
    (ca.pem(), Arc::new(config))
}

/// `Authorization` for an admin token.
fn ops_bearer() -> String {
    let ops = switchboard_control_plane::auth::mint_admin(
        ADMIN_SECRET,
        "ops",
        Duration::from_secs(60),
        "admin",
    );
    format!("Bearer {ops}")
}

/// The `webhooks` breaker in a `/admin/breakers` answer.
fn webhooks(r: &Value) -> Value {
    r["breakers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == json!("webhooks"))
        .cloned()
        .unwrap_or_else(|| panic!("no webhooks breaker: {r}"))
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
    let (url, got) = receiver(None);
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
    let bearer = ops_bearer();
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
    let hooks = webhooks(&r);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_webhooks_trust_the_configured_ca_only() {
    let (ca_pem, tls) = private_ca();
    let (url, got) = receiver(Some(tls));
    let dir = temp_store().parent().unwrap().to_path_buf();
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let busy = AlertRule {
        name: "busy".into(),
        metric: AlertMetric::Connections,
        above: 0.0,
        for_ms: 0,
        level: Level::Info,
    };
    let configure = |ca_file: Option<String>| {
        let (url, busy) = (url.clone(), busy.clone());
        move |c: &mut switchboard_control_plane::config::Config| {
            c.admin.jwt_secret = Some(ADMIN_SECRET.into());
            c.alerts.interval_ms = 100;
            c.alerts.webhooks = vec![url];
            c.alerts.ca_file = ca_file;
            c.alerts.rules = vec![busy];
        }
    };
    let bearer = ops_bearer();

    // Trusting the private CA: the notice arrives over TLS.
    let server = start(configure(Some(ca_file.display().to_string())));
    let c = Client::connect(server.ws_addr(), Fmt::Json, &token("ann", None)).await;
    let fired = wait_for(&got, "busy", "firing").await;
    assert!(
        fired["text"]
            .as_str()
            .unwrap()
            .starts_with("[INFO] busy firing"),
        "{fired}"
    );
    // The receiver may see the notice before the sender has counted its answer.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let r = loop {
        let (_, r) = admin_get(server.admin_addr(), &bearer, "/admin/breakers").await;
        if webhooks(&r)["sent"].as_u64().unwrap_or(0) >= 1 {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "{r}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(webhooks(&r)["failures"], json!(0), "{r}");
    drop(c);
    server.shutdown();
    server.wait();

    // The built-in roots do not know that CA: delivery fails and is counted; nothing
    // reaches the receiver.
    got.lock().unwrap().clear();
    let server = start(configure(None));
    let c = Client::connect(server.ws_addr(), Fmt::Json, &token("bob", None)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, r) = admin_get(server.admin_addr(), &bearer, "/admin/breakers").await;
        if webhooks(&r)["failures"].as_u64().unwrap() >= 1 {
            assert_eq!(webhooks(&r)["sent"], json!(0), "{r}");
            break;
        }
        assert!(Instant::now() < deadline, "no failed delivery: {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(got.lock().unwrap().is_empty());
    drop(c);
    server.shutdown();
    server.wait();
    std::fs::remove_dir_all(&dir).unwrap();
}
