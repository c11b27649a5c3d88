//! Fault tests on the real binary, `#[ignore]`d and run by name (docs/RELIABILITY.md
//! "Fault tests"); each stops by itself:
//!
//! ```sh
//! cargo test -p switchboard-control-plane --test faults -- --ignored --nocapture
//! SWITCHBOARD_TEST_IO=uring cargo test -p switchboard-control-plane --test faults -- --ignored
//! ```
//!
//! - SIGKILL mid-load, three times over one store, on `sync` channels and inboxes at
//!   once: every acknowledged publication and direct message is in history at its
//!   offset, in the same epoch, after each restart.
//! - The store's disk fills up (a real tmpfs of a few MiB, mounted here: needs root):
//!   durable publishes are refused plainly, nothing else stops, and once space is back
//!   the store writes again and every acknowledged publication survives a SIGKILL. A
//!   store on a read-only file system is a start-up error naming the file.
//! - The wall clock jumps an hour forward and back (libfaketime on the server process,
//!   monotonic time untouched, as an NTP step does): no connection is closed, offsets
//!   stay consecutive, a scheduled message that the jump made due fires at once.
//!
//! The one-hour soak is in `soak.rs`.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use fastwebsockets::{Frame, OpCode, Payload};
use serde_json::{json, Value};

fn config_file(store: &Path) -> PathBuf {
    write_config(
        store,
        "tick_ms = 20",
        "retry_ms = 200",
        r#"[namespaces.ledger]
durability = "sync"
history_size = 1000000
history_ttl_ms = 3600000

[inbox]
history_size = 1000000"#,
    )
}

/// One acknowledged publication: channel, epoch, offset, data.
type Acked = (String, String, u64, Value);

/// Write `cmd` (given id `id`) and wait for its reply; None when the server is gone.
async fn request(c: &mut Client, id: u64, cmd: &Value) -> Option<Value> {
    let mut cmd = cmd.clone();
    cmd["id"] = json!(id);
    let frame = Frame::text(Payload::Owned(serde_json::to_vec(&cmd).unwrap()));
    c.ws.write_frame(frame).await.ok()?;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), c.ws.read_frame()).await {
            Ok(Ok(f)) if f.opcode == OpCode::Text => {
                let v: Value = serde_json::from_slice(&f.payload).unwrap();
                if v["id"] == json!(id) {
                    return Some(v);
                }
            }
            Ok(Ok(f)) if f.opcode == OpCode::Close => return None,
            Ok(Ok(_)) => continue,
            _ => return None,
        }
    }
}

