//! Nodes that act as one service through Redis (`[cluster]`): the link to Redis and
//! the node registry.
//!
//! Owns the `[cluster]` settings, the cluster thread (its own small tokio runtime)
//! that keeps a link to Redis — connecting with backoff, answering whether Redis is
//! up and how fast — and this node's entry in the registry every node reads
//! (`GET /admin/nodes`, [`registry`]), refreshed every `heartbeat_ms` and gone
//! `node_ttl_ms` after the last refresh (at once on a clean stop); and, on the same
//! thread, the bus that carries admin actions to every node ([`bus`]). With no
//! `redis_url` there is no thread: one node needs nothing but itself.
//!
//! Does not own what crosses nodes over that link (fan-out, positions, users: later
//! modules) or the HTTP routes (`crate::http`).

mod bus;
mod conn;
mod link;
pub mod mail;
pub mod marks;
pub mod presence;
mod publisher;
pub mod pushes;
mod registry;
mod relay;
mod source;
pub mod spent;
pub mod streams;
mod worker_link;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use switchboard_engine::cluster::ClusterLink;
use switchboard_engine::EngineHandle;

pub use bus::{ClusterAction, Hands};
pub use mail::Peers;
pub use pushes::RemotePushes;
pub use registry::NodeInfo;
pub use worker_link::WorkerLink;

/// `[cluster]`: sharing one service between nodes through Redis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Redis to share (`redis://[:password@]host:port[/db]`, `rediss://` for TLS);
    /// empty (the default, and no `sentinels`): this node is alone and needs nothing
    /// else. With `sentinels`, only its password and database count.
    pub redis_url: String,
    /// Redis Sentinels (`host:port` each) to ask which server is master now; empty:
    /// `redis_url` is the server.
    pub sentinels: Vec<String>,
    /// The master's name in the Sentinels' configuration.
    pub sentinel_master: String,
    /// Nodes of a Redis Cluster (`host:port` each; the others are found from them):
    /// channels spread over its masters by slot, their topics on sharded pub/sub
    /// (Redis 7+). With it, only `redis_url`'s password counts.
    pub redis_cluster: Vec<String>,
    /// This node's name in the registry; empty: `<hostname>-<port>-<random>`, new at
    /// every start.
    pub node_id: String,
    /// Prefix of every Redis key (in braces on the wire, `{sb}:…`, so a Redis Cluster
    /// keeps the registry in one slot).
    pub key_prefix: String,
    /// How often the node refreshes its registry entry (and measures Redis).
    pub heartbeat_ms: u64,
    /// A node whose entry is not refreshed for this long is gone (at least twice
    /// `heartbeat_ms`).
    pub node_ttl_ms: u64,
    /// The WebSocket address clients and load balancers reach this node at, as the
    /// registry shows it; empty: `engine.listen` as bound.
    pub advertise_ws: String,
    /// The admin/server API address other nodes and operators reach this node at;
    /// empty: `admin.listen` as bound.
    pub advertise_admin: String,
    /// Redis replicas a publication of a `sync` namespace must reach (`WAIT`) before
    /// its publisher is answered; 0: Redis's own persistence only (see
    /// docs/DELIVERY.md for what that requires).
    pub sync_replicas: u32,
    /// How long a `sync` publication waits for those replicas.
    pub sync_timeout_ms: u64,
    /// Batches of work the owner shards may queue for Redis before publications
    /// are refused with `Overloaded`.
    pub queue_batches: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis_url: String::new(),
            sentinels: Vec::new(),
            sentinel_master: "mymaster".into(),
            redis_cluster: Vec::new(),
            node_id: String::new(),
            key_prefix: "sb".into(),
            heartbeat_ms: 1_000,
            node_ttl_ms: 5_000,
            advertise_ws: String::new(),
            advertise_admin: String::new(),
            sync_replicas: 0,
            sync_timeout_ms: 1_000,
            queue_batches: 4_096,
        }
    }
}

impl ClusterConfig {
    /// Whether nodes share Redis.
    pub fn enabled(&self) -> bool {
        !self.redis_url.is_empty() || !self.sentinels.is_empty() || !self.redis_cluster.is_empty()
    }

