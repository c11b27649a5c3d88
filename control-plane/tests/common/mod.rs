//! Helpers for integration tests: a real server on port 0 with two shards, and
//! WebSocket clients built on fastwebsockets (plus raw sockets for protocol violations).
#![allow(dead_code)]

pub mod fake_openai;
pub mod webhook_sink;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocket};
use serde_json::{json, Value};
use switchboard_control_plane::{auth, Config, Server};
use switchboard_engine::IoMode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const SECRET: &str = "integration-test-secret-0123456789";
pub const API_KEY: &str = "integration-test-api-key-0123";
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// The I/O backend every test server uses: `SWITCHBOARD_TEST_IO` (`epoll` or
/// `uring`); `.ci/run` runs the integration suites once with each. Unset: epoll.
pub fn io_under_test() -> IoMode {
    match std::env::var("SWITCHBOARD_TEST_IO").as_deref() {
        Ok("uring") => IoMode::Uring,
        Ok("epoll") | Err(_) => IoMode::Epoll,
        Ok(other) => panic!("SWITCHBOARD_TEST_IO must be epoll or uring, not {other:?}"),
    }
}

/// Whether every test server keeps its store in PostgreSQL: `SWITCHBOARD_TEST_STORE`
/// (`sqlite`, the default, or `postgres`); `.ci/run` runs the store's suites once with
/// each, the PostgreSQL pass inside `scripts/with-postgres.sh`.
pub fn postgres_under_test() -> bool {
    match std::env::var("SWITCHBOARD_TEST_STORE").as_deref() {
        Ok("postgres") => true,
        Ok("sqlite") | Err(_) => false,
        Ok(other) => panic!("SWITCHBOARD_TEST_STORE must be sqlite or postgres, not {other:?}"),
    }
}

/// On PostgreSQL ([`postgres_under_test`]): move `cfg`'s store from its SQLite path to
/// a database of its own on the server of `SWITCHBOARD_TEST_POSTGRES`, named after the
/// path (created on first use), so a test that restarts a server on the same path
/// finds the same database.
pub fn store_under_test(cfg: &mut Config) {
    if cfg.store.backend == switchboard_control_plane::store::Backend::Postgres {
        // The test named its database.
        return;
    }
    if let Some(url) = postgres_url_of(&cfg.store.path) {
        cfg.store.backend = switchboard_control_plane::store::Backend::Postgres;
        cfg.store.postgres_url = Some(url);
    }
}

/// On PostgreSQL ([`postgres_under_test`]): the URL of the database standing in for the
/// SQLite file at `path` (created on first use).
pub fn postgres_url_of(path: &std::path::Path) -> Option<String> {
    if !postgres_under_test() {
        return None;
    }
    let base = std::env::var("SWITCHBOARD_TEST_POSTGRES").expect(
        "SWITCHBOARD_TEST_STORE=postgres needs SWITCHBOARD_TEST_POSTGRES \
         (run the tests inside scripts/with-postgres.sh)",
    );
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path.to_string_lossy().bytes() {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let name = format!("sb_{hash:016x}");
    let (url, db) = (base.clone(), name.clone());
    // On a thread of its own: the synchronous client cannot block a test's runtime.
    std::thread::spawn(move || {
        let mut admin = postgres::Client::connect(&url, postgres::NoTls).expect("the test server");
        let exists = admin
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&db])
            .unwrap()
            .is_some();
        if !exists {
            admin
                .batch_execute(&format!("CREATE DATABASE {db}"))
                .unwrap();
        }
    })
    .join()
    .unwrap();
    let (prefix, _) = base.rsplit_once('/').unwrap();
    Some(format!("{prefix}/{name}"))
}

/// One number a query of the store at `path` answers: `sqlite` on the file, or
/// `postgres` on its database under [`postgres_under_test`].
pub fn store_count(path: &std::path::Path, sqlite: &str, postgres: &str) -> i64 {
    match postgres_url_of(path) {
        Some(url) => {
            let sql = postgres.to_string();
            std::thread::spawn(move || {
                let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
                c.query_one(&sql, &[]).unwrap().get::<_, i64>(0)
            })
            .join()
            .unwrap()
        }
        None => rusqlite::Connection::open(path)
            .unwrap()
            .query_row(sqlite, [], |r| r.get(0))
            .unwrap(),
    }
}

