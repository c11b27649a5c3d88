//! Starting the shards, and the handle the control plane holds.
//!
//! Owns binding one SO_REUSEPORT listener per shard (all on the port the first one
//! got, so port 0 works), spawning the pinned shard threads, and the operations the
//! control plane performs on running shards: deliver auth verdicts, publish from the
//! server API, report readiness and metrics, shut down.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
// Locks of the handle only (control-plane threads: join, runtime limit changes), never
// touched by a shard.
#[allow(clippy::disallowed_types)]
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;
use switchboard_protocol::{envelope, Payload};

use crate::auth::ControlRequest;
use crate::backend::Backend;
use crate::config::EngineConfig;
use crate::epoll::ShardSetup;
use crate::error::Error;
use crate::journal::{Durability, Durable, JournalState};
use crate::limits::{LimitRule, LimitTable};
use crate::mesh::{Mesh, PublishReply, QueryKind, SequenceReq, ShardMsg, StreamQuery, StreamReply};
use crate::metrics::ShardMetrics;

/// Resolves to a server-API publication's position, or why it was refused.
pub type PublishTicket = tokio::sync::oneshot::Receiver<crate::mesh::Sequenced>;

/// Entry point.
#[derive(Debug)]
pub struct Engine;

impl Engine {
    /// Bind the listeners and start the shards, without a store (every namespace
    /// must be `none`). Token checks go to `control`.
    pub fn start(
        cfg: EngineConfig,
        control: Sender<ControlRequest>,
    ) -> Result<EngineHandle, Error> {
        Engine::start_with(cfg, control, None)
    }

    /// Like [`Engine::start`], with a store: durable namespaces' publications go to
    /// `durable.link`, and each shard continues the streams the store read back
    /// before it accepts a connection.
    pub fn start_with(
        cfg: EngineConfig,
        control: Sender<ControlRequest>,
        durable: Option<Durable>,
    ) -> Result<EngineHandle, Error> {
        Engine::start_shared(cfg, control, durable, None, None)
    }

