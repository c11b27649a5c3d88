//! Assembling a running Switchboard: engine, auth workers, admin HTTP.
//!
//! Owns start-up order (keys, store, shards, workers, the admin address) and shutdown order (shards close clients with 1001 and drain, then the
//! admin API stops). Used by the binary and by the integration tests, which start it
//! on port 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use switchboard_engine::{Engine, EngineHandle, ShardMsg};

use crate::auth::{self, AuthStats, Verifier};
use crate::calls::{self, CallsHandle};
use crate::config::Config;
use crate::error::Error;
use crate::http::{self, HttpState};
use crate::ids::random_hex;
use crate::metrics::ApiStats;
use crate::notify::{self, NotifierHandle};
use crate::schedule::{self, SchedulerHandle};
use crate::store::{self, StoreHandle};

/// Credentials generated for dev mode (no key configured).
#[derive(Debug, Clone)]
pub struct DevCredentials {
    /// The generated HS256 secret.
    pub secret: String,
    /// A ready-to-use token (sub `dev`, every channel).
    pub token: String,
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    engine: Arc<EngineHandle>,
    admin_addr: SocketAddr,
    admin_stop: Option<tokio::sync::oneshot::Sender<()>>,
    admin_thread: Option<std::thread::JoinHandle<()>>,
    auth_threads: Vec<std::thread::JoinHandle<()>>,
    store: Option<StoreHandle>,
    scheduler: Option<SchedulerHandle>,
    notifier: Option<NotifierHandle>,
    calls: Option<CallsHandle>,
    history: Option<crate::worker::WorkerHandle>,
    alerts: Option<crate::worker::WorkerHandle>,
    memory_trim: Option<crate::worker::WorkerHandle>,
    hooks: Vec<crate::worker::WorkerHandle>,
    ai: Vec<crate::worker::WorkerHandle>,
    cluster: Option<crate::cluster::ClusterHandle>,
    /// Set in dev mode.
    pub dev: Option<DevCredentials>,
    /// The API key in force (configured, or generated in dev mode).
    pub api_key: Option<String>,
    /// The admin token key in force (configured, or generated in dev mode).
    pub admin_secret: Option<String>,
    /// Notified when an operator asks the process to stop (the shards are already
    /// draining then): the binary waits on it beside SIGTERM.
    pub shutdown_requested: Arc<tokio::sync::Notify>,
}

