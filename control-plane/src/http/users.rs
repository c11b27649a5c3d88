//! The server API's user and connection routes for backends (API keys with scopes):
//! broadcast to everyone, a user's status, server-side subscriptions
//! and notification topics, disconnecting a user or a connection, revoking a user's
//! tokens; and the OpenAPI document of the whole server API (`GET /api/openapi.json`,
//! no key needed).
//!
//! Owns these routes. The scope check is the router's ([`super::keys`]); the
//! actions shared with the admin API are in [`super::actions`], recorded in the audit
//! log as `api:<key name>`.

// The handlers' helpers return the HTTP error as `Err(Response)` to be sent as is; it is
// built once per refused request, so its size does not matter.
#![allow(clippy::result_large_err)]

use super::errors::{error, invalid};
use super::notifications::refusal;
use super::requests::{json_body, key_of};
use super::state::HttpState;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use switchboard_engine::control::{self, AdminOp, ConnFilter, Target};
use switchboard_protocol::Position;

/// The OpenAPI document, as served.
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");

/// The routes.
pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/api/openapi.json", get(openapi))
        .route("/api/broadcast", post(broadcast))
        .route("/api/users/{user}", get(user_status))
        .route("/api/users/{user}/disconnect", post(disconnect_user))
        .route("/api/users/{user}/revoke", post(revoke_user))
        .route("/api/users/{user}/subscribe", post(user_subscribe))
        .route("/api/users/{user}/unsubscribe", post(user_unsubscribe))
        .route("/api/users/{user}/topics", post(user_topics))
        .route(
            "/api/connections/{client}/disconnect",
            post(disconnect_client),
        )
}

pub(super) async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

pub(super) fn valid_user(user: &str) -> Result<(), Response> {
    if !crate::notify::valid_user_id(user) {
        return Err(invalid("user", "1 to 128 bytes"));
    }
    Ok(())
}

/// The `{user}` of a user route, once the API key is checked and the id is valid.
pub(super) fn checked_user(
    s: &HttpState,
    headers: &HeaderMap,
    path: axum::extract::Path<String>,
) -> Result<String, Response> {
    super::requests::check(s, headers)?;
    valid_user(&path.0)?;
    Ok(path.0)
}

/// Who is acting, for the audit log: `api:<key name>`.
pub(super) fn actor(s: &HttpState, headers: &HeaderMap) -> String {
    key_of(s, headers).map_or_else(|_| "api".into(), |k| format!("api:{}", k.name))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BroadcastBody {
    data: Value,
}

/// `POST /api/broadcast {"data": any JSON}`: `{"push": "broadcast", "data": …}` to every
/// connected client on every shard, and in a cluster on every node (not stored).
pub(super) async fn broadcast(
    State(s): State<Arc<HttpState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let req: BroadcastBody = match json_body(&s, &headers, body, "{\"data\": any JSON}").await {
        Ok(r) => r,
        Err(r) => return r,
    };
    if crate::admin_ops::broadcast(&s.engine, &req.data).is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "a shard cannot take the broadcast now; retry",
        );
    }
    if let Some(c) = &s.cluster {
        let actor = actor(&s, &headers);
        c.broadcast(
            &actor,
            crate::cluster::ClusterAction::Broadcast { data: req.data },
        );
    }
    Json(json!({"ok": true})).into_response()
}

/// `GET /api/users/{user}`: whether the user is connected, its connections (devices)
/// and when it was last seen (now while connected; since the process started).
pub(super) async fn user_status(
    State(s): State<Arc<HttpState>>,
    headers: HeaderMap,
    path: axum::extract::Path<String>,
) -> Response {
    let user = match checked_user(&s, &headers, path) {
        Ok(user) => user,
        Err(r) => return r,
    };
    let filter = ConnFilter {
        user: Some(user.clone()),
        ..Default::default()
    };
    let lists = s
        .engine
        .admin(None, |done| AdminOp::List {
            filter: filter.clone(),
            limit: 1000,
            done,
        })
        .await;
    let arc: Arc<str> = Arc::from(user.as_str());
    let seen = s
        .engine
        .admin(None, |done| AdminOp::LastSeen {
            user: arc.clone(),
            done,
        })
        .await;
    let (Ok(lists), Ok(seen)) = (lists, seen) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "a shard cannot answer now; retry",
        );
    };
    let connections: Vec<Value> = lists
        .into_iter()
        .flatten()
        .filter(|c| c.state == "open")
        .map(|c| {
            json!({
                "client": c.client.to_string(),
                "device": c.device,
                "ip": c.ip,
                "format": c.format,
                "connected_ms": c.age_ms,
                "subscriptions": c.subscriptions,
            })
        })
        .collect();
    let last_seen = seen.into_iter().flatten().max();
    Json(json!({
        "user": user,
        "online": !connections.is_empty(),
        "connections": connections,
        "last_seen": last_seen,
    }))
    .into_response()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct DisconnectBody {
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    reconnect: Option<bool>,
}

pub(super) async fn disconnect(
    s: &HttpState,
    headers: &HeaderMap,
    body: Body,
    target: Target,
) -> Response {
    let req: DisconnectBody = match json_body(
        s,
        headers,
        body,
        "{\"reason\"?: string, \"reconnect\"?: bool}",
    )
    .await
    {
        Ok(r) => r,
        Err(r) => return r,
    };
    let reason = req
        .reason
        .unwrap_or_else(|| "disconnected by the service".into());
    if reason.len() > 120 {
        return invalid("reason", "at most 120 bytes (it goes in a close frame)");
    }
    let who = actor(s, headers);
    let reconnect = req.reconnect.unwrap_or(true);
    match super::actions::disconnect_target(s, &who, target, reason, reconnect, 0).await {
        Ok(n) => Json(json!({"ok": true, "disconnected": n})).into_response(),
        Err(r) => r,
    }
}

