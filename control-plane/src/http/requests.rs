//! Checked request reading for the routes that need the shared state: the server API
//! key (and its scope, as a middleware), admin tokens, bodies within the size limit,
//! query strings.
//!
//! Owns the order of checks on a request: credentials first, then the body or query
//! (a bad one is a 400 naming what was expected). Does not own the error shape
//! ([`super::errors`]), the keys ([`super::keys`]) or admin tokens
//! ([`super::admin_auth`]).

// The helpers return the HTTP error as `Err(Response)` to be sent as is; it is built
// once per refused request, so its size does not matter.
#![allow(clippy::result_large_err)]

use super::admin_auth::Admin;
use super::errors::{error, invalid, parse_body};
use super::keys::{find, scope_of, ApiKey, KeyRefusal};
use super::state::HttpState;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::de::DeserializeOwned;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The server API's key check for `/api/*`: a known key with the scope the route
/// needs, named in the request's log span.
pub(super) async fn api_scopes(
    State(s): State<Arc<HttpState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path();
    if !path.starts_with("/api/") || path == "/api/openapi.json" {
        return next.run(req).await;
    }
    let scope = scope_of(req.method(), path);
    match key_of(&s, req.headers()) {
        Ok(k) if k.scopes.iter().any(|have| have == "*" || have == scope) => {
            tracing::debug!(key = %k.name, scope, "server API key accepted");
            next.run(req).await
        }
        Ok(k) => {
            tracing::warn!(target: "security", key = %k.name, scope, "API key without the scope");
            s.api.refused.fetch_add(1, Ordering::Relaxed);
            KeyRefusal::Scope(scope).response()
        }
        Err(r) => {
            if !matches!(r, KeyRefusal::Disabled) {
                tracing::warn!(target: "security", "server API request with a missing or unknown key");
            }
            s.api.refused.fetch_add(1, Ordering::Relaxed);
            r.response()
        }
    }
}

/// The key check as a response to send back when it fails.
pub(crate) fn check(s: &HttpState, headers: &HeaderMap) -> Result<(), Response> {
    check_key(s, headers).map_err(KeyRefusal::response)
}

pub(super) fn check_key(s: &HttpState, headers: &HeaderMap) -> Result<(), KeyRefusal> {
    key_of(s, headers).map(|_| ())
}

/// The API key a request carries, if it is one of ours.
pub(crate) fn key_of<'a>(s: &'a HttpState, headers: &HeaderMap) -> Result<&'a ApiKey, KeyRefusal> {
    find(&s.api_keys, headers)
}

/// Check the key and read a JSON body of type `T` (with the handler's refusal counted).
pub(super) async fn read_body(
    s: &HttpState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, Response> {
    if let Err(r) = check_key(s, headers) {
        return Err(r.response());
    }
    axum::body::to_bytes(body, s.max_body_bytes)
        .await
        .map_err(|_| {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                &format!("body exceeds {} bytes", s.max_body_bytes),
            )
        })
}

/// Check the key, read the body and parse it as `T` (400 naming `expected` if not).
pub(crate) async fn json_body<T: serde::de::DeserializeOwned>(
    s: &HttpState,
    headers: &HeaderMap,
    body: Body,
    expected: &str,
) -> Result<T, Response> {
    let bytes = read_body(s, headers, body).await?;
    parse_body(&bytes, expected)
}

/// Check the API key, then the query string (`expected` says what it should be).
pub(crate) fn checked_query<T>(
    s: &HttpState,
    headers: &HeaderMap,
    query: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>,
    expected: &str,
) -> Result<T, Response> {
    check_key(s, headers).map_err(KeyRefusal::response)?;
    query.map(|q| q.0).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            &format!("expected {expected}: {e}"),
        )
    })
}

pub(super) fn admin(s: &HttpState, headers: &HeaderMap) -> Result<Admin, Response> {
    match &s.admin_auth {
        Some(a) => a.verify(headers),
        None => Err(error(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "no admin key is configured (admin.jwt_secret)",
        )),
    }
}

/// Check the admin token and the query (a bad one is a 400 naming `query`).
pub(super) fn admin_query<T>(
    s: &HttpState,
    headers: &HeaderMap,
    query: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, Response> {
    admin(s, headers)?;
    query
        .map(|q| q.0)
        .map_err(|e| invalid("query", &e.body_text()))
}

/// Check the admin token, read the body and parse it as `T`; a bad field is a 400
/// naming its path.
pub(super) async fn admin_body<T: DeserializeOwned>(
    s: &HttpState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Admin, T), Response> {
    let who = admin(s, headers)?;
    let bytes = axum::body::to_bytes(body, s.max_body_bytes)
        .await
        .map_err(|_| {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "request body too large",
            )
        })?;
    let de = &mut serde_json::Deserializer::from_slice(&bytes);
    let value = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "" } else { &path };
        invalid(field, &e.inner().to_string())
    })?;
    Ok((who, value))
}
