//! The HTTP side of the control plane (axum): the server API for backends (`/api/*`,
//! API keys with scopes), the admin API for operators (`/admin/*`, admin tokens), health
//! and metrics.
//!
//! # Layout
//! - [`state`]: what every route shares.
//! - [`errors`]: the JSON error shape.
//! - [`keys`]: server API keys and scopes; [`requests`]: checked request reading
//!   (credentials first, then body or query; the scope middleware).
//! - [`health`]: `/health/*`, `/metrics`.
//! - [`server_api`]: `/api/publish`, history, send, receipts, presence, schedule, calls.
//! - [`notifications`]: create, list and read notifications (`/api/notifications*`).
//! - [`users`]: `/api/users/*`, broadcast, the OpenAPI document; [`inboxes`]: a user's
//!   inbox, its devices' cursors, clearing it.
//! - [`admin_auth`]: admin tokens; [`admin_api`]: `/admin/*`; [`breakers`]:
//!   `/admin/breakers`; [`ai_admin`]: `/admin/ai*` (pipelines, held messages).
//! - [`guesses`]: failed credentials throttled per address (429 when out).
//! - [`actions`]: disconnect and revoke, shared by both APIs.
//!
//! Every failure is `{"error": {"code": "...", "message": "..."}}` with a matching HTTP
//! status. Feature modules (store, auth, calls, notify, schedule, alerts, audit,
//! metrics) never import this one; it holds handles to them.

pub mod actions;
pub mod admin_api;
pub mod admin_auth;
mod ai_admin;
mod breakers;
mod data_requests;
pub mod errors;
pub mod guesses;
pub mod health;
mod inboxes;
pub mod keys;
pub mod notifications;
pub mod requests;
mod revisions;
pub mod server_api;
pub mod state;
pub mod users;

use axum::http::{header, StatusCode};
use axum::response::Response;
use axum::Router;
use std::sync::Arc;

pub use admin_auth::AdminAuth;
pub use keys::ApiKey;
pub use state::HttpState;

/// The router of the admin listener: every route, the API-key middleware, the
/// hardening of every response, and a JSON 404.
pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .merge(health::routes())
        .merge(server_api::routes())
        .merge(notifications::routes())
        .merge(users::routes())
        .merge(inboxes::routes())
        .merge(admin_api::routes())
        .merge(breakers::routes())
        .merge(ai_admin::routes())
        .merge(data_requests::routes())
        .merge(revisions::routes())
        .fallback(|| async {
            errors::error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            requests::api_scopes,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guesses::throttle,
        ))
        .layer(axum::middleware::from_fn(harden))
        .with_state(state)
}

/// Every HTTP response: a request id (the client's `X-Request-Id` when it is a short
/// token, else a new one) on the response and on every log line of the request, and
/// security headers (this API serves JSON and text only: nothing may frame, sniff,
/// cache or embed it).
async fn harden(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use tracing::Instrument as _;
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(String::from)
        .unwrap_or_else(|| crate::ids::random_hex(8));
    let span = tracing::info_span!(
        "http",
        request_id = %id,
        method = %req.method(),
        path = %req.uri().path()
    );
    let mut res = next.run(req).instrument(span).await;
    let h = res.headers_mut();
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        (
            "content-security-policy",
            "default-src 'none'; frame-ancestors 'none'",
        ),
        ("cross-origin-resource-policy", "same-origin"),
        ("cache-control", "no-store"),
    ] {
        h.insert(name, header::HeaderValue::from_static(value));
    }
    if let Ok(v) = header::HeaderValue::from_str(&id) {
        h.insert("x-request-id", v);
    }
    res
}