/// The backend name the server reports for [`io_under_test`].
pub fn backend_under_test() -> &'static str {
    match io_under_test() {
        IoMode::Uring => "io_uring",
        _ => "epoll",
    }
}

/// The `--io` / `SWITCHBOARD_ENGINE__IO` value for [`io_under_test`].
pub fn io_arg() -> &'static str {
    match io_under_test() {
        IoMode::Uring => "uring",
        _ => "epoll",
    }
}

/// A configuration for a start that is expected to fail: ports from the system, the
/// test secret, the SQLite store at `store` (on either store pass: it tests the file).
pub fn failing_start_config(store: &std::path::Path) -> Config {
    let mut cfg = Config::default();
    cfg.engine.io = io_under_test();
    cfg.engine.listen = "127.0.0.1:0".parse().unwrap();
    cfg.admin.listen = "127.0.0.1:0".parse().unwrap();
    cfg.auth.hmac_secret = Some(SECRET.into());
    cfg.store.path = store.to_path_buf();
    cfg
}

/// Start a server with test defaults, adjusted by `tweak`, its store on the store
/// under test ([`store_under_test`]).
pub fn start(tweak: impl FnOnce(&mut Config)) -> Server {
    start_with_store(tweak, true)
}

/// [`start`] on the SQLite file `tweak` names, on either store pass (for tests of the
/// file itself: fixtures written by earlier builds).
pub fn start_on_file(tweak: impl FnOnce(&mut Config)) -> Server {
    start_with_store(tweak, false)
}

fn start_with_store(tweak: impl FnOnce(&mut Config), under_test: bool) -> Server {
    let mut cfg = Config::default();
    cfg.engine.io = io_under_test();
    cfg.engine.listen = "127.0.0.1:0".parse().unwrap();
    cfg.engine.shards = 2;
    cfg.engine.tick_ms = 20;
    cfg.engine.close_timeout_ms = 500;
    cfg.auth.hmac_secret = Some(SECRET.into());
    cfg.admin.listen = "127.0.0.1:0".parse().unwrap();
    cfg.admin.api_key = Some(API_KEY.into());
    cfg.store.path = temp_store();
    tweak(&mut cfg);
    if under_test {
        store_under_test(&mut cfg);
    }
    let server = Server::start(cfg).expect("server starts");
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !server.engine().ready() {
        assert!(
            std::time::Instant::now() < deadline,
            "shards never became ready"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    server
}

/// A fresh SQLite file path for one test server's store (in a directory of its own,
/// with the WAL files beside it).
pub fn temp_store() -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "sb-test-store-{}-{}-{n}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    dir.join("switchboard.db")
}

/// A token for `sub` allowing `channels` (all if None).
pub fn token(sub: &str, channels: Option<&[&str]>) -> String {
    auth::mint(
        SECRET,
        sub,
        channels.map(|c| c.iter().map(|s| s.to_string()).collect()),
        Duration::from_secs(600),
        &Default::default(),
    )
}

/// A token for `sub` with its claims adjusted by `edit` (custom claims, `send_to`,
/// `schedule`).
pub fn token_with(sub: &str, edit: impl FnOnce(&mut auth::Claims)) -> String {
    auth::mint_with(
        SECRET,
        sub,
        Duration::from_secs(600),
        &Default::default(),
        edit,
    )
}

/// A server API call with the test API key; the status and the JSON body.
pub async fn api(admin: SocketAddr, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let auth = format!("Bearer {API_KEY}");
    let (status, text) = http(
        admin,
        method,
        path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        &body.to_string(),
    )
    .await;
    let v = serde_json::from_str(&text).unwrap_or_else(|_| json!({"raw": text}));
    (status, v)
}

/// Send an upgrade request; returns the stream and the response head.
pub async fn upgrade(
    addr: SocketAddr,
    subprotocol: Option<&str>,
    extra: &str,
) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).unwrap();
    let proto = subprotocol
        .map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "GET / HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{proto}{extra}\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    (s, head)
}