    /// Check values; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if !self.redis_url.is_empty() {
            if let Err(e) = redis::Client::open(self.redis_url.as_str()) {
                return Err(format!("cluster.redis_url: not a Redis URL: {e}"));
            }
        }
        for (i, s) in self.sentinels.iter().enumerate() {
            let ok = s
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok {
                return Err(format!(
                    "cluster.sentinels[{i}]: expected host:port, not {s:?}"
                ));
            }
        }
        for (i, s) in self.redis_cluster.iter().enumerate() {
            let ok = s
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok {
                return Err(format!(
                    "cluster.redis_cluster[{i}]: expected host:port, not {s:?}"
                ));
            }
        }
        if !self.redis_cluster.is_empty() && !self.sentinels.is_empty() {
            return Err("cluster.redis_cluster: a Redis Cluster or Sentinels, not both".into());
        }
        if !self.sentinels.is_empty() && self.sentinel_master.is_empty() {
            return Err(
                "cluster.sentinel_master: the master's name is needed with sentinels".into(),
            );
        }
        let name_ok = |s: &str| {
            s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        };
        if !name_ok(&self.node_id) {
            return Err("cluster.node_id: at most 64 of A-Z a-z 0-9 - _ . :".into());
        }
        if self.key_prefix.is_empty() || !name_ok(&self.key_prefix) {
            return Err("cluster.key_prefix: 1 to 64 of A-Z a-z 0-9 - _ . :".into());
        }
        if self.heartbeat_ms < 100 {
            return Err("cluster.heartbeat_ms: at least 100".into());
        }
        if self.node_ttl_ms < 2 * self.heartbeat_ms {
            return Err("cluster.node_ttl_ms: at least twice cluster.heartbeat_ms".into());
        }
        if self.sync_replicas > 0 && !(1..=60_000).contains(&self.sync_timeout_ms) {
            return Err("cluster.sync_timeout_ms: 1 to 60000 with sync_replicas".into());
        }
        if !(16..=1_000_000).contains(&self.queue_batches) {
            return Err("cluster.queue_batches: 16 to 1000000".into());
        }
        Ok(())
    }
}

/// What the cluster thread tells the rest of the node.
#[derive(Debug, Default)]
pub struct ClusterState {
    /// This node's id in the registry.
    pub node_id: String,
    /// Redis answered the last heartbeat.
    pub redis_up: AtomicBool,
    /// Round trip of the last heartbeat, microseconds.
    pub redis_rtt_us: AtomicU64,
    /// Redis commands that failed (each heartbeat counts once).
    pub redis_errors: AtomicU64,
    /// Times the link to Redis was (re)established.
    pub redis_connects: AtomicU64,
    /// The registry as last read (every live node, this one included).
    pub nodes: Mutex<Vec<NodeInfo>>,
    /// Admin actions dropped from a full queue while Redis was away.
    pub bus_dropped: AtomicU64,
    /// The bus is subscribed to the control channel (and has caught up).
    pub bus_linked: AtomicBool,
    /// Version of the maintenance mode in force (0: none from the cluster).
    pub maintenance_version: AtomicU64,
    /// Version of the rate limits in force (0: this node's configuration).
    pub limits_version: AtomicU64,
    /// Generation of the shared channels' link to Redis (0: down).
    pub fanout_gen: AtomicU64,
    /// The owner shards' counters of shared channels.
    pub fanout: Option<Arc<switchboard_engine::cluster::ClusterLinkStats>>,
    /// Publications Redis sequenced for this node.
    pub sequenced: AtomicU64,
    /// Pipelines (round trips) that carried them.
    pub pipelines: AtomicU64,
    /// Why `sync` namespaces are not as durable as they say, as last checked (empty:
    /// they are, or none is `sync`).
    pub sync_warning: Mutex<String>,
    /// This node's tag (`super::mail`; 0 until Redis gave it one).
    pub tag: std::sync::atomic::AtomicU32,
    /// Where this node's admin actions go to reach the others.
    outbox: Option<tokio::sync::mpsc::Sender<bus::Outgoing>>,
}

impl ClusterState {
    /// Whether Redis is up.
    pub fn up(&self) -> bool {
        self.redis_up.load(Ordering::Relaxed)
    }

