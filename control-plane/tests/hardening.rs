//! Issue 16's regressions, each reproduced against the real server over real sockets:
//! payloads that would poison later reads are refused at the edge (and the good
//! messages around them stay readable in both formats).

mod common;

use common::*;
use fastwebsockets::{Frame, Payload};
use serde_json::{json, Value};

/// Send raw envelope bytes (deep payloads are built as text: a 30,000-deep
/// `serde_json::Value` would overflow the test's own stack when serialised).
async fn send_raw(c: &mut Client, bytes: Vec<u8>) {
    let frame = match c.fmt {
        Fmt::Json => Frame::text(Payload::Owned(bytes)),
        Fmt::MsgPack => Frame::binary(Payload::Owned(bytes)),
    };
    c.ws.write_frame(frame).await.expect("write");
}

async fn reply_to(c: &mut Client, id: u64) -> Value {
    loop {
        match c.next_event().await {
            Event::Msg(m) if m.get("id") == Some(&json!(id)) => return m,
            Event::Msg(_) => continue,
            e => panic!("expected the reply to {id}, got {e:?}"),
        }
    }
}

/// Issue 16, item 2: a 30,000-deep JSON array, a 60,000-deep MessagePack array and a
/// MessagePack extension value are refused with 104 naming the fault; history,
/// recovery and inbox backlogs then serve the good messages to readers of either format.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_that_would_poison_reads_are_refused() {
    let server = start(|_| {});
    let addr = server.ws_addr();
    let tok = token_with("poisoner", |c| {
        c.send_to = Some(vec!["*".into()]);
    });
    let mut json_client = Client::connect(addr, Fmt::Json, &tok).await;
    let mut mp_client = Client::connect(addr, Fmt::MsgPack, &tok).await;

    let r = json_client
        .call(json!({"cmd": "publish", "channel": "room:p", "data": "before"}))
        .await;
    assert!(r.get("result").is_some(), "{r}");

    let deep = "[".repeat(30_000) + &"]".repeat(30_000);
    let cmd = format!(r#"{{"id":7,"cmd":"publish","channel":"room:p","data":{deep}}}"#);
    send_raw(&mut json_client, cmd.into_bytes()).await;
    let r = reply_to(&mut json_client, 7).await;
    assert_eq!(r["error"]["code"], json!(104), "{r}");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("deeper"),
        "{r}"
    );
    let cmd = format!(r#"{{"id":8,"cmd":"send","user":"bob","data":{deep}}}"#);
    send_raw(&mut json_client, cmd.into_bytes()).await;
    assert_eq!(
        reply_to(&mut json_client, 8).await["error"]["code"],
        json!(104)
    );

    // {"id": 9, "cmd": "publish", "channel": "room:p", "data": <60,000 nested arrays>}
    let mut cmd =
        rmp_serde::to_vec_named(&json!({"id": 9, "cmd": "publish", "channel": "room:p"})).unwrap();
    cmd[0] = 0x84;
    cmd.extend_from_slice(b"\xa4data");
    cmd.extend(std::iter::repeat_n(0x91u8, 59_999));
    cmd.push(0x90);
    send_raw(&mut mp_client, cmd).await;
    assert_eq!(
        reply_to(&mut mp_client, 9).await["error"]["code"],
        json!(104)
    );
    // The same with a fixext1 as the data.
    let mut cmd =
        rmp_serde::to_vec_named(&json!({"id": 10, "cmd": "publish", "channel": "room:p"})).unwrap();
    cmd[0] = 0x84;
    cmd.extend_from_slice(b"\xa4data\xd4\x05\x00");
    send_raw(&mut mp_client, cmd).await;
    let r = reply_to(&mut mp_client, 10).await;
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("extension"),
        "{r}"
    );

    let r = mp_client
        .call(json!({"cmd": "publish", "channel": "room:p", "data": "after"}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    for c in [&mut json_client, &mut mp_client] {
        let h = c.call(json!({"cmd": "history", "channel": "room:p"})).await;
        let data: Vec<&Value> = h["result"]["publications"]
            .as_array()
            .unwrap_or_else(|| panic!("{h}"))
            .iter()
            .map(|p| &p["data"])
            .collect();
        assert_eq!(data, [&json!("before"), &json!("after")], "{h}");
    }

    // The server API refuses the same, with a JSON error naming it.
    let body = format!(
        r#"{{"channel":"room:p","data":{}}}"#,
        "[".repeat(100_000) + &"]".repeat(100_000)
    );
    let auth = format!("Bearer {API_KEY}");
    for path in ["/api/publish", "/api/send"] {
        let body = if path == "/api/send" {
            body.replace(r#""channel":"room:p""#, r#""user":"bob""#)
        } else {
            body.clone()
        };
        let (status, text) = http(
            server.admin_addr(),
            "POST",
            path,
            &[("Authorization", &auth)],
            &body,
        )
        .await;
        assert_eq!(status, 400, "{path}: {text}");
        assert!(
            text.contains("invalid_payload") || text.contains("deeper"),
            "{path}: {text}"
        );
    }
}

/// Issue 16, item 1: one client publishing 60 KB payloads to ever-new channels keeps
/// the retained history within `engine.history_memory_bytes` (oldest evicted first,
/// counted), and the newest channel still serves its history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_memory_is_bounded_across_channels() {
    const BUDGET: u64 = 2 << 20;
    let server = start(|c| c.engine.history_memory_bytes = BUDGET as usize);
    let mut c = Client::connect(server.ws_addr(), Fmt::MsgPack, &token("flooder", None)).await;
    let payload = "x".repeat(60_000);
    for i in 0..120 {
        let r = c
            .call(json!({"cmd": "publish", "channel": format!("room:h{i}"), "data": payload}))
            .await;
        assert!(r.get("result").is_some(), "{i}: {}", r["error"]);
    }
    // The gauges are set on each shard's tick.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let admin = server.admin_addr();
    let kept = metric(admin, "switchboard_history_bytes").await;
    assert!(kept <= BUDGET, "{kept} bytes kept, budget {BUDGET}");
    assert!(kept > BUDGET / 2, "{kept} bytes kept");
    let evicted = metric(admin, "switchboard_history_evicted_total").await;
    assert!(evicted >= 120 - 2 * (BUDGET / 60_000), "{evicted} evicted");
    let h = c
        .call(json!({"cmd": "history", "channel": "room:h119"}))
        .await;
    assert_eq!(h["result"]["publications"][0]["data"], json!(payload));
}

/// Issue 16, item 1: the defaults carry rate limits — one user's publish flood is
/// refused with 114 and retry_after_ms after the burst, not accepted without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_rate_limits_refuse_a_flood() {
    // Not closed after 20 refusals in a row (4008): this test counts them all.
    let server = start(|c| c.engine.rate_limit_disconnect_after = 0);
    let defaults = switchboard_engine::EngineConfig::default();
    assert!(!defaults.rate_limits.is_empty());
    assert!(defaults.max_connections_per_ip > 0 && defaults.max_connection_rate_per_ip > 0);
    let tok = token_with("sender", |c| c.send_to = Some(vec!["*".into()]));
    let mut c = Client::connect(server.ws_addr(), Fmt::Json, &tok).await;
    // 100 sends per second per user by default: of 150 pipelined sends, the ones past
    // the burst (and what refilled meanwhile) are refused.
    let started = std::time::Instant::now();
    for i in 0..150u64 {
        c.send(&json!({"id": 1000 + i, "cmd": "send", "user": format!("u{i}"), "data": i}))
            .await;
    }
    // Refusals come at once, acknowledgements once stored (inboxes are "sync"): in
    // any order.
    let mut accepted = 0u64;
    let mut refusal = None;
    let mut answered = 0;
    while answered < 150 {
        let Event::Msg(r) = c.next_event().await else {
            panic!("closed after {answered} answers")
        };
        if r.get("id").is_none() {
            continue;
        }
        answered += 1;
        match r.get("error") {
            None => accepted += 1,
            Some(e) => refusal = Some(e.clone()),
        }
    }
    let refill = started.elapsed().as_millis() as u64 / 10 + 2;
    assert!(
        (100..=100 + refill).contains(&accepted),
        "{accepted} accepted"
    );
    let e = refusal.expect("a flood of sends is refused");
    assert_eq!(e["code"], json!(114), "{e}");
    assert!(e["retry_after_ms"].as_u64().is_some(), "{e}");
}
