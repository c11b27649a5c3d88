//! The `switchboard` binary itself: dev-mode start-up, SIGTERM → close 1001 → exit 0,
//! a bad config file → exit 2 with the key named, and the `token` subcommand.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_serves_and_sigterm_drains_with_1001() {
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--shards",
            "2",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut ws, mut tok, mut secret) = (None, None, None);
    while ws.is_none() || tok.is_none() || secret.is_none() {
        let line = lines.next().expect("banner").unwrap();
        if let Some(rest) = line.trim().strip_prefix("WebSocket  ws://") {
            ws = Some(
                rest.split('/')
                    .next()
                    .unwrap()
                    .parse::<std::net::SocketAddr>()
                    .unwrap(),
            );
        } else if line.trim().starts_with("eyJ") {
            tok = Some(line.trim().to_string());
        } else if let Some(i) = line.find("--secret ") {
            secret = Some(line[i + 9..].split(' ').next().unwrap().to_string());
        }
    }
    let ws = ws.unwrap();
    // The printed dev token works.
    let mut c = Client::connect(ws, Fmt::Json, &tok.unwrap()).await;
    // So does one minted with the printed command.
    let minted = Command::new(BIN)
        .args([
            "token",
            "--secret",
            &secret.unwrap(),
            "--sub",
            "alice",
            "--channels",
            "room:*",
            "--ttl",
            "10m",
        ])
        .output()
        .unwrap();
    assert!(minted.status.success());
    let mut alice = Client::open(ws, Fmt::MsgPack).await;
    let r = alice
        .call(json!({"cmd": "connect", "token": String::from_utf8(minted.stdout).unwrap().trim()}))
        .await;
    assert_eq!(r["result"]["user"], "alice", "{r}");

    // SIGTERM: clients get 1001, the process exits 0.
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    for client in [&mut c, &mut alice] {
        let (push, code, _) = client.expect_close().await;
        assert_eq!(code, 1001);
        assert_eq!(push.unwrap()["code"], 1001);
    }
    let status = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    assert!(status.success(), "exit status {status}");
}

#[test]
fn bad_config_is_refused_with_the_key_named() {
    let path = std::env::temp_dir().join(format!("sb-bad-{}.toml", std::process::id()));
    std::fs::write(&path, "[engine]\nping_interval_ms = -5\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ping_interval_ms"), "{err}");

    let out = Command::new(BIN)
        .args(["serve"])
        .env("SWITCHBOARD_ENGINE__MAX_FRAME_BYTES", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_frame_bytes"));

    let out = Command::new(BIN)
        .args(["token", "--sub", "a", "--ttl", "5 parsecs"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "clap refuses a bad --ttl");
    let out = Command::new(BIN)
        .args(["token", "--sub", "a"])
        .env_remove("SWITCHBOARD_AUTH__HMAC_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no secret"));
}
