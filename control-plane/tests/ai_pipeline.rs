//! AI pipelines on a running server, against a local server speaking the OpenAI
//! chat-completions wire format: annotations and a streamed bot reply reach the
//! channel; a slow model does not delay delivery (checked as ordering); the breaker
//! opens, falls back, half-opens and closes; a fail-closed namespace holds messages
//! while the model is down and releases them in order, and an operator can reject one.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::fake_openai::{FakeOpenAi, Reply};
use common::*;
use serde_json::{json, Value};
use switchboard_control_plane::ai::config::{
    IntentSource, ModelConfig, PipelineConfig, PromptFiles,
};
use switchboard_control_plane::ai::intent::IntentRule;
use switchboard_control_plane::config::{Config, NamespaceConfig};
use switchboard_control_plane::server::Server;
use switchboard_engine::ai_tap::AiMode;

const ADMIN_SECRET: &str = "integration-admin-secret-0123456789";

/// Prompt files in a directory of their own.
fn prompts() -> PromptFiles {
    let dir = temp_store().parent().unwrap().join("prompts");
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str| -> Option<PathBuf> {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        Some(p)
    };
    PromptFiles {
        intent: write(
            "intent.txt",
            "Classify the client's message as one of: {intents}. Answer JSON.",
        ),
        reply: write(
            "reply.txt",
            "You are {bot}, the intake assistant of channel {channel}. Answer in {language}.",
        ),
        translate: write(
            "translate.txt",
            "Translate from {language} into {target_language}.",
        ),
    }
}

/// A server whose `intake` namespace has the pipeline `pipeline` on the fake model.
fn server(fake: &FakeOpenAi, breaker_failures: u32, pipeline: PipelineConfig) -> Server {
    start(|c: &mut Config| {
        c.admin.jwt_secret = Some(ADMIN_SECRET.into());
        c.namespaces
            .insert("intake".into(), NamespaceConfig::default());
        c.ai.intents = vec![
            IntentRule {
                intent: "immigration".into(),
                keywords: vec!["visa".into()],
            },
            IntentRule {
                intent: "emergency".into(),
                keywords: vec!["emergencia".into(), "911".into()],
            },
        ];
        c.ai.models.insert(
            "fake".into(),
            ModelConfig {
                base_url: fake.base_url(),
                model: "fake-model".into(),
                timeout_ms: 3_000,
                breaker_failures,
                breaker_cooldown_ms: 400,
                ..Default::default()
            },
        );
        c.ai.pipelines.insert("intake".into(), pipeline);
    })
}

fn pipeline() -> PipelineConfig {
    PipelineConfig {
        model: "fake".into(),
        prompts: prompts(),
        concurrency: 1,
        stream_every_ms: 20,
        retry_held_ms: 100,
        ..Default::default()
    }
}

async fn admin_call(server: &Server, method: &str, path: &str) -> (u16, Value) {
    admin_request(server.admin_addr(), ADMIN_SECRET, method, path, "").await
}

