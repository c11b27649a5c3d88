//! Bad input at the Socket.IO endpoint gets the documented error and harms nothing
//! else: oversized and malformed polling bodies, unknown sids, old protocol versions,
//! chunked bodies, a flood of polling handshakes from one address, malformed
//! Engine.IO and Socket.IO packets over WebSocket — with a healthy session beside
//! them that keeps working throughout.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::http;
use serde_json::Value;
use switchboard_engine::sio_config::SioNamespace;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn server() -> switchboard_control_plane::Server {
    common::start(|c| {
        c.engine.max_connections_per_ip = 40;
        c.socketio.max_payload_bytes = 1000;
        c.socketio.namespaces.insert(
            "/".into(),
            SioNamespace {
                anonymous: true,
                ..Default::default()
            },
        );
    })
}

/// Open a polling session; its sid.
async fn open(addr: SocketAddr) -> String {
    let (status, body) = http(addr, "GET", "/socket.io/?EIO=4&transport=polling", &[], "").await;
    assert_eq!(status, 200, "{body}");
    let open: Value = serde_json::from_str(&body[1..]).unwrap();
    open["sid"].as_str().unwrap().to_string()
}

fn poll_path(sid: &str) -> String {
    format!("/socket.io/?EIO=4&transport=polling&sid={sid}")
}

/// A healthy session: connects to `/` and gets its answer (proves nothing else broke).
async fn healthy(addr: SocketAddr) {
    let sid = open(addr).await;
    let (s, b) = http(addr, "POST", &poll_path(&sid), &[], "40").await;
    assert_eq!((s, b.as_str()), (200, "ok"));
    let (s, b) = http(addr, "GET", &poll_path(&sid), &[], "").await;
    assert_eq!(s, 200);
    assert!(b.starts_with("40{\"sid\":"), "{b}");
}

fn code(body: &str) -> u64 {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    v["code"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_polling_requests_get_clear_errors() {
    let server = server();
    let addr = server.ws_addr();
    healthy(addr).await;

    // Protocol versions other than 4 (Socket.IO 2.x clients send EIO=3).
    let (s, b) = http(addr, "GET", "/socket.io/?EIO=3&transport=polling", &[], "").await;
    assert_eq!((s, code(&b)), (400, 5), "{b}");
    // Unknown and malformed sids.
    let (s, b) = http(addr, "GET", &poll_path("AAEAAAABAAAAAmcGw5oyt5fA"), &[], "").await;
    assert_eq!((s, code(&b)), (400, 1), "{b}");
    let (s, b) = http(addr, "GET", &poll_path("nonsense"), &[], "").await;
    assert_eq!((s, code(&b)), (400, 1), "{b}");
    // A body larger than maxPayload: 413 before it is read.
    let sid = open(addr).await;
    let big = "4".repeat(2000);
    let (s, b) = http(addr, "POST", &poll_path(&sid), &[], &big).await;
    assert_eq!(s, 413, "{b}");
    // A malformed body ends its session (and only it).
    let sid = open(addr).await;
    let (s, b) = http(addr, "POST", &poll_path(&sid), &[], "9garbage").await;
    assert_eq!((s, code(&b)), (400, 3), "{b}");
    let (s, b) = http(addr, "GET", &poll_path(&sid), &[], "").await;
    assert_eq!((s, code(&b)), (400, 1), "the session ended: {b}");
    // A malformed Socket.IO packet in a well-formed body ends the session too.
    let sid = open(addr).await;
    let (s, _) = http(addr, "POST", &poll_path(&sid), &[], "4{bad").await;
    assert_eq!(s, 200, "the body itself was fine");
    let (s, b) = http(addr, "GET", &poll_path(&sid), &[], "").await;
    assert!(s == 400 || b == "1", "ended: {s} {b}");
    // A chunked body is not read.
    let sid = open(addr).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST {} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n40\r\n0\r\n\r\n",
        poll_path(&sid)
    );
    c.write_all(req.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    tokio::time::timeout(common::TIMEOUT, c.read_to_end(&mut resp))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&resp).starts_with("HTTP/1.1 400"));
    // Garbage instead of HTTP.
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET /socket.io/?EIO=4&transport=polling \x00\x01\r\n\r\n")
        .await
        .unwrap();
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(common::TIMEOUT, c.read_to_end(&mut resp)).await;
    assert!(String::from_utf8_lossy(&resp).starts_with("HTTP/1.1 400"));

    healthy(addr).await;
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_polling_sessions_from_one_address_is_limited() {
    let server = server();
    let addr = server.ws_addr();
    // 40 per address: every session counts, like a WebSocket connection. Past it a
    // handshake is answered 429 (or, when even its HTTP connection is over the limit,
    // refused at accept with a 429 the kernel may reset before the client reads it).
    let mut refused = 0;
    for _ in 0..60 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        let req = "GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
        let _ = c.write_all(req.as_bytes()).await;
        let mut resp = Vec::new();
        let read = tokio::time::timeout(common::TIMEOUT, c.read_to_end(&mut resp))
            .await
            .expect("an answer in time");
        let text = String::from_utf8_lossy(&resp);
        if text.starts_with("HTTP/1.1 200") {
            continue;
        }
        assert!(
            read.is_err() || text.starts_with("HTTP/1.1 429"),
            "{read:?} {text}"
        );
        refused += 1;
    }
    assert!(refused >= 20, "{refused} refused");
    // The limit is per address: a session from elsewhere still opens.
    healthy_from(addr, "127.0.0.2").await;
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_websocket_packets_close_only_their_session() {
    let server = server();
    let addr = server.ws_addr();
    for bad in ["4abc", "42{}", "7", "40/random,[]", "451-[\"a\"]\u{0}"] {
        let (mut s, head) = upgrade(addr).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        s.write_all(&common::raw_frame(true, 1, b"40"))
            .await
            .unwrap();
        s.write_all(&common::raw_frame(true, 1, bad.as_bytes()))
            .await
            .unwrap();
        // "40/random,[]" is refused as a namespace (44), not a broken packet: then the
        // session stays; every other one is closed with 1002.
        let closed =
            tokio::time::timeout(Duration::from_secs(2), common::read_until_close(&mut s)).await;
        if bad.starts_with("40/random") {
            assert!(closed.is_err() || closed == Ok(1002), "{bad}: {closed:?}");
        } else {
            assert_eq!(closed, Ok(1002), "{bad}");
        }
    }
    healthy(addr).await;
    server.shutdown();
}

/// A polling handshake from another loopback address.
async fn healthy_from(addr: SocketAddr, source: &str) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut c = sock.connect(addr).await.unwrap();
    let req =
        "GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    c.write_all(req.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    tokio::time::timeout(common::TIMEOUT, c.read_to_end(&mut resp))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&resp).starts_with("HTTP/1.1 200"));
}

async fn upgrade(addr: SocketAddr) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    s.write_all(req.as_bytes()).await.unwrap();
    let head = common::read_head(&mut s).await;
    (s, head)
}
