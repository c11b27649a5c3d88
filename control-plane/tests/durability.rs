//! Durable streams on a real SQLite file: `sync` publications survive SIGKILL with
//! their epoch and offsets, `async` ones survive a clean restart (and start a new epoch
//! after a crash), idempotency keys survive restarts, a store that cannot be used is a
//! start-up error, and a store that cannot write refuses durable publications plainly.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use fastwebsockets::{Frame, OpCode, Payload};
use serde_json::{json, Value};
use switchboard_control_plane::config::NamespaceConfig;
use switchboard_engine::Durability;

fn namespaces(c: &mut switchboard_control_plane::Config) {
    c.namespaces.insert(
        "ledger".into(),
        NamespaceConfig {
            durability: Durability::Sync,
            history_size: Some(1_000_000),
            history_ttl_ms: Some(3_600_000),
            ..Default::default()
        },
    );
    c.namespaces.insert(
        "feed".into(),
        NamespaceConfig {
            durability: Durability::Async,
            history_size: Some(1000),
            history_ttl_ms: None,
            ..Default::default()
        },
    );
}

fn config_file(store: &Path) -> PathBuf {
    write_config(
        store,
        "tick_ms = 20",
        "",
        r#"[namespaces.ledger]
durability = "sync"
history_size = 1000000
history_ttl_ms = 3600000

[namespaces.feed]
durability = "async"
history_size = 1000"#,
    )
}

/// Publish `{"w": worker, "n": i}` to `channel` one after another until the server
/// goes away; returns every acknowledged (epoch, offset, data).
async fn publish_until_gone(
    ws: SocketAddr,
    channel: &'static str,
    worker: u64,
) -> Vec<(String, u64, Value)> {
    let mut c = Client::connect(ws, Fmt::Json, &token(&format!("w{worker}"), None)).await;
    let mut acked = Vec::new();
    for n in 0u64.. {
        let data = json!({"w": worker, "n": n});
        let cmd = json!({"id": n + 1, "cmd": "publish", "channel": channel, "data": data});
        let frame = Frame::text(Payload::Owned(serde_json::to_vec(&cmd).unwrap()));
        if c.ws.write_frame(frame).await.is_err() {
            break;
        }
        let reply = loop {
            match tokio::time::timeout(Duration::from_secs(10), c.ws.read_frame()).await {
                Ok(Ok(f)) if f.opcode == OpCode::Text => {
                    let v: Value = serde_json::from_slice(&f.payload).unwrap();
                    if v["id"] == json!(n + 1) {
                        break Some(v);
                    }
                }
                Ok(Ok(f)) if f.opcode == OpCode::Close => break None,
                Ok(Ok(_)) => continue,
                _ => break None,
            }
        };
        let Some(r) = reply else { break };
        let result = &r["result"];
        assert!(result.is_object(), "publish refused: {r}");
        acked.push((
            result["epoch"].as_str().unwrap().to_string(),
            result["offset"].as_u64().unwrap(),
            data,
        ));
    }
    acked
}