async fn breaker_state(server: &Server) -> String {
    let (status, v) = admin_call(server, "GET", "/admin/breakers").await;
    assert_eq!(status, 200, "{v}");
    let b = v["breakers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "ai:fake")
        .cloned()
        .unwrap_or_else(|| panic!("no ai:fake breaker in {v}"));
    b["state"].as_str().unwrap().to_owned()
}

/// A subscriber of `channel` and a publisher (both JSON clients).
async fn pair(server: &Server, channel: &str) -> (Client, Client) {
    let addr = server.ws_addr();
    let mut reader = Client::connect(addr, Fmt::Json, &token("reader", None)).await;
    let r = reader
        .call(json!({"cmd": "subscribe", "channel": channel}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    let writer = Client::connect(addr, Fmt::MsgPack, &token("client-7", None)).await;
    (reader, writer)
}

fn is_annotation(p: &Value) -> bool {
    p["meta"]["ai"] == "annotation"
}

/// The next publication that is not an annotation or a bot reply.
async fn next_message(c: &mut Client) -> Value {
    loop {
        let p = c.next_publication().await;
        if p["meta"]["ai"].is_null() {
            return p;
        }
    }
}

async fn next_annotation(c: &mut Client) -> Value {
    loop {
        let p = c.next_publication().await;
        if is_annotation(&p) {
            return p;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotations_and_a_streamed_reply_arrive() {
    let fake = FakeOpenAi::start();
    let cfg = PipelineConfig {
        intent: IntentSource::Model,
        reply: true,
        translate_to: vec!["en".into()],
        redact: vec!["email".into()],
        ..pipeline()
    };
    let server = server(&fake, 5, cfg);
    let (mut reader, mut writer) = pair(&server, "intake:case-1").await;
    // First an earlier message, context for the reply (it gets its own processing).
    fake.push(Reply::Json(r#"{"intent":"other"}"#.into()));
    fake.push(Reply::Json("Good morning".into()));
    fake.push(Reply::Json("¡Buenos días!".into()));
    let r = writer
        .call(
            json!({"cmd": "publish", "channel": "intake:case-1", "data": {"text": "Buenos días"}}),
        )
        .await;
    let first = r["result"]["offset"].as_u64().unwrap();
    // The first message's bot reply is its last publication.
    loop {
        let p = reader.next_publication().await;
        if p["meta"]["ai"] == "reply" && p["meta"]["re"] == json!(first) {
            break;
        }
    }
    fake.push(Reply::Json(
        r#"{"intent":"immigration","confidence":0.92}"#.into(),
    ));
    fake.push(Reply::Json(
        "I need a visa for my wife, write to me at [email]".into(),
    ));
    let pieces = ["Claro", ", ", "le ", "ayudo ", "con ", "la ", "visa."];
    fake.push(Reply::Stream(
        pieces.iter().map(|s| s.to_string()).collect(),
        Duration::from_millis(40),
    ));
    let text = "Necesito una visa para mi esposa, escríbame a maria@example.com";
    let r = writer
        .call(json!({"cmd": "publish", "channel": "intake:case-1", "data": {"text": text}}))
        .await;
    let offset = r["result"]["offset"].as_u64().unwrap();
    let message = next_message(&mut reader).await;
    assert_eq!(message["offset"], json!(offset));

    let a = next_annotation(&mut reader).await;
    assert_eq!(a["meta"]["re"], json!(offset), "{a}");
    assert_eq!(a["from"], "assistant", "{a}");
    let d = &a["data"];
    assert_eq!(d["re"]["offset"], json!(offset), "{a}");
    assert_eq!(d["language"]["code"], "es", "{a}");
    assert_eq!(d["intent"]["intent"], "immigration", "{a}");
    assert_eq!(d["intent"]["source"], "model", "{a}");
    assert_eq!(d["entities"][0]["kind"], "email", "{a}");
    assert_eq!(d["entities"][0]["text"], "maria@example.com", "{a}");
    assert_eq!(d["translations"][0]["language"], "en", "{a}");

    // The reply streams as pushes updating one message, then is published.
    let mut partial = 0;
    let done = loop {
        let p = reader.next_push(&["ai_reply"]).await;
        assert_eq!(p["re"], json!(offset), "{p}");
        assert_eq!(p["channel"], "intake:case-1");
        if p["done"] == true {
            break p;
        }
        partial += 1;
    };
    let whole = pieces.concat();
    assert_eq!(done["text"], whole.as_str(), "{done}");
    assert!(partial >= 1, "the reply streamed before it was done");
    let reply = loop {
        let p = reader.next_publication().await;
        if p["meta"]["ai"] == "reply" {
            break p;
        }
    };
    assert_eq!(reply["data"]["text"], whole.as_str(), "{reply}");
    assert_eq!(reply["from"], "assistant");
    assert_eq!(reply["meta"]["re"], json!(offset));

    // What the model was sent: the redacted text, and the reply had the history.
    let seen = fake.seen();
    assert_eq!(seen.len(), 6, "3 calls per message");
    for s in &seen {
        assert!(
            !s.body.to_string().contains("maria@example.com"),
            "{}",
            s.body
        );
    }
    assert_eq!(seen[3].body["response_format"]["type"], "json_object");
    assert!(seen[3].body["messages"][0]["content"]
        .as_str()
        .unwrap()
        .contains("immigration, emergency"));
    assert!(seen[4].body["messages"][0]["content"]
        .as_str()
        .unwrap()
        .contains("into English"));
    let convo = seen[5].body["messages"].as_array().unwrap();
    assert_eq!(seen[5].body["stream"], true);
    assert!(convo[0]["content"]
        .as_str()
        .unwrap()
        .contains("intake:case-1"));
    let roles: Vec<&str> = convo.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"], "{convo:?}");
    assert!(convo[3]["content"].as_str().unwrap().contains("[email]"));

    let admin = server.admin_addr();
    let calls = metric(admin, "switchboard_ai_model_calls_total{model=\"fake\"}").await;
    assert_eq!(calls, 6);
    let tokens = "switchboard_ai_model_tokens_total{model=\"fake\",direction=\"in\"}";
    assert!(metric(admin, tokens).await > 0);
    let replied = "switchboard_ai_pipeline_total{namespace=\"intake\",outcome=\"replied\"}";
    assert_eq!(metric(admin, replied).await, 2);
    server.shutdown();
    server.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_model_does_not_delay_delivery() {
    let fake = FakeOpenAi::start();
    let cfg = PipelineConfig {
        intent: IntentSource::Model,
        ..pipeline()
    };
    let server = server(&fake, 5, cfg);
    let (mut reader, mut writer) = pair(&server, "intake:case-2").await;
    fake.push(Reply::Slow(Duration::from_millis(1_500)));
    let mut offsets = Vec::new();
    for text in ["first", "second", "third"] {
        let r = writer
            .call(json!({"cmd": "publish", "channel": "intake:case-2", "data": {"text": text}}))
            .await;
        offsets.push(r["result"]["offset"].as_u64().unwrap());
    }
    // Every message reaches the reader before the first (slow) annotation does.
    for &o in &offsets {
        let p = reader.next_publication().await;
        assert!(
            !is_annotation(&p),
            "an annotation came before message {o}: {p}"
        );
        assert_eq!(p["offset"], json!(o));
    }
    let a = next_annotation(&mut reader).await;
    assert_eq!(a["meta"]["re"], json!(offsets[0]));
    server.shutdown();
    server.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_falls_back_half_opens_and_closes() {
    let fake = FakeOpenAi::start();
    let cfg = PipelineConfig {
        intent: IntentSource::Model,
        ..pipeline()
    };
    let server = server(&fake, 2, cfg);
    let (mut reader, mut writer) = pair(&server, "intake:case-3").await;
    fake.push(Reply::Status(500, None));
    fake.push(Reply::Status(503, None));
    let mut publish = async |text: &str| {
        writer
            .call(json!({"cmd": "publish", "channel": "intake:case-3", "data": {"text": text}}))
            .await;
    };
    // Two failures: each falls back to the rules; the second opens the breaker.
    publish("I need a visa").await;
    let a = next_annotation(&mut reader).await;
    assert_eq!(a["data"]["intent"]["source"], "rules", "{a}");
    assert_eq!(a["data"]["intent"]["intent"], "immigration", "{a}");
    assert_eq!(a["data"]["fallback"], true, "{a}");
    publish("call 911").await;
    let a = next_annotation(&mut reader).await;
    assert_eq!(a["data"]["intent"]["intent"], "emergency", "{a}");
    assert_eq!(breaker_state(&server).await, "open");
    // Open: no call is made, the rules answer.
    publish("visa again").await;
    let a = next_annotation(&mut reader).await;
    assert_eq!(a["data"]["intent"]["source"], "rules", "{a}");
    assert_eq!(fake.seen().len(), 2, "no call while open");
    assert!(
        metric(
            server.admin_addr(),
            "switchboard_ai_model_errors_total{model=\"fake\",kind=\"breaker_open\"}"
        )
        .await
            >= 1
    );
    // After the cooldown one call probes; its success closes the breaker.
    let deadline = Instant::now() + Duration::from_secs(3);
    while breaker_state(&server).await != "half_open" {
        assert!(Instant::now() < deadline, "never half-open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fake.push(Reply::Json(
        r#"{"intent":"emergency","confidence":0.99}"#.into(),
    ));
    publish("ayuda por favor").await;
    let a = next_annotation(&mut reader).await;
    assert_eq!(a["data"]["intent"]["source"], "model", "{a}");
    assert_eq!(a["data"]["intent"]["intent"], "emergency", "{a}");
    assert_eq!(breaker_state(&server).await, "closed");
    assert_eq!(fake.seen().len(), 3);

    // An operator's reset closes an open breaker at once.
    fake.push(Reply::Status(500, None));
    fake.push(Reply::Status(500, None));
    publish("one").await;
    next_annotation(&mut reader).await;
    publish("two").await;
    next_annotation(&mut reader).await;
    assert_eq!(breaker_state(&server).await, "open");
    let (status, v) = admin_call(&server, "POST", "/admin/breakers/ai:fake/reset").await;
    assert_eq!((status, v["was"].as_str()), (200, Some("open")), "{v}");
    assert_eq!(breaker_state(&server).await, "closed");
    let (status, _) = admin_call(&server, "POST", "/admin/breakers/ai:nope/reset").await;
    assert_eq!(status, 404);
    server.shutdown();
    server.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_holds_then_releases_in_order() {
    let fake = FakeOpenAi::start();
    let cfg = PipelineConfig {
        mode: AiMode::Closed,
        intent: IntentSource::Model,
        ..pipeline()
    };
    let server = server(&fake, 1, cfg);
    let (mut reader, mut writer) = pair(&server, "intake:case-4").await;
    // Screened: delivered after the pipeline ran, then annotated.
    fake.push(Reply::Json(
        r#"{"intent":"immigration","confidence":0.8}"#.into(),
    ));
    let r = writer
        .call(json!({"cmd": "publish", "channel": "intake:case-4", "data": {"text": "visa"}}))
        .await;
    let first = r["result"]["offset"].as_u64().expect("acknowledged");
    assert_eq!(next_message(&mut reader).await["offset"], json!(first));
    assert_eq!(
        next_annotation(&mut reader).await["meta"]["re"],
        json!(first)
    );

    // The model fails: the message is held (not delivered, not acknowledged), and the
    // next one of the channel waits behind it.
    fake.push(Reply::Status(500, None));
    writer
        .send(&json!({"cmd": "publish", "id": 7001, "channel": "intake:case-4", "data": {"text": "held one"}}))
        .await;
    writer
        .send(&json!({"cmd": "publish", "id": 7002, "channel": "intake:case-4", "data": {"text": "held two"}}))
        .await;
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (_, v) = admin_call(&server, "GET", "/admin/ai/held").await;
        if v["held"].as_array().map_or(0, Vec::len) == 2 {
            assert_eq!(v["held"][0]["channel"], "intake:case-4", "{v}");
            assert_eq!(v["held"][0]["author"], "client-7", "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "never held: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // When the breaker half-opens, a retry probes, succeeds, and both are released in
    // order, acknowledged to the publisher, delivered to the reader.
    let one = next_message(&mut reader).await;
    let two = next_message(&mut reader).await;
    assert_eq!(one["data"]["text"], "held one");
    assert_eq!(two["data"]["text"], "held two");
    // (The first message's annotation took the offset after it.)
    let (one, two) = (
        one["offset"].as_u64().unwrap(),
        two["offset"].as_u64().unwrap(),
    );
    assert!(first + 1 < one && one < two, "{first} {one} {two}");
    let mut acked = Vec::new();
    while acked.len() < 2 {
        if let Event::Msg(m) = writer.next_event().await {
            if let Some(id) = m["id"].as_u64() {
                assert!(m.get("result").is_some(), "{m}");
                acked.push(id);
            }
        }
    }
    assert_eq!(acked, [7001, 7002]);

    // An operator rejects a held message: its publisher is refused.
    fake.push(Reply::Status(500, None));
    for _ in 0..50 {
        fake.push(Reply::Status(500, None));
    }
    writer
        .send(&json!({"cmd": "publish", "id": 7003, "channel": "intake:case-4", "data": {"text": "reject me"}}))
        .await;
    let id = loop {
        let (_, v) = admin_call(&server, "GET", "/admin/ai/held").await;
        if let Some(id) = v["held"][0]["id"].as_u64() {
            break id;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (status, v) = admin_call(&server, "DELETE", &format!("/admin/ai/held/{id}")).await;
    assert_eq!(status, 200, "{v}");
    let refused = loop {
        if let Event::Msg(m) = writer.next_event().await {
            if m["id"] == 7003 {
                break m;
            }
        }
    };
    assert_eq!(refused["error"]["code"], 103, "{refused}");
    let (status, _) = admin_call(&server, "DELETE", &format!("/admin/ai/held/{id}")).await;
    assert_eq!(status, 404);
    // Bad ids: a clear 400 or 404, nothing released.
    let (status, v) = admin_call(&server, "DELETE", "/admin/ai/held/abc").await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "invalid_request", "{v}");
    let (status, _) = admin_call(&server, "POST", "/admin/ai/held/999999/release").await;
    assert_eq!(status, 404);
    let (status, _) = admin_call(&server, "POST", "/admin/ai/held/-1/release").await;
    assert_eq!(status, 400);
    let (_, audit) = admin_call(&server, "GET", "/admin/audit").await;
    assert!(audit.to_string().contains("ai.held.reject"), "{audit}");
    server.shutdown();
    server.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_sharing_redis_annotate_what_they_published() {
    let redis = RedisServer::start();
    let tweak = |c: &mut Config| {
        c.namespaces
            .insert("intake".into(), NamespaceConfig::default());
        c.ai.intents = vec![IntentRule {
            intent: "emergency".into(),
            keywords: vec!["911".into()],
        }];
        c.ai.pipelines.insert(
            "intake".into(),
            PipelineConfig {
                concurrency: 1,
                ..Default::default()
            },
        );
    };
    let a = cluster_node(&redis, "a", tweak);
    let b = cluster_node(&redis, "b", tweak);
    let mut reader = Client::connect(b.ws_addr(), Fmt::Json, &token("reader", None)).await;
    reader
        .call(json!({"cmd": "subscribe", "channel": "intake:shared"}))
        .await;
    let mut writer = Client::connect(a.ws_addr(), Fmt::Json, &token("writer", None)).await;
    // The subscription reaches node a through Redis: publish until the reader hears.
    let deadline = Instant::now() + Duration::from_secs(5);
    let offset = loop {
        let r = writer
            .call(
                json!({"cmd": "publish", "channel": "intake:shared", "data": {"text": "call 911"}}),
            )
            .await;
        let offset = r["result"]["offset"].as_u64().expect("published");
        let got = tokio::time::timeout(Duration::from_millis(300), next_message(&mut reader)).await;
        if let Ok(p) = got {
            assert_eq!(p["data"]["text"], "call 911");
            break p["offset"].as_u64().unwrap().max(offset);
        }
        assert!(Instant::now() < deadline, "the reader never heard node a");
    };
    // Annotated once (by node a, which published it), seen on node b.
    let mut annotations = Vec::new();
    while let Ok(p) =
        tokio::time::timeout(Duration::from_millis(800), next_annotation(&mut reader)).await
    {
        annotations.push(p);
    }
    let of_it: Vec<&Value> = annotations
        .iter()
        .filter(|p| p["meta"]["re"] == json!(offset))
        .collect();
    assert_eq!(of_it.len(), 1, "{annotations:?}");
    assert_eq!(of_it[0]["data"]["intent"]["intent"], "emergency");
    b.shutdown();
    b.wait();
    a.shutdown();
    a.wait();
}
