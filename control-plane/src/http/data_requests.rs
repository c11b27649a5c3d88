//! Data requests through the admin API: export a user's messages and notifications as
//! JSON, or erase the user — what telehealth and legal users are entitled to ask.
//!
//! `GET /admin/users/{user}/export` and `POST /admin/users/{user}/erase`, behind an
//! admin token, both audited. Erase revokes the user first (its connections close and
//! its reconnect tokens stop working, so nothing new arrives), then redacts the
//! publications it authored or sent in every shard's memory and in the store, deletes
//! its inbox, receipts, notifications and topic subscriptions. Owns the two routes and
//! their order of work; the store's SQL is in [`crate::store::data_requests`].

// The handlers' helpers return the HTTP error as `Err(Response)` to be sent as is.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use switchboard_engine::control::AdminOp;

use super::admin_auth::Admin;
use super::errors::{error, invalid, overloaded};
use super::requests::admin;
use super::state::HttpState;
use crate::store::data_requests;

/// The data-request routes.
pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/admin/users/{user}/export", get(export))
        .route("/admin/users/{user}/erase", post(erase))
}

/// The admin asking, after checking its token and the user id, and where the store is.
fn checked(
    s: &HttpState,
    headers: &HeaderMap,
    user: &str,
) -> Result<(Admin, crate::sql::Location), Response> {
    let who = admin(s, headers)?;
    if !crate::notify::valid_user_id(user) {
        return Err(invalid("user", "1 to 128 bytes"));
    }
    let path = s
        .store
        .as_ref()
        .map(|v| v.location.clone())
        .ok_or_else(|| {
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "this server has no store",
            )
        })?;
    Ok((who, path))
}

/// Run a store request off the async threads; its result, or the HTTP error.
async fn on_store<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, crate::Error> + Send + 'static,
) -> Result<T, Response> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            &e.to_string(),
        )),
        Err(_) => Err(overloaded()),
    }
}

/// `GET /admin/users/{user}/export`: every stored message the user authored or sent
/// (`messages`, oldest first per channel), its notifications, and when.
pub(super) async fn export(
    State(s): State<Arc<HttpState>>,
    headers: HeaderMap,
    Path(user): Path<String>,
) -> Response {
    let (who, path) = match checked(&s, &headers, &user) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let u = user.clone();
    let messages = match on_store(move || data_requests::export_user(&path, &u)).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let mut notifications: Vec<Value> = Vec::new();
    let mut before = None;
    loop {
        let page = match s.notifier.list(user.clone(), 500, before, false).await {
            Ok(p) => p,
            Err(e) => return super::notifications::refusal(e),
        };
        let n = page.notifications.len();
        before = page.notifications.last().map(|v| v.id);
        notifications.extend(page.notifications.into_iter().map(|v| json!(v)));
        if n < 500 {
            break;
        }
    }
    let detail = json!({"messages": messages.len(), "notifications": notifications.len()});
    if let Err(e) = s
        .audit
        .record(&who.name, "user.export", Some(&user), "ok", &detail)
    {
        tracing::warn!("audit record failed: {e}");
    }
    Json(json!({
        "user": user,
        "exported_ms": crate::clock::now_ms(),
        "messages": messages,
        "notifications": notifications,
    }))
    .into_response()
}

/// `POST /admin/users/{user}/erase`: revoke the user, redact what it published, delete
/// its inbox, receipts and notifications; what was removed.
pub(super) async fn erase(
    State(s): State<Arc<HttpState>>,
    headers: HeaderMap,
    Path(user): Path<String>,
) -> Response {
    let (who, path) = match checked(&s, &headers, &user) {
        Ok(v) => v,
        Err(r) => return r,
    };
    // Nothing new from the user from here on.
    let disconnected = match super::actions::revoke_user(&s, &who.name, &user).await {
        Ok((_, n)) => n,
        Err(r) => return r,
    };
    let inbox = s.engine.inbox_channel(&user);
    let name: Arc<str> = Arc::from(user.as_str());
    let inbox_name = inbox.as_deref().map(Arc::from);
    let in_memory = match s
        .engine
        .admin(None, |done| AdminOp::Erase {
            user: name.clone(),
            inbox: inbox_name.clone(),
            done,
        })
        .await
    {
        Ok(counts) => counts.into_iter().sum::<usize>(),
        Err(_) => return overloaded(),
    };
    let u = user.clone();
    let stored =
        match on_store(move || data_requests::erase_user(&path, &u, inbox.as_deref())).await {
            Ok(e) => e,
            Err(r) => return r,
        };
    let notifications = match s.notifier.erase(user.clone()).await {
        Ok(n) => n,
        Err(e) => return super::notifications::refusal(e),
    };
    let detail = json!({
        "disconnected": disconnected,
        "redacted_in_memory": in_memory,
        "stored": stored,
        "notifications": notifications,
    });
    if let Err(e) = s
        .audit
        .record(&who.name, "user.erase", Some(&user), "ok", &detail)
    {
        tracing::warn!("audit record failed: {e}");
    }
    let mut body = detail;
    body["ok"] = json!(true);
    Json(body).into_response()
}
