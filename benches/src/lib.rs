//! Fixtures shared by the criterion benches of Switchboard's hot paths.
//!
//! The benches themselves are in `benches/hot_paths.rs`; run them with
//! `cargo bench -p switchboard-benches`.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use switchboard_engine::journal::{Batch, Durability, Durable, JournalLink, NamespacePolicy};
use switchboard_engine::{
    ControlRequest, EngineConfig, Identity, Mesh, Now, ShardCore, ShardMetrics,
};
use switchboard_protocol::Format;

/// A shard core with `subscribers` open connections subscribed to `channel`, and the
/// receiver its control requests would go to (kept alive for the bench).
pub fn fanout_core(
    subscribers: usize,
    channel: &str,
) -> (ShardCore, crossbeam_channel::Receiver<ControlRequest>) {
    fanout_core_in(subscribers, channel, Durability::None).0
}

/// A shard core and the receiver of its control requests.
pub type CoreAndControl = (ShardCore, crossbeam_channel::Receiver<ControlRequest>);

/// The journal link a core sends to, and the store's receiving end.
pub type StoreEnd = (JournalLink, crossbeam_channel::Receiver<Batch>);

/// Like [`fanout_core`], with `channel`'s namespace at `durability`; for `async` and
/// `sync` a journal link is attached, and its receiving end (the store's) returned.
pub fn fanout_core_in(
    subscribers: usize,
    channel: &str,
    durability: Durability,
) -> (CoreAndControl, Option<StoreEnd>) {
    fanout_core_of(subscribers, channel, durability, Format::MsgPack)
}

/// Like [`fanout_core_in`], the subscribers speaking `format` (Socket.IO sessions'
/// replies and publications are [`Format::SocketIo`]).
pub fn fanout_core_of(
    subscribers: usize,
    channel: &str,
    durability: Durability,
    format: Format,
) -> (CoreAndControl, Option<StoreEnd>) {
    fanout_core_with(subscribers, channel, durability, format, |_| {})
}

/// Namespace `name` of `durability` keeping `history_size` publications for 5 minutes,
/// with no rules, presence or byte cap: the policy every bench's channels use.
pub fn namespace_policy(
    name: &str,
    durability: Durability,
    history_size: usize,
) -> NamespacePolicy {
    NamespacePolicy {
        retention: Default::default(),
        edits: false,
        name: name.into(),
        durability,
        history_size,
        history_ttl_ms: 300_000,
        rules: Default::default(),
        presence: false,
        presence_events: false,
        max_channel_bytes: 0,
    }
}

/// Like [`fanout_core_of`], with `tweak` applied to the engine's configuration (say,
/// Socket.IO connection state recovery on).
pub fn fanout_core_with(
    subscribers: usize,
    channel: &str,
    durability: Durability,
    format: Format,
    tweak: impl FnOnce(&mut EngineConfig),
) -> (CoreAndControl, Option<StoreEnd>) {
    let namespace = channel.split_once(':').map_or("", |(n, _)| n).to_string();
    let mut cfg = EngineConfig {
        shards: 1,
        max_outbound_bytes: 64 * 1024 * 1024,
        namespaces: vec![namespace_policy(&namespace, durability, 64)],
        // No rate limits unless a bench sets them: the defaults (issue 16) would refuse
        // a bench's millions of commands after the first burst and time the refusal.
        rate_limits: Vec::new(),
        ..EngineConfig::default()
    };
    tweak(&mut cfg);
    let mesh = Mesh::new(1, 1024).expect("eventfd");
    fanout_core_on(mesh, cfg, subscribers, channel, durability, format)
}

/// A one-shard core on `mesh` (a cluster link may be attached to it first) with
/// `subscribers` connections speaking `format` subscribed to `channel`.
pub fn fanout_core_on(
    mesh: Arc<Mesh>,
    cfg: EngineConfig,
    subscribers: usize,
    channel: &str,
    durability: Durability,
    format: Format,
) -> (CoreAndControl, Option<StoreEnd>) {
    let store = (durability != Durability::None).then(|| {
        let (link, rx) = JournalLink::new(1 << 30);
        mesh.attach(Durable {
            link: link.clone(),
            seeds: Vec::new(),
            marks: Vec::new(),
            sessions: Vec::new(),
        })
        .expect("first store");
        (link, rx)
    });
    let (tx, rx) = crossbeam_channel::bounded(16);
    let mut core = ShardCore::new(
        0,
        Arc::new(cfg),
        mesh,
        tx,
        Arc::new(ShardMetrics::default()),
        Now::read(),
    );
    let identity = identity("bench");
    for i in 0..subscribers {
        let peer = IpAddr::V4(Ipv4Addr::from(0x7f00_0000 + (i as u32 % 250) + 1));
        let key = core.open_for_test(peer, format, identity.clone());
        core.subscribe_for_test(key, channel);
    }
    drain(&mut core);
    ((core, rx), store)
}

/// A user allowed every channel, with no claims.
pub fn identity(user: &str) -> Arc<Identity> {
    Arc::new(Identity {
        user: user.into(),
        channels: None,
        expires_at: None,
        send_to: None,
        schedule: false,
        claims: Vec::new(),
    })
}

/// Empty every queue the way a flush does after the socket took everything: through
/// `written`, so each queue keeps its small ring as in the steady state.
pub fn drain(core: &mut ShardCore) {
    let mut dirty = Vec::new();
    core.take_dirty(&mut dirty);
    for slot in dirty {
        let queued: usize = match core.out_mut(slot) {
            Some(q) => q.frames().map(|f| f.len()).sum(),
            None => continue,
        };
        core.written(slot, queued);
    }
}
