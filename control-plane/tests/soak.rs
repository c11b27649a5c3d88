//! The soak: the real binary under a steady mixed load for an hour (SOAK_SECS, default
//! 3600), its resident memory and open files sampled every 10 s; `#[ignore]`d, run by
//! name (docs/RELIABILITY.md "Soak"):
//!
//! ```sh
//! cargo test --release -p switchboard-control-plane --test soak -- --ignored --nocapture
//! SOAK_SECS=600 cargo test --release -p switchboard-control-plane --test soak -- --ignored --nocapture
//! ```
//!
//! The load: 200 subscribers on 20 rooms (half JSON, half MessagePack) reading
//! everything; 10 publishers at 20 publications/s each into the rooms (2,000
//! deliveries/s) with typing; one publisher into a `sync` channel and one into an
//! `async` one at 20/s; two senders of direct messages at 10/s to 50 users' inboxes;
//! 10 connections/s that connect, subscribe, read history, publish and go (half with
//! a close frame, half dropping the socket). Retention is shortened (history one
//! minute, dedupe 30 s) so the server reaches its steady state within the warm-up.
//!
//! Checks: no subscriber is closed and every one receives; after the warm-up
//! (max(120 s, a sixth of the run)) the resident memory of the last quarter is within
//! 10% + 8 MiB of the quarter after the warm-up, and the open files at the end within
//! 16 of those after the warm-up.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use fastwebsockets::{Frame, OpCode};
use serde_json::{json, Value};

const ROOMS: u64 = 20;
const SUBSCRIBERS: u64 = 200;
const PUBLISHERS: u64 = 10;

fn config_file(store: &Path) -> PathBuf {
    write_config(
        store,
        "history_ttl_ms = 60000\ndedupe_window_ms = 30000",
        "prune_interval_ms = 10000",
        r#"[namespaces.ledger]
durability = "sync"

[namespaces.feed]
durability = "async"

[inbox]
history_ttl_ms = 60000"#,
    )
}

/// What the process holds: resident memory (bytes) and open files.
fn sample(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    let files = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64;
    (rss_kb * 1024, files)
}

struct Load {
    stop: AtomicBool,
    delivered: AtomicU64,
    commands: AtomicU64,
    churned: AtomicU64,
}

fn soak_token(sub: &str) -> String {
    switchboard_control_plane::auth::mint_with(
        SECRET,
        sub,
        Duration::from_secs(4 * 3600),
        &Default::default(),
        |c| c.send_to = Some(vec!["*".into()]),
    )
}

