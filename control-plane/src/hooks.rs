//! Socket.IO backend hooks: the HTTP calls that let an application's own backend
//! answer CONNECTs and events Switchboard has no meaning for (`docs/SOCKETIO.md`).
//!
//! Owns the hook threads, one HTTP client per namespace (its `hook_timeout_ms` for the
//! whole exchange, no redirects, 2xx only), each namespace's concurrency cap and
//! circuit breaker (`breaker_failures` failures in a row open it for
//! `breaker_cooldown_ms`; calls meanwhile fail at once), the request JSON and checking
//! the answer before a shard sees it. A shard never waits: it hands a call over and
//! gets [`HookDone`] back through its inbox, whatever happened.
//!
//! Does not own what a shard does with the answer (`engine::core::eio::sio`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use serde::Deserialize;
use serde_json::value::RawValue;
use switchboard_engine::hooks::{EmitTarget, HookAnswer, HookCall, HookDone, HookEmit, HookKind};
use switchboard_engine::sio_config::{SioNamespace, SocketIoConfig};
use switchboard_engine::{ShardMsg, ShardSender};

use crate::clock::now_ms;
use crate::worker::WorkerHandle;

/// Largest hook answer read, in bytes.
const MAX_ANSWER_BYTES: u64 = 1 << 20;
/// Most emits one answer may ask for.
const MAX_EMITS: usize = 64;
/// Most hook threads (each blocks on one call).
const MAX_THREADS: usize = 256;

/// One namespace's client, cap and breaker.
struct Route {
    agent: ureq::Agent,
    events_url: String,
    connect_url: String,
    concurrency: usize,
    in_flight: AtomicUsize,
    breaker_failures: u32,
    breaker_cooldown_ms: u64,
    failures: AtomicU32,
    open_until_ms: AtomicU64,
}

/// Where shards' hook calls go (clone freely).
#[derive(Clone)]
pub struct Hooks {
    tx: Option<Sender<Box<HookCall>>>,
    routes: Arc<HashMap<String, Route>>,
    shards: ShardSender,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hooks")
    }
}

/// Start the hook threads for the namespaces of `cfg` that have hooks (none when no
/// namespace has one).
pub fn spawn(
    cfg: &SocketIoConfig,
    shards: ShardSender,
) -> std::io::Result<(Hooks, Vec<WorkerHandle>)> {
    let mut routes = HashMap::new();
    let mut threads = 0usize;
    for (name, ns) in &cfg.namespaces {
        if ns.events_url.is_empty() && ns.connect_url.is_empty() {
            continue;
        }
        threads += ns.hook_concurrency;
        routes.insert(name.clone(), route(ns));
    }
    let routes = Arc::new(routes);
    if routes.is_empty() {
        return Ok((
            Hooks {
                tx: None,
                routes,
                shards,
            },
            Vec::new(),
        ));
    }
    let (tx, rx) = crossbeam_channel::bounded::<Box<HookCall>>(threads.max(64) * 4);
    let mut handles = Vec::new();
    for i in 0..threads.clamp(1, MAX_THREADS) {
        let rx = rx.clone();
        let routes = routes.clone();
        let shards = shards.clone();
        handles.push(WorkerHandle::spawn(&format!("hooks-{i}"), move |stop| {
            run(&rx, &routes, &shards, stop)
        })?);
    }
    Ok((
        Hooks {
            tx: Some(tx),
            routes,
            shards,
        },
        handles,
    ))
}

fn route(ns: &SioNamespace) -> Route {
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_millis(ns.hook_timeout_ms)))
        .max_redirects(0)
        .http_status_as_error(true)
        .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent();
    Route {
        agent,
        events_url: ns.events_url.clone(),
        connect_url: ns.connect_url.clone(),
        concurrency: ns.hook_concurrency,
        in_flight: AtomicUsize::new(0),
        breaker_failures: ns.breaker_failures,
        breaker_cooldown_ms: ns.breaker_cooldown_ms,
        failures: AtomicU32::new(0),
        open_until_ms: AtomicU64::new(0),
    }
}

impl Hooks {
    /// Take a shard's call: queued for a hook thread, or answered at once when the
    /// namespace has no such hook, its cap is reached or its breaker is open.
    pub fn submit(&self, call: Box<HookCall>) {
        let refusal = match (self.routes.get(&call.namespace), &self.tx) {
            (Some(route), Some(tx)) => {
                if route.open_until_ms.load(Ordering::Relaxed) > now_ms() {
                    Some("the application's backend is failing (circuit breaker open)")
                } else if route.in_flight.fetch_add(1, Ordering::AcqRel) >= route.concurrency {
                    route.in_flight.fetch_sub(1, Ordering::AcqRel);
                    Some("the application's backend is busy (concurrency cap), retry")
                } else {
                    match tx.try_send(call) {
                        Ok(()) => return,
                        Err(e) => {
                            route.in_flight.fetch_sub(1, Ordering::AcqRel);
                            let call = e.into_inner();
                            return answer(&self.shards, &call, Err("hook queue full".into()));
                        }
                    }
                }
            }
            _ => Some("no hook configured"),
        };
        if let Some(why) = refusal {
            answer(&self.shards, &call, Err(why.into()));
        }
    }
}

