//! Escalations on a running server: an emergency message fires its rule — a webhook
//! signed with HMAC-SHA256, retried with backoff and dead-lettered when every attempt
//! fails (visible in the admin API, delivered again by hand), a notification with its
//! priority to the on-call user, a publication in the staff channel, and audit entries.

mod common;

use std::time::{Duration, Instant};

use common::webhook_sink::WebhookSink;
use common::*;
use serde_json::{json, Value};
use switchboard_control_plane::ai::config::PipelineConfig;
use switchboard_control_plane::ai::escalation::EscalationConfig;
use switchboard_control_plane::ai::intent::IntentRule;
use switchboard_control_plane::config::{Config, NamespaceConfig};

const ADMIN_SECRET: &str = "integration-admin-secret-0123456789";
const SECRET_VAR: &str = "SB_TEST_ESCALATION_SECRET";
const SECRET: &str = "escalation-secret-0123456789";

async fn admin_get(admin: std::net::SocketAddr, path: &str) -> Value {
    let (status, v) = admin_request(admin, ADMIN_SECRET, "GET", path, "").await;
    assert_eq!(status, 200, "{v}");
    v
}

/// Wait until the sink has `n` requests.
async fn received(sink: &WebhookSink, n: usize) -> Vec<common::webhook_sink::Received> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = sink.received();
        if got.len() >= n {
            return got;
        }
        assert!(Instant::now() < deadline, "{} of {n} webhooks", got.len());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn verify(r: &common::webhook_sink::Received) {
    let sig = &r.headers["x-switchboard-signature"];
    let (t, v1) = sig
        .strip_prefix("t=")
        .and_then(|s| s.split_once(",v1="))
        .unwrap_or_else(|| panic!("signature header {sig}"));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    let tag: Vec<u8> = (0..v1.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&v1[i..i + 2], 16).unwrap())
        .collect();
    let signed = format!("{t}.{}", r.body);
    ring::hmac::verify(&key, signed.as_bytes(), &tag).expect("a valid HMAC-SHA256 signature");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escalation_is_signed_retried_dead_lettered_notified_and_audited() {
    // One variable, set before the server reads it, by this test only.
    std::env::set_var(SECRET_VAR, SECRET);
    let sink = WebhookSink::start();
    let server = start(|c: &mut Config| {
        c.admin.jwt_secret = Some(ADMIN_SECRET.into());
        c.namespaces
            .insert("intake".into(), NamespaceConfig::default());
        c.namespaces
            .insert("staff".into(), NamespaceConfig::default());
        c.ai.intents = vec![IntentRule {
            intent: "emergency".into(),
            keywords: vec!["emergencia".into(), "911".into()],
        }];
        c.ai.pipelines.insert(
            "intake".into(),
            PipelineConfig {
                annotate: false,
                ..Default::default()
            },
        );
        c.ai.escalations = vec![EscalationConfig {
            name: "emergency".into(),
            intents: vec!["emergency".into()],
            keywords: vec!["hurt".into()],
            webhook_url: sink.url.clone(),
            webhook_secret_env: SECRET_VAR.into(),
            webhook_attempts: 3,
            webhook_backoff_ms: 50,
            notify_users: vec!["oncall".into()],
            notify_channel: "staff:alerts".into(),
            priority: "urgent".into(),
            ..Default::default()
        }];
    });
    let (ws, admin) = (server.ws_addr(), server.admin_addr());
    let mut oncall = Client::connect(ws, Fmt::Json, &token("oncall", None)).await;
    let mut staff = Client::connect(ws, Fmt::Json, &token("lawyer", None)).await;
    staff
        .call(json!({"cmd": "subscribe", "channel": "staff:alerts"}))
        .await;
    let mut client = Client::connect(ws, Fmt::Json, &token("client-9", None)).await;

    // A failed attempt, then delivered on the second, signed each time.
    sink.answer(&[500, 200]);
    let r = client
        .call(json!({"cmd": "publish", "channel": "intake:c1", "data": {"text": "¡Emergencia! Mi hermano está herido"}}))
        .await;
    let offset = r["result"]["offset"].as_u64().unwrap();
    let got = received(&sink, 2).await;
    for r in &got {
        verify(r);
    }
    assert_eq!(got[0].headers["x-switchboard-attempt"], "1");
    assert_eq!(got[1].headers["x-switchboard-attempt"], "2");
    assert_eq!(
        got[0].headers["x-switchboard-delivery"],
        got[1].headers["x-switchboard-delivery"]
    );
    let body: Value = serde_json::from_str(&got[1].body).unwrap();
    assert_eq!(body["rule"], "emergency", "{body}");
    assert_eq!(body["priority"], "urgent");
    assert_eq!(body["channel"], "intake:c1");
    assert_eq!(body["offset"], json!(offset));
    assert_eq!(body["author"], "client-9");
    assert_eq!(body["reasons"]["intent"]["intent"], "emergency");
    assert_eq!(body["language"], "es");

    // The on-call user is notified with the priority; the staff channel gets it.
    let n = oncall.next_push(&["notification"]).await;
    assert_eq!(n["notification"]["kind"], "escalation", "{n}");
    assert_eq!(n["notification"]["data"]["priority"], "urgent", "{n}");
    assert_eq!(
        n["notification"]["data"]["escalation"]["channel"],
        "intake:c1"
    );
    let p = staff.next_publication().await;
    assert_eq!(p["meta"]["ai"], "escalation", "{p}");
    assert_eq!(p["data"]["rule"], "emergency", "{p}");

    // Every attempt fails: dead-lettered after three, listed, audited.
    sink.answer(&[503, 503, 503]);
    client
        .call(json!({"cmd": "publish", "channel": "intake:c2", "data": {"text": "call 911, he is hurt"}}))
        .await;
    received(&sink, 5).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let dead = loop {
        let v = admin_get(admin, "/admin/ai/dead-letters").await;
        if let Some(d) = v["dead_letters"].as_array().and_then(|l| l.first()) {
            break d.clone();
        }
        assert!(Instant::now() < deadline, "never dead-lettered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(dead["attempts"], 3, "{dead}");
    assert_eq!(dead["state"], "dead");
    assert_eq!(dead["escalation"]["reasons"]["keywords"], json!(["hurt"]));
    assert_eq!(dead["error"], "answered 503");
    // A final answer (400) is not retried.
    sink.answer(&[400]);
    client
        .call(json!({"cmd": "publish", "channel": "intake:c3", "data": {"text": "911"}}))
        .await;
    received(&sink, 6).await;
    // Delivered again by hand.
    let id = dead["escalation"]["id"].as_str().unwrap();
    let path = format!("/admin/ai/dead-letters/{id}/retry");
    let (status, v) = admin_request(admin, ADMIN_SECRET, "POST", &path, "").await;
    assert_eq!(status, 200, "{v}");
    let got = received(&sink, 7).await;
    assert_eq!(got[6].status, 200);
    assert_eq!(got[6].headers["x-switchboard-delivery"], id);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = admin_get(admin, "/admin/ai/escalations").await;
        let states: Vec<&str> = v["escalations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["state"].as_str().unwrap())
            .collect();
        if states == ["delivered", "delivered", "dead"] {
            break;
        }
        assert!(Instant::now() < deadline, "{states:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dead = admin_get(admin, "/admin/ai/dead-letters").await;
    assert_eq!(dead["dead_letters"].as_array().unwrap().len(), 1, "{dead}");
    assert_eq!(dead["dead_letters"][0]["attempts"], 1, "a 400 is final");
    let (status, _) = admin_request(admin, ADMIN_SECRET, "POST", &path, "").await;
    assert_eq!(status, 404, "retried already");

    let audit = admin_get(admin, "/admin/audit").await.to_string();
    for action in [
        "ai.escalation",
        "ai.escalation.dead_letter",
        "ai.escalation.retry",
    ] {
        assert!(
            audit.contains(&format!("\"{action}\"")),
            "{action} in {audit}"
        );
    }
    assert_eq!(
        metric(admin, "switchboard_ai_escalations_total{outcome=\"fired\"}").await,
        3
    );
    server.shutdown();
    server.wait();
}

#[test]
fn a_webhook_without_its_secret_is_a_config_error_naming_the_key() {
    let text = r#"
        [namespaces.intake]
        [ai.pipelines.intake]
        [[ai.escalations]]
        name = "emergency"
        intents = ["emergency"]
        webhook_url = "http://127.0.0.1:9/hook"
        webhook_secret_env = "SB_TEST_NEVER_SET_SECRET"
    "#;
    let cfg: Config = toml::from_str(text).unwrap();
    let err = cfg.validate().unwrap_err().to_string();
    assert!(
        err.contains("ai.escalations[0].webhook_secret_env"),
        "{err}"
    );
}