impl Server {
    /// Start everything described by `cfg`, in order: keys, the store read back, the
    /// shards (continuing the store's streams), the store writer, revocations, the
    /// workers, the auth threads, alerts, the admin listener.
    pub fn start(cfg: Config) -> Result<Server, Error> {
        let mut cfg = cfg;
        let dev_namespaces = cfg.add_dev_namespaces();
        if !dev_namespaces.is_empty() {
            tracing::info!(
                namespaces = ?dev_namespaces,
                "dev mode: room:* tracks presence; demo:* is stored (sync) with presence and edits"
            );
        }
        let keys = Keys::of(&cfg);
        let verifier = Arc::new(
            Verifier::new(&cfg.auth, keys.secret.as_deref())
                .map_err(|e| Error::invalid(format!("{}: {}", e.key, e.message)))?,
        );
        let mut engine_cfg = cfg.engine_config();
        // The store is read before the shards start, so they continue its streams
        // before they accept anyone.
        let node = if cfg.cluster.enabled() {
            cfg.cluster.node_id.as_str()
        } else {
            ""
        };
        let mut opened = store::open(
            &cfg.store,
            &engine_cfg.namespaces,
            engine_cfg.stream_idle_ms,
            node,
        )?;
        log_opening(&cfg, &opened.opening);
        // Nodes sharing Redis share the key, so a client resumes on any node.
        let reconnect_key =
            crate::cluster::shared_reconnect_key(&cfg.cluster, &opened.opening.reconnect_key)
                .unwrap_or_else(|| opened.opening.reconnect_key.to_vec());
        engine_cfg.reconnect_secret = Some(Arc::from(&reconnect_key[..]));
        let (requests_tx, requests_rx) = crossbeam_channel::bounded(cfg.auth.queue_capacity);
        let durable = opened.take_durable();
        // Nodes sharing Redis and a PostgreSQL database keep shared channels' history
        // in it: each node stores what it published.
        let shared_journal = durable
            .as_ref()
            .filter(|_| cfg.store.backend == store::Backend::Postgres)
            .map(|d| d.link.clone());
        let dedupe_ms = engine_cfg.dedupe_window_ms;
        let sync_namespaces = engine_cfg
            .namespaces
            .iter()
            .any(|n| n.durability == switchboard_engine::Durability::Sync);
        let (cluster_link, batches) = crate::cluster::link(&cfg.cluster).unzip();
        // The AI pipelines are built first: the shards hand them their namespaces'
        // publications from the start.
        let ai = crate::ai::pipeline::prepare(&cfg.ai, &cfg.ai_namespaces())
            .map_err(|e| Error::invalid(e.to_string()))?;
        let engine = Arc::new(Engine::start_shared(
            engine_cfg,
            requests_tx,
            durable,
            cluster_link,
            ai.tap.clone(),
        )?);
        let store = opened.spawn(engine.sender())?;
        let location = store.location().clone();
        let audit = Arc::new(crate::audit::Audit::open(&location)?);
        replay_revocations(&audit, &verifier, &engine, &location)?;
        // Pushes to users on other nodes (nothing for a node alone).
        let remote_pushes = crate::cluster::RemotePushes::default();
        let peers = crate::cluster::Peers::new(remote_pushes.clone());
        // Redis for the workers: scheduled messages any node fires.
        let worker_link = crate::cluster::WorkerLink::new(cfg.cluster.enabled());
        // Nodes sharing a PostgreSQL store keep jobs and notifications in it instead.
        let store_shared = worker_link.enabled() && cfg.store.backend == store::Backend::Postgres;
        let shared_jobs = (worker_link.enabled() && !store_shared)
            .then(|| schedule::SharedJobs::new(worker_link.clone(), &cfg.cluster.key_prefix));
        let (scheduler, scheduler_handle) = schedule::spawn(
            &location,
            engine.clone(),
            engine.sender(),
            shared_jobs,
            store_shared,
        )?;
        let (notifier, notifier_handle) = notify::spawn(
            &location,
            engine.sender(),
            cfg.notifications.clone(),
            remote_pushes.clone(),
            match (worker_link.enabled(), cfg.store.backend) {
                (false, _) => notify::Keeping::Store,
                (true, store::Backend::Postgres) => notify::Keeping::SharedStore,
                (true, store::Backend::Sqlite) => notify::Keeping::Redis(notify::SharedNotes::new(
                    worker_link.clone(),
                    &cfg.cluster.key_prefix,
                )),
            },
        )?;
        let (calls, calls_handle) = calls::spawn(
            &location,
            engine.sender(),
            cfg.calls.clone(),
            notifier.clone(),
            peers.clone(),
            remote_pushes.clone(),
            node,
        )?;
        let (history, history_handle) =
            store::spawn_reader(&location, engine.sender(), store.stats().clone())?;
        let (ai, ai_threads) = ai
            .spawn(
                engine.clone(),
                engine.sender(),
                audit.clone(),
                notifier.clone(),
            )
            .map_err(|e| Error::start("the AI pipeline workers", e))?;
        let (hooks, hook_threads) = crate::hooks::spawn(&cfg.socketio, engine.sender())
            .map_err(|e| Error::start("the hook threads", e))?;
        let auth_stats = Arc::new(AuthStats::default());
        // From here on HS256 tokens are verified on the shards (revocations replayed
        // above); public-key tokens go to the auth threads below.
        engine.attach_verifier(Arc::new(auth::ShardVerifier {
            verifier: verifier.clone(),
            stats: auth_stats.clone(),
        }));
        let revocations = verifier.revocations().clone();
        let auth_threads = auth::spawn_workers(
            cfg.auth.threads,
            requests_rx,
            verifier,
            engine.sender(),
            auth_stats.clone(),
            crate::router::Workers {
                scheduler: scheduler.clone(),
                notifier: notifier.clone(),
                calls: calls.clone(),
                hooks,
                history,
            },
        )
        .map_err(|e| Error::start("the auth workers", e))?;
        let store_view = crate::store::StoreView {
            path: location.name().display().to_string(),
            location: location.clone(),
            state: store.state().clone(),
            stats: store.stats().clone(),
        };
        let (alerts, alerts_handle) =
            crate::alerts::spawn(cfg.alerts.clone(), engine.clone(), Some(store_view.clone()))
                .map_err(|e| Error::start("the alerts worker", e))?;
        let memory_trim = crate::memory::spawn(engine.clone())
            .map_err(|e| Error::start("the memory trimming thread", e))?;
        let listen = |e: std::io::Error| {
            Error::start(
                "the admin listener",
                format!("admin.listen {}: {e}", cfg.admin.listen),
            )
        };
        let listener = std::net::TcpListener::bind(cfg.admin.listen).map_err(listen)?;
        listener.set_nonblocking(true).map_err(listen)?;
        let admin_addr = listener.local_addr().map_err(listen)?;
        let shutdown = Arc::new(tokio::sync::Notify::new());
        let advertise = |configured: &str, bound: SocketAddr| {
            if configured.is_empty() {
                bound.to_string()
            } else {
                configured.to_string()
            }
        };
        let addrs = crate::cluster::NodeAddrs {
            ws: advertise(&cfg.cluster.advertise_ws, engine.local_addr()),
            admin: advertise(&cfg.cluster.advertise_admin, admin_addr),
        };
        let maintenance: Arc<crate::admin_ops::MaintenanceSlot> = Default::default();
        let hands = crate::cluster::Hands {
            engine: engine.clone(),
            audit: audit.clone(),
            revocations: revocations.clone(),
            maintenance: maintenance.clone(),
        };
        let cluster = crate::cluster::spawn(
            &cfg.cluster,
            hands,
            addrs,
            cfg.engine.max_connections,
            crate::cluster::SharedOptions {
                batches,
                dedupe_ms,
                sync_namespaces,
                pushes: remote_pushes,
                peers,
                worker_link,
                personal_namespace: cfg.engine.personal_namespace.clone(),
                sio_recovery_ms: cfg.socketio.recovery_ms,
                journal: shared_journal,
            },
        )
        .map_err(|e| Error::start("the cluster thread", e))?;
        let (cluster_state, cluster_handle) = cluster.unzip();
        let state = Arc::new(HttpState {
            engine: engine.clone(),
            api_keys: keys.api_keys(&cfg),
            auth: auth_stats,
            api: ApiStats::default(),
            max_body_bytes: cfg.admin.max_body_bytes,
            scheduler,
            notifier,
            calls,
            admin_auth: keys
                .admin_secret
                .as_deref()
                .map(|k| crate::http::AdminAuth::new(k, &cfg.admin.role)),
            audit,
            revocations,
            maintenance,
            guesses: Default::default(),
            cluster: cluster_state,
            shutdown: shutdown.clone(),
            store: Some(store_view),
            alerts,
            ai,
        });
        let (admin_stop, admin_thread) = serve_http(listener, state)?;
        tracing::info!(ws = %engine.local_addr(), admin = %admin_addr, "switchboard started");
        Ok(Server {
            engine,
            admin_addr,
            admin_stop: Some(admin_stop),
            admin_thread: Some(admin_thread),
            auth_threads,
            store: Some(store),
            scheduler: Some(scheduler_handle),
            notifier: Some(notifier_handle),
            calls: Some(calls_handle),
            history: Some(history_handle),
            alerts: Some(alerts_handle),
            memory_trim: Some(memory_trim),
            hooks: hook_threads,
            ai: ai_threads,
            cluster: cluster_handle,
            dev: keys.dev,
            api_key: keys.api_key,
            admin_secret: keys.admin_secret,
            shutdown_requested: shutdown,
        })
    }

