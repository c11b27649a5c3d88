//! Health and metrics: `/health/live`, `/health/ready` (every shard accepting, the
//! store writing, not in maintenance; `degraded` but still ready while a cluster's
//! Redis is away), `/metrics` (Prometheus text) and `/metrics/snapshot` (the same as
//! JSON, whole or one family).
//!
//! Owns these routes and the readiness computation the admin health view shares. Does
//! not own the metrics' rendering (`crate::metrics`).

// The handlers' helpers return the HTTP error as `Err(Response)` to be sent as is; it is
// built once per refused request, so its size does not matter.
#![allow(clippy::result_large_err)]

use super::state::HttpState;
use crate::metrics::{self};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The routes.
pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .route("/metrics/snapshot", get(metrics_snapshot))
        .route("/metrics/snapshot/{name}", get(metric_family))
}

pub(super) async fn live() -> Response {
    Json(json!({"status": "live"})).into_response()
}

pub(super) async fn ready(State(s): State<Arc<HttpState>>) -> Response {
    let (ready, body) = readiness(&s);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Whether the node should get new clients, and why, with its shards and store: the
/// body of `/health/ready`, and the base of `/admin/health`.
pub(crate) fn readiness(s: &HttpState) -> (bool, Value) {
    let shards: Vec<_> = s
        .engine
        .metrics()
        .iter()
        .enumerate()
        .map(|(i, m)| {
            json!({
                "shard": i,
                "accepting": m.accepting.load(Ordering::Relaxed),
                "connections": m.connections.load(Ordering::Relaxed),
                "authenticated": m.authenticated.load(Ordering::Relaxed),
            })
        })
        .collect();
    // A store that cannot write makes the node unready: durable publications are
    // refused until it recovers.
    let store_ok = s.store.as_ref().is_none_or(|st| st.state.healthy());
    // In maintenance new connections are turned away: send them elsewhere.
    let maintenance = s
        .maintenance
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_some();
    let ready = s.engine.ready() && store_ok && !maintenance;
    let store = s.store.as_ref().map(|st| {
        json!({
            "path": st.path,
            "writing": st.state.healthy(),
            "circuit": if st.state.healthy() { "closed" } else { "open" },
            "backlog": st.state.backlog(),
            "commits": st.stats.commits.load(Ordering::Relaxed),
            "failures": st.stats.failures.load(Ordering::Relaxed),
        })
    });
    // Redis away: still ready (local clients are served), but degraded.
    let redis_up = s.cluster.as_ref().map(|c| c.up());
    let body = json!({
        "status": if ready && redis_up == Some(false) {
            "degraded"
        } else if ready {
            "ready"
        } else if maintenance {
            "maintenance"
        } else if store_ok {
            "not_ready"
        } else {
            "store_unavailable"
        },
        "maintenance": maintenance,
        "backend": s.engine.backend(),
        "backend_fallback": s.engine.backend_fallback(),
        "connections": s.engine.connections(),
        "shards": shards,
        "store": store,
        "cluster": s.cluster.as_ref().map(|c| json!({
            "node": c.node_id,
            "redis": if c.up() { "up" } else { "unreachable" },
            "redis_rtt_ms": c.redis_rtt_us.load(Ordering::Relaxed) as f64 / 1000.0,
            "bus": if c.bus_linked.load(Ordering::Relaxed) { "linked" } else { "unlinked" },
            "nodes": c.nodes().len(),
            "shared_channels": if c.fanout_gen.load(Ordering::Relaxed) != 0 { "linked" } else { "alone" },
            "sync_warning": sync_warning(c),
        })),
    });
    (ready, body)
}

/// Why `sync` namespaces are not as durable as they say (`None`: they are).
fn sync_warning(c: &crate::cluster::ClusterState) -> Option<String> {
    let w = c
        .sync_warning
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    (!w.is_empty()).then_some(w)
}

/// The exposition text of everything, as `/metrics` serves it.
async fn exposition(s: &HttpState) -> String {
    // Connections by state and queue depths: each shard counts its own (one pass over
    // its connections per scrape); a shard too busy to answer is left out.
    let census = s
        .engine
        .admin(None, |done| switchboard_engine::control::AdminOp::Census {
            done,
        })
        .await
        .unwrap_or_default();
    metrics::render(
        &s.engine,
        &s.auth,
        &s.api,
        s.store.as_ref(),
        &s.alerts,
        &census,
        s.cluster.as_deref(),
        &s.ai,
    )
}

pub(super) async fn metrics_text(State(s): State<Arc<HttpState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        exposition(&s).await,
    )
        .into_response()
}

/// `GET /metrics/snapshot`: every metric as JSON (`{"at_ms", "metrics": {NAME: {type,
/// help, samples: [{name, labels, value}]}}}`).
async fn metrics_snapshot(State(s): State<Arc<HttpState>>) -> Response {
    let mut body = metrics::snapshot::snapshot(&exposition(&s).await);
    body["at_ms"] = json!(crate::clock::now_ms());
    Json(body).into_response()
}

/// `GET /metrics/snapshot/{name}`: one family (404 naming it when there is none).
async fn metric_family(
    State(s): State<Arc<HttpState>>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Response {
    let text = exposition(&s).await;
    match metrics::snapshot::families(&text)
        .into_iter()
        .find(|(n, _)| *n == name)
    {
        Some((_, family)) => {
            let mut body = serde_json::to_value(family).unwrap_or(Value::Null);
            body["name"] = json!(name);
            body["at_ms"] = json!(crate::clock::now_ms());
            Json(body).into_response()
        }
        None => super::errors::error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no metric family {name:?} (GET /metrics/snapshot lists them)"),
        ),
    }
}