    /// The nodes as last read.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A version for a cluster-wide setting changed here: the clock, Unix ms, and
    /// above every version this node has seen (so the newest change wins everywhere).
    pub fn next_version(&self) -> u64 {
        let seen = self
            .maintenance_version
            .load(Ordering::Relaxed)
            .max(self.limits_version.load(Ordering::Relaxed));
        crate::clock::now_ms().max(seen + 1)
    }

    /// Take `version` for the setting `current` counts if it is newer; whether it was.
    pub(crate) fn adopt(&self, current: &AtomicU64, version: u64) -> bool {
        current.fetch_max(version, Ordering::Relaxed) < version
    }

    /// Have every other node carry out `action` (taken here by `actor`): sent now, or
    /// once Redis is back (bounded).
    pub fn broadcast(&self, actor: &str, action: ClusterAction) {
        let Some(outbox) = &self.outbox else {
            return;
        };
        // A setting changed here is this node's newest.
        match &action {
            ClusterAction::Maintenance { version, .. } => {
                self.adopt(&self.maintenance_version, *version);
            }
            ClusterAction::RateLimits { version, .. } => {
                self.adopt(&self.limits_version, *version);
            }
            _ => {}
        }
        let out = bus::Outgoing {
            actor: actor.to_string(),
            action,
        };
        if outbox.try_send(out).is_err() {
            self.bus_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!("cluster bus full: an admin action does not reach the other nodes");
        }
    }
}