    /// The WebSocket address bound.
    pub fn ws_addr(&self) -> SocketAddr {
        self.engine.local_addr()
    }

    /// The admin HTTP address bound.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<EngineHandle> {
        &self.engine
    }

    /// Begin graceful shutdown (returns at once).
    pub fn shutdown(&self) {
        self.engine.shutdown();
    }

    /// The store's writer.
    pub fn store(&self) -> Option<&StoreHandle> {
        self.store.as_ref()
    }

    /// Wait until the shards have drained and stopped, then stop the writer (after it
    /// wrote everything) and the admin API.
    pub fn wait(mut self) {
        // AI workers first: what they still hold was never acknowledged, and their
        // publishers are told while the shards can still answer.
        for worker in self.ai.drain(..) {
            worker.finish();
        }
        self.engine.join();
        if let Some(cluster) = self.cluster.take() {
            cluster.finish();
        }
        if let Some(scheduler) = self.scheduler.take() {
            scheduler.finish();
        }
        if let Some(calls) = self.calls.take() {
            calls.finish();
        }
        if let Some(history) = self.history.take() {
            history.finish();
        }
        if let Some(alerts) = self.alerts.take() {
            alerts.finish();
        }
        if let Some(trim) = self.memory_trim.take() {
            trim.finish();
        }
        for hook in self.hooks.drain(..) {
            hook.finish();
        }
        if let Some(notifier) = self.notifier.take() {
            notifier.finish();
        }
        if let Some(store) = self.store.take() {
            store.finish();
        }
        if let Some(stop) = self.admin_stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.admin_thread.take() {
            let _ = t.join();
        }
        // Shards are gone, so their senders are dropped and the workers exit.
        for t in self.auth_threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The keys in force: configured, or generated in dev mode (no verification key).
struct Keys {
    /// The HS256 secret of client tokens.
    secret: Option<String>,
    /// Dev mode's generated secret and token.
    dev: Option<DevCredentials>,
    /// The default server API key.
    api_key: Option<String>,
    /// The admin token key.
    admin_secret: Option<String>,
}

impl Keys {
    fn of(cfg: &Config) -> Keys {
        let (secret, dev) = if cfg.dev_mode() {
            let secret = random_hex(32);
            // Dev mode is permissive: every channel, direct messages to anyone,
            // scheduling.
            let token = auth::mint_with(
                &secret,
                "dev",
                Duration::from_secs(24 * 3600),
                &cfg.auth,
                |c| {
                    c.send_to = Some(vec!["*".into()]);
                    c.schedule = Some(true);
                },
            );
            (Some(secret.clone()), Some(DevCredentials { secret, token }))
        } else {
            (cfg.auth.hmac_secret.clone(), None)
        };
        let generated = |bytes| dev.as_ref().map(|_| random_hex(bytes));
        Keys {
            api_key: cfg.admin.api_key.clone().or_else(|| generated(16)),
            admin_secret: cfg.admin.jwt_secret.clone().or_else(|| generated(32)),
            secret,
            dev,
        }
    }

    /// The server API's keys: the default one (every scope) and the scoped ones.
    fn api_keys(&self, cfg: &Config) -> Vec<http::ApiKey> {
        self.api_key
            .iter()
            .map(|k| http::ApiKey {
                name: "default".into(),
                key: k.clone(),
                scopes: vec!["*".into()],
            })
            .chain(cfg.admin.api_keys.iter().map(|k| http::ApiKey {
                name: k.name.clone(),
                key: k.key.clone(),
                scopes: k.scopes.clone(),
            }))
            .collect()
    }
}

/// Log what start-up found in the store.
fn log_opening(cfg: &Config, opening: &store::Opening) {
    tracing::info!(
        store = %cfg.store.location().name().display(),
        clean = opening.clean,
        streams = opening.streams,
        continued = opening.continued,
        "store opened"
    );
    if !opening.clean {
        tracing::warn!(
            "the previous run did not stop cleanly: async streams start new epochs, sync streams continue"
        );
    }
}

/// Revocations outlive restarts: the auth workers and the shards (reconnect tokens)
/// refuse the revoked users' older tokens from the start.
fn replay_revocations(
    audit: &crate::audit::Audit,
    verifier: &Verifier,
    engine: &EngineHandle,
    at: &crate::sql::Location,
) -> Result<(), Error> {
    let revoked = audit.revocations().map_err(|message| Error::Store {
        path: at.name(),
        message,
    })?;
    for (user, at_ms) in &revoked {
        verifier.revocations().revoke(user, *at_ms);
        let user: Arc<str> = Arc::from(user.as_str());
        for shard in 0..engine.shards() {
            let (done, _) = tokio::sync::oneshot::channel();
            let op = switchboard_engine::control::AdminOp::Revoke {
                user: user.clone(),
                before_ms: *at_ms,
                done,
            };
            crate::shards::send_patiently(
                &engine.sender(),
                shard as u16,
                ShardMsg::Admin(op),
                "a revocation",
            );
        }
    }
    Ok(())
}

/// Serve the HTTP API on its own thread (a current-thread runtime); stopped by the
/// returned sender.
fn serve_http(
    listener: std::net::TcpListener,
    state: Arc<HttpState>,
) -> Result<
    (
        tokio::sync::oneshot::Sender<()>,
        std::thread::JoinHandle<()>,
    ),
    Error,
> {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("control-plane".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return tracing::error!("cannot start admin runtime: {e}"),
            };
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => return tracing::error!("cannot register admin listener: {e}"),
                };
                let app = http::router(state);
                // With each connection's peer address (failed credentials are counted
                // per address).
                let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
                let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                    let _ = stop_rx.await;
                });
                if let Err(e) = serve.await {
                    tracing::error!("admin server failed: {e}");
                }
            });
        })
        .map_err(|e| Error::start("the HTTP thread", e))?;
    Ok((stop_tx, thread))
}
