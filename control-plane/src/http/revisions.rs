//! Editing and deleting publications through the server API: `POST /api/edit` and
//! `POST /api/delete`, as a moderator may (any publication of a namespace with
//! `edits = true`), answered with the revision's own position.
//!
//! Owns the two routes' bodies. Does not own the checks on the original (the channel's
//! owner shard, or the store for an older one) or what a revision does to history.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use switchboard_protocol::{Format, Payload, Position};

use super::errors::{invalid, parse_body};
use super::requests::read_body;
use super::server_api::{counted, position_json, settle};
use super::state::HttpState;

/// The revision routes.
pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/api/edit", post(edit))
        .route("/api/delete", post(delete))
}

/// Body of `POST /api/edit` and `POST /api/delete` (without `data`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevisionBody<'a> {
    #[serde(borrow)]
    channel: std::borrow::Cow<'a, str>,
    offset: u64,
    #[serde(default)]
    epoch: Option<String>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    meta: Option<&'a RawValue>,
}

async fn revise(s: Arc<HttpState>, headers: HeaderMap, body: Body, delete: bool) -> Response {
    let result = async {
        let bytes = read_body(&s, &headers, body).await?;
        let shape = if delete {
            "{\"channel\": string, \"offset\": integer}"
        } else {
            "{\"channel\": string, \"offset\": integer, \"data\": any JSON, \"meta\"?: any JSON}"
        };
        let req: RevisionBody<'_> = parse_body(&bytes, shape)?;
        if req.offset == 0 {
            return Err(invalid(
                "offset",
                "the offset (from 1) of the publication to change",
            ));
        }
        let epoch = match req.epoch.as_deref().map(Position::parse_epoch) {
            None => None,
            Some(Some(e)) => Some(e),
            Some(None) => return Err(invalid("epoch", "16 hex digits")),
        };
        fn json(v: &RawValue) -> Payload<'_> {
            Payload {
                format: Format::Json,
                raw: v.get().as_bytes(),
            }
        }
        let data = match (delete, req.data) {
            (true, Some(_)) => return Err(invalid("data", "a deletion carries no data")),
            (true, None) if req.meta.is_some() => {
                return Err(invalid("meta", "a deletion carries no meta"))
            }
            (true, None) => None,
            (false, Some(d)) => Some(json(d)),
            (false, None) => return Err(invalid("data", "an edit needs the new data")),
        };
        let meta = req.meta.map(json);
        let (position, _) =
            settle(s.engine.revise(&req.channel, req.offset, epoch, data, meta)).await?;
        let mut body = position_json(position, false);
        body["ok"] = json!(true);
        Ok::<_, Response>(Json(body).into_response())
    }
    .await;
    counted(&s, result, 1)
}

/// `POST /api/edit {channel, offset, data, meta?, epoch?}`: replace a publication's data
/// (and meta), as a new publication that refers to it.
async fn edit(State(s): State<Arc<HttpState>>, headers: HeaderMap, body: Body) -> Response {
    revise(s, headers, body, false).await
}

/// `POST /api/delete {channel, offset, epoch?}`: delete a publication, as a new
/// publication that refers to it.
async fn delete(State(s): State<Arc<HttpState>>, headers: HeaderMap, body: Body) -> Response {
    revise(s, headers, body, true).await
}
