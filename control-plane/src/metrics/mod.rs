//! Prometheus text exposition of the shards' counters.
//!
//! Owns rendering. The counters themselves live in each shard's cache-line-aligned
//! block of atomics (`switchboard_engine::ShardMetrics`), written by that shard alone;
//! the text format is simple enough that a metrics crate would only add a second copy
//! of every counter.
//!
//! # Layout
//! - `text`: the exposition format (families, samples, histograms);
//! - `shards`: one `expose` for what the shards count;
//! - `components`: one `expose` per control-plane component (breakers, process, auth
//!   and API, store); `ai`: the AI pipelines and model endpoints;
//! - [`snapshot`]: the same text read back as JSON (`/metrics/snapshot`).

mod ai;
mod components;
mod shards;
pub mod snapshot;
mod text;

use switchboard_engine::control::Census;
use switchboard_engine::EngineHandle;

use crate::alerts::AlertsView;
use crate::auth::AuthStats;
use crate::store::StoreView;

/// Counters of the control plane itself.
#[derive(Debug, Default)]
pub struct ApiStats {
    /// Publications accepted by `POST /api/publish`.
    pub publications: std::sync::atomic::AtomicU64,
    /// API requests refused (auth, validation, overload).
    pub refused: std::sync::atomic::AtomicU64,
}

/// Render every metric, component by component.
#[allow(clippy::too_many_arguments)]
pub fn render(
    engine: &EngineHandle,
    auth: &AuthStats,
    api: &ApiStats,
    store: Option<&StoreView>,
    alerts: &AlertsView,
    census: &[Census],
    cluster: Option<&crate::cluster::ClusterState>,
    ai: &crate::ai::pipeline::AiView,
) -> String {
    let mut out = String::with_capacity(8192);
    shards::expose(&mut out, engine, census);
    components::expose_breakers(&mut out, store, alerts, cluster);
    components::expose_process(&mut out);
    components::expose_auth_and_api(&mut out, auth, api);
    if let Some(st) = store {
        components::expose_store(&mut out, st);
    }
    if let Some(c) = cluster {
        components::expose_cluster(&mut out, c);
    }
    ai::expose(&mut out, ai);
    out
}
