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
    // Each shard keeps at most its share (BUDGET / 2 shards); every channel here is at
    // home on the publisher's shard (the shard that used it first), whose share fills.
    assert!(kept > BUDGET / 4, "{kept} bytes kept");
    let evicted = metric(admin, "switchboard_history_evicted_total").await;
    assert!(evicted >= 120 - 2 * (BUDGET / 60_000), "{evicted} evicted");
    let h = c
        .call(json!({"cmd": "history", "channel": "room:h119"}))
        .await;
    assert_eq!(h["result"]["publications"][0]["data"], json!(payload));
}

/// Issue 16, item 1: channel streams are bounded too (`engine.max_streams`): publishing
/// to ever-new channel names forgets the least recently used streams instead of growing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_streams_are_bounded() {
    let server = start(|c| c.engine.max_streams = 100);
    let mut c = Client::connect(server.ws_addr(), Fmt::Json, &token("namer", None)).await;
    for i in 0..400 {
        let r = c
            .call(json!({"cmd": "publish", "channel": format!("room:n{i}"), "data": i}))
            .await;
        assert!(r.get("result").is_some(), "{i}: {}", r["error"]);
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let admin = server.admin_addr();
    let streams = metric(admin, "switchboard_streams").await;
    assert!(streams <= 100, "{streams} streams kept");
    let evicted = metric(admin, "switchboard_streams_evicted_total").await;
    assert!(evicted >= 300, "{evicted} evicted");
    // The newest channel keeps its history.
    let h = c
        .call(json!({"cmd": "history", "channel": "room:n399"}))
        .await;
    assert_eq!(h["result"]["publications"][0]["data"], json!(399), "{h}");
    server.shutdown();
    server.wait();
}

