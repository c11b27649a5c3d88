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
        .env("SWITCHBOARD_ENGINE__IO", io_arg())
        .env("SWITCHBOARD_STORE__PATH", temp_store())
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
    // Dev mode's namespaces: presence on room:*, demo:* stored with presence.
    for channel in ["room:1", "demo:1"] {
        let r = c
            .call(json!({"cmd": "subscribe", "channel": channel}))
            .await;
        assert!(r.get("result").is_some(), "{r}");
        let r = c.call(json!({"cmd": "presence", "channel": channel})).await;
        assert!(
            r["result"].to_string().contains("\"dev\""),
            "{channel}: {r}"
        );
    }
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

/// Make `cmd`'s process unable to use io_uring the way container runtimes do: a seccomp
/// filter that fails `io_uring_setup` with EPERM (everything else allowed).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn forbid_io_uring(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_ERRNO: u32 = 0x0005_0000;
    const SYS_IO_URING_SETUP: u32 = 425;
    #[cfg(target_arch = "x86_64")]
    const ARCH: u32 = 0xc000_003e;
    #[cfg(target_arch = "aarch64")]
    const ARCH: u32 = 0xc000_00b7;
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let filter = [
        op(LD_W_ABS, 0, 0, 4), // seccomp_data.arch
        op(JEQ_K, 0, 3, ARCH),
        op(LD_W_ABS, 0, 0, 0), // seccomp_data.nr
        op(JEQ_K, 0, 1, SYS_IO_URING_SETUP),
        op(RET_K, 0, 0, RET_ERRNO | libc::EPERM as u32),
        op(RET_K, 0, 0, RET_ALLOW),
    ];
    // SAFETY: the closure only calls prctl (async-signal-safe) with a filter built before
    // the fork and moved into it.
    unsafe {
        cmd.pre_exec(move || {
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn serve_cmd(io: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--shards",
        "1",
        "--io",
        io,
    ])
    .env("RUST_LOG", "warn")
    .env("SWITCHBOARD_AUTH__HMAC_SECRET", SECRET)
    .env("SWITCHBOARD_STORE__PATH", temp_store())
    .env_remove("SWITCHBOARD_ENGINE__IO");
    cmd
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_uring_forbidden_auto_falls_back_and_uring_refuses_to_start() {
    // `auto` under a policy that forbids io_uring: epoll, with the reason everywhere.
    let mut cmd = serve_cmd("auto");
    forbid_io_uring(&mut cmd);
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut ws, mut admin) = (None, None);
    while ws.is_none() || admin.is_none() {
        let line = lines.next().expect("banner").unwrap();
        let addr = |rest: &str| {
            rest.split('/')
                .next()
                .unwrap()
                .parse::<std::net::SocketAddr>()
                .unwrap()
        };
        if let Some(rest) = line.trim().strip_prefix("WebSocket  ws://") {
            ws = Some(addr(rest));
        } else if let Some(rest) = line.trim().strip_prefix("Admin      http://") {
            admin = Some(addr(rest));
        }
    }
    let (ws, admin) = (ws.unwrap(), admin.unwrap());
    let (status, body) = http(admin, "GET", "/health/ready", &[], "").await;
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["backend"], "epoll", "{body}");
    let why = ready["backend_fallback"].as_str().unwrap_or_default();
    assert!(
        why.contains("io_uring_setup failed") && why.contains("Operation not permitted"),
        "{body}"
    );
    let (_, metrics) = http(admin, "GET", "/metrics", &[], "").await;
    assert!(metrics.contains(r#"backend="epoll""#), "{metrics}");
    // It serves.
    let mut c = Client::connect(ws, Fmt::Json, &token("alice", None)).await;
    let r = c
        .call(json!({"cmd": "subscribe", "channel": "room:1"}))
        .await;
    assert!(r.get("error").is_none(), "{r}");
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "exit status {}", out.status);
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        log.matches("io_uring unavailable, using epoll").count(),
        1,
        "one clear log line: {log}"
    );

    // `uring` under the same policy: no start, and the reason.
    let mut cmd = serve_cmd("uring");
    forbid_io_uring(&mut cmd);
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("io_uring cannot run here") && err.contains("Operation not permitted"),
        "{err}"
    );

    // `probe-io` says the same.
    let mut cmd = Command::new(BIN);
    cmd.arg("probe-io");
    forbid_io_uring(&mut cmd);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("io_uring: unavailable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_flags_work_without_the_subcommand_and_logs_to_a_pipe_are_plain() {
    let mut child = Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--shards",
            "1",
        ])
        .env("SWITCHBOARD_ENGINE__IO", io_arg())
        .env("SWITCHBOARD_STORE__PATH", temp_store())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ws = loop {
        let line = lines.next().expect("banner").unwrap();
        if let Some(rest) = line.trim().strip_prefix("WebSocket  ws://") {
            break rest
                .split('/')
                .next()
                .unwrap()
                .parse::<std::net::SocketAddr>()
                .unwrap();
        }
    };
    let (tok, mut c) = loop {
        let line = lines.next().expect("the dev token").unwrap();
        if line.trim().starts_with("eyJ") {
            let tok = line.trim().to_string();
            break (tok.clone(), Client::connect(ws, Fmt::Json, &tok).await);
        }
    };
    assert!(!tok.is_empty());
    let r = c
        .call(json!({"cmd": "subscribe", "channel": "room:1"}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    let logs = stop_binary(child);
    assert!(logs.contains("engine started"), "{logs}");
    assert!(
        !logs.contains('\u{1b}'),
        "no colour codes in a pipe: {logs:?}"
    );
}

/// Run the binary with `args` (and `env`), which must succeed; its standard output.
fn run_ok(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Run the binary with `args`, which must be refused (exit 2); its standard error.
fn run_refused(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_token_command_sets_every_claim_the_server_reads() {
    use base64::Engine as _;
    let token = run_ok(
        &[
            "token",
            "--secret",
            "cli-test-secret-0123456789abcdef",
            "--sub",
            "dr-lee",
            "--channels",
            "visit:*,case:t1:*",
            "--send-to",
            "*",
            "--schedule",
            "--topics",
            "news,alerts",
            "--role",
            "provider",
            "--team",
            "t1,t2",
            "--tier",
            "premium",
            "--claim",
            "clinic=7",
            "--claim",
            "langs=[\"en\",\"es\"]",
            "--aud",
            "switchboard",
            "--iss",
            "intake",
            "--ttl",
            "2h",
        ],
        &[],
    );
    let payload = token.trim().split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["sub"], "dr-lee");
    assert_eq!(claims["channels"], json!(["visit:*", "case:t1:*"]));
    assert_eq!(claims["send_to"], json!(["*"]));
    assert_eq!(claims["schedule"], true);
    assert_eq!(claims["topics"], json!(["news", "alerts"]));
    assert_eq!(claims["role"], "provider");
    assert_eq!(claims["team"], json!(["t1", "t2"]));
    assert_eq!(claims["tier"], "premium");
    assert_eq!(claims["clinic"], 7);
    assert_eq!(claims["langs"], json!(["en", "es"]));
    assert_eq!(claims["aud"], "switchboard");
    assert_eq!(claims["iss"], "intake");
    let ttl = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert_eq!(ttl, 7200);
    // A claim with its own flag is refused by name.
    let err = run_refused(&["token", "--secret", "x", "--sub", "a", "--claim", "exp=1"]);
    assert!(err.contains("'exp' has its own flag"), "{err}");
}

#[test]
fn config_check_prints_the_effective_configuration_or_the_key_at_fault() {
    let dir = temp_store();
    std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
    let good = dir.parent().unwrap().join("good.toml");
    std::fs::write(
        &good,
        "[engine]\nshards = 3\n[namespaces.chat]\npresence = true\n",
    )
    .unwrap();
    let text = run_ok(
        &["config", "check", good.to_str().unwrap()],
        &[("SWITCHBOARD_ENGINE__MAX_CONNECTIONS", "5000")],
    );
    let printed: switchboard_control_plane::Config = toml::from_str(&text).unwrap();
    assert_eq!(printed.engine.shards, 3, "the file");
    assert_eq!(printed.engine.max_connections, 5000, "the environment");
    assert!(printed.namespaces["chat"].presence);
    assert_eq!(printed.engine.backlog, 4096, "the defaults");
    let bad = dir.parent().unwrap().join("bad.toml");
    std::fs::write(&bad, "[engine]\nshards = \"many\"\n").unwrap();
    let err = run_refused(&["config", "check", bad.to_str().unwrap()]);
    assert!(err.contains("engine.shards"), "{err}");
}

#[test]
fn tune_check_reports_this_host_with_its_limits() {
    let out = Command::new(BIN).args(["tune", "check"]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    for what in [
        "open files",
        "net.core.somaxconn",
        "net.ipv4.tcp_mem",
        "memory",
        "io_uring",
        "locked memory",
        "cores",
    ] {
        assert!(text.contains(&format!("  {what}: ")), "{what} in {text}");
    }
    let cores = std::thread::available_parallelism().unwrap().get();
    assert!(text.contains(&format!("cores: {cores} online")), "{text}");
    if lim.rlim_max < 100_256 {
        // This machine's limit binds, and the fix is printed.
        let n = lim.rlim_max - 256;
        assert!(
            text.contains(&format!(
                "can hold about {n} connections (bound by open files)"
            )),
            "{text}"
        );
        assert!(text.contains("LimitNOFILE="), "{text}");
    }
    assert_eq!(
        out.status.code(),
        Some(0),
        "nothing fatal with the defaults: {text}"
    );
}
