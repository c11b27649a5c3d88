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