/// Read an HTTP response head byte by byte (so no WebSocket bytes are consumed).
pub async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(TIMEOUT, s.read(&mut byte))
            .await
            .expect("response head in time")
            .unwrap();
        if n == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// What a client received.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A decoded envelope.
    Msg(Value),
    /// A close frame: code and reason.
    Close(u16, String),
}

/// The envelope encoding of a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fmt {
    MsgPack,
    Json,
}

pub struct Client {
    pub ws: WebSocket<TcpStream>,
    pub fmt: Fmt,
    /// Messages received while waiting for a reply.
    pub backlog: VecDeque<Event>,
    pub shard: u64,
    next_id: u64,
}

impl Client {
    /// Upgrade (no authentication yet).
    pub async fn open(addr: SocketAddr, fmt: Fmt) -> Client {
        let proto = match fmt {
            Fmt::MsgPack => "switchboard.v1.msgpack",
            Fmt::Json => "switchboard.v1.json",
        };
        let (stream, head) = upgrade(addr, Some(proto), "").await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(head.contains(proto), "{head}");
        Client::from_upgraded(stream, fmt)
    }

    /// Wrap a stream whose upgrade the caller already did.
    pub fn from_upgraded(stream: TcpStream, fmt: Fmt) -> Client {
        Client {
            ws: WebSocket::after_handshake(stream, Role::Client),
            fmt,
            backlog: VecDeque::new(),
            shard: u64::MAX,
            next_id: 100,
        }
    }

    /// Upgrade and authenticate as `sub`.
    pub async fn connect(addr: SocketAddr, fmt: Fmt, tok: &str) -> Client {
        let mut c = Client::open(addr, fmt).await;
        let r = c.call(json!({"cmd": "connect", "token": tok})).await;
        let result = r
            .get("result")
            .unwrap_or_else(|| panic!("connect failed: {r}"));
        c.shard = result["shard"].as_u64().unwrap();
        c
    }

    pub async fn send(&mut self, msg: &Value) {
        let frame = match self.fmt {
            Fmt::Json => Frame::text(Payload::Owned(serde_json::to_vec(msg).unwrap())),
            Fmt::MsgPack => Frame::binary(Payload::Owned(rmp_serde::to_vec_named(msg).unwrap())),
        };
        self.ws.write_frame(frame).await.expect("write");
    }

    /// Next message or close from the socket (skipping pings, answered automatically).
    pub async fn next_event(&mut self) -> Event {
        if let Some(e) = self.backlog.pop_front() {
            return e;
        }
        loop {
            let frame = tokio::time::timeout(TIMEOUT, self.ws.read_frame())
                .await
                .expect("a frame in time")
                .expect("read frame");
            match frame.opcode {
                OpCode::Text => {
                    return Event::Msg(
                        serde_json::from_slice(&frame.payload).expect("JSON envelope"),
                    )
                }
                OpCode::Binary => {
                    return Event::Msg(
                        rmp_serde::from_slice(&frame.payload).expect("MessagePack envelope"),
                    )
                }
                OpCode::Close => {
                    let p = &frame.payload[..];
                    let code = if p.len() >= 2 {
                        u16::from_be_bytes([p[0], p[1]])
                    } else {
                        1005
                    };
                    return Event::Close(
                        code,
                        String::from_utf8_lossy(p.get(2..).unwrap_or(&[])).into_owned(),
                    );
                }
                _ => continue,
            }
        }
    }

    /// Send `cmd` with a fresh id and wait for its reply (other messages are kept).
    pub async fn call(&mut self, mut cmd: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        cmd["id"] = json!(id);
        self.send(&cmd).await;
        let mut kept = VecDeque::new();
        let reply = loop {
            match self.next_event().await {
                Event::Msg(m) if m.get("id") == Some(&json!(id)) => break m,
                other @ Event::Close(..) => {
                    kept.push_back(other);
                    break json!({"closed": true});
                }
                other => kept.push_back(other),
            }
        };
        kept.extend(self.backlog.drain(..));
        self.backlog = kept;
        reply
    }

    /// The next push named one of `names` (other messages are dropped).
    pub async fn next_push(&mut self, names: &[&str]) -> Value {
        loop {
            match self.next_event().await {
                Event::Msg(m)
                    if m.get("push")
                        .and_then(Value::as_str)
                        .is_some_and(|p| names.contains(&p)) =>
                {
                    return m
                }
                Event::Msg(_) => continue,
                e => panic!("expected a push of {names:?}, got {e:?}"),
            }
        }
    }

