//! The model client against a local server speaking the OpenAI chat-completions wire
//! format: whole and streamed answers (with the key, the model and a JSON request),
//! 429 with `Retry-After`, 500, an answer slower than the timeout, and an endpoint that
//! is not there — each a distinct error the pipelines can act on.

mod common;

use std::time::{Duration, Instant};

use common::fake_openai::{FakeOpenAi, Reply};
use serde_json::json;
use switchboard_control_plane::ai::chat_wire::{ChatMessage, ModelError};
use switchboard_control_plane::ai::model::{CallError, CallOptions, ModelClient, ModelEndpoint};

fn client(base_url: String, timeout: Duration) -> ModelClient {
    ModelClient::new(
        ModelEndpoint {
            base_url,
            model: "fake-model".into(),
            api_key: Some("sk-test-123".into()),
        },
        timeout,
    )
}

fn ask(text: &str) -> Vec<ChatMessage> {
    vec![
        ChatMessage {
            role: "system".into(),
            content: "Classify the intent.".into(),
        },
        ChatMessage {
            role: "user".into(),
            content: text.into(),
        },
    ]
}

#[test]
fn whole_and_streamed_answers_arrive() {
    let fake = FakeOpenAi::start();
    let c = client(fake.base_url(), Duration::from_secs(5));
    fake.push(Reply::Json(
        r#"{"intent":"immigration","confidence":0.9}"#.into(),
    ));
    let options = CallOptions {
        json: true,
        max_tokens: Some(50),
        ..Default::default()
    };
    let answer = c
        .complete(&ask("necesito una visa"), options, None)
        .unwrap();
    assert_eq!(
        answer.content,
        r#"{"intent":"immigration","confidence":0.9}"#
    );
    assert_eq!((answer.tokens_in, answer.tokens_out), (Some(11), Some(3)));
    let seen = fake.seen();
    assert_eq!(seen[0].path, "/v1/chat/completions");
    assert_eq!(seen[0].auth.as_deref(), Some("Bearer sk-test-123"));
    assert_eq!(seen[0].body["model"], "fake-model");
    assert_eq!(
        seen[0].body["response_format"],
        json!({"type": "json_object"})
    );
    assert_eq!(seen[0].body["messages"][1]["content"], "necesito una visa");
    assert_eq!(seen[0].body["stream"], false);

    let pieces = ["Hello", ", how", " can I", " help?"]
        .map(String::from)
        .to_vec();
    fake.push(Reply::Stream(pieces.clone(), Duration::from_millis(20)));
    let mut deltas = Vec::new();
    let answer = c
        .complete(
            &ask("hi"),
            CallOptions::default(),
            Some(&mut |d: &str| deltas.push(d.to_string())),
        )
        .unwrap();
    assert_eq!(deltas, pieces, "piece by piece, in order");
    assert_eq!(answer.content, "Hello, how can I help?");
    assert_eq!(answer.tokens_out, Some(4));
    assert_eq!(fake.seen()[1].body["stream"], true);
    assert_eq!(
        fake.seen()[1].body["stream_options"],
        json!({"include_usage": true})
    );
}

#[test]
fn errors_say_what_went_wrong() {
    let fake = FakeOpenAi::start();
    let c = client(fake.base_url(), Duration::from_millis(400));
    fake.push(Reply::Status(429, Some(3)));
    let e = c
        .complete(&ask("x"), CallOptions::default(), None)
        .unwrap_err();
    assert_eq!(e, CallError::Model(ModelError::RateLimited(Some(3))));
    assert_eq!(e.kind(), "rate_limited");
    fake.push(Reply::Status(500, None));
    let e = c
        .complete(&ask("x"), CallOptions::default(), None)
        .unwrap_err();
    assert_eq!(
        e,
        CallError::Model(ModelError::Server {
            status: 500,
            message: "fake error 500".into()
        })
    );
    fake.push(Reply::Status(401, None));
    assert_eq!(
        c.complete(&ask("x"), CallOptions::default(), None)
            .unwrap_err()
            .kind(),
        "refused"
    );
    fake.push(Reply::Slow(Duration::from_secs(2)));
    let started = Instant::now();
    let e = c
        .complete(&ask("x"), CallOptions::default(), None)
        .unwrap_err();
    assert_eq!(e, CallError::Timeout);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    // A stream slower than the timeout is cut too.
    fake.push(Reply::Stream(
        vec!["a".into(), "b".into(), "c".into()],
        Duration::from_millis(300),
    ));
    let e = c
        .complete(&ask("x"), CallOptions::default(), Some(&mut |_: &str| {}))
        .unwrap_err();
    assert_eq!(e, CallError::Timeout);

    let gone = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let e = client(format!("http://{gone}/v1"), Duration::from_secs(2))
        .complete(&ask("x"), CallOptions::default(), None)
        .unwrap_err();
    assert_eq!(e.kind(), "unreachable", "{e}");
}
