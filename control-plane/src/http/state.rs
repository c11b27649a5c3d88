//! What every HTTP route shares: handles to the engine, the workers, the store, the
//! audit log and the alerts, the API keys and counters.
//!
//! Owns [`HttpState`]. Does not own any route.

// The handlers' helpers return the HTTP error as `Err(Response)` to be sent as is; it is
// built once per refused request, so its size does not matter.
#![allow(clippy::result_large_err)]

use super::keys::ApiKey;
use crate::auth::AuthStats;
use crate::calls::Calls;
use crate::metrics::ApiStats;
use crate::notify::Notifier;
use crate::schedule::Scheduler;
use crate::store::StoreView;
use std::sync::Arc;
use switchboard_engine::EngineHandle;

/// What the handlers share.
#[derive(Debug)]
pub struct HttpState {
    /// The running shards.
    pub engine: Arc<EngineHandle>,
    /// Keys accepted by `/api/*`, with their scopes; none: the API is disabled.
    pub api_keys: Vec<ApiKey>,
    /// Auth worker counters.
    pub auth: Arc<AuthStats>,
    /// API counters.
    pub api: ApiStats,
    /// Body size limit, in bytes.
    pub max_body_bytes: usize,
    /// The store's writer: path, backlog and health, counters.
    pub store: Option<StoreView>,
    /// Scheduled messages.
    pub scheduler: Scheduler,
    /// Notifications.
    pub notifier: Notifier,
    /// Calls.
    pub calls: Calls,
    /// Checks admin tokens (`None`: `/admin/*` is off).
    pub admin_auth: Option<super::admin_auth::AdminAuth>,
    /// The audit log of admin actions (and stored revocations).
    pub audit: Arc<crate::audit::Audit>,
    /// Revoked users, honoured by the auth workers.
    pub revocations: Arc<crate::auth::Revocations>,
    /// Alerts firing and their history, and the webhook breaker.
    pub alerts: Arc<crate::alerts::AlertsView>,
    /// Told when an operator asks the process to stop (`POST /admin/shutdown`).
    pub shutdown: Arc<tokio::sync::Notify>,
    /// Maintenance mode in force.
    pub maintenance: Arc<crate::admin_ops::MaintenanceSlot>,
    /// Failed credentials per client address (API keys and admin tokens cannot be
    /// guessed fast).
    pub guesses: super::guesses::Guesses,
    /// The cluster's link and registry (`None`: a node alone).
    pub cluster: Option<Arc<crate::cluster::ClusterState>>,
    /// The AI pipelines: their breakers, counters and held messages.
    pub ai: crate::ai::pipeline::AiView,
}
