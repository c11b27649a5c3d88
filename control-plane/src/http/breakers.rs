//! `/admin/breakers`: every circuit breaker of the process — the store's writer,
//! Redis, the alert webhooks and each AI model endpoint (`ai:NAME`) — and closing one
//! by hand.
//!
//! Owns the two routes and how each breaker is shown. Does not own the breakers.

use super::errors::error;
use super::requests::admin;
use super::state::HttpState;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crate::clock::now_ms;

/// The breaker routes.
pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/admin/breakers", get(breakers))
        .route("/admin/breakers/{name}/reset", post(reset_breaker))
}

/// `GET /admin/breakers`: the circuit breakers, their state and failure counts.
async fn breakers(State(s): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    if let Err(r) = admin(&s, &headers) {
        return r;
    }
    let mut list: Vec<Value> = s
        .store
        .iter()
        .map(|st| {
            json!({
                "name": "store",
                "state": if st.state.healthy() { "closed" } else { "open" },
                "failures": st.stats.failures.load(Relaxed),
                "backlog": st.state.backlog(),
            })
        })
        .collect();
    if let Some(c) = &s.cluster {
        // Open while Redis is away: the node serves its own clients only.
        list.push(json!({
            "name": "redis",
            "state": if c.up() { "closed" } else { "open" },
            "failures": c.redis_errors.load(Relaxed),
            "rtt_ms": c.redis_rtt_us.load(Relaxed) as f64 / 1000.0,
        }));
    }
    list.push(json!({
        "name": "webhooks",
        "state": if s.alerts.webhook_open.load(Relaxed) { "open" } else { "closed" },
        "failures": s.alerts.webhook_failures.load(Relaxed),
        "sent": s.alerts.webhook_sent.load(Relaxed),
    }));
    let now = now_ms();
    for (name, m) in &s.ai.models {
        list.push(json!({
            "name": format!("ai:{name}"),
            "state": m.breaker.state(now).name(),
            "failures": m.breaker.failures(),
            "opened": m.breaker.opened(),
            "calls": m.stats.calls.load(Relaxed),
        }));
    }
    Json(json!({ "breakers": list })).into_response()
}

/// `POST /admin/breakers/{name}/reset`: close a breaker now (the store's writer keeps
/// retrying; if its next write fails the breaker opens again; a model's next call
/// goes through).
async fn reset_breaker(
    State(s): State<Arc<HttpState>>,
    headers: HeaderMap,
    path: axum::extract::Path<String>,
) -> Response {
    let who = match admin(&s, &headers) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let name = path.0.as_str();
    let model = name.strip_prefix("ai:").and_then(|m| s.ai.models.get(m));
    let was = match (name, s.store.as_ref(), model) {
        ("store", Some(st), _) => {
            let open = !st.state.healthy();
            st.state.set_healthy(true);
            if open {
                "open"
            } else {
                "closed"
            }
        }
        ("webhooks", ..) => {
            if s.alerts.webhook_open.swap(false, Relaxed) {
                "open"
            } else {
                "closed"
            }
        }
        (_, _, Some(m)) => m.breaker.reset(now_ms()).name(),
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such breaker (store, webhooks, ai:MODEL)",
            )
        }
    };
    let _ = s.audit.record(
        &who.name,
        "breaker.reset",
        Some(name),
        "ok",
        &json!({ "was": was }),
    );
    Json(json!({"ok": true, "name": name, "was": was, "state": "closed"})).into_response()
}
