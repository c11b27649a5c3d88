//! Server API keys and their scopes (`admin.api_key`, `[[admin.api_keys]]`).
//!
//! Owns checking the bearer key of `/api/*` in constant time and the scope a route
//! needs (publish, send, read, users), as a middleware before any handler. Does not own
//! admin tokens (see [`super::admin_auth`]).

// The handlers' helpers return the HTTP error as `Err(Response)` to be sent as is; it is
// built once per refused request, so its size does not matter.
#![allow(clippy::result_large_err)]

use super::errors::error;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;

/// Why an API request is refused before its body is read.
pub enum KeyRefusal {
    Disabled,
    Missing,
    Invalid,
    Scope(&'static str),
}

impl KeyRefusal {
    pub(crate) fn response(self) -> Response {
        match self {
            KeyRefusal::Disabled => error(
                StatusCode::FORBIDDEN,
                "api_disabled",
                "the server API is disabled: set admin.api_key",
            ),
            KeyRefusal::Missing => {
                error(StatusCode::UNAUTHORIZED, "unauthorized", "missing API key")
            }
            KeyRefusal::Invalid => {
                error(StatusCode::UNAUTHORIZED, "unauthorized", "invalid API key")
            }
            KeyRefusal::Scope(scope) => error(
                StatusCode::FORBIDDEN,
                "forbidden",
                &format!("this API key lacks the '{scope}' scope"),
            ),
        }
    }
}

/// A server API key: its name and scopes.
#[derive(Debug, Clone)]
pub struct ApiKey {
    /// Who uses it.
    pub name: String,
    /// The key.
    pub key: String,
    /// Its scopes (`*`: all).
    pub scopes: Vec<String>,
}

/// The scope a server API request needs.
pub(super) fn scope_of(method: &axum::http::Method, path: &str) -> &'static str {
    use axum::http::Method;
    let users = path.starts_with("/api/users/") || path.starts_with("/api/connections/");
    match *method {
        Method::GET | Method::HEAD => "read",
        _ if users => "users",
        _ if path.starts_with("/api/send") || path.starts_with("/api/notifications") => "send",
        _ => "publish",
    }
}

pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The key among `keys` that the request's `Authorization: Bearer` (or `X-Api-Key`)
/// names, compared in constant time with every one.
pub fn find<'a>(keys: &'a [ApiKey], headers: &HeaderMap) -> Result<&'a ApiKey, KeyRefusal> {
    if keys.is_empty() {
        return Err(KeyRefusal::Disabled);
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
    let Some(given) = given else {
        return Err(KeyRefusal::Missing);
    };
    let given = given.trim().as_bytes();
    // Compare with every key (constant time each), so timing says nothing of which.
    let mut found = None;
    for k in keys {
        if constant_time_eq(given, k.key.as_bytes()) {
            found = Some(k);
        }
    }
    found.ok_or(KeyRefusal::Invalid)
}
