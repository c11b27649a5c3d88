//! The document-analysis flow of docs/AI.md, end to end with the example's own client
//! (examples/document-analysis/client.mjs, the real socket.io-client): a backend
//! reports progress through the server API as one notification that changes (same
//! key, same id), the user's Socket.IO client and native client both receive each
//! state, and the completion published on the user's personal channel arrives as the
//! `analysis_complete` event (native: a publication with that event).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::*;
use serde_json::{json, Value};

fn example_dir() -> std::path::PathBuf {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/document-analysis");
    assert!(
        dir.join("node_modules/socket.io-client").exists(),
        "run `npm ci` in {} (bash .ci/run does)",
        dir.display()
    );
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_and_completion_reach_socketio_and_native_clients() {
    let server = start(|_| {});
    let (ws, admin) = (server.ws_addr(), server.admin_addr());
    let tok = token("bob", None);
    let mut child = Command::new("node")
        .current_dir(example_dir())
        .args(["client.mjs", &format!("http://{ws}"), &tok, "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("node must be installed to run this test (bash .ci/run checks)");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut next = async || -> Value {
        let line = tokio::time::timeout(TIMEOUT, rx.recv())
            .await
            .expect("the example client said something in time")
            .expect("the example client is running");
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"))
    };
    assert_eq!(next().await, json!({"ready": true}));
    let mut native = Client::connect(ws, Fmt::Json, &tok).await;

    let mut ids = Vec::new();
    for (percent, state) in [(10, "running"), (40, "running"), (100, "complete")] {
        let body = json!({"user": "bob", "kind": "progress", "key": "analysis:doc-7",
                          "data": {"percent": percent, "state": state}});
        let (status, r) = api(admin, "POST", "/api/notifications", &body).await;
        assert_eq!(status, 200, "{r}");
        assert_eq!(r["updated"], json!(percent != 10), "{r}");
        ids.push(r["id"].as_u64().unwrap());
        let p = next().await;
        assert_eq!(p["progress"]["percent"], percent, "{p}");
        assert_eq!(p["progress"]["state"], state, "{p}");
        assert_eq!(p["progress"]["key"], "analysis:doc-7", "{p}");
        let n = native.next_push(&["notification"]).await;
        assert_eq!(n["notification"]["data"]["percent"], percent, "{n}");
    }
    assert!(
        ids.windows(2).all(|w| w[0] == w[1]),
        "one notification: {ids:?}"
    );

    let body = json!({"channel": "user:bob", "event": "analysis_complete",
                      "data": {"document": "doc-7", "pages": 12}});
    let (status, r) = api(admin, "POST", "/api/publish", &body).await;
    assert_eq!(status, 200, "{r}");
    let done = next().await;
    assert_eq!(
        done["complete"],
        json!({"document": "doc-7", "pages": 12}),
        "{done}"
    );
    let p = native.next_publication().await;
    assert_eq!(p["event"], "analysis_complete", "{p}");
    assert_eq!(p["data"]["pages"], 12, "{p}");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.success(),
        "the example client exits when the analysis is done"
    );
    server.shutdown();
    server.wait();
}
