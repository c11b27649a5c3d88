//! The JSON error shape and request helpers every route uses.
//!
//! Owns the error body (`{"error": {"code", "message", "field"?}}` with a matching HTTP
//! status), reading a body within the size limit and parsing it with the JSON path of a
//! bad field, and checked query strings. Does not own any route.

// The handlers' helpers return the HTTP error as `Err(Response)` to be sent as is; it is
// built once per refused request, so its size does not matter.
#![allow(clippy::result_large_err)]

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// A validation error: the JSON path of the bad field and what is wrong with it.
pub(crate) fn invalid(field: &str, message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": {"code": "bad_request", "field": field, "message": message}})),
    )
        .into_response()
}

pub(crate) fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// Parse a JSON body as `T`; a 400 naming the JSON path of the bad field (`users[2]`,
/// `data`) and what was expected.
pub(super) fn parse_body<'a, T: serde::Deserialize<'a>>(
    bytes: &'a [u8],
    expected: &str,
) -> Result<T, Response> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "" } else { &path };
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {
                "code": "bad_request",
                "field": field,
                "message": format!("expected {expected}: {}", e.inner()),
            }})),
        )
            .into_response()
    })
}

pub(super) fn overloaded() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        "a shard cannot take the request now; retry",
    )
}