fn run(
    rx: &Receiver<Box<HookCall>>,
    routes: &HashMap<String, Route>,
    shards: &ShardSender,
    stop: &std::sync::atomic::AtomicBool,
) {
    while !stop.load(Ordering::Acquire) {
        let call = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(c) => c,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        };
        let Some(route) = routes.get(&call.namespace) else {
            answer(shards, &call, Err("no hook configured".into()));
            continue;
        };
        let result = call_hook(route, &call);
        route.in_flight.fetch_sub(1, Ordering::AcqRel);
        match &result {
            Ok(_) => route.failures.store(0, Ordering::Relaxed),
            Err(why) => {
                let n = route.failures.fetch_add(1, Ordering::Relaxed) + 1;
                if route.breaker_failures > 0 && n >= route.breaker_failures {
                    route
                        .open_until_ms
                        .store(now_ms() + route.breaker_cooldown_ms, Ordering::Relaxed);
                    route.failures.store(0, Ordering::Relaxed);
                    tracing::warn!(namespace = %call.namespace, error = %why, "hook breaker opened");
                }
            }
        }
        answer(shards, &call, result);
    }
}

/// Send the answer to the call's shard (retrying briefly while its inbox is full).
fn answer(shards: &ShardSender, call: &HookCall, result: Result<HookAnswer, String>) {
    let (connect, ack) = match &call.kind {
        HookKind::Connect { .. } => (true, None),
        HookKind::Event { ack, .. } => (false, *ack),
    };
    let mut msg = ShardMsg::HookDone(Box::new(HookDone {
        conn: call.conn,
        namespace_index: call.namespace_index,
        ack,
        connect,
        result,
    }));
    for _ in 0..100 {
        match shards.send(call.shard as usize, msg) {
            Ok(()) => return,
            Err(back) => {
                msg = back;
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    tracing::warn!(
        shard = call.shard,
        "shard inbox full: a hook answer is lost"
    );
}

/// The request body of a call.
fn request_body(call: &HookCall) -> String {
    let user = call.identity.as_ref().map(|i| i.user.to_string());
    let mut body = serde_json::json!({
        "namespace": call.namespace,
        "sid": call.sid,
        "user": user,
    });
    let raw = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap_or_default();
    match &call.kind {
        HookKind::Connect { auth } => {
            body["type"] = "connect".into();
            body["auth"] = raw(auth);
        }
        HookKind::Event {
            event,
            args,
            attachments,
            ack,
        } => {
            body["type"] = "event".into();
            body["event"] = event.as_str().into();
            body["args"] = raw(args);
            body["attachments"] = attachments
                .iter()
                .map(|a| serde_json::Value::from(STANDARD.encode(a)))
                .collect();
            body["ack"] = ack.is_some().into();
        }
    }
    body.to_string()
}

fn call_hook(route: &Route, call: &HookCall) -> Result<HookAnswer, String> {
    let url = match call.kind {
        HookKind::Connect { .. } => &route.connect_url,
        HookKind::Event { .. } => &route.events_url,
    };
    if url.is_empty() {
        return Err("no hook configured".into());
    }
    let text = route
        .agent
        .post(url)
        .header("content-type", "application/json")
        .send(request_body(call))
        .map_err(|e| match e {
            ureq::Error::StatusCode(code) => format!("the backend answered {code}"),
            ureq::Error::Timeout(_) => "the backend timed out".to_string(),
            e => format!("the backend is unreachable: {e}"),
        })?
        .body_mut()
        .with_config()
        .limit(MAX_ANSWER_BYTES)
        .read_to_string()
        .map_err(|e| format!("the backend's answer is unreadable: {e}"))?;
    parse_answer(&text)
}

#[derive(Deserialize)]
struct RawAnswer<'a> {
    #[serde(default)]
    accept: Option<bool>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    #[serde(default, borrow)]
    ack: Option<&'a RawValue>,
    #[serde(default)]
    attachments: Vec<String>,
    #[serde(default, borrow)]
    emit: Vec<RawEmit<'a>>,
}

#[derive(Deserialize)]
struct RawEmit<'a> {
    event: String,
    #[serde(default, borrow)]
    args: Option<&'a RawValue>,
    #[serde(default)]
    attachments: Vec<String>,
    /// A channel (room) to publish the event to instead of the caller.
    #[serde(default)]
    to: Option<String>,
    /// A user whose connections get the event instead of the caller.
    #[serde(default)]
    user: Option<String>,
}

/// Check a hook's answer (an empty body is an empty answer).
fn parse_answer(text: &str) -> Result<HookAnswer, String> {
    if text.trim().is_empty() {
        return Ok(HookAnswer {
            accept: true,
            ..Default::default()
        });
    }
    let raw: RawAnswer<'_> = serde_json::from_str(text)
        .map_err(|e| format!("the backend's answer is not valid: {e}"))?;
    let array = |v: &RawValue, what: &str| -> Result<String, String> {
        if v.get().trim_start().starts_with('[') {
            Ok(v.get().to_string())
        } else {
            Err(format!("the backend's {what} must be a JSON array"))
        }
    };
    let bytes = |list: &[String]| -> Result<Vec<Bytes>, String> {
        list.iter()
            .map(|b| {
                STANDARD
                    .decode(b)
                    .map(Bytes::from)
                    .map_err(|_| "an attachment is not base64".to_string())
            })
            .collect()
    };
    if raw.emit.len() > MAX_EMITS {
        return Err(format!("the backend asked for more than {MAX_EMITS} emits"));
    }
    let mut emits = Vec::with_capacity(raw.emit.len());
    for e in raw.emit {
        if e.event.is_empty()
            || switchboard_protocol::socketio::RESERVED_EVENTS.contains(&e.event.as_str())
        {
            return Err(format!("the backend may not emit {:?}", e.event));
        }
        let to = match (e.to, e.user) {
            (Some(_), Some(_)) => return Err("an emit goes to a room or a user, not both".into()),
            (Some(c), None) => Some(EmitTarget::Channel(c)),
            (None, Some(u)) => Some(EmitTarget::User(u)),
            (None, None) => None,
        };
        if to.is_some() && !e.attachments.is_empty() {
            return Err("emits to a room or user carry no binary attachments".into());
        }
        emits.push(HookEmit {
            args: match e.args {
                Some(a) => array(a, "emit args")?,
                None => "[]".into(),
            },
            attachments: bytes(&e.attachments)?,
            event: e.event,
            to,
        });
    }
    let ack = match raw.ack {
        Some(a) => Some((array(a, "ack")?, bytes(&raw.attachments)?)),
        None => None,
    };
    Ok(HookAnswer {
        accept: raw.accept.unwrap_or(true),
        message: raw.message,
        data: raw.data.map(|d| d.get().to_string()),
        ack,
        emits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_checked() {
        let a = parse_answer(
            r#"{"ack":[1,{"_placeholder":true,"num":0}],"attachments":["AQID"],
                "emit":[{"event":"auth","args":[{"token":"1"}]}]}"#,
        )
        .unwrap();
        assert!(a.accept);
        let (args, att) = a.ack.unwrap();
        assert_eq!(args, r#"[1,{"_placeholder":true,"num":0}]"#);
        assert_eq!(att, vec![Bytes::from_static(&[1, 2, 3])]);
        assert_eq!(a.emits[0].event, "auth");
        assert_eq!(a.emits[0].args, r#"[{"token":"1"}]"#);
        let refused = parse_answer(r#"{"accept":false,"message":"no","data":{"code":7}}"#).unwrap();
        assert!(!refused.accept);
        assert_eq!(refused.data.as_deref(), Some(r#"{"code":7}"#));
        assert!(parse_answer("").unwrap().accept);
        assert!(parse_answer("nope").is_err());
        assert!(parse_answer(r#"{"ack":{}}"#).is_err());
        assert!(parse_answer(r#"{"emit":[{"event":"connect"}]}"#).is_err());
        assert!(parse_answer(r#"{"ack":[],"attachments":["***"]}"#).is_err());
        let room = parse_answer(
            r#"{"emit":[{"event":"x","args":[1],"to":"room:1"},{"event":"y","user":"bob"}]}"#,
        )
        .unwrap();
        assert_eq!(room.emits[0].to, Some(EmitTarget::Channel("room:1".into())));
        assert_eq!(room.emits[1].to, Some(EmitTarget::User("bob".into())));
        assert!(parse_answer(r#"{"emit":[{"event":"x","to":"a:1","user":"b"}]}"#).is_err());
        assert!(
            parse_answer(r#"{"emit":[{"event":"x","to":"a:1","attachments":["AQ=="]}]}"#).is_err()
        );
    }
}