/// Issue 16, item 1: one inbox holds at most `inbox.max_bytes`; a send beyond it is
/// refused with 110 (`/api/send`: 507 `channel_full` for that recipient) and what it holds stays, in order, for
/// its owner; other inboxes are not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_inbox_refuses_more_and_keeps_what_it_holds() {
    const LIMIT: usize = 2 << 20;
    let server = start(|c| c.inbox.max_bytes = LIMIT);
    let tok = token_with("flooder", |c| c.send_to = Some(vec!["*".into()]));
    let mut c = Client::connect(server.ws_addr(), Fmt::Json, &tok).await;
    let payload = "x".repeat(60_000);
    let mut taken = 0;
    let refused = loop {
        let r = c
            .call(json!({"cmd": "send", "user": "victim", "data": {"n": taken, "p": payload}}))
            .await;
        if r.get("result").is_none() {
            break r;
        }
        taken += 1;
        assert!(taken <= 40, "the inbox took {taken} messages of 60 KB");
    };
    assert_eq!(refused["error"]["code"], json!(110), "{refused}");
    assert!(taken >= 30, "only {taken} messages taken");
    // Over the server API too.
    let (status, body) = api(
        server.admin_addr(),
        "POST",
        "/api/send",
        &json!({"user": "victim", "data": {"p": payload}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let why = &body["results"][0]["error"];
    assert_eq!(why["status"], json!(507), "{body}");
    assert_eq!(why["code"], json!("channel_full"), "{body}");
    // Someone else's inbox takes messages.
    let r = c
        .call(json!({"cmd": "send", "user": "bystander", "data": "hi"}))
        .await;
    assert!(r["result"].is_object(), "{r}");
    // The owner's device gets everything that was taken.
    let victim = token_with("victim", |_| {});
    let mut v = Client::open(server.ws_addr(), Fmt::Json).await;
    let r = v
        .call(json!({"cmd": "connect", "token": victim, "device": "phone"}))
        .await;
    assert!(r["result"].is_object(), "{r}");
    let backlog = v.next_push(&["inbox"]).await;
    let got: Vec<u64> = backlog["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(
        got,
        (0..taken).collect::<Vec<_>>(),
        "{}",
        backlog["recovered"]
    );
    server.shutdown();
    server.wait();
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

/// Server frames read off a raw socket: (opcode, payload) in order.
struct RawReader {
    stream: tokio::net::tcp::OwnedReadHalf,
    buf: bytes::BytesMut,
}

impl RawReader {
    async fn next(&mut self) -> Option<(switchboard_protocol::OpCode, bytes::Bytes)> {
        use switchboard_protocol::frame::{self, Check};
        use tokio::io::AsyncReadExt;
        loop {
            if let Check::Complete(h) =
                frame::check(&self.buf, switchboard_protocol::Role::Client, usize::MAX).unwrap()
            {
                let f = frame::take(&mut self.buf, &h);
                return Some((f.opcode, f.payload));
            }
            let n = tokio::time::timeout(
                std::time::Duration::from_secs(30),
                self.stream.read_buf(&mut self.buf),
            )
            .await
            .expect("frames in time")
            .ok()?;
            if n == 0 {
                return None;
            }
        }
    }
}

/// Issue 16, item 5: a client pipelining 50,000 `ping`s while reading normally is
/// slowed (its input paused while its replies pile up), not closed: every ping is
/// answered, in order, and no close frame comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelining_client_is_slowed_not_closed() {
    use tokio::io::AsyncWriteExt;
    // A small queue, so pausing happens many times.
    let server = start(|c| c.engine.max_outbound_bytes = 16 * 1024);
    let c = Client::connect(server.ws_addr(), Fmt::Json, &token("piper", None)).await;
    let (rd, mut wr) = c.ws.into_inner().into_split();
    const PINGS: u64 = 50_000;
    let writer = tokio::spawn(async move {
        let mut buf = Vec::with_capacity(1 << 16);
        for i in 0..PINGS {
            buf.extend(raw_frame(
                true,
                1,
                format!(r#"{{"id":{i},"cmd":"ping"}}"#).as_bytes(),
            ));
            if buf.len() >= 60_000 {
                wr.write_all(&buf).await.unwrap();
                buf.clear();
            }
        }
        wr.write_all(&buf).await.unwrap();
        wr
    });
    let mut reader = RawReader {
        stream: rd,
        buf: bytes::BytesMut::new(),
    };
    let mut next_id = 0u64;
    while next_id < PINGS {
        let (op, payload) = reader.next().await.expect("the connection stays open");
        assert_ne!(
            op,
            switchboard_protocol::OpCode::Close,
            "closed after {next_id} replies: {payload:?}"
        );
        if op != switchboard_protocol::OpCode::Text {
            continue;
        }
        let v: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(v["id"], json!(next_id), "{v}");
        next_id += 1;
    }
    let _wr = writer.await.unwrap();
}

/// Issue 16, item 5: commands sent right behind `connect`, before its answer, wait for
/// it and run in order (they used to fail with 102 when the verdict was slower).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_behind_connect_wait_for_its_verdict() {
    use tokio::io::AsyncWriteExt;
    let server = start(|_| {});
    let tok = token("eager", None);
    for n in 0..40 {
        let (stream, head) = upgrade(server.ws_addr(), Some("switchboard.v1.json"), "").await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let (rd, mut wr) = stream.into_split();
        let mut burst = raw_frame(
            true,
            1,
            json!({"id": 1, "cmd": "connect", "token": tok})
                .to_string()
                .as_bytes(),
        );
        for (id, channel) in [(2, "room:a"), (3, "room:b")] {
            burst.extend(raw_frame(
                true,
                1,
                json!({"id": id, "cmd": "subscribe", "channel": channel})
                    .to_string()
                    .as_bytes(),
            ));
        }
        burst.extend(raw_frame(true, 1, br#"{"id":4,"cmd":"ping"}"#));
        wr.write_all(&burst).await.unwrap();
        let mut reader = RawReader {
            stream: rd,
            buf: bytes::BytesMut::new(),
        };
        let mut ids = Vec::new();
        while ids.len() < 4 {
            let (_, payload) = reader.next().await.expect("answers");
            let v: Value = serde_json::from_slice(&payload).unwrap();
            if let Some(id) = v.get("id") {
                assert!(v.get("result").is_some(), "connection {n}: {v}");
                ids.push(id.as_u64().unwrap());
            }
        }
        // Run in order; answered as each completes (a channel of another shard
        // answers later than `ping`).
        assert_eq!(ids[0], 1, "connect is answered first: {ids:?}");
        ids.sort_unstable();
        assert_eq!(ids, [1, 2, 3, 4], "connection {n}");
    }
}

/// Issue 16, item 6: a consumer reading slower than its channel publishes is closed
/// with 4003, and — reading on, even after a pause longer than the close timeout — it
/// receives the `disconnect` push and the close frame (its queued publications are
/// dropped so they go first; an unwritten close waits up to a heartbeat timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_sees_why_it_was_closed() {
    let server = start(|c| c.engine.rate_limits = vec![]);
    let addr = server.ws_addr();
    let mut slow = Client::connect(addr, Fmt::Json, &token("slow", None)).await;
    let r = slow
        .call(json!({"cmd": "subscribe", "channel": "room:flood"}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    let (rd, _wr) = slow.ws.into_inner().into_split();
    // The publisher reads its replies (else backpressure would pause it, see above).
    let publisher = Client::connect(addr, Fmt::Json, &token("pub", None)).await;
    let (mut pub_rd, mut pub_wr) = publisher.ws.into_inner().into_split();
    let drain = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut sink = vec![0u8; 1 << 16];
        while pub_rd.read(&mut sink).await.is_ok_and(|n| n > 0) {}
    });
    let flood = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let data = "y".repeat(8000);
        for i in 0..3_000 {
            let cmd = json!({"id": i, "cmd": "publish", "channel": "room:flood", "data": data});
            pub_wr
                .write_all(&raw_frame(true, 1, cmd.to_string().as_bytes()))
                .await
                .unwrap();
        }
        pub_wr
    });
    let mut reader = RawReader {
        stream: rd,
        buf: bytes::BytesMut::new(),
    };
    let mut disconnect = None;
    // A slow reader: it looks at its socket only well after the server gave up on it
    // (longer than the close timeout, 500 ms), then reads on.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let close = loop {
        let Some((op, payload)) = reader.next().await else {
            panic!("EOF without a close frame (disconnect push: {disconnect:?})");
        };
        match op {
            switchboard_protocol::OpCode::Close => {
                break u16::from_be_bytes([payload[0], payload[1]])
            }
            switchboard_protocol::OpCode::Text => {
                let v: Value = serde_json::from_slice(&payload).unwrap();
                if v["push"] == json!("disconnect") {
                    disconnect = Some(v);
                }
            }
            _ => {}
        }
    };
    assert_eq!(close, 4003);
    let d = disconnect.expect("the disconnect push before the close frame");
    assert_eq!(
        (d["code"].as_u64(), d["reason"].as_str()),
        (Some(4003), Some("slow consumer")),
        "{d}"
    );
    let _ = flood.await;
    drain.abort();
}

