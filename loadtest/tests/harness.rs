//! The harness against a real Switchboard server (in-process, port 0, two shards): every
//! scenario kind runs small and its accounting must add up.

use switchboard_control_plane::{Config, Server};
use switchboard_loadtest::run::{run, RunOptions};
use switchboard_loadtest::scenario::{Kind, Scenario};

const SECRET: &str = "harness-test-secret-0123456789";

/// Each test runs a server and worker processes; two at once on a two-core machine
/// would measure each other. One at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn server() -> Server {
    let mut cfg = Config::default();
    // `.ci/run` runs these once per backend (SWITCHBOARD_TEST_IO=epoll|uring).
    cfg.engine.io = match std::env::var("SWITCHBOARD_TEST_IO").as_deref() {
        Ok("uring") => switchboard_engine::IoMode::Uring,
        _ => switchboard_engine::IoMode::Epoll,
    };
    cfg.engine.listen = "127.0.0.1:0".parse().unwrap();
    cfg.engine.shards = 2;
    // Readers that fall behind on a loaded machine keep up to this much queued; a
    // never-reader in the slow-consumer test is sent 9.6 MB, more than twice this plus
    // the kernel's socket buffers (4 MiB send, 128 KiB receive here).
    cfg.engine.max_outbound_bytes = 512 * 1024;
    cfg.engine.close_timeout_ms = 300;
    cfg.engine.drain_timeout_ms = 1000;
    cfg.admin.listen = "127.0.0.1:0".parse().unwrap();
    cfg.auth.hmac_secret = Some(SECRET.into());
    cfg.store.path = std::env::temp_dir()
        .join(format!("sb-loadtest-store-{}", std::process::id()))
        .join(format!(
            "{}.db",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
    let s = Server::start(cfg).unwrap();
    while !s.engine().ready() {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    s
}

fn scenario(server: &Server, kind: Kind) -> Scenario {
    Scenario {
        name: format!("{kind:?}"),
        kind,
        url: format!("ws://{}/", server.ws_addr()),
        token_secret: Some(SECRET.into()),
        duration_s: 1.5,
        drain_s: 1.0,
        ramp_per_sec: 2000.0,
        ..Scenario::default()
    }
}

fn opts() -> RunOptions {
    RunOptions {
        server_pid: Some(std::process::id()),
        progress: false,
        worker_exe: Some(env!("CARGO_BIN_EXE_switchboard-loadtest").into()),
        metrics_url: None,
        ..Default::default()
    }
}

#[test]
fn fanout_rooms_echo_in_both_formats_lose_nothing() {
    let _one = serial();
    let srv = server();
    let cases = [
        Scenario {
            connections: 200,
            publishers: 2,
            rate: 40.0,
            workers: 2,
            ..scenario(&srv, Kind::Fanout)
        },
        Scenario {
            connections: 200,
            publishers: 2,
            rate: 40.0,
            format: "json".into(),
            ..scenario(&srv, Kind::Fanout)
        },
        Scenario {
            connections: 100,
            room_size: 10,
            rate: 5.0,
            ..scenario(&srv, Kind::Rooms)
        },
        Scenario {
            connections: 50,
            rate: 20.0,
            ..scenario(&srv, Kind::Echo)
        },
    ];
    for s in cases {
        let r = run(&s, &opts()).unwrap();
        let summary = switchboard_loadtest::report::summary(&r);
        assert_eq!(
            r.connections_ok as usize,
            s.total_connections(),
            "{summary}"
        );
        assert!(r.messages.sent > 0, "{summary}");
        let per_channel_subs = match s.kind {
            Kind::Fanout => s.connections as u64,
            Kind::Rooms => s.room_size as u64,
            _ => 1,
        };
        assert_eq!(
            r.messages.expected,
            r.messages.sent * per_channel_subs,
            "{summary}"
        );
        assert_eq!(r.messages.lost, 0, "{summary}");
        assert_eq!(r.messages.duplicates, 0, "{summary}");
        assert_eq!(r.messages.foreign, 0, "{summary}");
        assert_eq!(r.latency_ms.count, r.messages.unique, "{summary}");
        assert!(
            r.latency_ms.p50 > 0.0 && r.latency_ms.p99 < 5_000.0,
            "{summary}"
        );
        assert!(!r.timeline.is_empty(), "{summary}");
        let sv = r.server.as_ref().expect("server sampled");
        assert!(sv.cpu_us_per_delivery.is_some(), "{summary}");
        assert!(r.errors.is_empty(), "{summary}");
    }
    srv.shutdown();
    srv.wait();
}

#[test]
fn slow_consumers_are_cut_off_and_the_rest_lose_nothing() {
    let _one = serial();
    let srv = server();
    let s = Scenario {
        connections: 100,
        publishers: 2,
        rate: 200.0,
        payload_bytes: 16_000,
        slow_fraction: 0.2,
        duration_s: 3.0,
        ..scenario(&srv, Kind::SlowConsumers)
    };
    let metrics_url = Some(format!("http://{}/metrics", srv.admin_addr()));
    let r = run(
        &s,
        &RunOptions {
            metrics_url,
            ..opts()
        },
    )
    .unwrap();
    let summary = switchboard_loadtest::report::summary(&r);
    assert_eq!(r.messages.expected, r.messages.sent * 80, "{summary}");
    assert_eq!(r.messages.lost, 0, "readers are unaffected: {summary}");
    let closes = srv
        .engine()
        .metrics()
        .iter()
        .map(|m| {
            m.closes[switchboard_engine::CloseKind::SlowConsumer as usize]
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum::<u64>();
    assert_eq!(closes, 20, "every non-reader was disconnected: {summary}");
    // The same count, as the harness saw it through the server's /metrics.
    assert_eq!(
        r.server_metrics
            .get("switchboard_slow_consumer_disconnects_total"),
        Some(&20.0),
        "{summary}"
    );
    assert!(
        summary.contains("switchboard_slow_consumer_disconnects_total +20"),
        "{summary}"
    );
    srv.shutdown();
    srv.wait();
}

#[test]
fn idle_and_connect_storm() {
    let _one = serial();
    let srv = server();
    let r = run(
        &Scenario {
            connections: 300,
            duration_s: 1.0,
            drain_s: 0.0,
            ..scenario(&srv, Kind::Idle)
        },
        &opts(),
    )
    .unwrap();
    assert_eq!(
        r.connections_ok,
        300,
        "{}",
        switchboard_loadtest::report::summary(&r)
    );
    assert!(r.server.as_ref().unwrap().rss_ramped_mib > 0.0);

    let s = Scenario {
        storm_start_rate: 200.0,
        storm_step_rate: 200.0,
        storm_max_rate: 600.0,
        storm_step_s: 1.0,
        storm_p99_ms: 2000.0,
        workers: 2,
        ..scenario(&srv, Kind::ConnectStorm)
    };
    let r = run(&s, &opts()).unwrap();
    let summary = switchboard_loadtest::report::summary(&r);
    assert_eq!(r.storm.len(), 3, "{summary}");
    for p in &r.storm {
        assert!(p.attempts as f64 >= p.rate * 0.9, "{summary}");
        assert_eq!(p.failed, 0, "{summary}");
    }
    assert_eq!(r.storm_max_rate, Some(600.0), "{summary}");
    srv.shutdown();
    srv.wait();
}

#[test]
fn refused_tokens_are_counted_not_hidden() {
    let _one = serial();
    let srv = server();
    let s = Scenario {
        connections: 20,
        publishers: 1,
        rate: 10.0,
        token_secret: Some("wrong-secret-0123456789".into()),
        ..scenario(&srv, Kind::Fanout)
    };
    let r = run(&s, &opts()).unwrap();
    assert_eq!(r.connections_ok, 0);
    assert_eq!(r.connections_failed, 21);
    assert_eq!(r.errors.get("connect_refused"), Some(&21));
    assert!(r.warnings.iter().any(|w| w.contains("failed to open")));
    srv.shutdown();
    srv.wait();
}

#[test]
fn knee_search_stops_at_the_first_failing_step() {
    let _one = serial();
    let srv = server();
    let base = Scenario {
        connections: 100,
        publishers: 1,
        duration_s: 1.0,
        drain_s: 0.5,
        ..scenario(&srv, Kind::Fanout)
    };
    // A generous bound holds for two steps; an impossible one fails at once.
    let steps = switchboard_loadtest::run::knee(&base, &opts(), 5_000.0, 5.0, 2.0, 2).unwrap();
    assert_eq!(steps.len(), 2);
    assert!(steps.iter().all(|s| s.held));
    assert_eq!((steps[0].rate, steps[1].rate), (5.0, 10.0));
    assert!(steps[1].result.messages.sent > steps[0].result.messages.sent);
    let steps = switchboard_loadtest::run::knee(&base, &opts(), 0.0, 5.0, 2.0, 3).unwrap();
    assert_eq!(steps.len(), 1, "stops at the first failure");
    assert!(!steps[0].held);
    srv.shutdown();
    srv.wait();
}