/// Publish (even workers, to `ledger:k<w % 4>`) or send (odd workers, to inboxes of
/// `r0`..`r15`) one message after another until the server goes away; every
/// acknowledged one. A rate-limited command (114) waits and is sent again: it was not
/// acknowledged.
async fn load_until_gone(ws: std::net::SocketAddr, round: u64, worker: u64) -> Vec<Acked> {
    let user = format!("w{round}-{worker}");
    let tok = token_with(&user, |c| c.send_to = Some(vec!["*".into()]));
    let mut c = Client::connect(ws, Fmt::Json, &tok).await;
    let mut acked = Vec::new();
    let mut id = 0;
    for n in 0u64.. {
        let data = json!({"round": round, "w": worker, "n": n});
        let (channel, cmd) = if worker % 2 == 0 {
            let channel = format!("ledger:k{}", worker % 4);
            let cmd = json!({"cmd": "publish", "channel": channel, "data": data});
            (channel, cmd)
        } else {
            let to = format!("r{}", (worker * 7 + n) % 16);
            let cmd = json!({"cmd": "send", "user": to, "data": data});
            (format!("inbox:{to}"), cmd)
        };
        let reply = loop {
            id += 1;
            let Some(r) = request(&mut c, id, &cmd).await else {
                return acked;
            };
            match r["error"]["code"].as_u64() {
                Some(114) => {
                    let wait = r["error"]["retry_after_ms"].as_u64().unwrap_or(10);
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
                Some(108) => tokio::time::sleep(Duration::from_millis(10)).await,
                _ => break r,
            }
        };
        let result = &reply["result"];
        assert!(result.is_object(), "refused: {reply}");
        acked.push((
            channel,
            result["epoch"].as_str().unwrap().to_string(),
            result["offset"].as_u64().unwrap(),
            data,
        ));
    }
    acked
}

/// Every acknowledged publication is in its channel's history at its offset, in its
/// epoch.
async fn assert_all_stored(admin: std::net::SocketAddr, acked: &[Acked]) {
    let mut by_channel: HashMap<&str, Vec<&Acked>> = HashMap::new();
    for a in acked {
        by_channel.entry(&a.0).or_default().push(a);
    }
    for (channel, list) in by_channel {
        let (epoch, history) = full_history(admin, channel).await;
        for (_, e, offset, data) in list {
            assert_eq!(e, &epoch, "{channel} keeps its epoch across crashes");
            assert_eq!(
                history.get(offset),
                Some(data),
                "{channel}: acknowledged offset {offset} is stored"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "fault test: run by name"]
async fn sigkill_mid_load_loses_no_acknowledged_message() {
    const ROUNDS: u64 = 3;
    const WORKERS: u64 = 16;
    let store = temp_store();
    let config = config_file(&store);
    let mut acked: Vec<Acked> = Vec::new();
    for round in 0..ROUNDS {
        let (child, ws, admin) = spawn_with_config(&config);
        let mut child = Running(Some(child));
        // What earlier rounds acknowledged survived the crash that ended them.
        assert_all_stored(admin, &acked).await;
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| tokio::spawn(load_until_gone(ws, round, w)))
            .collect();
        // Kill at a different point of each round's stream.
        tokio::time::sleep(Duration::from_millis(2000 + 700 * round)).await;
        child.kill();
        let before = acked.len();
        for w in workers {
            acked.extend(w.await.unwrap());
        }
        let publishes = acked[before..]
            .iter()
            .filter(|a| a.0.starts_with("ledger:"))
            .count();
        let sends = acked.len() - before - publishes;
        eprintln!(
            "round {round}: {publishes} publications and {sends} direct messages acknowledged before SIGKILL"
        );
        assert!(
            publishes >= 100 && sends >= 100,
            "too little load to mean anything"
        );
    }
    let (child, _, admin) = spawn_with_config(&config);
    let child = Running(Some(child));
    assert_all_stored(admin, &acked).await;
    eprintln!(
        "sigkill ({}): {} acknowledged over {ROUNDS} kills, none lost",
        backend_under_test(),
        acked.len()
    );
    child.stop();
    let _ = std::fs::remove_dir_all(store.parent().unwrap());
}

fn stop_binary_quietly(mut child: std::process::Child) {
    // SAFETY: signals our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
}

/// A server process killed if the test fails before it stops it.
struct Running(Option<std::process::Child>);

impl Running {
    fn stop(mut self) {
        stop_binary_quietly(self.0.take().unwrap());
    }

    fn kill(&mut self) {
        let mut child = self.0.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A tmpfs of `size` mounted on a new directory; unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = temp_store().parent().unwrap().join("mnt");
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .expect("mount(8)");
        assert!(
            out.status.success(),
            "this fault test mounts a small tmpfs and needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir)
    }

    fn remount(&self, options: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.0)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "remount {options}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(self.0.parent().unwrap());
    }
}

/// Publishes `ledger:disk` with 16 KiB payloads on one connection, without waiting
/// more than `patience` for a reply: a publish the store is still trying to write
/// stays outstanding (its reply comes once it is stored).
struct DiskWriter {
    c: Client,
    next: u64,
    outstanding: HashMap<u64, Value>,
    acked: Vec<Acked>,
    refused: u64,
}

impl DiskWriter {
    async fn new(ws: std::net::SocketAddr) -> DiskWriter {
        DiskWriter {
            c: Client::connect(ws, Fmt::Json, &token("disk", None)).await,
            next: 100,
            outstanding: HashMap::new(),
            acked: Vec::new(),
            refused: 0,
        }
    }

    /// Send one publish and take what comes back within `patience`; the error code of
    /// this publish's reply if it was refused.
    async fn publish(&mut self, patience: Duration) -> Option<u64> {
        self.next += 1;
        let id = self.next;
        let data = json!({"n": id, "pad": "x".repeat(16 * 1024)});
        let cmd = json!({"id": id, "cmd": "publish", "channel": "ledger:disk", "data": data, "key": format!("k{id}")});
        let frame = Frame::text(Payload::Owned(serde_json::to_vec(&cmd).unwrap()));
        self.c.ws.write_frame(frame).await.unwrap();
        self.outstanding.insert(id, data);
        let mut code = None;
        let deadline = tokio::time::Instant::now() + patience;
        while self.outstanding.contains_key(&id) {
            let Ok(f) = tokio::time::timeout_at(deadline, self.c.ws.read_frame()).await else {
                break;
            };
            let f = f.expect("the connection stays open");
            assert_eq!(f.opcode, OpCode::Text);
            let v: Value = serde_json::from_slice(&f.payload).unwrap();
            let Some(rid) = v["id"].as_u64() else {
                continue;
            };
            let data = self.outstanding.remove(&rid).expect("a reply to a publish");
            if v["result"].is_object() {
                self.acked.push((
                    "ledger:disk".into(),
                    v["result"]["epoch"].as_str().unwrap().into(),
                    v["result"]["offset"].as_u64().unwrap(),
                    data,
                ));
            } else {
                let c = v["error"]["code"].as_u64().unwrap();
                assert!(c == 111 || c == 108, "refused plainly: {v}");
                self.refused += 1;
                if rid == id {
                    code = Some(c);
                }
            }
        }
        code
    }

    /// Publish until three in a row are refused (the store cannot write).
    async fn until_refused(&mut self) {
        let mut in_a_row = 0;
        for _ in 0..5000 {
            match self.publish(Duration::from_millis(300)).await {
                Some(_) => in_a_row += 1,
                None => in_a_row = 0,
            }
            if in_a_row == 3 {
                return;
            }
        }
        panic!("the store never stopped taking writes");
    }

    /// Publish until one is acknowledged again, then wait for every outstanding reply.
    async fn until_stored_again(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let before = self.acked.len();
        while self.acked.len() == before {
            assert!(Instant::now() < deadline, "the store never wrote again");
            self.publish(Duration::from_millis(500)).await;
        }
        while !self.outstanding.is_empty() {
            assert!(
                Instant::now() < deadline,
                "replies never came: {:?}",
                self.outstanding.keys()
            );
            self.publish(Duration::from_millis(500)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault test: run by name; needs root (mounts a tmpfs)"]
async fn a_full_disk_refuses_durable_publishes_and_recovers() {
    let disk = Tmpfs::mount("3m");
    let store = disk.0.join("switchboard.db");
    let config = config_file(&store);
    let (child, ws, admin) = spawn_with_config(&config);
    let mut child = Running(Some(child));

    let mut w = DiskWriter::new(ws).await;
    w.until_refused().await;
    eprintln!(
        "disk full after {} acknowledged 16 KiB publications ({} refused)",
        w.acked.len(),
        w.refused
    );
    assert!(w.acked.len() >= 20, "the disk held only {}", w.acked.len());
    // The process and everything not durable keep working.
    let mut other = Client::connect(ws, Fmt::Json, &token("other", None)).await;
    let r = other
        .call(json!({"cmd": "publish", "channel": "room:fine", "data": 1}))
        .await;
    assert!(r["result"].is_object(), "{r}");
    let (status, body) = http(admin, "GET", "/health/ready", &[], "").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("store_unavailable"), "{body}");
    let (status, _) = http(admin, "GET", "/health/live", &[], "").await;
    assert_eq!(status, 200);

    // Space again: the writer's retry gets through, the outstanding publishes are
    // answered, new ones are taken.
    disk.remount("size=64m");
    w.until_stored_again().await;
    let (status, body) = http(admin, "GET", "/health/ready", &[], "").await;
    assert_eq!(status, 200, "{body}");
    eprintln!("stored again: {} acknowledged", w.acked.len());

    // Every acknowledged one survives a crash.
    child.kill();
    let (child, _, admin) = spawn_with_config(&config);
    let child = Running(Some(child));
    assert_all_stored(admin, &w.acked).await;
    child.stop();

    // A store on a file system that is read-only by now is a start-up error naming it.
    disk.remount("ro");
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "started on a read-only store: {stderr}"
    );
    assert!(stderr.contains(&*store.display().to_string()), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("Read-only file system"),
        "says why: {stderr}"
    );
    eprintln!("read-only store: {}", stderr.trim());
}

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// A token valid for three days, so an hour's jump either way leaves it valid.
fn long_token(sub: &str) -> String {
    switchboard_control_plane::auth::mint_with(
        SECRET,
        sub,
        Duration::from_secs(3 * 86_400),
        &Default::default(),
        |c| c.schedule = Some(true),
    )
}

fn real_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Publishes to `room:clock` and `ledger:clock` in turn until `stop`; each reply.
async fn publish_steadily(
    mut c: Client,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (Client, Vec<(String, Value)>) {
    let mut replies = Vec::new();
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        for channel in ["room:clock", "ledger:clock"] {
            n += 1;
            let r = c
                .call(json!({"cmd": "publish", "channel": channel, "data": n}))
                .await;
            replies.push((channel.to_string(), r));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (c, replies)
}

/// The next publication with data `data` within `within`; the others on the way are
/// kept in `others`.
async fn wait_for(
    c: &mut Client,
    data: &Value,
    within: Duration,
    others: &mut Vec<Value>,
) -> Option<Duration> {
    let started = Instant::now();
    tokio::time::timeout(within, async {
        loop {
            let p = c.next_publication().await;
            if &p["data"] == data {
                return started.elapsed();
            }
            others.push(p);
        }
    })
    .await
    .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "fault test: run by name; needs libfaketime (apt-get install faketime)"]
async fn the_wall_clock_jumping_breaks_nothing() {
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: apt-get install -y faketime"
    );
    let store = temp_store();
    let config = config_file(&store);
    let offset_file = store.with_extension("faketime");
    let jump = |to: &str| std::fs::write(&offset_file, to).unwrap();
    jump("+0");
    let env = [
        ("LD_PRELOAD", LIBFAKETIME),
        ("FAKETIME_TIMESTAMP_FILE", offset_file.to_str().unwrap()),
        ("FAKETIME_NO_CACHE", "1"),
        // As an NTP step: the wall clock jumps, monotonic time does not.
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ("RUST_LOG", "info"),
    ];
    let (child, ws, admin) = spawn_with_config_env(&config, &env);
    let child = Running(Some(child));

    // A subscriber of both channels, a publisher, and a client that schedules.
    let mut sub = Client::connect(ws, Fmt::Json, &long_token("sub")).await;
    for channel in ["room:clock", "ledger:clock", "room:due"] {
        let r = sub
            .call(json!({"cmd": "subscribe", "channel": channel}))
            .await;
        assert!(r["result"].is_object(), "{r}");
    }
    let publisher = Client::connect(ws, Fmt::Json, &long_token("pub")).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publishing = tokio::spawn(publish_steadily(publisher, stop.clone()));
    let mut planner = Client::connect(ws, Fmt::Json, &long_token("planner")).await;
    let mut delivered = Vec::new();
    tokio::time::sleep(Duration::from_millis(1000)).await;

    // Due in a minute of real time; the clock jumps an hour forward: due now.
    let r = planner
        .call(json!({"cmd": "schedule", "channel": "room:due", "data": "forward", "at": real_now_ms() + 60_000}))
        .await;
    assert!(r["result"]["schedule"].is_u64(), "{r}");
    jump("+1h");
    let fired = wait_for(
        &mut sub,
        &json!("forward"),
        Duration::from_secs(5),
        &mut delivered,
    )
    .await;
    assert!(fired.is_some(), "a message the jump made due did not fire");
    eprintln!("forward jump: the due message fired after {fired:?}");
    tokio::time::sleep(Duration::from_millis(2000)).await;

    // An hour back (two hours before the server's last reading): a message due in two
    // seconds of the server's time fires in about two seconds.
    jump("-1h");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = planner
        .call(json!({"cmd": "schedule", "channel": "room:due", "data": "backward", "delay": 2000}))
        .await;
    assert!(r["result"]["schedule"].is_u64(), "{r}");
    let fired = wait_for(
        &mut sub,
        &json!("backward"),
        Duration::from_secs(8),
        &mut delivered,
    )
    .await;
    let fired = fired.expect("a delayed message after a backward jump did not fire");
    assert!(
        fired >= Duration::from_millis(1500),
        "fired early: {fired:?}"
    );
    eprintln!("backward jump: a 2 s delay fired after {fired:?}");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    jump("+0");
    tokio::time::sleep(Duration::from_millis(2000)).await;

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut publisher, replies) = publishing.await.unwrap();
    // Every publish was taken, offsets consecutive per channel; nothing was closed.
    let mut last: HashMap<String, u64> = HashMap::new();
    for (channel, r) in &replies {
        let offset = r["result"]["offset"]
            .as_u64()
            .unwrap_or_else(|| panic!("{channel}: {r}"));
        let prev = last.insert(channel.clone(), offset).unwrap_or(0);
        assert_eq!(offset, prev + 1, "{channel}: consecutive offsets");
    }
    assert!(replies.len() >= 100, "only {} publishes", replies.len());
    for c in [&mut sub, &mut publisher, &mut planner] {
        let r = c.call(json!({"cmd": "ping"})).await;
        assert!(r["result"].is_object(), "the connection is still open: {r}");
    }
    // The subscriber saw every publication in order.
    let mut seen: HashMap<String, u64> = HashMap::new();
    let rest = std::mem::take(&mut sub.backlog)
        .into_iter()
        .filter_map(|e| match e {
            Event::Msg(p) if p["push"] == "publication" => Some(p),
            _ => None,
        });
    for p in delivered.into_iter().chain(rest) {
        let channel = p["channel"].as_str().unwrap().to_string();
        if channel == "room:due" {
            continue;
        }
        let offset = p["offset"].as_u64().unwrap();
        let prev = seen.insert(channel.clone(), offset).unwrap_or(0);
        assert_eq!(offset, prev + 1, "{channel}: delivered in order");
    }
    eprintln!(
        "clock jumps: {} publishes acknowledged, offsets consecutive, no connection closed",
        replies.len()
    );

    // The sync channel's acknowledged publications are all there after a restart.
    let acked: Vec<Acked> = replies
        .iter()
        .filter(|(c, _)| c == "ledger:clock")
        .map(|(c, r)| {
            (
                c.clone(),
                r["result"]["epoch"].as_str().unwrap().to_string(),
                r["result"]["offset"].as_u64().unwrap(),
                r["result"].clone(),
            )
        })
        .collect();
    let _ = admin;
    child.stop();
    let (child, _, admin) = spawn_with_config(&config);
    let child = Running(Some(child));
    let (epoch, history) = full_history(admin, "ledger:clock").await;
    for (_, e, offset, _) in &acked {
        assert_eq!(e, &epoch, "the sync channel keeps its epoch");
        assert!(history.contains_key(offset), "offset {offset} is stored");
    }
    child.stop();
    let _ = std::fs::remove_dir_all(store.parent().unwrap());
}