/// Issue 16, item 6: a consumer that stopped reading never sees its close; when it
/// comes back with its reconnect token (on either shard) it is told why the server
/// closed the previous connection: `{"push": "closed", "code": 4003, …}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_client_learns_why_it_was_closed() {
    let server = start(|c| c.engine.rate_limits = vec![]);
    let (addr, admin) = (server.ws_addr(), server.admin_addr());
    let mut stalled = Client::open(addr, Fmt::Json).await;
    let r = stalled
        .call(json!({"cmd": "connect", "token": token("stalled", None)}))
        .await;
    let resume_with = r["result"]["reconnect_token"].as_str().unwrap().to_string();
    let client = r["result"]["client"].clone();
    let r = stalled
        .call(json!({"cmd": "subscribe", "channel": "room:deluge"}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    // It stops reading; a publisher (which reads its replies) floods its channel.
    let publisher = Client::connect(addr, Fmt::Json, &token("pub", None)).await;
    let (mut pub_rd, mut pub_wr) = publisher.ws.into_inner().into_split();
    let drain = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut sink = vec![0u8; 1 << 16];
        while pub_rd.read(&mut sink).await.is_ok_and(|n| n > 0) {}
    });
    let data = "z".repeat(8000);
    let mut sent = 0;
    while metric(admin, "switchboard_slow_consumer_disconnects_total").await == 0 {
        use tokio::io::AsyncWriteExt;
        assert!(sent < 20_000, "never closed as a slow consumer");
        for _ in 0..100 {
            let cmd = json!({"id": sent, "cmd": "publish", "channel": "room:deluge", "data": data});
            pub_wr
                .write_all(&raw_frame(true, 1, cmd.to_string().as_bytes()))
                .await
                .unwrap();
            sent += 1;
        }
    }
    for shard in 0..2 {
        let mut back = loop {
            let mut c = Client::open(addr, Fmt::Json).await;
            let r = c
                .call(json!({"cmd": "connect", "reconnect": resume_with}))
                .await;
            assert!(r.get("result").is_some(), "{r}");
            if r["result"]["shard"] == json!(shard) {
                break c;
            }
        };
        let closed = back.next_push(&["closed"]).await;
        assert_eq!(
            (&closed["client"], &closed["code"], &closed["reason"]),
            (&client, &json!(4003), &json!("slow consumer")),
            "{closed}"
        );
    }
    drain.abort();
    drop(stalled);
}