    /// Next publication push (other messages are dropped).
    pub async fn next_publication(&mut self) -> Value {
        loop {
            match self.next_event().await {
                Event::Msg(m) if m.get("push") == Some(&json!("publication")) => return m,
                Event::Msg(_) => continue,
                e => panic!("expected a publication, got {e:?}"),
            }
        }
    }

    /// Read until a close frame; returns the disconnect push (if any) and the close.
    pub async fn expect_close(&mut self) -> (Option<Value>, u16, String) {
        let mut push = None;
        loop {
            match self.next_event().await {
                Event::Msg(m) if m.get("push") == Some(&json!("disconnect")) => push = Some(m),
                Event::Msg(_) => continue,
                Event::Close(code, reason) => return (push, code, reason),
            }
        }
    }
}

/// Open clients until one lands on `shard` (the kernel spreads connections by hash).
pub async fn client_on_shard(addr: SocketAddr, fmt: Fmt, tok: &str, shard: u64) -> Client {
    for _ in 0..200 {
        let c = Client::connect(addr, fmt, tok).await;
        if c.shard == shard {
            return c;
        }
    }
    panic!("no connection landed on shard {shard} in 200 tries");
}

/// A minimal HTTP/1.1 request; returns status and body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    tokio::time::timeout(TIMEOUT, s.read_to_end(&mut resp))
        .await
        .expect("HTTP response in time")
        .unwrap();
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A raw masked client frame.
pub fn raw_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let op = match opcode {
        0 => switchboard_protocol::OpCode::Continuation,
        1 => switchboard_protocol::OpCode::Text,
        2 => switchboard_protocol::OpCode::Binary,
        8 => switchboard_protocol::OpCode::Close,
        9 => switchboard_protocol::OpCode::Ping,
        _ => switchboard_protocol::OpCode::Pong,
    };
    switchboard_protocol::frame::encode_masked(fin, op, payload, [0x11, 0x22, 0x33, 0x44])
}

/// Read raw server frames until a close frame; returns its code.
pub async fn read_until_close(s: &mut TcpStream) -> u16 {
    let mut buf = bytes::BytesMut::new();
    loop {
        use switchboard_protocol::frame::{self, Check};
        while let Check::Complete(h) =
            frame::check(&buf, switchboard_protocol::Role::Client, usize::MAX).unwrap()
        {
            let f = frame::take(&mut buf, &h);
            if f.opcode == switchboard_protocol::OpCode::Close {
                return u16::from_be_bytes([f.payload[0], f.payload[1]]);
            }
        }
        let n = tokio::time::timeout(TIMEOUT, s.read_buf(&mut buf))
            .await
            .expect("frames in time")
            .unwrap();
        assert!(n > 0, "connection ended without a close frame");
    }
}