/// Subscribe to a room and read everything until the end; panics if closed.
async fn subscriber(ws: std::net::SocketAddr, i: u64, load: Arc<Load>) {
    let fmt = if i % 2 == 0 { Fmt::Json } else { Fmt::MsgPack };
    let mut c = Client::connect(ws, fmt, &soak_token(&format!("s{i}"))).await;
    let r = c
        .call(json!({"cmd": "subscribe", "channel": format!("room:s{}", i % ROOMS)}))
        .await;
    assert!(r["result"].is_object(), "{r}");
    let mut got = 0u64;
    while !load.stop.load(Ordering::Relaxed) {
        match tokio::time::timeout(Duration::from_millis(500), c.ws.read_frame()).await {
            Err(_) => continue,
            Ok(Ok(f)) if f.opcode == OpCode::Close => {
                panic!(
                    "subscriber {i} was closed: {:?}",
                    String::from_utf8_lossy(&f.payload)
                )
            }
            Ok(Ok(f)) if matches!(f.opcode, OpCode::Text | OpCode::Binary) => {
                got += 1;
                load.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("subscriber {i}: {e}"),
        }
    }
    assert!(got > 0, "subscriber {i} received nothing");
}

/// One command every `every`, waiting for its reply, until the end.
async fn steady(
    ws: std::net::SocketAddr,
    user: String,
    subscribe: Option<String>,
    every: Duration,
    load: Arc<Load>,
    next: impl Fn(u64) -> Value,
) {
    let mut c = Client::connect(ws, Fmt::Json, &soak_token(&user)).await;
    if let Some(channel) = subscribe {
        let r = c
            .call(json!({"cmd": "subscribe", "channel": channel}))
            .await;
        assert!(r["result"].is_object(), "{r}");
    }
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0u64.. {
        if load.stop.load(Ordering::Relaxed) {
            break;
        }
        tick.tick().await;
        let r = c.call(next(n)).await;
        assert!(r.get("result").is_some(), "{user}: {r}");
        c.backlog.clear(); // pushes of the subscribed room, read and dropped
        load.commands.fetch_add(1, Ordering::Relaxed);
    }
}

/// Ten short-lived connections a second.
async fn churn(ws: std::net::SocketAddr, load: Arc<Load>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0u64.. {
        if load.stop.load(Ordering::Relaxed) {
            break;
        }
        tick.tick().await;
        let mut c = Client::connect(ws, Fmt::Json, &soak_token(&format!("c{}", n % 500))).await;
        let room = format!("room:s{}", n % ROOMS);
        let r = c.call(json!({"cmd": "subscribe", "channel": room})).await;
        assert!(r["result"].is_object(), "{r}");
        let r = c
            .call(json!({"cmd": "history", "channel": room, "limit": 10}))
            .await;
        assert!(r["result"].is_object(), "{r}");
        let r = c
            .call(json!({"cmd": "publish", "channel": room, "data": {"churn": n}}))
            .await;
        assert!(r["result"].is_object(), "{r}");
        if n % 2 == 0 {
            let _ = c.ws.write_frame(Frame::close(1000, b"bye")).await;
        }
        drop(c);
        load.churned.fetch_add(1, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: an hour by default; run by name"]
async fn an_hour_of_steady_mixed_load_keeps_memory_and_files_flat() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .map(|s| s.parse().expect("SOAK_SECS is a number of seconds"))
        .unwrap_or(3600);
    let store = temp_store();
    let config = config_file(&store);
    let (mut child, ws, _admin) = spawn_with_config(&config);
    let pid = child.id();
    let load = Arc::new(Load {
        stop: AtomicBool::new(false),
        delivered: AtomicU64::new(0),
        commands: AtomicU64::new(0),
        churned: AtomicU64::new(0),
    });

    let mut tasks = Vec::new();
    for i in 0..SUBSCRIBERS {
        tasks.push(tokio::spawn(subscriber(ws, i, load.clone())));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for p in 0..PUBLISHERS {
        tasks.push(tokio::spawn(steady(
            ws,
            format!("p{p}"),
            Some(format!("room:s{p}")),
            Duration::from_millis(50),
            load.clone(),
            move |n| {
                let channel = format!("room:s{}", (p + n) % ROOMS);
                if n % 10 == 0 {
                    json!({"cmd": "typing", "channel": format!("room:s{p}"), "typing": n % 20 == 0})
                } else {
                    json!({"cmd": "publish", "channel": channel, "data": {"p": p, "n": n, "text": "x".repeat(200)}})
                }
            },
        )));
    }
    for ns in ["ledger", "feed"] {
        tasks.push(tokio::spawn(steady(
            ws,
            format!("{ns}-writer"),
            None,
            Duration::from_millis(50),
            load.clone(),
            move |n| json!({"cmd": "publish", "channel": format!("{ns}:soak"), "data": {"n": n}, "key": format!("k{n}")}),
        )));
    }
    for s in 0..2u64 {
        tasks.push(tokio::spawn(steady(
            ws,
            format!("sender{s}"),
            None,
            Duration::from_millis(100),
            load.clone(),
            move |n| json!({"cmd": "send", "user": format!("u{}", (n * 2 + s) % 50), "data": {"n": n}}),
        )));
    }
    tasks.push(tokio::spawn(churn(ws, load.clone())));

    let started = Instant::now();
    let warmup = Duration::from_secs((secs / 6).max(120).min(secs / 2));
    let mut samples: Vec<(Duration, u64, u64)> = Vec::new();
    eprintln!(
        "soak: {secs} s, warm-up {} s; t(s) rss(MiB) files delivered commands churned",
        warmup.as_secs()
    );
    while started.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(child.try_wait().unwrap().is_none(), "the server exited");
        for t in &tasks {
            if t.is_finished() {
                load.stop.store(true, Ordering::Relaxed);
                break;
            }
        }
        if load.stop.load(Ordering::Relaxed) {
            break; // a worker failed: its panic is reported below
        }
        let (rss, files) = sample(pid);
        let t = started.elapsed();
        samples.push((t, rss, files));
        eprintln!(
            "soak {:>5} {:>8.1} {:>5} {:>10} {:>8} {:>6}",
            t.as_secs(),
            rss as f64 / 1048576.0,
            files,
            load.delivered.load(Ordering::Relaxed),
            load.commands.load(Ordering::Relaxed),
            load.churned.load(Ordering::Relaxed),
        );
    }
    load.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("a load worker failed");
    }
    let _ = child.kill();
    let _ = child.wait();

    let steady: Vec<_> = samples.iter().filter(|s| s.0 >= warmup).collect();
    assert!(
        steady.len() >= 8,
        "too short to judge: {} samples after the warm-up",
        steady.len()
    );
    let quarter = steady.len() / 4;
    let mean = |s: &[&(Duration, u64, u64)]| s.iter().map(|x| x.1).sum::<u64>() / s.len() as u64;
    let early = mean(&steady[..quarter]);
    let late = mean(&steady[steady.len() - quarter..]);
    let (files_early, files_late) = (steady[0].2, steady.last().unwrap().2);
    eprintln!(
        "soak: resident {:.1} MiB after the warm-up, {:.1} MiB at the end; open files {files_early} -> {files_late}; {} delivered, {} commands, {} short connections",
        early as f64 / 1048576.0,
        late as f64 / 1048576.0,
        load.delivered.load(Ordering::Relaxed),
        load.commands.load(Ordering::Relaxed),
        load.churned.load(Ordering::Relaxed),
    );
    assert!(
        late <= early + early / 10 + 8 * 1048576,
        "resident memory grew from {early} to {late} bytes"
    );
    assert!(
        files_late <= files_early + 16,
        "open files grew from {files_early} to {files_late}"
    );
    let _ = std::fs::remove_dir_all(store.parent().unwrap());
}