/// Issue 16, item 4: under `ulimit -n 1024` with the default `max_connections`, the
/// server warns at start naming the key, caps connections below the file limit (a
/// reserve is kept for health, admin and the store), answers connections past the cap
/// with 503, keeps `/health/live` and `/health/ready` answering, and does not log a
/// line per refused accept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_files_is_a_503_and_health_still_answers() {
    use tokio::io::AsyncWriteExt;
    let secret = (
        "SWITCHBOARD_AUTH__HMAC_SECRET",
        "a-test-secret-of-enough-length-0123",
    );
    let (child, ws, admin) = spawn_binary_with_files(
        &[
            secret,
            ("SWITCHBOARD_ENGINE__MAX_CONNECTION_RATE_PER_IP", "0"),
        ],
        Some(1024),
    );
    // 1024 - 256 reserved = 768 connections; open more than that.
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..900 {
        let mut s = tokio::net::TcpStream::connect(ws).await.unwrap();
        s.write_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
              Sec-WebSocket-Protocol: switchboard.v1.json\r\n\r\n",
        )
        .await
        .unwrap();
        let head = read_head(&mut s).await;
        if head.starts_with("HTTP/1.1 101") {
            held.push(s);
        } else {
            assert!(head.starts_with("HTTP/1.1 503"), "{head}");
            refused += 1;
        }
    }
    assert_eq!(held.len(), 768, "{refused} refused");
    assert_eq!(refused, 900 - 768);
    for path in ["/health/live", "/health/ready"] {
        let (status, body) = http(admin, "GET", path, &[], "").await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    drop(held);
    let logs = stop_binary(child);
    assert!(
        logs.contains("engine.max_connections exceeds the open-file limit"),
        "{logs}"
    );
    assert!(
        logs.matches("accept failed").count() <= 2,
        "accept failures are throttled: {logs}"
    );
}