    /// Like [`Engine::start_with`], for a node sharing Redis with others: channels
    /// other than personal ones are sequenced by Redis through `cluster` (the cluster
    /// thread's link), see [`crate::cluster`]; and with the AI pipelines' tap, where
    /// namespaces with a pipeline hand their publications ([`crate::ai_tap`]).
    #[allow(clippy::disallowed_types)] // The handle's control-plane-side locks.
    pub fn start_shared(
        cfg: EngineConfig,
        control: Sender<ControlRequest>,
        durable: Option<Durable>,
        cluster: Option<crate::cluster::ClusterLink>,
        ai: Option<crate::ai_tap::AiTap>,
    ) -> Result<EngineHandle, Error> {
        cfg.validate()?;
        if durable.is_none() {
            if let Some(ns) = cfg
                .namespaces
                .iter()
                .find(|n| n.durability != Durability::None)
            {
                return Err(Error::config(
                    "engine",
                    format!(
                        "namespaces.{}.durability needs a store, and none is configured",
                        ns.name
                    ),
                ));
            }
        }
        let mut cfg = cfg;
        if cfg.reconnect_secret.is_none() {
            // No shared key: tokens are valid for this process only.
            let mut key = [0u8; 32];
            getrandom::getrandom(&mut key).map_err(|e| {
                Error::config("engine", format!("no randomness for reconnect keys: {e}"))
            })?;
            cfg.reconnect_secret = Some(Arc::from(&key[..]));
        }
        let files = crate::files::plan(cfg.max_connections);
        if let Some(from) = files.raised_from {
            tracing::info!(
                from,
                to = files.limit,
                "raised the open-file limit (RLIMIT_NOFILE)"
            );
        }
        if files.connections < cfg.max_connections {
            tracing::warn!(
                max_connections = cfg.max_connections,
                open_file_limit = files.limit,
                reserved = crate::files::RESERVED_FILES,
                "engine.max_connections exceeds the open-file limit less {} descriptors \
                 reserved for health, admin and the store: at most {} connections (beyond: \
                 HTTP 503); raise `ulimit -n` or lower engine.max_connections",
                crate::files::RESERVED_FILES,
                files.connections,
            );
            cfg.max_connections = files.connections;
        }
        let shards = cfg.resolved_shards();
        let mesh = Mesh::with_placement(shards, cfg.inbox_capacity, cfg.channel_homes)?;
        let journal = durable.as_ref().map(|d| d.link.state().clone());
        if let Some(d) = durable {
            mesh.attach(d)?;
        }
        if let Some(link) = cluster {
            mesh.attach_cluster(link)?;
        }
        if let Some(tap) = ai {
            mesh.attach_ai(tap)?;
        }
        let first = bind(cfg.listen, cfg.backlog).map_err(|source| Error::Bind {
            addr: cfg.listen,
            source,
        })?;
        let local_addr = first.local_addr()?;
        let mut listeners = vec![first];
        for _ in 1..shards {
            listeners.push(bind(local_addr, cfg.backlog).map_err(|source| Error::Bind {
                addr: local_addr,
                source,
            })?);
        }
        let (backend, fallback) = crate::backend::select(&cfg)?;
        if let Some(why) = &fallback {
            tracing::warn!("io_uring unavailable, using epoll: {why}");
        }
        let cores = if cfg.pin_cores {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };
        let cfg = Arc::new(cfg);
        let metrics: Vec<Arc<ShardMetrics>> = (0..shards)
            .map(|_| Arc::new(ShardMetrics::default()))
            .collect();
        let mut threads = Vec::with_capacity(shards);
        let (started_tx, started_rx) = std::sync::mpsc::sync_channel(shards);
        for (i, listener) in listeners.into_iter().enumerate() {
            let setup = ShardSetup {
                id: i as u16,
                cfg: cfg.clone(),
                listener,
                mesh: mesh.clone(),
                control: control.clone(),
                metrics: metrics[i].clone(),
                core_id: if cores.is_empty() {
                    None
                } else {
                    Some(cores[i % cores.len()])
                },
                started: started_tx.clone(),
            };
            let inbox_of_shard = mesh.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("shard-{i}"))
                    .spawn(move || {
                        // However the shard ends (stopped, failed to start, panicked),
                        // nothing queued for it may wait forever.
                        let _closed = CloseInbox(inbox_of_shard, i);
                        backend.run(setup)
                    })?,
            );
        }
        drop(started_tx);
        let handle = EngineHandle {
            cfg: cfg.clone(),
            journal,
            backend,
            fallback,
            mesh,
            threads: Mutex::new(threads),
            local_addr,
            metrics,
            // Validated before the shards started.
            limits: Mutex::new(Arc::new(cfg.limits().unwrap_or_default())),
        };
        // Every shard says whether its I/O came up; one that could not fails the start.
        let mut failure = None;
        for _ in 0..shards {
            match started_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(why)) => failure = failure.or(Some(why)),
                Err(_) => {
                    failure = failure.or(Some(Error::Backend {
                        backend: backend.name(),
                        message: "a shard thread died while starting".into(),
                    }))
                }
            }
        }
        if let Some(why) = failure {
            handle.shutdown();
            handle.join();
            return Err(why);
        }
        tracing::info!(%local_addr, shards, backend = backend.name(), "engine started");
        Ok(handle)
    }
}

fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(s.into())
}

/// How long an admin operation waits for the shards' answers.
const ADMIN_ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// The running engine. Shared by the control plane's threads.
#[derive(Debug)]
#[allow(clippy::disallowed_types)] // `threads` and `limits`: control-plane side only.
pub struct EngineHandle {
    /// The settings the shards run with.
    cfg: Arc<EngineConfig>,
    /// The store's writer state, when a store is attached.
    journal: Option<Arc<JournalState>>,
    backend: Backend,
    /// Why `io = "auto"` fell back to epoll.
    fallback: Option<String>,
    mesh: Arc<Mesh>,
    /// Shard threads, taken by `join` (control-plane only, never on a shard).
    threads: Mutex<Vec<JoinHandle<()>>>,
    local_addr: SocketAddr,
    metrics: Vec<Arc<ShardMetrics>>,
    /// The rate limits in force (the shards hold copies of the same table).
    limits: Mutex<Arc<LimitTable>>,
}