/// The running cluster thread.
#[derive(Debug)]
pub struct ClusterHandle {
    stop: tokio::sync::watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ClusterHandle {
    /// Leave the registry (at once, not after the TTL) and stop the thread.
    pub fn finish(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// This node as the registry describes it, apart from what changes.
#[derive(Debug, Clone)]
pub struct NodeAddrs {
    /// WebSocket address.
    pub ws: String,
    /// Admin/server API address.
    pub admin: String,
}

/// Start the cluster thread when `cfg` names a Redis; `None` for a node alone.
/// The owner shards' link to the cluster thread, made before the engine starts
/// (`None` for a node alone), and the thread's end of it for [`spawn`].
pub fn link(cfg: &ClusterConfig) -> Option<(ClusterLink, Batches)> {
    cfg.enabled().then(|| ClusterLink::new(cfg.queue_batches))
}

/// The cluster thread's end of the owner shards' link.
pub type Batches = tokio::sync::mpsc::Receiver<switchboard_engine::cluster::ClusterBatch>;

/// What shared channels need from the rest of the node.
#[derive(Debug)]
pub struct SharedOptions {
    /// The end of [`link`] (`None`: no shared channels, as in tests of the registry).
    pub batches: Option<Batches>,
    /// `engine.dedupe_window_ms`: how long Redis remembers idempotency keys.
    pub dedupe_ms: u64,
    /// Some namespace is `sync`: Redis's persistence is checked at every link.
    pub sync_namespaces: bool,
    /// The workers' pushes to users on other nodes.
    pub pushes: RemotePushes,
    /// The workers' letters to and from other nodes.
    pub peers: Peers,
    /// The workers' commands to Redis.
    pub worker_link: WorkerLink,
    /// `engine.personal_namespace`: a push to a user goes on its personal channel.
    pub personal_namespace: String,
    /// `socketio.recovery_ms`: how long an ended session stays recoverable.
    pub sio_recovery_ms: u64,
    /// The store the nodes share (PostgreSQL): shared publications of stored
    /// namespaces this node published go there once sequenced (`None`: each node's
    /// store keeps its own channels only).
    pub journal: Option<switchboard_engine::journal::JournalLink>,
}

/// Start the cluster thread when `cfg` names a Redis; `None` for a node alone.
pub fn spawn(
    cfg: &ClusterConfig,
    hands: Hands,
    addrs: NodeAddrs,
    max_connections: usize,
    shared: SharedOptions,
) -> std::io::Result<Option<(Arc<ClusterState>, ClusterHandle)>> {
    if !cfg.enabled() {
        return Ok(None);
    }
    let source = source::Source::of(cfg)
        .map_err(|e| std::io::Error::other(format!("cluster.redis_url: {e}")))?;
    let node_id = if cfg.node_id.is_empty() {
        generated_id(&addrs.ws)
    } else {
        cfg.node_id.clone()
    };
    let (outbox, outgoing) = tokio::sync::mpsc::channel(1024);
    let state = Arc::new(ClusterState {
        node_id: node_id.clone(),
        outbox: Some(outbox),
        fanout: hands.engine.cluster_stats(),
        ..Default::default()
    });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let engine = hands.engine.clone();
    let registry = registry::Registry {
        keys: registry::Keys::new(&cfg.key_prefix),
        me: NodeInfo {
            id: node_id,
            ws: addrs.ws,
            admin: addrs.admin,
            shards: engine.metrics().len(),
            connections: 0,
            max_connections,
            load: 0.0,
            started_ms: crate::clock::now_ms(),
            heartbeat_ms: 0,
            version: env!("CARGO_PKG_VERSION").into(),
            tag: 0,
        },
        ttl: Duration::from_millis(cfg.node_ttl_ms),
    };
    let every = Duration::from_millis(cfg.heartbeat_ms);
    let bus_keys = bus::BusKeys::new(&cfg.key_prefix);
    let prefix = cfg.key_prefix.clone();
    let (sync_replicas, sync_timeout_ms) = (cfg.sync_replicas, cfg.sync_timeout_ms);
    let thread = std::thread::Builder::new()
        .name("sb-cluster".into())
        .spawn({
            let state = state.clone();
            move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => return tracing::error!("the cluster thread cannot start: {e}"),
                };
                rt.block_on(async move {
                    let bus = bus::run(
                        source.clone(),
                        bus_keys,
                        state.clone(),
                        hands,
                        outgoing,
                        stopped.clone(),
                    );
                    let bus = tokio::spawn(bus);
                    let SharedOptions {
                        batches,
                        dedupe_ms,
                        sync_namespaces,
                        pushes,
                        personal_namespace,
                        sio_recovery_ms,
                        peers,
                        worker_link,
                        journal,
                    } = shared;
                    peers.attach(state.clone());
                    let workers = worker_link
                        .attach()
                        .map(|asks| tokio::spawn(worker_link::serve(source.clone(), asks)));
                    let relay = batches.map(|b| {
                        let mut relay = relay::Relay::new(
                            source.clone(),
                            &prefix,
                            state.clone(),
                            engine.sender(),
                            dedupe_ms,
                            (sync_namespaces, sync_replicas, sync_timeout_ms),
                        );
                        relay.personal = personal_namespace;
                        relay.sio_recovery_ms = sio_recovery_ms;
                        relay.peers = peers;
                        relay.journal = journal;
                        relay.ai = engine.ai_tap().cloned();
                        let pushes = pushes.attach();
                        tokio::spawn(link::run(relay, b, pushes, stopped.clone()))
                    });
                    run(source, registry, engine, state, stopped, every).await;
                    bus.abort();
                    if let Some(r) = relay {
                        r.abort();
                    }
                    if let Some(w) = workers {
                        w.abort();
                    }
                });
            }
        })?;
    Ok(Some((
        state,
        ClusterHandle {
            stop,
            thread: Some(thread),
        },
    )))
}

/// The reconnect-token key every node of the cluster uses, so a client resumes on any
/// node: the first node to start stores its own key in Redis (`{P}:reconnect_key`,
/// set if absent) and every node then reads it. `None` (with a warning) when Redis
/// cannot be reached within two seconds: this node's tokens then verify on this node
/// only. Redis holds the key like it holds revocations: whoever can write Redis can
/// forge reconnect tokens, so Redis belongs inside the trust boundary.
pub fn shared_reconnect_key(cfg: &ClusterConfig, local: &[u8]) -> Option<Vec<u8>> {
    if !cfg.enabled() {
        return None;
    }
    let source = source::Source::of(cfg).ok()?;
    let key = format!("{{{}}}:reconnect_key", cfg.key_prefix);
    // On a thread of its own: the caller may itself run inside a runtime.
    let read = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                Some(rt.block_on(async {
                    tokio::time::timeout(Duration::from_secs(2), async {
                        let mut conn = source.link().await?;
                        let (shared,): (Vec<u8>,) = redis::pipe()
                            .cmd("SET")
                            .arg(&key)
                            .arg(local)
                            .arg("NX")
                            .ignore()
                            .cmd("GET")
                            .arg(&key)
                            .query_async(&mut conn)
                            .await?;
                        Ok::<_, redis::RedisError>(shared)
                    })
                    .await
                }))
            })
            .join()
            .ok()
            .flatten()
    })?;
    match read {
        Ok(Ok(k)) if k.len() >= 32 => Some(k),
        Ok(Ok(_)) => {
            tracing::warn!(
                "Redis holds a malformed reconnect key; reconnect tokens verify on this node only"
            );
            None
        }
        Ok(Err(e)) => {
            tracing::warn!(
                "Redis unreachable at start ({e}); reconnect tokens verify on this node only"
            );
            None
        }
        Err(_) => {
            tracing::warn!(
                "Redis did not answer at start; reconnect tokens verify on this node only"
            );
            None
        }
    }
}

