//! Socket.IO connection state recovery with the real `socket.io-client` (Node): a
//! client whose connection drops while publications keep coming reconnects with its
//! pid and offset, is told `recovered`, and gets every publication exactly once, in
//! order per room, without joining its rooms again — over WebSocket and polling.
//!
//! The Node packages are installed by `bash .ci/run`; without them this fails and
//! says so.

mod common;

use std::io::BufRead;
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};

fn config(c: &mut switchboard_control_plane::Config) {
    c.socketio.ping_interval_ms = 300;
    c.socketio.ping_timeout_ms = 400;
    c.socketio.recovery_ms = 10_000;
    // Rooms are durable: what was published survives a restart in its epoch.
    c.namespaces.insert(
        "room".into(),
        switchboard_control_plane::config::NamespaceConfig {
            durability: switchboard_engine::Durability::Sync,
            history_size: Some(100),
            ..Default::default()
        },
    );
}

fn server() -> switchboard_control_plane::Server {
    common::start(config)
}

/// The `recovery` scenario of `tests/clients/node/sio_client.mjs`, reporting steps.
struct Scenario {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Scenario {
    fn start(
        server: &switchboard_control_plane::Server,
        transport: &str,
        total: usize,
        drop: &str,
    ) -> Scenario {
        let dir = common::node_clients();
        let url = format!("http://{}", server.ws_addr());
        let token = common::token("ann", Some(&["room:*"]));
        let mut child = Command::new("node")
            .current_dir(dir)
            .env("SIO_SCENARIO_MS", "15000")
            .args(["sio_client.mjs", "recovery", &url, &token, transport])
            .arg(total.to_string())
            .arg(drop)
            .stdout(Stdio::piped())
            .spawn()
            .expect("node must be installed to run this test (bash .ci/run checks)");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Scenario { child, lines }
    }

    fn expect_step(&self, step: &str) {
        let line = self
            .lines
            .recv_timeout(common::TIMEOUT * 2)
            .unwrap_or_else(|_| panic!("no {step:?} step from the client"));
        assert_eq!(
            line,
            format!(r#"{{"step":"{step}"}}"#),
            "waiting for {step}"
        );
    }

    /// The client recovered, and got every message exactly once.
    fn assert_recovered(self, total: usize, transport: &str) {
        let r = self.report();
        assert_eq!(r["recovered"], true, "{transport}: {r}");
        assert_exactly_once(&r, total, transport);
    }

    fn report(mut self) -> Value {
        let line = self
            .lines
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("a report from the client");
        let r: Value = serde_json::from_str(&line).unwrap();
        assert!(self.child.wait().unwrap().success(), "{r}");
        r
    }
}

/// Publish `n` messages numbered from `first`, alternating between the two rooms.
async fn publish(server: &switchboard_control_plane::Server, first: usize, n: usize) {
    for i in first..first + n {
        let channel = if i % 2 == 0 { "room:a" } else { "room:b" };
        let body = json!({"channel": channel, "data": {"i": i}});
        let (status, r) = common::api(server.admin_addr(), "POST", "/api/publish", &body).await;
        assert_eq!(status, 200, "{r}");
    }
}

/// Every message arrived once, each room's in order with consecutive offsets, and
/// each event's last argument is its offset.
fn assert_exactly_once(r: &Value, total: usize, what: &str) {
    let got = r["got"].as_array().unwrap_or_else(|| panic!("{what}: {r}"));
    let mut seen: Vec<u64> = got
        .iter()
        .map(|m| m["data"]["i"].as_u64().unwrap())
        .collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..total as u64).collect::<Vec<_>>(),
        "{what}: each once: {r}"
    );
    for room in ["room:a", "room:b"] {
        let offsets: Vec<u64> = got
            .iter()
            .filter(|m| m["channel"] == room)
            .map(|m| m["offset"].as_u64().unwrap())
            .collect();
        let first = offsets.first().copied().unwrap_or(1);
        let expected: Vec<u64> = (first..first + offsets.len() as u64).collect();
        assert_eq!(offsets, expected, "{what}: {room} in order: {r}");
    }
    for m in got {
        let arg = m["arg"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no offset: {m}"));
        let prefix = format!("{}.", m["offset"]);
        assert!(arg.starts_with(&prefix), "{what}: {arg}");
        assert!(
            arg.ends_with(m["channel"].as_str().unwrap()),
            "{what}: {arg}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_recovers_with_nothing_missed() {
    let server = server();
    for transport in ["websocket", "polling"] {
        drop_and_recover(&server, transport, "client").await;
    }
    server.shutdown();
}

/// The client loses its connection (`how`: see the scenario) after 5 messages; 3 are
/// published while it is away (it reconnects after a second) and 2 once it is back.
async fn drop_and_recover(server: &switchboard_control_plane::Server, transport: &str, how: &str) {
    let s = Scenario::start(server, transport, 10, &format!("5:{how}"));
    s.expect_step("joined");
    publish(server, 0, 5).await;
    s.expect_step("dropped");
    publish(server, 5, 3).await;
    s.expect_step("reconnected");
    publish(server, 8, 2).await;
    s.assert_recovered(10, transport);
}

/// A clean restart: the sessions are stored at shutdown and handed back to their home
/// shards at start; the client, reconnecting to the new process, recovers with the
/// publications of the durable rooms it missed (some published while it was away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_recovers_with_nothing_missed() {
    let store = common::temp_store();
    for transport in ["websocket", "polling"] {
        let server = common::start(|c| {
            config(c);
            c.store.path = store.clone();
        });
        let addr = server.ws_addr();
        let s = Scenario::start(&server, transport, 10, "5:server");
        s.expect_step("joined");
        publish(&server, 0, 5).await;
        s.expect_step("dropped");
        server.shutdown();
        server.wait();
        let server = common::start(|c| {
            config(c);
            c.store.path = store.clone();
            c.engine.listen = addr;
        });
        publish(&server, 5, 3).await;
        s.expect_step("reconnected");
        publish(&server, 8, 2).await;
        s.assert_recovered(10, transport);
        server.shutdown();
    }
}

/// The network drops without a word to the server (a proxy goes silent): the client
/// reconnects while the server still holds its session on a half-open connection.
/// Recovery ends that session (its record goes home first) and restores it, with
/// what the old connection was still being sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_session_is_replaced_by_its_recovery() {
    let server = common::start(|c| {
        config(c);
        // The heartbeat would notice in 20 s: the client is back long before.
        c.socketio.ping_interval_ms = 10_000;
        c.socketio.ping_timeout_ms = 10_000;
    });
    let mut replaced = 0;
    for transport in ["websocket", "polling"] {
        // Sent to the old session, into the silent network, and after.
        drop_and_recover(&server, transport, "halfopen").await;
        let now = common::metric(
            server.admin_addr(),
            "switchboard_closes_total{reason=\"replaced\"}",
        )
        .await;
        assert_eq!(
            now,
            replaced + 1,
            "{transport}: the old session was replaced"
        );
        replaced = now;
    }
    server.shutdown();
}