/// Issue 16, item 7: API keys and admin tokens cannot be guessed fast — after 10
/// refused attempts from one address, every `/api/*` and `/admin/*` request from it
/// gets 429 (the right key too, so trying teaches nothing) until a second has passed
/// per attempt; a request without credentials is not a guess.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_credentials_are_throttled() {
    let server = start(|c| c.admin.jwt_secret = Some("an-admin-secret-0123456789abcdef".into()));
    let admin = server.admin_addr();
    let body = r#"{"channel":"room:k","data":1}"#;
    for _ in 0..5 {
        let (st, _) = http(admin, "POST", "/api/publish", &[], body).await;
        assert_eq!(st, 401);
    }
    let mut statuses = Vec::new();
    for i in 0..15 {
        let key = format!("Bearer guess-{i:016}");
        let (st, text) = http(
            admin,
            "POST",
            "/api/publish",
            &[("Authorization", &key)],
            body,
        )
        .await;
        if st == 429 {
            assert!(text.contains("too_many_failures"), "{text}");
        }
        statuses.push(st);
    }
    assert_eq!(statuses[..10], [401; 10], "{statuses:?}");
    assert!(statuses[10..].iter().all(|&s| s == 429), "{statuses:?}");
    let right = format!("Bearer {API_KEY}");
    let (st, _) = http(
        admin,
        "POST",
        "/api/publish",
        &[("Authorization", &right)],
        body,
    )
    .await;
    assert_eq!(st, 429, "the right key is refused too while throttled");
    let (st, _) = http(
        admin,
        "GET",
        "/admin/rate-limits",
        &[("Authorization", "Bearer x.y.z")],
        "",
    )
    .await;
    assert_eq!(st, 429, "admin tokens share the address's budget");
    // One attempt back per second.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (st, _) = http(
        admin,
        "POST",
        "/api/publish",
        &[("Authorization", &right)],
        body,
    )
    .await;
    assert_eq!(st, 200);
    let (st, _) = http(admin, "GET", "/health/ready", &[], "").await;
    assert_eq!(st, 200, "health is never throttled");
}

/// Resident memory of the server process, bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap()
        * 1024
}

/// Issue 16, item 1: memory freed when history expires goes back to the system (the
/// report saw 2.5 GB stay after the history expired).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_of_expired_history_is_returned_to_the_system() {
    let (child, ws, admin) = spawn_binary(&[
        ("SWITCHBOARD_AUTH__HMAC_SECRET", SECRET),
        ("SWITCHBOARD_ENGINE__HISTORY_TTL_MS", "6000"),
        ("SWITCHBOARD_ENGINE__RATE_LIMITS", "[]"),
    ]);
    let pid = child.id();
    let before = rss(pid);
    let payload = "x".repeat(60_000);
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let payload = payload.clone();
            tokio::spawn(async move {
                let mut c = Client::connect(ws, Fmt::MsgPack, &token(&format!("w{w}"), None)).await;
                for i in 0..800 {
                    let channel = format!("room:w{w}-{i}");
                    let r = c
                        .call(json!({"cmd": "publish", "channel": channel, "data": payload}))
                        .await;
                    assert!(r.get("result").is_some(), "{}", r["error"]);
                }
                c
            })
        })
        .collect();
    let mut clients = Vec::new();
    for w in writers {
        clients.push(w.await.unwrap());
    }
    let peak = rss(pid);
    assert!(
        peak > before + (100 << 20),
        "{before} -> {peak}: the history was not held"
    );
    // The history expires (the last of it about 6 s after it was published) ...
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(45);
    while metric(admin, "switchboard_history_bytes").await > 0 {
        assert!(std::time::Instant::now() < deadline, "history still held");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(metric(admin, "switchboard_history_freed_bytes_total").await >= 3200 * 60_000);
    // ... and the memory goes back within a few seconds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let mut now = rss(pid);
    while now > before + (peak - before) / 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "resident memory stayed at {now} (before {before}, peak {peak})"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        now = rss(pid);
    }
    eprintln!("resident: {before} before, {peak} holding the history, {now} after it expired");
    drop(clients);
    stop_binary(child);
}