impl EngineHandle {
    /// Hand an admin action to every shard (or to `only`), each built by `make` with
    /// the channel its answer comes back on; the answers, one per shard asked.
    /// `Overloaded` when a shard's inbox is full, or it has stopped, or it has not
    /// answered within five seconds. Needs a tokio runtime with its timer.
    pub async fn admin<T>(
        &self,
        only: Option<u16>,
        make: impl Fn(tokio::sync::oneshot::Sender<T>) -> crate::control::AdminOp,
    ) -> Result<Vec<T>, Error> {
        let shards: Vec<usize> = match only {
            Some(s) if (s as usize) < self.shards() => vec![s as usize],
            Some(_) => vec![],
            None => (0..self.shards()).collect(),
        };
        let mut answers = Vec::with_capacity(shards.len());
        for shard in shards {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.mesh
                .inbox(shard)
                .push(ShardMsg::Admin(make(tx)))
                .map_err(|_| Error::Overloaded)?;
            answers.push(rx);
        }
        // A stopped shard drops the request (its inbox is closed); a shard wedged or
        // too busy to answer within the deadline fails the request as overloaded.
        let deadline = tokio::time::Instant::now() + ADMIN_ANSWER_WITHIN;
        let mut out = Vec::with_capacity(answers.len());
        for rx in answers {
            match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(answer)) => out.push(answer),
                _ => return Err(Error::Overloaded),
            }
        }
        Ok(out)
    }

    /// Messages waiting in each shard's inbox (cross-shard and control-plane queue
    /// depth).
    pub fn inbox_depths(&self) -> Vec<usize> {
        (0..self.shards())
            .map(|i| self.mesh.inbox(i).len())
            .collect()
    }

    /// The rate-limit rules in force.
    pub fn limits(&self) -> Vec<LimitRule> {
        self.limits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .rules()
            .to_vec()
    }

    /// Replace the rate-limit rules on every shard (each applies them when it next
    /// drains its inbox: within a tick). The error names the bad rule.
    pub fn set_limits(&self, rules: Vec<LimitRule>) -> Result<(), Error> {
        let table = Arc::new(LimitTable::new(rules)?);
        let mut current = self.limits.lock().unwrap_or_else(|e| e.into_inner());
        for shard in 0..self.shards() {
            let mut msg = ShardMsg::Limits(table.clone());
            let deadline = crate::clock::mono() + std::time::Duration::from_secs(1);
            while let Err(back) = self.mesh.inbox(shard).push(msg) {
                if crate::clock::mono() > deadline {
                    return Err(Error::Backend {
                        backend: "mesh",
                        message: format!("shard {shard} is not draining its inbox"),
                    });
                }
                msg = back;
                // The admin API's thread waits for a busy shard, never a shard.
                #[allow(clippy::disallowed_methods)]
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        }
        *current = table;
        Ok(())
    }

    /// The WebSocket address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.metrics.len()
    }

    /// The I/O backend in use.
    pub fn backend(&self) -> &'static str {
        self.backend.name()
    }

    /// Why io_uring is not in use although `engine.io = "auto"` (None when it is, or
    /// when epoll was asked for).
    pub fn backend_fallback(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    /// Per-shard metrics.
    pub fn metrics(&self) -> &[Arc<ShardMetrics>] {
        &self.metrics
    }

    /// Connections held by the process.
    pub fn connections(&self) -> usize {
        self.mesh.connections()
    }

    /// Whether every shard is accepting connections.
    pub fn ready(&self) -> bool {
        self.metrics
            .iter()
            .all(|m| m.accepting.load(Ordering::Acquire))
    }

    /// Send a message to a shard; gives it back if the inbox is full.
    pub fn send(&self, shard: usize, msg: ShardMsg) -> Result<(), ShardMsg> {
        self.mesh.inbox(shard).push(msg)
    }

    /// Publish `data` to `channel` (server API). The channel's owner shard sequences it
    /// and fans it out; the receiver yields the publication's position, or why the
    /// payload was refused (it does not transcode for a subscriber's format).
    pub fn publish(
        &self,
        channel: &str,
        data: Payload<'_>,
        meta: Option<Payload<'_>>,
        key: Option<&str>,
    ) -> Result<PublishTicket, Error> {
        self.publish_from(channel, data, meta, key, None)
    }

    /// [`EngineHandle::publish`] with the sender's user id carried in the
    /// publication (direct messages, scheduled sends).
    pub fn publish_from(
        &self,
        channel: &str,
        data: Payload<'_>,
        meta: Option<Payload<'_>>,
        key: Option<&str>,
        from: Option<Arc<str>>,
    ) -> Result<PublishTicket, Error> {
        self.publish_event(channel, data, meta, key, from, None)
    }

    /// [`EngineHandle::publish_from`] with the event a backend names the publication
    /// with: Socket.IO subscribers get that event with the data as its argument.
    pub fn publish_event(
        &self,
        channel: &str,
        data: Payload<'_>,
        meta: Option<Payload<'_>>,
        key: Option<&str>,
        from: Option<Arc<str>>,
        event: Option<Arc<str>>,
    ) -> Result<PublishTicket, Error> {
        if !envelope::valid_channel(channel) {
            return Err(Error::InvalidChannel);
        }
        // The edge check every client command gets at decode: nothing accepted here
        // may fail a later read in the other format.
        for p in std::iter::once(data).chain(meta) {
            p.validate()
                .map_err(|fault| Error::Payload(fault.message().into()))?;
        }
        if let Some(m) = meta {
            envelope::check_attachments(m).map_err(|why| Error::Payload(why.into()))?;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let owner = self.mesh.home_of(channel);
        let created = crate::clock::mono();
        let req = SequenceReq::new(
            channel,
            data,
            meta,
            key,
            from,
            PublishReply::Api(tx),
            created,
        )
        .with_event(event);
        self.mesh
            .inbox(owner as usize)
            .push(ShardMsg::Sequence(Box::new(req)))
            .map_err(|_| Error::Overloaded)?;
        Ok(rx)
    }

    /// Edit (with `data`) or delete (without) the publication at `target` of `channel`
    /// (server API: any publication, as a moderator would), as a new publication that
    /// refers to it; the receiver yields its position or why it was refused.
    pub fn revise(
        &self,
        channel: &str,
        target: u64,
        epoch: Option<u64>,
        data: Option<Payload<'_>>,
        meta: Option<Payload<'_>>,
    ) -> Result<PublishTicket, Error> {
        if !envelope::valid_channel(channel) {
            return Err(Error::InvalidChannel);
        }
        for p in data.iter().chain(meta.iter()) {
            p.validate()
                .map_err(|fault| Error::Payload(fault.message().into()))?;
        }
        if let Some(m) = meta {
            envelope::check_attachments(m).map_err(|why| Error::Payload(why.into()))?;
        }
        let delete = data.is_none();
        let data = data.unwrap_or(Payload {
            format: switchboard_protocol::Format::Json,
            raw: b"null",
        });
        let (tx, rx) = tokio::sync::oneshot::channel();
        let owner = self.mesh.home_of(channel);
        let reply = PublishReply::Api(tx);
        let mut req =
            SequenceReq::new(channel, data, meta, None, None, reply, crate::clock::mono());
        req.revision = Some(crate::publications::RevisionReq {
            revises: switchboard_protocol::Revision { target, delete },
            epoch,
            moderator: true,
            checked: false,
        });
        self.mesh
            .inbox(owner as usize)
            .push(ShardMsg::Sequence(Box::new(req)))
            .map_err(|_| Error::Overloaded)?;
        Ok(rx)
    }

    /// Read a channel's retained publications (server API): asked of the channel's
    /// owner shard; the receiver yields its answer.
    pub fn history(
        &self,
        channel: &str,
        page: switchboard_protocol::history::Page,
    ) -> Result<tokio::sync::oneshot::Receiver<StreamReply>, Error> {
        if !envelope::valid_channel(channel) {
            return Err(Error::InvalidChannel);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let owner = self.mesh.home_of(channel);
        let q = StreamQuery {
            channel: channel.into(),
            kind: QueryKind::History { page },
            shard: owner,
            conn: crate::core::ConnKey { slot: 0, gen: 0 },
            to: crate::mesh::ReplyKind::Command(0),
            device: None,
            api: Some(tx),
        };
        self.mesh
            .inbox(owner as usize)
            .push(ShardMsg::StreamQuery(Box::new(q)))
            .map_err(|_| Error::Overloaded)?;
        Ok(rx)
    }

    /// Subscribe (`join`) or unsubscribe every connection of `user` to `channel`, on
    /// every shard (server API); each receiver yields how many connections of that
    /// shard changed.
    pub fn user_subscription(
        &self,
        user: &str,
        channel: &str,
        join: bool,
        since: Option<switchboard_protocol::Position>,
    ) -> Result<Vec<tokio::sync::oneshot::Receiver<usize>>, Error> {
        if !envelope::valid_channel(channel) {
            return Err(Error::InvalidChannel);
        }
        let (user, channel): (Arc<str>, Arc<str>) = (user.into(), channel.into());
        let mut answers = Vec::with_capacity(self.shards());
        for shard in 0..self.shards() {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let msg = ShardMsg::UserSubscription(Box::new(crate::mesh::UserSubscription {
                user: user.clone(),
                channel: channel.clone(),
                join,
                since,
                done: Some(tx),
            }));
            self.mesh
                .inbox(shard)
                .push(msg)
                .map_err(|_| Error::Overloaded)?;
            answers.push(rx);
        }
        Ok(answers)
    }

    /// Send `channel`'s owner shard the question `make` builds; the receiver yields
    /// its answer.
    fn ask_owner<T>(
        &self,
        channel: &str,
        make: impl FnOnce(Arc<str>, crate::mesh::Answer<T>) -> ShardMsg,
    ) -> Result<tokio::sync::oneshot::Receiver<T>, Error> {
        if !envelope::valid_channel(channel) {
            return Err(Error::InvalidChannel);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let owner = self.mesh.home_of(channel);
        let msg = make(channel.into(), crate::mesh::Answer::Api(tx));
        self.mesh
            .inbox(owner as usize)
            .push(msg)
            .map_err(|_| Error::Overloaded)?;
        Ok(rx)
    }

    /// Who is on `channel` (server API), from its owner shard; `members` false: the
    /// counts only.
    pub fn presence(
        &self,
        channel: &str,
        members: bool,
    ) -> Result<tokio::sync::oneshot::Receiver<crate::presence::PresenceList>, Error> {
        self.ask_owner(channel, |channel, answer| ShardMsg::PresenceQuery {
            channel,
            members,
            answer,
        })
    }

    /// The inbox channel of `user`, if direct messages are on (and the name is valid).
    pub fn inbox_channel(&self, user: &str) -> Option<String> {
        let ns = self.cfg.inbox.as_deref()?;
        let channel = format!("{ns}:{user}");
        envelope::valid_channel(&channel).then_some(channel)
    }

    /// `user`'s inbox: its devices' cursors and what each has not acknowledged; with
    /// `clear`, every cursor moved to the latest offset first (server API).
    pub fn inbox_state(
        &self,
        user: &str,
        clear: bool,
    ) -> Result<tokio::sync::oneshot::Receiver<crate::marks::InboxState>, Error> {
        let channel = self.inbox_channel(user).ok_or(Error::InvalidChannel)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let owner = self.mesh.home_of(&channel);
        let msg = ShardMsg::InboxState {
            channel: channel.as_str().into(),
            clear,
            answer: tx,
        };
        self.mesh
            .inbox(owner as usize)
            .push(msg)
            .map_err(|_| Error::Overloaded)?;
        Ok(rx)
    }

    /// Every receipt of `channel` (server API), from its owner shard.
    pub fn receipts(
        &self,
        channel: &str,
    ) -> Result<tokio::sync::oneshot::Receiver<crate::marks::ReceiptList>, Error> {
        self.ask_owner(channel, |channel, answer| ShardMsg::Receipts {
            channel,
            answer,
        })
    }

    /// Ask every shard to shut down gracefully (close 1001, drain, stop).
    pub fn shutdown(&self) {
        for i in 0..self.shards() {
            let mut msg = ShardMsg::Shutdown;
            // An inbox full of publications drains quickly; one full for seconds
            // belongs to a shard that has already stopped.
            let deadline = crate::clock::mono() + Duration::from_secs(5);
            while let Err(back) = self.mesh.inbox(i).push(msg) {
                if crate::clock::mono() > deadline {
                    tracing::error!(shard = i, "shard inbox full for 5 s; not waiting for it");
                    break;
                }
                msg = back;
                // The stopping thread waits for a busy shard, never a shard.
                #[allow(clippy::disallowed_methods)]
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// Wait for every shard thread to finish.
    pub fn join(&self) {
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }

    /// The store's writer state (backlog, health), when a store is attached.
    pub fn journal(&self) -> Option<&Arc<JournalState>> {
        self.journal.as_ref()
    }

    /// Let shards verify cheap tokens themselves from now on ([`crate::auth::InlineVerifier`]).
    pub fn attach_verifier(&self, v: Arc<dyn crate::auth::InlineVerifier>) {
        self.mesh.attach_verifier(v);
    }

    /// The AI pipelines' tap, when a namespace has a pipeline.
    pub fn ai_tap(&self) -> Option<&crate::ai_tap::AiTap> {
        self.mesh.ai()
    }

    /// The shared channels' link counters, when nodes share Redis.
    pub fn cluster_stats(&self) -> Option<Arc<crate::cluster::ClusterLinkStats>> {
        self.mesh.cluster().map(|l| l.stats().clone())
    }

    /// A cheap handle for other threads to send messages to shards.
    pub fn sender(&self) -> ShardSender {
        ShardSender {
            mesh: self.mesh.clone(),
        }
    }
}

/// Sends messages to shards from any thread (auth workers).
#[derive(Debug, Clone)]
pub struct ShardSender {
    mesh: Arc<Mesh>,
}

impl ShardSender {
    /// A sender to the inboxes of `mesh` (tests and tools that drive shards
    /// themselves; a running engine hands one out with [`EngineHandle::sender`]).
    pub fn over(mesh: Arc<Mesh>) -> ShardSender {
        ShardSender { mesh }
    }

    /// `channel`'s home shard (claimed for its hash shard if unused so far): where
    /// messages about the channel go.
    pub fn home_of(&self, channel: &str) -> usize {
        self.mesh.home_of(channel) as usize
    }

    /// Push `msg` to `shard`'s inbox; gives it back if full.
    pub fn send(&self, shard: usize, msg: ShardMsg) -> Result<(), ShardMsg> {
        self.mesh.inbox(shard).push(msg)
    }

    /// How many shards there are.
    pub fn shards(&self) -> usize {
        self.mesh.shards()
    }
}

/// Closes a shard's inbox when dropped: at the end of the shard thread, panics included.
struct CloseInbox(Arc<Mesh>, usize);

impl Drop for CloseInbox {
    fn drop(&mut self) {
        self.0.inbox(self.1).close();
    }
}
