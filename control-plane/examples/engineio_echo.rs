//! A raw Engine.IO echo server: the server the Engine.IO protocol test suite expects at
//! `/engine.io/` (every message packet sent back as it came, binary too). Test-only:
//! it is Switchboard's own server (the same protocol crate, engine and sessions) with
//! the engine's test-only `socketio.echo_path` set, so `scripts/socketio-conformance.sh`
//! checks our Engine.IO transport on its own, without Socket.IO on top.
//!
//! Usage: `engineio_echo [ADDR]` (default `127.0.0.1:3000`); stops on SIGTERM/SIGINT.

use switchboard_control_plane::config::{Config, ProcessEnv};
use switchboard_control_plane::server::Server;

fn main() {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".into());
    let dir = std::env::temp_dir().join(format!("engineio-echo-{}", std::process::id()));
    // `SWITCHBOARD_*` variables apply (`SWITCHBOARD_ENGINE__IO=epoll` picks a backend).
    let mut cfg = Config::load(None, &ProcessEnv).expect("a valid environment");
    cfg.engine.listen = listen.parse().expect("ADDR is host:port");
    cfg.admin.listen = "127.0.0.1:0".parse().expect("a valid address");
    cfg.store.path = dir.join("store.db");
    cfg.socketio.enabled = false;
    cfg.socketio.echo_path = Some("/engine.io/".into());
    cfg.socketio.ping_interval_ms = 300;
    cfg.socketio.ping_timeout_ms = 200;
    cfg.socketio.max_payload_bytes = 1_000_000;
    let server = Server::start(cfg).expect("the echo server starts");
    println!("engine.io echo on {}/engine.io/", server.ws_addr());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    });
    server.shutdown();
    server.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
