//! `/admin/ai`: the AI pipelines as an operator sees them (queues, counters, models),
//! the messages fail-closed pipelines hold for moderation (released or rejected by
//! hand), the escalations and their webhooks' dead letters (delivered again by hand).
//! Every release, rejection and retry is audited.
//!
//! Owns the routes. Does not own the pipelines (`crate::ai::pipeline`).

// The handlers' helpers return the HTTP error as `Err(Response)` to be sent as is.
#![allow(clippy::result_large_err)]

use super::errors::error;
use super::requests::admin;
use super::state::HttpState;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crate::ai::escalator::{Delivery, EscalationBook};
use crate::ai::held::HeldView;
use crate::ai::pipeline::{mode_name, HeldError};
use crate::clock::now_ms;

/// The AI admin routes.
pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/admin/ai", get(overview))
        .route("/admin/ai/held", get(held))
        .route("/admin/ai/held/{id}/release", post(release))
        .route("/admin/ai/held/{id}", delete(reject))
        .route("/admin/ai/escalations", get(escalations))
        .route("/admin/ai/dead-letters", get(dead_letters))
        .route("/admin/ai/dead-letters/{id}/retry", post(retry_dead_letter))
}

/// `GET /admin/ai/escalations`: the latest escalations and their webhook deliveries.
async fn escalations(State(s): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    deliveries(&s, &headers, "escalations", EscalationBook::recent)
}

/// `GET /admin/ai/dead-letters`: escalation webhooks that failed every attempt.
async fn dead_letters(State(s): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    deliveries(&s, &headers, "dead_letters", EscalationBook::dead_letters)
}

/// One of the escalation book's lists, as `{name: [...]}`.
fn deliveries(
    s: &HttpState,
    headers: &HeaderMap,
    name: &str,
    list: fn(&EscalationBook) -> Vec<Delivery>,
) -> Response {
    if let Err(r) = admin(s, headers) {
        return r;
    }
    let list =
        s.ai.escalator
            .as_ref()
            .map(|e| list(&e.book))
            .unwrap_or_default();
    Json(json!({ name: list })).into_response()
}

/// `POST /admin/ai/dead-letters/{id}/retry`: deliver a dead letter again.
async fn retry_dead_letter(
    State(s): State<Arc<HttpState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let who = match admin(&s, &headers) {
        Ok(w) => w,
        Err(r) => return r,
    };
    if !s.ai.escalator.as_ref().is_some_and(|e| e.retry(&id)) {
        return error(StatusCode::NOT_FOUND, "not_found", "no such dead letter");
    }
    let _ = s.audit.record(
        &who.name,
        "ai.escalation.retry",
        Some(&id),
        "ok",
        &json!({ "id": id }),
    );
    Json(json!({ "ok": true, "id": id })).into_response()
}

/// `GET /admin/ai`: each pipeline (mode, queue depth, counters, held) and model.
async fn overview(State(s): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    if let Err(r) = admin(&s, &headers) {
        return r;
    }
    let depths = s.ai.tap.as_ref().map(|t| t.depths()).unwrap_or_default();
    let pipelines: Vec<Value> =
        s.ai.pipelines
            .iter()
            .map(|p| {
                let st = &p.stats;
                let depth = depths
                    .iter()
                    .find(|(ns, _)| *ns == p.namespace)
                    .map_or(0, |(_, d)| *d);
                json!({
                    "namespace": p.namespace,
                    "mode": mode_name(p.cfg.mode),
                    "bot": p.cfg.bot,
                    "model": p.model.as_ref().map(|m| m.name.clone()),
                    "queue_depth": depth,
                    "held_now": p.held.len(),
                    "processed": st.processed.load(Relaxed),
                    "annotations": st.annotations.load(Relaxed),
                    "replies": st.replies.load(Relaxed),
                    "fallbacks": st.fallbacks.load(Relaxed),
                    "held": st.held.load(Relaxed),
                    "released": st.released.load(Relaxed),
                    "rejected": st.rejected.load(Relaxed),
                    "publish_failures": st.publish_failures.load(Relaxed),
                })
            })
            .collect();
    let now = now_ms();
    let models: Vec<Value> =
        s.ai.models
            .values()
            .map(|m| {
                json!({
                    "name": m.name,
                    "breaker": m.breaker.state(now).name(),
                    "calls": m.stats.calls.load(Relaxed),
                    "tokens_in": m.stats.tokens_in.load(Relaxed),
                    "tokens_out": m.stats.tokens_out.load(Relaxed),
                })
            })
            .collect();
    let tap = s.ai.tap.as_ref().map(|t| {
        let st = t.stats();
        json!({
            "queued": st.queued.load(Relaxed),
            "dropped": st.dropped.load(Relaxed),
            "refused": st.refused.load(Relaxed),
        })
    });
    Json(json!({ "pipelines": pipelines, "models": models, "tap": tap })).into_response()
}

/// `GET /admin/ai/held`: messages held for moderation, oldest first.
async fn held(State(s): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    if let Err(r) = admin(&s, &headers) {
        return r;
    }
    Json(json!({ "held": s.ai.held() })).into_response()
}

/// The operator and the held message's id of a release or rejection.
fn operator_and_id(
    s: &HttpState,
    headers: &HeaderMap,
    raw: &str,
) -> Result<(super::admin_auth::Admin, u64), Response> {
    let who = admin(s, headers)?;
    let id = raw.parse().map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "id: a held message's number",
        )
    })?;
    Ok((who, id))
}

fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such held message (released, rejected or never held)",
    )
}

/// Record an operator's release or rejection of a held message.
fn audit_held(s: &HttpState, who: &super::admin_auth::Admin, action: &str, view: &HeldView) {
    let detail = json!({ "id": view.id, "namespace": view.namespace, "author": view.author });
    let _ = s
        .audit
        .record(&who.name, action, Some(&view.channel), "ok", &detail);
}

/// `POST /admin/ai/held/{id}/release`: deliver a held message unscreened.
async fn release(
    State(s): State<Arc<HttpState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let (who, id) = match operator_and_id(&s, &headers, &id) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let ai = s.ai.clone();
    // Waits for the channel's shard: off the runtime.
    let done = tokio::task::spawn_blocking(move || ai.release(id)).await;
    let (view, outcome) = match done {
        Ok(Ok((view, p))) => (
            view,
            json!({"epoch": p.epoch_hex().as_str(), "offset": p.offset}),
        ),
        Ok(Err(HeldError::NotFound)) => return not_found(),
        Ok(Err(HeldError::Refused(why))) => {
            return error(
                StatusCode::CONFLICT,
                "refused",
                &format!("the channel refused it: {why}"),
            )
        }
        Err(_) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the release did not finish",
            )
        }
    };
    audit_held(&s, &who, "ai.held.release", &view);
    Json(json!({ "ok": true, "id": id, "position": outcome })).into_response()
}

/// `DELETE /admin/ai/held/{id}`: reject a held message (its publisher is refused).
async fn reject(
    State(s): State<Arc<HttpState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let (who, id) = match operator_and_id(&s, &headers, &id) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let view = match s.ai.reject(id) {
        Ok(v) => v,
        Err(_) => return not_found(),
    };
    audit_held(&s, &who, "ai.held.reject", &view);
    Json(json!({ "ok": true, "id": id })).into_response()
}