/// Read one metric sample summed over shards from the admin endpoint.
pub async fn metric(admin: SocketAddr, name_and_labels: &str) -> u64 {
    let (_, body) = http(admin, "GET", "/metrics", &[], "").await;
    body.lines()
        .filter(|l| {
            // The whole name: `switchboard_streams` is not `switchboard_streams_evicted_total`.
            let name = name_and_labels.split('{').next().unwrap();
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| {
            let want_labels = name_and_labels
                .split_once('{')
                .map(|(_, l)| l.trim_end_matches('}'));
            match want_labels {
                None => true,
                Some(labels) => labels.split(',').all(|kv| l.contains(kv)),
            }
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Start the real binary with `env`; its process, WebSocket and admin addresses.
pub fn spawn_binary(
    env: &[(&str, &str)],
) -> (
    std::process::Child,
    std::net::SocketAddr,
    std::net::SocketAddr,
) {
    spawn_binary_with_files(env, None)
}

/// [`spawn_binary`] with its open-file limit (soft and hard) set to `files`, as
/// `ulimit -n` would.
pub fn spawn_binary_with_files(
    env: &[(&str, &str)],
    files: Option<u64>,
) -> (
    std::process::Child,
    std::net::SocketAddr,
    std::net::SocketAddr,
) {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    const BIN: &str = env!("CARGO_BIN_EXE_switchboard");
    let mut cmd = std::process::Command::new(BIN);
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--shards",
        "2",
    ])
    .env("SWITCHBOARD_ENGINE__IO", io_arg())
    .env("SWITCHBOARD_STORE__PATH", temp_store())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some(n) = files {
        // SAFETY: only setrlimit (async-signal-safe) runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: n,
                    rlim_max: n,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut banner = String::new();
    let (mut ws, mut admin) = (None, None);
    let mut buf = [0u8; 4096];
    while ws.is_none() || admin.is_none() {
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "the server exited: {banner}");
        banner.push_str(&String::from_utf8_lossy(&buf[..n]));
        for line in banner.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("WebSocket  ws://") {
                ws = rest.split('/').next().and_then(|a| a.parse().ok());
            }
            if let Some(rest) = line.strip_prefix("Admin      http://") {
                admin = rest.split('/').next().and_then(|a| a.parse().ok());
            }
        }
    }
    (child, ws.unwrap(), admin.unwrap())
}

/// SIGTERM the binary and return what it logged.
pub fn stop_binary(mut child: std::process::Child) -> String {
    use std::io::Read;
    // SAFETY: signals our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    child.wait().unwrap();
    logs
}

/// Start the binary with `config`; returns it with its WebSocket and admin addresses.
pub fn spawn_with_config(
    config: &std::path::Path,
) -> (std::process::Child, SocketAddr, SocketAddr) {
    spawn_with_config_env(config, &[])
}

/// [`spawn_with_config`] with extra environment variables.
pub fn spawn_with_config_env(
    config: &std::path::Path,
    env: &[(&str, &str)],
) -> (std::process::Child, SocketAddr, SocketAddr) {
    use std::io::BufRead;
    const BIN: &str = env!("CARGO_BIN_EXE_switchboard");
    let mut child = std::process::Command::new(BIN)
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .env("SWITCHBOARD_ENGINE__IO", io_arg())
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut ws, mut admin) = (None, None);
    while ws.is_none() || admin.is_none() {
        let line = lines.next().expect("banner").unwrap();
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("WebSocket  ws://") {
            ws = Some(rest.split('/').next().unwrap().parse().unwrap());
        } else if let Some(rest) = line.strip_prefix("Admin      http://") {
            admin = Some(rest.split('/').next().unwrap().parse().unwrap());
        }
    }
    (child, ws.unwrap(), admin.unwrap())
}

