//! Tests of the call states and the call book.

use super::book::CallBook;
use super::state::Work;
use super::*;
use crate::config::{CallsConfig, NotificationsConfig};
use crate::sql::{args, Db, Exec, Location};
use crate::store::StoreConfig;
use serde_json::Value;
use switchboard_engine::control::{CallTarget, Caller, ControlCommand};
use switchboard_engine::mesh::ReplyBody;
use switchboard_engine::presence::ClientId;
use switchboard_engine::{ConnKey, Mesh, Now, ShardMsg, ShardSender};
use switchboard_protocol::envelope::Format;

#[test]
fn only_the_documented_transitions_are_allowed() {
    use State::*;
    let all = [
        Initiating, Ringing, Accepted, InProgress, Rejected, Missed, Ended, Failed,
    ];
    let expected = [
        (Initiating, Ringing),
        (Initiating, Failed),
        (Ringing, Accepted),
        (Ringing, Rejected),
        (Ringing, Missed),
        (Ringing, Ended),
        (Ringing, Failed),
        (Accepted, InProgress),
        (Accepted, Ended),
        (Accepted, Failed),
        (InProgress, Ended),
        (InProgress, Failed),
    ];
    for from in all {
        for to in all {
            assert_eq!(
                allowed(from, to),
                expected.contains(&(from, to)),
                "{from:?} -> {to:?}"
            );
        }
        if from.is_final() {
            assert!(
                all.iter().all(|&to| !allowed(from, to)),
                "{from:?} is final"
            );
        }
    }
}

/// What shard 0's inbox received: `(event, to)` of each call push (`to`: the user or
/// client it went to) and the results of replies.
fn drain(mesh: &Mesh) -> (Vec<(String, String)>, Vec<Value>) {
    let (mut pushes, mut replies) = (Vec::new(), Vec::new());
    while let Some(msg) = mesh.inbox(0).pop() {
        match msg {
            ShardMsg::Push(p) => {
                let (to, frames) = match &p.to {
                    switchboard_engine::control::PushTo::Users(list) => {
                        (list[0].0.to_string(), list[0].1.clone())
                    }
                    switchboard_engine::control::PushTo::Client(c, f) => (c.to_string(), f.clone()),
                    other => panic!("unexpected push target {other:?}"),
                };
                let frame = &frames[Format::Json.index()];
                // A server text frame: 2-byte header (payloads here are < 126 bytes) or 4.
                let start = if frame[1] == 126 { 4 } else { 2 };
                let v: Value = serde_json::from_slice(&frame[start..]).unwrap();
                if v["push"] == "call" {
                    pushes.push((v["event"].as_str().unwrap().to_string(), to));
                }
            }
            ShardMsg::Reply { result, .. } => match result {
                Ok(ReplyBody::Value(v)) => replies.push(v),
                other => panic!("unexpected reply {other:?}"),
            },
            _ => {}
        }
    }
    (pushes, replies)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn an_unanswered_call_rings_out_on_the_virtual_clock() {
    let dir = std::env::temp_dir().join(format!("sb-calls-ring-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("switchboard.db");
    let store = StoreConfig {
        path: path.clone(),
        ..StoreConfig::default()
    };
    drop(crate::store::open(&store, &[], 60_000, "").expect("store"));
    let mesh = Mesh::new(1, 1024).unwrap();
    let shards = ShardSender::over(mesh.clone());
    let (notifier, notify_thread) = crate::notify::spawn(
        &Location::File(path.clone()),
        shards.clone(),
        NotificationsConfig::default(),
        Default::default(),
        crate::notify::Keeping::Store,
    )
    .unwrap();
    let cfg = CallsConfig {
        ring_timeout_ms: 30_000,
        ..CallsConfig::default()
    };
    let t0 = Now::at(switchboard_engine::clock::mono(), 1_800_000_000_000);
    let conn = Db::open(&Location::File(path.clone()), "calls").unwrap();
    let mut book = CallBook::new(conn, shards, cfg, notifier.clone(), t0);
    let alice = Caller {
        user: "alice".into(),
        client: ClientId {
            shard: 0,
            slot: 1,
            gen: 1,
        },
        device: None,
    };
    book.handle(Work::Shard {
        shard: 0,
        conn: ConnKey { slot: 1, gen: 1 },
        req_id: 7,
        caller: alice,
        cmd: ControlCommand::Call {
            to: CallTarget::User("bob".into()),
            media: Some("audio".into()),
            data: None,
        },
    });
    let (pushes, replies) = drain(&mesh);
    assert_eq!(pushes, vec![("ring".to_string(), "bob".to_string())]);
    let call = replies[0]["call"].as_u64().expect("the call id");
    assert_eq!(replies[0]["state"], "ringing", "{:?}", replies[0]);
    let deadline = book.next_deadline().expect("a ringing deadline");
    assert_eq!(deadline, t0.mono + std::time::Duration::from_millis(30_000));

    // One millisecond before the timeout nothing happens; at it, the call rings out.
    book.at(t0.later(29_999));
    book.expire();
    assert_eq!(drain(&mesh).0, vec![]);
    book.at(t0.later(30_000));
    book.expire();
    let (pushes, _) = drain(&mesh);
    assert!(
        pushes.contains(&("missed".to_string(), "0.1.1".to_string()))
            && pushes.contains(&("missed".to_string(), "bob".to_string())),
        "both sides are told: {pushes:?}"
    );
    assert_eq!(book.next_deadline(), None, "nothing left to ring");

    // The log says missed, at the virtual time, and bob has a missed-call notification.
    let mut conn = Db::open(&Location::File(path.clone()), "test").unwrap();
    let (outcome, ended): (String, i64) = conn
        .query_row(
            "SELECT outcome, ended_ms FROM calls WHERE id = ?1",
            args![call],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(outcome, "missed");
    assert_eq!(ended as u64, t0.unix_ms + 30_000);
    let listing = notifier.list("bob".into(), 10, None, false).await.unwrap();
    assert_eq!(listing.notifications.len(), 1);
    assert_eq!(listing.notifications[0].kind, "missed_call");
    notify_thread.finish();
    let _ = std::fs::remove_dir_all(&dir);
}
