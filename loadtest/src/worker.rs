//! A worker process: holds one slice of a scenario's connections.
//!
//! Owns its connections, the publishing schedule and its [`Recorder`]. Talks to the
//! coordinator in lines: it reads one JSON line (`WorkerPlan`) and later
//! `start <t0_ns> <end_ns>` on stdin; it writes `progress <ready> <failed>`,
//! `ready <ready> <failed>` and finally `result <json>` on stdout. One single-threaded
//! runtime per worker: the coordinator starts as many workers as the run needs.
//!
//! Open-model publishing: message k of a publisher is *intended* at
//! `t0 + offset + k / rate`. The publisher sleeps until then, or sends at once when it is
//! behind, and stamps the intended time into the payload, so latency includes any time
//! the message waited for a stalled server or a busy generator.

use std::cell::RefCell;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::Duration;

use fastwebsockets::OpCode;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::clock::{instant_at, mono_ns};
use crate::conn::{self, Client, Progress, SharedProgress};
use crate::proto::{self, ConnCtx, In, Protocol};
use crate::scenario::{Kind, Role, Scenario};
use crate::stamp::Stamp;
use crate::stats::{self, Recorder};

/// What the coordinator tells a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerPlan {
    /// The scenario (after overrides).
    pub scenario: Scenario,
    /// This worker's index.
    pub index: usize,
}

struct Shared {
    scenario: Scenario,
    proto: Box<dyn Protocol>,
    server: SocketAddr,
    host: String,
    base_path: String,
    /// The other nodes' addresses and host headers (`urls`).
    others: Vec<(SocketAddr, String)>,
    /// Spread connections over 127.0.0.2… (only when the server is on loopback).
    loopback: bool,
    rec: RefCell<Recorder>,
    progress: SharedProgress,
    /// `(t0_ns, end_ns)` once the coordinator says start.
    start: watch::Receiver<Option<(u64, u64)>>,
}

/// Parse `ws://host:port/path` into an address, host header and path.
pub fn parse_url(url: &str) -> anyhow::Result<(SocketAddr, String, String)> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| anyhow::anyhow!("url must start with ws://"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| anyhow::anyhow!("url host {authority}: {e}"))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("url host {authority} does not resolve"))?;
    Ok((addr, authority.to_string(), path.to_string()))
}

/// The token for connection `i`.
fn token_for(s: &Scenario, i: usize) -> Option<String> {
    if let Some(secret) = &s.token_secret {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            + 24 * 3600;
        let claims = serde_json::json!({"sub": format!("lt-{i}"), "exp": exp});
        return jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .ok();
    }
    s.token.clone()
}