/// `POST /api/users/{user}/disconnect {"reason"?, "reconnect"?}`: close every
/// connection of the user (4009).
pub(super) async fn disconnect_user(
    State(s): State<Arc<HttpState>>,
    headers: HeaderMap,
    path: axum::extract::Path<String>,
    body: Body,
) -> Response {
    if let Err(r) = valid_user(&path.0) {
        return r;
    }
    disconnect(&s, &headers, body, Target::User(Arc::from(path.0.as_str()))).await
}

/// `POST /api/connections/{client}/disconnect {"reason"?, "reconnect"?}`: close one
/// connection (4009).
pub(super) async fn disconnect_client(
    State(s): State<Arc<HttpState>>,
    headers: HeaderMap,
    path: axum::extract::Path<String>,
    body: Body,
) -> Response {
    let Some(id) = control::parse_client_id(&path.0) else {
        return invalid("client", "expected a client id (shard.slot.generation)");
    };
    disconnect(&s, &headers, body, Target::Client(id)).await
}

/// `POST /api/users/{user}/revoke`: revoke the user's tokens (connections closed with
/// 4011; tokens issued before now refused, also after a restart).
pub(super) async fn revoke_user(
    State(s): State<Arc<HttpState>>,
    headers: HeaderMap,
    path: axum::extract::Path<String>,
) -> Response {
    let user = match checked_user(&s, &headers, path) {
        Ok(user) => user,
        Err(r) => return r,
    };
    let who = actor(&s, &headers);
    match super::actions::revoke_user(&s, &who, &user).await {
        Ok((at, n)) => {
            Json(json!({"ok": true, "revoked_at": at, "disconnected": n})).into_response()
        }
        Err(r) => r,
    }
}

/// Body of `POST /api/users/{user}/subscribe` and `…/unsubscribe`.
#[derive(Deserialize)]
pub(super) struct UserSubscriptionBody {
    channel: String,
    /// Recover from this position (subscribe only).
    #[serde(default)]
    since: Option<SinceBody>,
}

#[derive(Deserialize)]
pub(super) struct SinceBody {
    epoch: String,
    offset: u64,
}

/// `POST /api/users/{user}/subscribe`: subscribe every connection of the user.
pub(super) async fn user_subscribe(
    State(s): State<Arc<HttpState>>,
    headers: HeaderMap,
    path: axum::extract::Path<String>,
    body: Body,
) -> Response {
    user_subscription(&s, &headers, &path.0, body, true).await
}

/// `POST /api/users/{user}/unsubscribe`: unsubscribe every connection of the user.
pub(super) async fn user_unsubscribe(
    State(s): State<Arc<HttpState>>,
    headers: HeaderMap,
    path: axum::extract::Path<String>,
    body: Body,
) -> Response {
    user_subscription(&s, &headers, &path.0, body, false).await
}

pub(super) async fn user_subscription(
    s: &HttpState,
    headers: &HeaderMap,
    user: &str,
    body: Body,
    join: bool,
) -> Response {
    let result = async {
        let req: UserSubscriptionBody = json_body(
            s,
            headers,
            body,
            "{\"channel\": string, \"since\"?: {\"epoch\", \"offset\"}}",
        )
        .await?;
        let since = match req.since {
            None => None,
            Some(p) => Some(Position {
                epoch: Position::parse_epoch(&p.epoch).ok_or_else(|| {
                    error(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        "since.epoch: expected 16 hex digits",
                    )
                })?,
                offset: p.offset,
            }),
        };
        let answers = match s.engine.user_subscription(user, &req.channel, join, since) {
            Ok(a) => a,
            Err(switchboard_engine::Error::InvalidChannel) => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "invalid_channel",
                    "channel: invalid channel name",
                ))
            }
            Err(e) => {
                return Err(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    &e.to_string(),
                ))
            }
        };
        let mut connections = 0;
        for rx in answers {
            match tokio::time::timeout(std::time::Duration::from_secs(5), rx).await {
                Ok(Ok(n)) => connections += n,
                _ => {
                    return Err(error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "overloaded",
                        "a shard did not answer",
                    ))
                }
            }
        }
        Ok(Json(json!({"ok": true, "connections": connections})).into_response())
    }
    .await;
    result.unwrap_or_else(|r| r)
}

/// Body of `POST /api/users/{user}/topics`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TopicsBody {
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    unsubscribe: Vec<String>,
}

/// `POST /api/users/{user}/topics`: subscribe a user to notification topics (any
/// topic: the key is trusted) or unsubscribe; answers the user's topics.
pub(super) async fn user_topics(
    State(s): State<Arc<HttpState>>,
    headers: HeaderMap,
    path: axum::extract::Path<String>,
    body: Body,
) -> Response {
    let result = async {
        let expected = "{\"subscribe\"?: [topic], \"unsubscribe\"?: [topic]}";
        let req: TopicsBody = json_body(&s, &headers, body, expected).await?;
        let user = path.0;
        if !crate::notify::valid_user_id(&user) {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "user: 1 to 128 bytes",
            ));
        }
        let topics = s
            .notifier
            .topics(user, req.subscribe, req.unsubscribe)
            .await
            .map_err(refusal)?;
        Ok(Json(json!({"ok": true, "topics": topics})).into_response())
    }
    .await;
    result.unwrap_or_else(|r| r)
}