/// `<hostname>-<port>-<8 hex>`.
fn generated_id(ws: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into());
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(32)
        .collect();
    let port = ws.rsplit(':').next().unwrap_or("0");
    let mut b = [0u8; 4];
    let _ = getrandom::getrandom(&mut b);
    format!("{host}-{port}-{:08x}", u32::from_le_bytes(b))
}

/// The cluster thread: connect (with backoff), then heartbeat until told to stop;
/// on stop, leave the registry.
async fn run(
    source: source::Source,
    mut registry: registry::Registry,
    engine: Arc<EngineHandle>,
    state: Arc<ClusterState>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    every: Duration,
) {
    let mut link: Option<conn::Link> = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        if link.is_none() {
            let linked = source.link().await;
            match linked {
                Ok(mut c) => {
                    state.redis_connects.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(node = %state.node_id, "connected to Redis");
                    if registry.me.tag == 0 {
                        let n: redis::RedisResult<u64> = redis::cmd("INCR")
                            .arg(mail::tags_key(&registry.keys.prefix))
                            .query_async(&mut c)
                            .await;
                        if let Ok(n) = n {
                            registry.me.tag = mail::tag_of(n);
                            state.tag.store(registry.me.tag, Ordering::Relaxed);
                        }
                    }
                    link = Some(c);
                    backoff = Duration::from_millis(100);
                }
                Err(e) => {
                    if state.redis_up.swap(false, Ordering::Relaxed)
                        || state.redis_connects.load(Ordering::Relaxed) == 0
                            && state.redis_errors.load(Ordering::Relaxed) == 0
                    {
                        tracing::warn!("Redis unreachable, serving local clients only: {e}");
                    }
                    state.redis_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let mut dropped = false;
        let wait = match link.as_mut() {
            Some(conn) => {
                registry.me.connections = engine.connections();
                registry.me.load = if registry.me.max_connections == 0 {
                    0.0
                } else {
                    registry.me.connections as f64 / registry.me.max_connections as f64
                };
                let started = Instant::now();
                match registry.heartbeat(conn).await {
                    Ok(nodes) => {
                        state
                            .redis_rtt_us
                            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                        if !state.redis_up.swap(true, Ordering::Relaxed) {
                            tracing::info!(nodes = nodes.len(), "Redis up: in the registry");
                        }
                        *state.nodes.lock().unwrap_or_else(|e| e.into_inner()) = nodes;
                    }
                    Err(e) => {
                        state.redis_errors.fetch_add(1, Ordering::Relaxed);
                        if state.redis_up.swap(false, Ordering::Relaxed) {
                            tracing::warn!(
                                "Redis heartbeat failed, serving local clients only: {e}"
                            );
                        }
                        // Found again next time: after a failover, at another address.
                        dropped = true;
                    }
                }
                every
            }
            None => {
                let wait = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                wait
            }
        };
        if dropped {
            link = None;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => break,
        }
    }
    if let Some(conn) = link.as_mut() {
        if let Err(e) = registry.leave(conn).await {
            tracing::warn!("could not leave the node registry (its entry expires): {e}");
        }
    }
}