/// Run a worker: read the plan from stdin, report on stdout.
pub fn run_stdio() -> anyhow::Result<()> {
    let mut first = String::new();
    std::io::stdin().read_line(&mut first)?;
    let plan: WorkerPlan =
        serde_json::from_str(&first).map_err(|e| anyhow::anyhow!("bad plan on stdin: {e}"))?;
    let (start_tx, start_rx) = watch::channel(None);
    // Commands after the plan arrive on a thread and are forwarded to the runtime.
    std::thread::spawn(move || {
        for line in std::io::stdin().lines().map_while(Result::ok) {
            let mut parts = line.split_whitespace();
            if parts.next() == Some("start") {
                let t0 = parts.next().and_then(|v| v.parse().ok());
                let end = parts.next().and_then(|v| v.parse().ok());
                if let (Some(t0), Some(end)) = (t0, end) {
                    let _ = start_tx.send(Some((t0, end)));
                }
            }
        }
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let result = local.block_on(&rt, run(plan, start_rx))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "result {}", serde_json::to_string(&result)?)?;
    out.flush()?;
    Ok(())
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

async fn run(
    plan: WorkerPlan,
    start: watch::Receiver<Option<(u64, u64)>>,
) -> anyhow::Result<stats::WorkerResult> {
    let s = plan.scenario;
    let (server, host, base_path) = parse_url(&s.url)?;
    let others = s
        .urls
        .iter()
        .map(|u| parse_url(u).map(|(a, h, _)| (a, h)))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let shared = Rc::new(Shared {
        proto: proto::for_scenario(&s),
        server,
        host,
        base_path,
        others,
        loopback: server.ip().is_loopback(),
        rec: RefCell::new(Recorder::new()),
        progress: Rc::new(RefCell::new(Progress::default())),
        start,
        scenario: s.clone(),
    });
    let cpu_before = cpu_seconds();
    let wall_before = mono_ns();
    if s.kind == Kind::ConnectStorm {
        let steps = crate::storm::run_worker(&shared_view(&shared), plan.index).await;
        let mut result = shared.rec.borrow().finish(
            cpu_seconds() - cpu_before,
            (mono_ns() - wall_before) as f64 / 1e9,
        );
        result
            .extra
            .insert("storm_steps".into(), serde_json::to_value(steps)?);
        return Ok(result);
    }

    let slice = s.slice(plan.index);
    let total = slice.len();
    let ramp_rate = s.ramp_per_sec / s.worker_count() as f64;
    let gap = Duration::from_secs_f64(1.0 / ramp_rate.max(1e-3));
    let mut tasks = Vec::with_capacity(total);
    let mut next = tokio::time::Instant::now();
    let mut last_progress = tokio::time::Instant::now();
    for i in slice {
        tokio::time::sleep_until(next).await;
        next += gap;
        tasks.push(tokio::task::spawn_local(connection(shared.clone(), i)));
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = tokio::time::Instant::now();
            let p = shared.progress.borrow();
            say(&format!("progress {} {}", p.ready, p.failed));
        }
    }
    // Wait until every connection is ready or has failed.
    loop {
        let (ready, failed) = {
            let p = shared.progress.borrow();
            (p.ready, p.failed)
        };
        if ready + failed >= total {
            say(&format!("ready {ready} {failed}"));
            break;
        }
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = tokio::time::Instant::now();
            say(&format!("progress {ready} {failed}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut start = shared.start.clone();
    let (t0, end) = loop {
        if let Some(v) = *start.borrow_and_update() {
            break v;
        }
        if start.changed().await.is_err() {
            anyhow::bail!("coordinator went away before start");
        }
    };
    shared.rec.borrow_mut().t0_ns = t0;
    let cpu_at_t0 = cpu_seconds();
    let _ = cpu_before;
    let drain_end = end + (s.drain_s * 1e9) as u64;
    tokio::time::sleep_until(instant_at(drain_end)).await;
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
    let cpu = cpu_seconds() - cpu_at_t0;
    let wall = (mono_ns().saturating_sub(t0)) as f64 / 1e9;
    let result = shared.rec.borrow().finish(cpu, wall);
    Ok(result)
}

/// The pieces of a worker the connect storm needs.
pub struct WorkerView {
    /// Scenario.
    pub scenario: Scenario,
    /// Server address.
    pub server: SocketAddr,
    /// Host header.
    pub host: String,
    /// Upgrade path.
    pub path: String,
    /// Subprotocol.
    pub subprotocol: Option<&'static str>,
    /// Whether connections spread over source addresses 127.0.0.2 … (loopback server).
    pub loopback: bool,
    /// Protocol.
    pub proto: Rc<dyn Fn() -> Box<dyn Protocol>>,
    /// Start signal.
    pub start: watch::Receiver<Option<(u64, u64)>>,
}

impl Shared {
    /// The node connection `i` goes to: its address and host header.
    fn target(&self, i: usize) -> (SocketAddr, &str) {
        match i % (1 + self.others.len()) {
            0 => (self.server, &self.host),
            k => {
                let (a, h) = &self.others[k - 1];
                (*a, h)
            }
        }
    }

    /// Source address of connection `i`: 127.0.0.2 … 127.0.0.(1 + source_ips).
    fn source(&self, i: usize) -> Option<Ipv4Addr> {
        self.loopback
            .then(|| Ipv4Addr::new(127, 0, 0, 2 + (i % self.scenario.source_ips.max(1)) as u8))
    }
}

impl WorkerView {
    /// Source address of the `serial`th connection of worker `index`: the workers'
    /// connections take 127.0.0.2 … 127.0.0.(1 + source_ips) in turn, so a storm is not
    /// held to one address's connection rate (the server limits each address).
    pub fn source(&self, index: usize, serial: u64) -> Option<Ipv4Addr> {
        let n = self.scenario.source_ips.max(1);
        let i = (serial as usize)
            .wrapping_mul(self.scenario.worker_count())
            .wrapping_add(index);
        self.loopback
            .then(|| Ipv4Addr::new(127, 0, 0, 2 + (i % n) as u8))
    }
}

fn shared_view(s: &Rc<Shared>) -> WorkerView {
    let scenario = s.scenario.clone();
    let sc2 = scenario.clone();
    WorkerView {
        server: s.server,
        host: s.host.clone(),
        path: s.proto.path(&s.base_path, &ConnCtx::default()),
        subprotocol: s.proto.subprotocol(),
        loopback: s.loopback,
        proto: Rc::new(move || proto::for_scenario(&sc2)),
        start: s.start.clone(),
        scenario,
    }
}

/// Open one connection, authenticate, join its channel: the time it takes, or why not.
pub async fn open(
    proto: &dyn Protocol,
    ctx: &ConnCtx,
    server: SocketAddr,
    host: &str,
    path: &str,
    source: Option<Ipv4Addr>,
    channels: &[String],
) -> Result<Client, (&'static str, String)> {
    let mut client = conn::connect(source, server, host, path, proto.subprotocol())
        .await
        .map_err(|e| (e.0, e.1))?;
    for out in proto.open(ctx) {
        conn::send(&client.write, out)
            .await
            .map_err(|e| ("send", e.to_string()))?;
    }
    if proto.needs_opened() {
        wait_for(&mut client, proto, ctx, |m| matches!(m, In::Opened)).await?;
    }
    // In order, one at a time: the connection's own channel (reply id 2), then extras.
    for (k, channel) in channels.iter().enumerate() {
        let id = 2 + k as u32;
        if let Some(out) = proto.subscribe(channel, id) {
            conn::send(&client.write, out)
                .await
                .map_err(|e| ("send", e.to_string()))?;
            wait_for(
                &mut client,
                proto,
                ctx,
                |m| matches!(m, In::Reply(r) if *r == id),
            )
            .await?;
        }
    }
    Ok(client)
}

async fn wait_for(
    client: &mut Client,
    proto: &dyn Protocol,
    ctx: &ConnCtx,
    done: impl Fn(&In<'_>) -> bool,
) -> Result<(), (&'static str, String)> {
    loop {
        let frame = conn::next_frame(&mut client.read, &client.write)
            .await
            .map_err(|e| ("read", e.to_string()))?;
        match frame.opcode {
            OpCode::Text | OpCode::Binary => {}
            OpCode::Close => return Err(("closed", close_reason(&frame.payload))),
            _ => continue,
        }
        let msg = proto.incoming(ctx, frame.opcode == OpCode::Text, &frame.payload);
        if done(&msg) {
            return Ok(());
        }
        match msg {
            In::Refused(why) => return Err(("refused", why)),
            In::Closing(why) => return Err(("closed", why)),
            In::Respond(out) => conn::send(&client.write, out)
                .await
                .map_err(|e| ("send", e.to_string()))?,
            _ => {}
        }
    }
}

fn close_reason(p: &[u8]) -> String {
    if p.len() >= 2 {
        format!(
            "{} {}",
            u16::from_be_bytes([p[0], p[1]]),
            String::from_utf8_lossy(&p[2..])
        )
    } else {
        "close".into()
    }
}

async fn connection(shared: Rc<Shared>, i: usize) {
    let s = &shared.scenario;
    let role = s.role(i);
    let channel = role.subscribes_to().map(str::to_string);
    // The room named in the URL (raw protocol): a publisher joins the room it publishes to.
    let url_room = match &role {
        Role::Publisher { channel, .. } => Some(channel.clone()),
        _ => channel.clone(),
    };
    let ctx = ConnCtx {
        token: token_for(s, i),
        channel: url_room,
    };
    let path = shared.proto.path(&shared.base_path, &ctx);
    let started = mono_ns();
    let (server, host) = shared.target(i);
    let opened = tokio::time::timeout(
        Duration::from_millis(s.connect_timeout_ms),
        open(
            &*shared.proto,
            &ctx,
            server,
            host,
            &path,
            shared.source(i),
            &channel
                .iter()
                .cloned()
                .chain(s.extra_channels_of(i))
                .collect::<Vec<_>>(),
        ),
    )
    .await;
    let mut client = match opened {
        Ok(Ok(c)) => c,
        Ok(Err((kind, why))) => {
            shared
                .rec
                .borrow_mut()
                .error_with(&format!("connect_{kind}"), &why);
            shared.progress.borrow_mut().failed += 1;
            return;
        }
        Err(_) => {
            shared.rec.borrow_mut().error("connect_timeout");
            shared.progress.borrow_mut().failed += 1;
            return;
        }
    };
    {
        let mut rec = shared.rec.borrow_mut();
        stats::record(&mut rec.connect, (mono_ns() - started) / 1_000);
        rec.counts.connected += 1;
        // A subscriber that never reads is not expected to receive anything.
        if let (Some(c), false) = (&channel, matches!(role, Role::Slow { .. })) {
            *rec.counts.subscribers.entry(c.clone()).or_default() += 1;
        }
    }
    shared.progress.borrow_mut().ready += 1;

    let mut start = shared.start.clone();
    let (t0, end) = loop {
        if let Some(v) = *start.borrow_and_update() {
            break v;
        }
        if start.changed().await.is_err() {
            return;
        }
    };
    if let Role::Publisher { channel, rate, .. } = &role {
        if *rate > 0.0 {
            tokio::task::spawn_local(publish(
                shared.clone(),
                client.write.clone(),
                i,
                channel.clone(),
                *rate,
                t0,
                end,
            ));
        }
    }
    if let (Some(room), true) = (&channel, s.typing_rate > 0.0) {
        tokio::task::spawn_local(typing(
            shared.clone(),
            client.write.clone(),
            i,
            room.clone(),
            s.typing_rate,
            t0,
            end,
        ));
    }
    if matches!(role, Role::Slow { .. }) {
        // Never read again: hold the socket until the worker ends.
        std::future::pending::<()>().await;
    }
    read_loop(&shared, &mut client, &ctx, i as u32, channel.is_some()).await;
}

/// Read until the connection ends; deliveries count only for a connection that
/// subscribed (a raw-protocol publisher also hears its own room, uncounted).
async fn read_loop(shared: &Shared, client: &mut Client, ctx: &ConnCtx, me: u32, counts: bool) {
    loop {
        let frame = match conn::next_frame(&mut client.read, &client.write).await {
            Ok(f) => f,
            Err(_) => {
                shared.rec.borrow_mut().error("read_failed");
                return;
            }
        };
        let now = mono_ns();
        match frame.opcode {
            OpCode::Text | OpCode::Binary => {}
            OpCode::Close => {
                shared.rec.borrow_mut().error(&format!(
                    "closed_by_server_{}",
                    close_reason(&frame.payload).split(' ').next().unwrap_or("")
                ));
                return;
            }
            _ => continue,
        }
        match shared
            .proto
            .incoming(ctx, frame.opcode == OpCode::Text, &frame.payload)
        {
            In::Data(_) if !counts => {}
            In::Data(text) => match Stamp::parse(text) {
                Some(st) => shared.rec.borrow_mut().delivered(
                    me,
                    st.publisher,
                    st.seq,
                    st.intended_ns,
                    st.actual_ns,
                    now,
                ),
                None => shared.rec.borrow_mut().counts.foreign += 1,
            },
            In::Respond(out) => {
                if conn::send(&client.write, out).await.is_err() {
                    return;
                }
            }
            In::Refused(_) => shared.rec.borrow_mut().error("refused"),
            In::Reply(id) => shared.rec.borrow_mut().replied(me, id, now),
            In::Closing(_) | In::Opened | In::Ignore => {}
        }
    }
}

async fn publish(
    shared: Rc<Shared>,
    writer: conn::Writer,
    me: usize,
    channel: String,
    rate: f64,
    t0: u64,
    end: u64,
) {
    let schedule = crate::schedule::Schedule::new(t0, end, rate, me as u64);
    let size = shared.scenario.payload_bytes;
    let mut k: u64 = 0;
    while let Some(intended) = schedule.intended(k) {
        if intended > mono_ns() {
            tokio::time::sleep_until(instant_at(intended)).await;
        }
        let stamp = Stamp {
            publisher: me as u32,
            seq: k,
            intended_ns: intended,
            actual_ns: mono_ns(),
        }
        .encode(size);
        let id = (k % 1_000_000) as u32 + 10;
        let out = shared.proto.publish(&channel, id, &stamp);
        // Noted before sending: the reply may be read before the send returns.
        shared
            .rec
            .borrow_mut()
            .publish_sent(me as u32, id, mono_ns());
        if conn::send(&writer, out).await.is_err() {
            shared.rec.borrow_mut().error("publish_failed");
            return;
        }
        shared.rec.borrow_mut().sent(&channel, intended);
        k += 1;
    }
}

/// Send `typing` in `channel` at `rate` per second (replies and pushes are not measured).
async fn typing(
    shared: Rc<Shared>,
    writer: conn::Writer,
    me: usize,
    channel: String,
    rate: f64,
    t0: u64,
    end: u64,
) {
    let schedule = crate::schedule::Schedule::new(t0, end, rate, me as u64 ^ 0x7e57);
    let mut k: u64 = 0;
    while let Some(intended) = schedule.intended(k) {
        if intended > mono_ns() {
            tokio::time::sleep_until(instant_at(intended)).await;
        }
        // Ids above the publishes' range, so they are never taken for publish replies.
        let id = 2_000_000 + (k % 1_000_000) as u32;
        let Some(out) = shared.proto.typing(&channel, id) else {
            return;
        };
        if conn::send(&writer, out).await.is_err() {
            return;
        }
        k += 1;
    }
}

/// CPU seconds used by this process so far (user + system).
pub fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the zeroed struct; RUSAGE_SELF is always valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}
