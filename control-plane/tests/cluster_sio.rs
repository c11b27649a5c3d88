//! Socket.IO connection state recovery across nodes sharing a real `redis-server`: a
//! real `socket.io-client` whose session ended on one node reconnects to another (as a
//! load balancer would send it) with its `pid` and `offset`, and is recovered there with
//! exactly what it missed. (The node that recovers a record takes it from Redis,
//! `GETDEL`, so two nodes cannot both recover one session.)

mod common;

use std::io::{BufRead, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use switchboard_control_plane::Server;

use common::{Client, Fmt, RedisServer};

fn node(redis: &RedisServer, id: &str) -> Server {
    common::cluster_node(redis, id, |c| c.socketio.recovery_ms = 10_000)
}

async fn line(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a line from the client in time")
        .expect("the client's output")
}

async fn publish(c: &mut Client, n: u64) {
    let r = c
        .call(json!({"cmd": "publish", "channel": "room:s", "data": {"n": n}}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socketio_session_recovers_on_another_node() {
    let redis = RedisServer::start();
    let n1 = node(&redis, "n1");
    let n2 = node(&redis, "n2");
    let mut child = Command::new("node")
        .current_dir(common::node_clients())
        .args([
            "sio_client.mjs",
            "switch",
            &format!("http://{}", n1.ws_addr()),
            &common::token("eve", None),
            "room:s",
            "2",
            "5",
            &format!("http://{}", n2.ws_addr()),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node must be installed to run this test");
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stdin = child.stdin.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for l in lines.by_ref() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });

    assert_eq!(line(&mut rx).await, r#"{"step":"joined"}"#);
    let mut ann = Client::connect(n1.ws_addr(), Fmt::Json, &common::token("ann", None)).await;
    publish(&mut ann, 1).await;
    publish(&mut ann, 2).await;
    assert_eq!(line(&mut rx).await, r#"{"step":"dropped"}"#);
    // While the client is away: the session ended on n1; three more publications.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in 3..=5 {
        publish(&mut ann, n).await;
    }
    // The session's record waits in Redis for whichever node the client comes back to.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let waiting: Vec<String> = redis::cmd("KEYS")
            .arg("{sb:sio:*")
            .query(&mut redis.connection())
            .unwrap();
        if waiting.len() == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{waiting:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stdin.write_all(b"go\n").unwrap();
    stdin.flush().unwrap();
    let report: Value = serde_json::from_str(&line(&mut rx).await).unwrap();
    assert!(child.wait().unwrap().success(), "{report}");
    assert_eq!(report["recovered"], true, "{report}");
    assert_eq!(report["same_pid"], true, "{report}");
    let got: Vec<u64> = report["got"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(got, [1, 2, 3, 4, 5], "{report}");

    n1.shutdown();
    n2.shutdown();
}