/// Collect publications of `channel` until the server goes away.
async fn subscribe_until_gone(ws: SocketAddr, channel: &'static str) -> Vec<(u64, Value)> {
    let mut c = Client::connect(ws, Fmt::Json, &token("reader", None)).await;
    let r = c
        .call(json!({"cmd": "subscribe", "channel": channel}))
        .await;
    assert!(r["result"].is_object(), "{r}");
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), c.ws.read_frame()).await {
            Ok(Ok(f)) if f.opcode == OpCode::Text => {
                let v: Value = serde_json::from_slice(&f.payload).unwrap();
                if v["push"] == "publication" {
                    got.push((v["offset"].as_u64().unwrap(), v["data"].clone()));
                }
            }
            Ok(Ok(f)) if f.opcode == OpCode::Close => break,
            Ok(Ok(_)) => continue,
            _ => break,
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sync_publications_survive_sigkill_and_offsets_continue() {
    let store = temp_store();
    let config = config_file(&store);
    let (mut child, ws, admin) = spawn_with_config(&config);

    // An async channel with a few acknowledged publications, to see its epoch change.
    let mut c = Client::connect(ws, Fmt::Json, &token("feeder", None)).await;
    let mut feed_top = None;
    for i in 0..5 {
        let r = c
            .call(json!({"cmd": "publish", "channel": "feed:crash", "data": i}))
            .await;
        feed_top = Some(r["result"].clone());
    }
    let feed_top = feed_top.unwrap();

    // Readers on both shards, then publishers on every shard, into one sync channel.
    let readers: Vec<_> = (0..2)
        .map(|_| tokio::spawn(subscribe_until_gone(ws, "ledger:crash")))
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let writers: Vec<_> = (0..6)
        .map(|w| tokio::spawn(publish_until_gone(ws, "ledger:crash", w)))
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // SIGKILL mid-stream: no chance to flush anything.
    child.kill().unwrap();
    child.wait().unwrap();
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    let mut delivered = Vec::new();
    for r in readers {
        delivered.push(r.await.unwrap());
    }
    assert!(
        acked.len() >= 200,
        "only {} publications acknowledged before the kill",
        acked.len()
    );

    let (mut child, ws, admin2) = spawn_with_config(&config);
    let _ = admin;
    let (epoch, history) = full_history(admin2, "ledger:crash").await;
    let top = *history.keys().last().unwrap();
    eprintln!(
        "crash test: {} acknowledged before SIGKILL, {} stored (top offset {top})",
        acked.len(),
        history.len()
    );
    // Every acknowledged publication is there, at its offset, in the same epoch.
    let mut offsets = std::collections::HashSet::new();
    for (e, offset, data) in &acked {
        assert_eq!(
            e, &epoch,
            "the sync stream keeps its epoch across the crash"
        );
        assert!(
            offsets.insert(*offset),
            "offset {offset} acknowledged twice"
        );
        assert_eq!(
            history.get(offset),
            Some(data),
            "acknowledged offset {offset}"
        );
    }
    // Nothing was delivered that the store does not have (sync delivers after commit).
    for got in &delivered {
        assert!(!got.is_empty(), "the readers saw publications");
        for (offset, data) in got {
            assert_eq!(history.get(offset), Some(data), "delivered offset {offset}");
        }
        let seen: Vec<u64> = got.iter().map(|(o, _)| *o).collect();
        assert!(
            seen.windows(2).all(|w| w[1] == w[0] + 1),
            "in order, no gap"
        );
    }
    // New publications continue after the last stored offset: no offset is reused.
    let mut c = Client::connect(ws, Fmt::Json, &token("after", None)).await;
    let r = c
        .call(json!({"cmd": "publish", "channel": "ledger:crash", "data": "after"}))
        .await;
    assert_eq!(r["result"]["epoch"], json!(epoch), "{r}");
    assert_eq!(r["result"]["offset"], json!(top + 1), "{r}");
    assert!(acked.iter().all(|(_, o, _)| *o <= top));

    // The async channel lost its guarantee with the crash: a new epoch, and a client
    // recovering from its old position is told plainly.
    let r = c
        .call(json!({"cmd": "subscribe", "channel": "feed:crash", "since": {"epoch": feed_top["epoch"], "offset": feed_top["offset"]}}))
        .await;
    assert_eq!(r["result"]["recovered"], json!(false), "{r}");
    assert_ne!(r["result"]["epoch"], feed_top["epoch"], "{r}");

    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(store.parent().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_keys_continue_after_a_clean_restart() {
    let store = temp_store();
    let server = start(|c| {
        namespaces(c);
        c.store.path = store.clone();
    });
    let addr = server.ws_addr();
    let mut c = Client::connect(addr, Fmt::MsgPack, &token("p", None)).await;
    let mut first = BTreeMap::new();
    for channel in ["ledger:clean", "feed:clean"] {
        for i in 1..=5u64 {
            let r = c
                .call(json!({"cmd": "publish", "channel": channel, "data": {"i": i}, "key": format!("k{i}"), "meta": {"type": "text/plain"}}))
                .await;
            assert_eq!(r["result"]["offset"], json!(i), "{r}");
            first.insert(channel, r["result"]["epoch"].clone());
        }
    }
    drop(c);
    server.shutdown();
    server.wait();

    let server = start(|c| {
        namespaces(c);
        c.store.path = store.clone();
    });
    let addr = server.ws_addr();
    let mut c = Client::connect(addr, Fmt::Json, &token("p", None)).await;
    for channel in ["ledger:clean", "feed:clean"] {
        let epoch = &first[channel];
        // Recovery across the restart: everything after offset 2, with its metadata.
        let r = c
            .call(json!({"cmd": "subscribe", "channel": channel, "since": {"epoch": epoch, "offset": 2}}))
            .await;
        assert_eq!(r["result"]["recovered"], json!(true), "{channel}: {r}");
        assert_eq!(&r["result"]["epoch"], epoch, "{r}");
        let pubs = r["result"]["publications"].as_array().unwrap();
        assert_eq!(pubs.len(), 3, "{r}");
        assert_eq!(pubs[0]["data"], json!({"i": 3}));
        assert_eq!(pubs[0]["meta"], json!({"type": "text/plain"}));
        // A retry with a key seen before the restart is still recognised.
        let r = c
            .call(json!({"cmd": "publish", "channel": channel, "data": {"i": 4}, "key": "k4"}))
            .await;
        assert_eq!(r["result"]["offset"], json!(4), "{r}");
        assert_eq!(r["result"]["duplicate"], json!(true), "{r}");
        let r = c
            .call(json!({"cmd": "publish", "channel": channel, "data": {"i": 6}}))
            .await;
        assert_eq!(r["result"]["offset"], json!(6), "{r}");
        assert_eq!(&r["result"]["epoch"], epoch, "{r}");
        // The new publication reaches the recovered subscriber live.
        let p = c.next_publication().await;
        assert_eq!(p["offset"], json!(6), "{p}");
    }
    server.shutdown();
    server.wait();
    let _ = std::fs::remove_dir_all(store.parent().unwrap());
}

/// A publication a backend named with an event (for Socket.IO subscribers) keeps the
/// name in the store: history and recovery after a restart carry it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_publications_keep_their_event_across_a_restart() {
    let store = temp_store();
    let server = start(|c| {
        namespaces(c);
        c.store.path = store.clone();
    });
    let body =
        json!({"channel": "ledger:named", "data": {"pct": 40}, "event": "analysis_progress"});
    let (status, r) = api(server.admin_addr(), "POST", "/api/publish", &body).await;
    assert_eq!(status, 200, "{r}");
    let epoch = r["epoch"].clone();
    server.shutdown();
    server.wait();

    let server = start(|c| {
        namespaces(c);
        c.store.path = store.clone();
    });
    let mut c = Client::connect(server.ws_addr(), Fmt::Json, &token("p", None)).await;
    let r = c
        .call(json!({"cmd": "subscribe", "channel": "ledger:named", "since": {"epoch": epoch, "offset": 0}}))
        .await;
    assert_eq!(r["result"]["recovered"], json!(true), "{r}");
    let pubs = r["result"]["publications"].as_array().unwrap();
    assert_eq!(pubs[0]["event"], "analysis_progress", "{r}");
    assert_eq!(pubs[0]["data"], json!({"pct": 40}), "{r}");
    let (status, h) = api(
        server.admin_addr(),
        "GET",
        "/api/history?channel=ledger:named",
        &Value::Null,
    )
    .await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["publications"][0]["event"], "analysis_progress", "{h}");
    server.shutdown();
    server.wait();
    let _ = std::fs::remove_dir_all(store.parent().unwrap());
}

#[test]
fn an_unusable_store_is_a_startup_error_naming_the_file() {
    let dir = temp_store().parent().unwrap().to_path_buf();
    std::fs::create_dir_all(&dir).unwrap();
    // Its directory cannot be created: a regular file is in the way.
    let blocker = dir.join("not-a-dir");
    std::fs::write(&blocker, b"x").unwrap();
    let path = blocker.join("switchboard.db");
    let mut cfg = failing_start_config(&path);
    let e = format!(
        "{:#}",
        switchboard_control_plane::Server::start(cfg.clone()).unwrap_err()
    );
    assert!(e.contains(&path.display().to_string()), "{e}");
    assert!(e.contains("cannot create directory"), "{e}");

    // A file that is not a SQLite database.
    let garbage = dir.join("garbage.db");
    std::fs::write(&garbage, vec![0x5a; 8192]).unwrap();
    cfg.store.path = garbage.clone();
    let e = format!(
        "{:#}",
        switchboard_control_plane::Server::start(cfg).unwrap_err()
    );
    assert!(e.contains(&garbage.display().to_string()), "{e}");
    assert!(e.contains("not a database"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_write_refuses_durable_publications_plainly() {
    let server = start(namespaces);
    let addr = server.ws_addr();
    let admin = server.admin_addr();
    let mut c = Client::connect(addr, Fmt::Json, &token("p", None)).await;
    let r = c
        .call(json!({"cmd": "publish", "channel": "ledger:down", "data": 1}))
        .await;
    assert_eq!(r["result"]["offset"], json!(1), "{r}");

    // The writer's circuit opens (as after a failed write).
    let state = server.store().unwrap().state().clone();
    state.set_healthy(false);
    for channel in ["ledger:down", "feed:down"] {
        let r = c
            .call(json!({"cmd": "publish", "channel": channel, "data": 2}))
            .await;
        assert_eq!(r["error"]["code"], json!(111), "{channel}: {r}");
    }
    // Memory-only channels are unaffected.
    let r = c
        .call(json!({"cmd": "publish", "channel": "room:fine", "data": 2}))
        .await;
    assert_eq!(r["result"]["offset"], json!(1), "{r}");
    let auth = format!("Bearer {API_KEY}");
    let (status, body) = http(
        admin,
        "POST",
        "/api/publish",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        r#"{"channel": "ledger:down", "data": 3}"#,
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("store_unavailable"), "{body}");
    let (status, body) = http(admin, "GET", "/health/ready", &[], "").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("store_unavailable"), "{body}");
    assert_eq!(metric(admin, "switchboard_store_up").await, 0);

    // Closed again: publishing continues at the next offset (nothing was used).
    state.set_healthy(true);
    let r = c
        .call(json!({"cmd": "publish", "channel": "ledger:down", "data": 4}))
        .await;
    assert_eq!(r["result"]["offset"], json!(2), "{r}");
    let (status, _) = http(admin, "GET", "/health/ready", &[], "").await;
    assert_eq!(status, 200);
    assert!(metric(admin, "switchboard_store_records_total").await >= 2);
    server.shutdown();
    server.wait();
}
