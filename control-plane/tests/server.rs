//! The real server, on port 0 with two shards, driven over real sockets.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_with_valid_expired_and_forged_tokens() {
    let server = start(|_| {});
    let addr = server.ws_addr();

    let mut c = Client::open(addr, Fmt::MsgPack).await;
    let r = c
        .call(json!({"cmd": "subscribe", "channel": "room:1"}))
        .await;
    assert_eq!(
        r["error"]["code"], 102,
        "commands before connect are refused: {r}"
    );
    let r = c
        .call(json!({"cmd": "connect", "token": token("alice", Some(&["room:*"]))}))
        .await;
    assert_eq!(r["result"]["user"], "alice", "{r}");
    assert!(r["result"]["expires_at"].as_u64().is_some());
    let r = c
        .call(json!({"cmd": "connect", "token": token("alice", None)}))
        .await;
    assert_eq!(r["error"]["code"], 105, "{r}");
    let r = c
        .call(json!({"cmd": "subscribe", "channel": "admin:1"}))
        .await;
    assert_eq!(r["error"]["code"], 103, "channels claim is enforced: {r}");
    let r = c.call(json!({"cmd": "frobnicate"})).await;
    assert_eq!(r["error"]["code"], 104, "{r}");
    let r = c.call(json!({"cmd": "ping"})).await;
    assert_eq!(r["result"], json!({}));

    // Expired: error 109, then close 4001.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "bob", "exp": now - 3600}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let mut c = Client::open(addr, Fmt::Json).await;
    let r = c.call(json!({"cmd": "connect", "token": expired})).await;
    assert_eq!(r["error"]["code"], 109, "{r}");
    let (push, code, _) = c.expect_close().await;
    assert_eq!(code, 4001);
    assert_eq!(push.unwrap()["reconnect"], false);

    // Forged: signed with another secret.
    let forged = switchboard_control_plane::auth::mint(
        "some-other-secret-0123456789",
        "mallory",
        None,
        Duration::from_secs(60),
        &Default::default(),
    );
    let mut c = Client::open(addr, Fmt::MsgPack).await;
    let r = c.call(json!({"cmd": "connect", "token": forged})).await;
    assert_eq!(r["error"]["code"], 101, "{r}");
    assert_eq!(r["error"]["message"], "invalid token signature");
    assert_eq!(c.expect_close().await.1, 4001);

    // Garbage token.
    let mut c = Client::open(addr, Fmt::Json).await;
    let r = c.call(json!({"cmd": "connect", "token": "garbage"})).await;
    assert_eq!(r["error"]["code"], 101, "{r}");

    // Authorization: Bearer on the upgrade, connect without a token.
    let (stream, head) = upgrade(
        addr,
        Some("switchboard.v1.json"),
        &format!("Authorization: Bearer {}\r\n", token("carol", None)),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"));
    let mut c = Client::from_upgraded(stream, Fmt::Json);
    let r = c.call(json!({"cmd": "connect"})).await;
    assert_eq!(r["result"]["user"], "carol", "{r}");

    server.shutdown();
    server.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publication_reaches_subscribers_on_both_shards_in_both_formats() {
    let server = start(|_| {});
    let addr = server.ws_addr();
    let tok = token("u", Some(&["room:*"]));
    let mut sub0 = client_on_shard(addr, Fmt::MsgPack, &tok, 0).await;
    let mut sub1 = client_on_shard(addr, Fmt::Json, &tok, 1).await;
    let mut publisher = client_on_shard(addr, Fmt::Json, &tok, 1).await;
    for s in [&mut sub0, &mut sub1] {
        let r = s
            .call(json!({"cmd": "subscribe", "channel": "room:42"}))
            .await;
        // The subscription starts after the channel's current position (nothing
        // published yet: offset 0 of the epoch its publications will carry).
        assert_eq!(r["result"]["offset"], json!(0), "{r}");
        assert_eq!(r["result"]["epoch"].as_str().map(str::len), Some(16), "{r}");
    }
    let r = sub0
        .call(json!({"cmd": "subscribe", "channel": "room:42"}))
        .await;
    assert_eq!(r["error"]["code"], 106);

    let mut epoch = None;
    for i in 0..50 {
        let r = publisher
            .call(json!({"cmd": "publish", "channel": "room:42", "data": {"seq": i, "text": "hé"}}))
            .await;
        // The reply carries the publication's position: offsets rise by one.
        assert_eq!(r["result"]["offset"], json!(i + 1), "{r}");
        let e = r["result"]["epoch"].as_str().unwrap().to_string();
        assert_eq!(e.len(), 16);
        assert_eq!(epoch.get_or_insert(e.clone()), &e, "one epoch");
    }
    for s in [&mut sub0, &mut sub1] {
        for i in 0..50 {
            let p = s.next_publication().await;
            assert_eq!(
                p,
                json!({"push": "publication", "channel": "room:42", "epoch": epoch.as_deref().unwrap(),
                    "offset": i + 1, "data": {"seq": i, "text": "hé"}})
            );
        }
    }
    // After unsubscribing, shard 0 no longer receives; shard 1 still does.
    let r = sub0
        .call(json!({"cmd": "unsubscribe", "channel": "room:42"}))
        .await;
    assert_eq!(r["result"], json!({}));
    let r = sub0
        .call(json!({"cmd": "unsubscribe", "channel": "room:42"}))
        .await;
    assert_eq!(r["error"]["code"], 107);
    publisher
        .call(json!({"cmd": "publish", "channel": "room:42", "data": "after"}))
        .await;
    assert_eq!(sub1.next_publication().await["data"], "after");
    let r = sub0.call(json!({"cmd": "ping"})).await;
    assert!(
        sub0.backlog.is_empty(),
        "no publication after unsubscribe: {:?} {r}",
        sub0.backlog
    );
    assert!(metric(server.admin_addr(), "switchboard_deliveries_total").await >= 101);
    assert!(
        metric(
            server.admin_addr(),
            "switchboard_publish_to_flush_seconds_count"
        )
        .await
            >= 51,
        "every publication delivered on a shard is timed to its flush"
    );

    server.shutdown();
    server.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_publish_api() {
    let server = start(|_| {});
    let admin = server.admin_addr();
    let mut sub = Client::connect(server.ws_addr(), Fmt::MsgPack, &token("u", None)).await;
    sub.call(json!({"cmd": "subscribe", "channel": "news"}))
        .await;

    let auth = format!("Bearer {API_KEY}");
    let (status, body) = http(
        admin,
        "POST",
        "/api/publish",
        &[("Authorization", &auth)],
        r#"{"channel":"news","data":{"headline":"hi"}}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let reply: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (&reply["ok"], &reply["offset"]),
        (&json!(true), &json!(1)),
        "{body}"
    );
    assert_eq!(
        sub.next_publication().await,
        json!({"push": "publication", "channel": "news", "epoch": reply["epoch"], "offset": 1,
            "data": {"headline": "hi"}})
    );

    let (status, body) = http(
        admin,
        "POST",
        "/api/publish",
        &[],
        r#"{"channel":"news","data":1}"#,
    )
    .await;
    assert_eq!(status, 401, "{body}");
    let (status, _) = http(
        admin,
        "POST",
        "/api/publish",
        &[("X-Api-Key", "wrong-key-wrong-key")],
        r#"{"channel":"news","data":1}"#,
    )
    .await;
    assert_eq!(status, 401);
    let (status, body) = http(
        admin,
        "POST",
        "/api/publish",
        &[("Authorization", &auth)],
        "{not json",
    )
    .await;
    assert_eq!(status, 400);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "bad_request");
    let (status, _) = http(
        admin,
        "POST",
        "/api/publish",
        &[("Authorization", &auth)],
        r#"{"channel":"has space","data":1}"#,
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = http(admin, "GET", "/nope", &[], "").await;
    assert_eq!(status, 404);

    let (status, body) = http(admin, "GET", "/health/live", &[], "").await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"live"}"#));
    let (status, body) = http(admin, "GET", "/health/ready", &[], "").await;
    assert_eq!(status, 200, "{body}");
    let backend = format!(r#""backend":"{}""#, backend_under_test());
    assert!(body.contains(&backend), "{body}");
    assert_eq!(metric(admin, "switchboard_api_publications_total").await, 1);

    server.shutdown();
    server.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_closed_and_live_one_is_not() {
    let server = start(|c| {
        c.engine.ping_interval_ms = 300;
        // Wide enough that a loaded machine cannot make the live client miss it.
        c.engine.pong_timeout_ms = 700;
        // The silent client reads its close only after the test's sleep.
        c.engine.close_timeout_ms = 5_000;
    });
    let tok = token("u", None);
    let mut silent = Client::connect(server.ws_addr(), Fmt::Json, &tok).await;
    let mut live = Client::connect(server.ws_addr(), Fmt::Json, &tok).await;
    // The live client keeps reading (fastwebsockets answers pings); the silent one does not.
    let live_task = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(1_500);
        while tokio::time::Instant::now() < deadline {
            let _ = tokio::time::timeout(Duration::from_millis(50), live.ws.read_frame()).await;
        }
        live
    });
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (push, code, reason) = silent.expect_close().await;
    assert_eq!((code, reason.as_str()), (4004, "heartbeat timeout"));
    assert_eq!(push.unwrap()["reconnect"], true);
    let mut live = live_task.await.unwrap();
    let r = live.call(json!({"cmd": "ping"})).await;
    assert_eq!(
        r["result"],
        json!({}),
        "the client that answered pings is still open"
    );
    assert_eq!(
        metric(
            server.admin_addr(),
            "switchboard_closes_total{reason=\"heartbeat_timeout\"}"
        )
        .await,
        1
    );
    drop((live, silent));
    server.shutdown();
    server.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_timeout_closes_with_4002() {
    let server = start(|c| c.engine.auth_timeout_ms = 200);
    let mut c = Client::open(server.ws_addr(), Fmt::MsgPack).await;
    let (push, code, _) = c.expect_close().await;
    assert_eq!(code, 4002);
    assert_eq!(push.unwrap()["code"], 4002);
    server.shutdown();
    server.wait();
}

async fn raw_connected(server: &switchboard_control_plane::Server) -> tokio::net::TcpStream {
    let (mut s, head) = upgrade(server.ws_addr(), Some("switchboard.v1.json"), "").await;
    assert!(head.starts_with("HTTP/1.1 101"));
    let connect = json!({"id": 1, "cmd": "connect", "token": token("raw", None)}).to_string();
    s.write_all(&raw_frame(true, 1, connect.as_bytes()))
        .await
        .unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_get_their_close_codes() {
    let server = start(|c| {
        c.engine.max_frame_bytes = 1024;
        c.engine.max_message_bytes = 4096;
    });
    // Unmasked client frame: 1002.
    let mut s = raw_connected(&server).await;
    s.write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap();
    assert_eq!(read_until_close(&mut s).await, 1002);
    // Invalid UTF-8 in a text message: 1007.
    let mut s = raw_connected(&server).await;
    s.write_all(&raw_frame(true, 1, b"{\"id\":2,\xff}"))
        .await
        .unwrap();
    assert_eq!(read_until_close(&mut s).await, 1007);
    // Invalid UTF-8 split across fragments: 1007.
    let mut s = raw_connected(&server).await;
    s.write_all(&raw_frame(false, 1, b"ok \xce")).await.unwrap();
    s.write_all(&raw_frame(true, 0, b"\xff")).await.unwrap();
    assert_eq!(read_until_close(&mut s).await, 1007);
    // A frame over max_frame_bytes: 1009.
    let mut s = raw_connected(&server).await;
    s.write_all(&raw_frame(true, 2, &[0u8; 2000]))
        .await
        .unwrap();
    assert_eq!(read_until_close(&mut s).await, 1009);
    // Fragments adding up past max_message_bytes: 1009.
    let mut s = raw_connected(&server).await;
    s.write_all(&raw_frame(false, 2, &[0u8; 1000]))
        .await
        .unwrap();
    for _ in 0..4 {
        s.write_all(&raw_frame(false, 0, &[0u8; 1000]))
            .await
            .unwrap();
    }
    assert_eq!(read_until_close(&mut s).await, 1009);
    // Not an envelope: 4000.
    let mut s = raw_connected(&server).await;
    s.write_all(&raw_frame(true, 1, b"[1,2,3]")).await.unwrap();
    assert_eq!(read_until_close(&mut s).await, 4000);
    // Continuation without a message: 1002.
    let mut s = raw_connected(&server).await;
    s.write_all(&raw_frame(true, 0, b"x")).await.unwrap();
    assert_eq!(read_until_close(&mut s).await, 1002);

    // Other connections are unaffected.
    let mut ok = Client::connect(server.ws_addr(), Fmt::MsgPack, &token("fine", None)).await;
    assert_eq!(ok.call(json!({"cmd": "ping"})).await["result"], json!({}));
    let m = server.admin_addr();
    assert_eq!(
        metric(m, "switchboard_closes_total{reason=\"invalid_utf8\"}").await,
        2
    );
    assert_eq!(
        metric(m, "switchboard_closes_total{reason=\"too_big\"}").await,
        2
    );
    server.shutdown();
    server.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_handshakes_get_http_errors() {
    let server = start(|c| c.engine.handshake_timeout_ms = 300);
    let addr = server.ws_addr();
    let (status, body) = http(addr, "GET", "/", &[], "").await;
    assert_eq!(status, 426, "{body}");
    let (_, head) = upgrade(addr, Some("chat"), "").await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let (_, head) = upgrade(addr, None, &format!("X-Big: {}\r\n", "a".repeat(9000))).await;
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nSec-WebSocket-Version: 8\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await.unwrap();
    assert!(read_head(&mut s).await.starts_with("HTTP/1.1 426"));
    // A request that trickles and never completes is dropped after the timeout.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(TIMEOUT, tokio::io::AsyncReadExt::read(&mut s, &mut buf))
        .await
        .expect("dropped in time");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert_eq!(
        metric(
            server.admin_addr(),
            "switchboard_closes_total{reason=\"handshake_timeout\"}"
        )
        .await,
        1
    );
    server.shutdown();
    server.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_refuses_with_503() {
    let server = start(|c| c.engine.max_connections = 2);
    let tok = token("u", None);
    let _a = Client::connect(server.ws_addr(), Fmt::Json, &tok).await;
    let _b = Client::connect(server.ws_addr(), Fmt::Json, &tok).await;
    let (_, head) = upgrade(server.ws_addr(), None, "").await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    server.shutdown();
    server.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_limit_refuses_with_429() {
    let server = start(|c| c.engine.max_connections_per_ip = 1);
    let _a = Client::connect(server.ws_addr(), Fmt::Json, &token("u", None)).await;
    let (_, head) = upgrade(server.ws_addr(), None, "").await;
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
    assert_eq!(
        metric(
            server.admin_addr(),
            "switchboard_closes_total{reason=\"limit_reached\"}"
        )
        .await,
        1
    );
    server.shutdown();
    server.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_disconnected_while_others_keep_receiving() {
    let server = start(|c| {
        // The slow client can absorb at most its 4 KiB receive buffer + the server's send
        // buffer (tcp_wmem max, 4 MiB here) + this queue: far less than the 12 MB sent.
        // The fast client gets the same queue plus its autotuned receive buffer, so a
        // loaded machine does not make it look slow.
        c.engine.max_outbound_bytes = 1024 * 1024;
        // Long enough for the slow client to drain its socket and read the close.
        c.engine.close_timeout_ms = 20_000;
    });
    let addr = server.ws_addr();
    let tok = token("u", None);

    // The slow consumer: a tiny receive buffer, and it never reads.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&addr.into()).unwrap();
    sock.set_nonblocking(true).unwrap();
    let mut stream = tokio::net::TcpStream::from_std(sock.into()).unwrap();
    let req = "GET / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    stream.write_all(req.as_bytes()).await.unwrap();
    assert!(read_head(&mut stream).await.starts_with("HTTP/1.1 101"));
    let mut slow = Client::from_upgraded(stream, Fmt::MsgPack);
    slow.call(json!({"cmd": "connect", "token": tok})).await;
    slow.call(json!({"cmd": "subscribe", "channel": "firehose"}))
        .await;

    let mut fast = Client::connect(addr, Fmt::MsgPack, &tok).await;
    fast.call(json!({"cmd": "subscribe", "channel": "firehose"}))
        .await;
    let mut publisher = Client::connect(addr, Fmt::MsgPack, &tok).await;

    let big = "x".repeat(30_000);
    let n = 400; // 12 MB: more than the slow socket's kernel buffers plus its queue.
    let reader = tokio::spawn(async move {
        for i in 0..n {
            let p = fast.next_publication().await;
            assert_eq!(p["data"]["seq"], i);
        }
        fast
    });
    for i in 0..n {
        let r = publisher
            .call(json!({"cmd": "publish", "channel": "firehose", "data": {"seq": i, "blob": big}}))
            .await;
        assert_eq!(r["result"]["offset"], json!(i + 1), "{r}");
    }
    let _fast = reader
        .await
        .expect("the fast subscriber received every publication");
    assert_eq!(
        metric(
            server.admin_addr(),
            "switchboard_slow_consumer_disconnects_total"
        )
        .await,
        1
    );
    // Now the slow one reads: whatever the kernel held, then the 4003 close.
    let (push, code, reason) = slow.expect_close().await;
    assert_eq!((code, reason.as_str()), (4003, "slow consumer"));
    assert_eq!(push.unwrap()["reconnect"], true);
    server.shutdown();
    server.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_sends_1001() {
    let server = start(|_| {});
    let tok = token("u", None);
    let mut a = Client::connect(server.ws_addr(), Fmt::MsgPack, &tok).await;
    let mut b = Client::connect(server.ws_addr(), Fmt::Json, &tok).await;
    let admin = server.admin_addr();
    server.shutdown();
    for c in [&mut a, &mut b] {
        let (push, code, reason) = c.expect_close().await;
        assert_eq!((code, reason.as_str()), (1001, "server shutting down"));
        assert_eq!(push.unwrap()["reconnect"], true);
    }
    let (status, _) = http(admin, "GET", "/health/ready", &[], "").await;
    assert_eq!(status, 503, "not ready while draining");
    let started = std::time::Instant::now();
    tokio::task::spawn_blocking(move || server.wait())
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "drained promptly once clients closed"
    );
}

/// Receive buffers far smaller than a frame, and too few for the connections sending at
/// once: under io_uring, frames span several provided buffers and receives run out of
/// buffers (ENOBUFS) and are re-armed; nothing may be lost or reordered. Under epoll the
/// same traffic is a plain pipelined burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_through_tiny_receive_buffers_lose_nothing() {
    const CLIENTS: usize = 12;
    const EACH: usize = 30;
    let server = start(|c| {
        c.engine.uring_buffers = 2;
        c.engine.uring_buffer_bytes = 512;
        c.engine.max_outbound_bytes = 16 << 20;
    });
    let addr = server.ws_addr();
    let tok = token("burst", None);
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let fmt = if i % 2 == 0 { Fmt::Json } else { Fmt::MsgPack };
        let mut c = Client::connect(addr, fmt, &tok).await;
        let r = c
            .call(json!({"cmd": "subscribe", "channel": "room:burst"}))
            .await;
        assert_eq!(r["result"]["offset"], json!(0), "{r}");
        clients.push(c);
    }
    let pad = "x".repeat(3000);
    let mut tasks = Vec::new();
    for (k, mut c) in clients.into_iter().enumerate() {
        let pad = pad.clone();
        tasks.push(tokio::spawn(async move {
            // Pipelined: every publish goes out before any reply is read.
            for i in 0..EACH {
                c.send(
                    &json!({"id": 1000 + i, "cmd": "publish", "channel": "room:burst",
                    "data": {"from": k, "seq": i, "pad": pad}}),
                )
                .await;
            }
            let mut next = [0usize; CLIENTS];
            let (mut pubs, mut replies) = (0, 0);
            while pubs < CLIENTS * EACH || replies < EACH {
                match c.next_event().await {
                    // Other pushes (the inbox backlog after connect) are not counted.
                    Event::Msg(m) if m.get("push").is_some_and(|p| p != "publication") => {}
                    Event::Msg(m) if m.get("push").is_some() => {
                        // One sequence for the channel, whoever published and from
                        // whichever shard: every subscriber sees offsets 1, 2, 3, …
                        assert_eq!(m["offset"], json!(pubs + 1), "consecutive offsets");
                        let from = m["data"]["from"].as_u64().unwrap() as usize;
                        assert_eq!(m["data"]["seq"], json!(next[from]), "in order from {from}");
                        assert_eq!(m["data"]["pad"].as_str().unwrap().len(), 3000);
                        next[from] += 1;
                        pubs += 1;
                    }
                    Event::Msg(m) => {
                        let offset = m["result"]["offset"].as_u64().unwrap_or(0);
                        assert!((1..=(CLIENTS * EACH) as u64).contains(&offset), "{m}");
                        replies += 1;
                    }
                    Event::Close(code, why) => panic!("closed {code} {why}"),
                }
            }
            assert!(next.iter().all(|&n| n == EACH));
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    if backend_under_test() == "io_uring" {
        let exhausted = metric(
            server.admin_addr(),
            "switchboard_uring_buffers_exhausted_total",
        )
        .await;
        assert!(
            exhausted > 0,
            "the buffer ring never ran dry: the test did not test re-arming"
        );
    }
    server.shutdown();
    server.wait();
}

/// `engine.uring_coalesce_us`: a shard sleeps until a batch of completions or the
/// coalescing time, so a lone request must still be answered once that time is up, and
/// publications crossing shards (ring messages count as completions) still arrive, in
/// order. Under epoll the key is ignored and the same traffic runs as always.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_wake_ups_still_answer_every_request() {
    let server = start(|c| c.engine.uring_coalesce_us = 2_000);
    let addr = server.ws_addr();
    let tok = token("coalesce", Some(&["room:*"]));
    let mut here = client_on_shard(addr, Fmt::Json, &tok, 0).await;
    let mut there = client_on_shard(addr, Fmt::Json, &tok, 1).await;
    let r = there
        .call(json!({"cmd": "subscribe", "channel": "room:coalesce"}))
        .await;
    assert_eq!(r["result"]["offset"], 0, "{r}");
    for i in 1..=20u64 {
        // One request at a time: nothing else is in flight to fill a batch.
        let r = here
            .call(json!({"cmd": "publish", "channel": "room:coalesce", "data": {"i": i}}))
            .await;
        assert_eq!(r["result"]["offset"], i, "{r}");
        let p = there.next_publication().await;
        assert_eq!(p["data"]["i"], i, "{p}");
    }
    server.shutdown();
    server.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_without_reply_answers_only_refusals() {
    let server = start(|_| {});
    let addr = server.ws_addr();
    let tok = token("u", Some(&["room:*"]));
    let mut publisher = client_on_shard(addr, Fmt::Json, &tok, 0).await;
    // One channel at home on the publisher's shard, one on the other shard (the
    // position would cross back from there): a channel's home is the shard that
    // uses it first.
    let channels = ["room:q-here".to_string(), "room:q-there".to_string()];
    let mut there = client_on_shard(addr, Fmt::Json, &tok, 1).await;
    let r = there
        .call(json!({"cmd": "subscribe", "channel": channels[1]}))
        .await;
    assert_eq!(r["result"]["offset"], 0, "{r}");
    for c in &channels {
        let r = publisher
            .call(json!({"cmd": "subscribe", "channel": c}))
            .await;
        assert_eq!(r["result"]["offset"], 0, "{r}");
    }
    for (i, c) in channels.iter().enumerate() {
        for n in 0..20 {
            let id = 1_000 + i * 100 + n;
            publisher
                .send(&json!({"id": id, "cmd": "publish", "channel": c, "data": n, "reply": false}))
                .await;
        }
    }
    // A publish that wants its position comes after all of them, on each channel.
    for c in &channels {
        let r = publisher
            .call(json!({"cmd": "publish", "channel": c, "data": "last"}))
            .await;
        assert_eq!(r["result"]["offset"], 21, "{r}");
    }
    let mut seen = std::collections::BTreeMap::<String, Vec<Value>>::new();
    while seen.values().map(Vec::len).sum::<usize>() < 42 {
        let p = publisher.next_publication().await;
        seen.entry(p["channel"].as_str().unwrap().into())
            .or_default()
            .push(p["data"].clone());
    }
    for c in &channels {
        let mut want: Vec<Value> = (0..20).map(|n| json!(n)).collect();
        want.push(json!("last"));
        assert_eq!(seen[c], want, "every quiet publication delivered, in order");
    }
    // No answer to any quiet publish reached the client.
    let r = publisher.call(json!({"cmd": "ping"})).await;
    assert!(r.get("result").is_some(), "{r}");
    assert!(
        publisher
            .backlog
            .iter()
            .all(|e| !matches!(e, Event::Msg(m) if m.get("id").is_some())),
        "no reply to a publish with reply: false: {:?}",
        publisher.backlog
    );
    // A refusal still comes back, with the command's id.
    publisher
        .send(&json!({"id": 7, "cmd": "publish", "channel": "other:1", "data": 1, "reply": false}))
        .await;
    let e = loop {
        match publisher.next_event().await {
            Event::Msg(m) if m.get("id") == Some(&json!(7)) => break m,
            Event::Msg(_) => continue,
            other => panic!("expected the refusal, got {other:?}"),
        }
    };
    assert_eq!(e["error"]["code"], 103, "{e}");
    let r = publisher
        .call(json!({"cmd": "publish", "channel": channels[0], "data": 1, "reply": "no"}))
        .await;
    assert_eq!(r["error"]["code"], 104, "{r}");
    // Quiet publications count as answered.
    let ok = metric(
        server.admin_addr(),
        "switchboard_command_results_total{command=\"publish\",result=\"ok\"}",
    )
    .await;
    assert_eq!(ok, 42);
    // Each channel's stream lives on the shard that used it first (the gauges are set
    // on each shard's tick).
    tokio::time::sleep(Duration::from_millis(300)).await;
    for shard in [0, 1] {
        let streams = metric(
            server.admin_addr(),
            &format!("switchboard_streams{{shard=\"{shard}\"}}"),
        )
        .await;
        assert_eq!(streams, 1, "shard {shard}");
    }
    server.shutdown();
    server.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_chose_no_format_is_understood_by_its_first_message() {
    let server = start(|_| {});
    let addr = server.ws_addr();
    let tok = token("ann", None);
    // No subprotocol, no ?format=json: a text frame means JSON…
    for (fmt, shape) in [(Fmt::Json, "text"), (Fmt::MsgPack, "binary")] {
        let (stream, head) = upgrade(addr, None, "").await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(!head.contains("Sec-WebSocket-Protocol"), "{head}");
        let mut c = Client::from_upgraded(stream, fmt);
        let r = c.call(json!({"cmd": "connect", "token": tok})).await;
        assert!(r["result"]["client"].is_string(), "{shape}: {r}");
        let r = c
            .call(json!({"cmd": "subscribe", "channel": "room:auto"}))
            .await;
        assert!(r.get("result").is_some(), "{shape}: {r}");
    }
    // …and a chosen format stays chosen: MessagePack asked for, JSON text sent.
    let mut c = Client::open(addr, Fmt::MsgPack).await;
    c.fmt = Fmt::Json;
    c.send(&json!({"cmd": "connect", "id": 1, "token": tok}))
        .await;
    let (_, code, reason) = c.expect_close().await;
    assert_eq!(code, 4000, "a command not in the chosen format");
    assert!(
        reason.contains("switchboard.v1.json") && reason.contains("?format=json"),
        "{reason}"
    );
    server.shutdown();
}