/// Every publication of `channel` in its current epoch, through the HTTP history API.
pub async fn full_history(
    admin: SocketAddr,
    channel: &str,
) -> (String, std::collections::BTreeMap<u64, Value>) {
    let mut out = std::collections::BTreeMap::new();
    let mut since = 0u64;
    let auth = format!("Bearer {API_KEY}");
    loop {
        let (status, body) = http(
            admin,
            "GET",
            &format!("/api/history?channel={channel}&since={since}&limit=1000"),
            &[("Authorization", &auth)],
            "",
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let pubs = v["publications"].as_array().unwrap();
        if pubs.is_empty() {
            return (v["epoch"].as_str().unwrap().to_string(), out);
        }
        for p in pubs {
            let offset = p["offset"].as_u64().unwrap();
            assert_eq!(offset, since + 1, "history has no gap");
            out.insert(offset, p["data"].clone());
            since = offset;
        }
    }
}

/// Write a config file for the binary beside `store` (`<store>.toml`): listeners on
/// port 0, two shards, the test secret and API key, the store at `store`; `engine` and
/// `store_extra` are more lines for those sections, `rest` more sections.
pub fn write_config(
    store: &std::path::Path,
    engine: &str,
    store_extra: &str,
    rest: &str,
) -> std::path::PathBuf {
    let path = store.with_extension("toml");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let text = format!(
        "[engine]\nlisten = \"127.0.0.1:0\"\nshards = 2\n{engine}\n\n\
         [auth]\nhmac_secret = \"{SECRET}\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\napi_key = \"{API_KEY}\"\n\n\
         [store]\npath = \"{}\"\n{store_extra}\n\n{rest}\n",
        store.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// The Node test clients' folder (`tests/clients/node`), checked to have
/// `socket.io-client` installed (`bash .ci/run` runs `npm ci` there): a test that
/// needs it fails saying so rather than skipping.
pub fn node_clients() -> &'static str {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/node");
    assert!(
        std::path::Path::new(dir)
            .join("node_modules/socket.io-client")
            .exists(),
        "socket.io-client is not installed in {dir}: run `bash .ci/run` (it runs npm ci there)"
    );
    dir
}

/// A real `redis-server` on a free loopback port, for tests of nodes sharing Redis;
/// killed (by PID) when dropped. `bash .ci/run` installs the Debian package; without
/// it a test fails saying so.
pub struct RedisServer {
    child: Option<std::process::Child>,
    /// Its port.
    pub port: u16,
    dir: std::path::PathBuf,
    extra: Vec<String>,
}

impl RedisServer {
    /// Start one and wait until it answers.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Start one with extra arguments (`--replicaof HOST PORT`, or a config file and
    /// `--sentinel` for a Sentinel) and wait until it answers.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("sb-test-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = RedisServer {
            child: None,
            port,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        r.restart();
        r
    }

    /// Its working directory (a Sentinel's config file goes there).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kill it (as a crash would: SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port (after [`Self::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        let mut cmd = std::process::Command::new("redis-server");
        // A config file (a Sentinel's) comes first.
        if let Some(conf) = self.extra.first().filter(|a| a.ends_with(".conf")) {
            cmd.arg(conf);
        }
        let child = cmd
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(self.extra.iter().filter(|a| !a.ends_with(".conf")))
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed to run this test (bash .ci/run installs it)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            let answered = redis::Client::open(self.url())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if answered.is_ok() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A connection to it.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }
}

/// A node of a cluster on `redis`, named `id`, with a fast registry (heartbeats every
/// 100 ms, gone after 400 ms) and `tweak` applied; on PostgreSQL ([`postgres_under_test`])
/// the nodes of one Redis share one database, as a cluster does.
pub fn cluster_node(redis: &RedisServer, id: &str, tweak: impl FnOnce(&mut Config)) -> Server {
    let url = redis.url();
    start(|c| {
        if postgres_under_test() {
            // The nodes of one Redis share one database ([`store_under_test`] names it
            // after this path).
            c.store.path = std::path::PathBuf::from(format!("/cluster-of/{url}"));
        }
        c.cluster.redis_url = url;
        c.cluster.node_id = id.into();
        c.cluster.heartbeat_ms = 100;
        c.cluster.node_ttl_ms = 400;
        tweak(c);
    })
}

/// [`cluster_node`] as a process of its own (to be killed with SIGKILL): the binary
/// with a fresh store and `extra` TOML after its `[cluster]` section. Its process,
/// WebSocket and admin addresses.
pub fn cluster_process(
    redis: &RedisServer,
    id: &str,
    extra: &str,
) -> (std::process::Child, SocketAddr, SocketAddr) {
    let store = temp_store();
    // On PostgreSQL, the database the cluster's other nodes share ([`cluster_node`]).
    let shared = postgres_url_of(std::path::Path::new(&format!(
        "/cluster-of/{}",
        redis.url()
    )))
    .map(|url| format!("backend = \"postgres\"\npostgres_url = \"{url}\""))
    .unwrap_or_default();
    let config = write_config(
        &store,
        "",
        &shared,
        &format!(
            "[cluster]\nredis_url = \"{}\"\nnode_id = \"{id}\"\nheartbeat_ms = 100\n\
             node_ttl_ms = 400\n\n{extra}",
            redis.url()
        ),
    );
    spawn_with_config(&config)
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An admin API call with an admin token for `ops` signed with `secret`; the status
/// and the JSON answer (`Null` when it is not JSON).
pub async fn admin_request(
    admin: SocketAddr,
    secret: &str,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, Value) {
    let token = auth::mint_admin(secret, "ops", Duration::from_secs(600), "admin");
    let bearer = format!("Bearer {token}");
    let headers = [
        ("Authorization", bearer.as_str()),
        ("Content-Type", "application/json"),
    ];
    let (status, text) = http(admin, method, path, &headers, body).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}
