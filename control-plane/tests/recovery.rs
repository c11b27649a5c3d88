//! Channel streams over real sockets: positions, history, and recovery after a
//! reconnect while others keep publishing — no gap and no duplicate at the seam.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Offsets in a recovery reply's publications.
fn offsets(r: &Value) -> Vec<u64> {
    r["result"]["publications"]
        .as_array()
        .unwrap_or_else(|| panic!("no publications in {r}"))
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_seam_under_concurrent_publishing() {
    let server = start(|c| c.engine.history_size = 100_000);
    let addr = server.ws_addr();
    let tok = token("rec", None);
    const TOTAL: u64 = 600;

    // Subscribe, read a little, vanish, come back on the other shard with the last
    // position, and so on: every offset 1..=TOTAL exactly once, in order.
    let mut seen: Vec<u64> = Vec::new();
    // The first subscription learns the epoch before anything is published.
    let mut first = client_on_shard(addr, Fmt::Json, &tok, 0).await;
    let r = first
        .call(json!({"cmd": "subscribe", "channel": "room:rec"}))
        .await;
    assert_eq!(r["result"]["offset"], json!(0), "{r}");
    let mut last: Option<(String, u64)> =
        Some((r["result"]["epoch"].as_str().unwrap().to_string(), 0));
    drop(first);
    let mut round = 0u64;
    // Then a publisher keeps publishing from shard 1 while the subscriber comes and goes.
    let mut publisher = client_on_shard(addr, Fmt::MsgPack, &tok, 1).await;
    let pub_task = tokio::spawn(async move {
        for i in 1..=TOTAL {
            let r = publisher
                .call(json!({"cmd": "publish", "channel": "room:rec", "data": {"n": i}}))
                .await;
            assert_eq!(r["result"]["offset"], json!(i), "{r}");
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });

    while seen.last().copied().unwrap_or(0) < TOTAL {
        let fmt = if round % 2 == 0 {
            Fmt::Json
        } else {
            Fmt::MsgPack
        };
        let mut c = client_on_shard(addr, fmt, &tok, round % 2).await;
        let r = match &last {
            None => {
                c.call(json!({"cmd": "subscribe", "channel": "room:rec"}))
                    .await
            }
            Some((epoch, offset)) => {
                let r = c
                    .call(json!({"cmd": "subscribe", "channel": "room:rec",
                        "since": {"epoch": epoch, "offset": offset}}))
                    .await;
                assert_eq!(r["result"]["recovered"], json!(true), "{r}");
                assert_eq!(&r["result"]["epoch"], epoch.as_str());
                let got = offsets(&r);
                for (i, p) in r["result"]["publications"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .enumerate()
                {
                    assert_eq!(p["data"]["n"], json!(got[i]), "payload of {}", got[i]);
                }
                seen.extend(got);
                r
            }
        };
        let epoch = r["result"]["epoch"].as_str().expect("position").to_string();
        let top = r["result"]["offset"].as_u64().unwrap();
        assert_eq!(
            seen.last().copied().unwrap_or(top),
            top,
            "recovered up to the top"
        );
        // Live from here: read a few (fewer near the end), then drop the connection.
        let want = 40 + round * 7;
        let mut read = 0;
        while read < want && seen.last().copied().unwrap_or(0) < TOTAL {
            let p = c.next_publication().await;
            assert_eq!(p["epoch"], json!(epoch));
            seen.push(p["offset"].as_u64().unwrap());
            read += 1;
        }
        last = Some((epoch, seen.last().copied().unwrap_or(0)));
        drop(c);
        round += 1;
        tokio::time::sleep(Duration::from_millis(3 * (round % 4))).await;
    }
    pub_task.await.unwrap();
    let expected: Vec<u64> = (1..=TOTAL).collect();
    assert_eq!(
        seen, expected,
        "no gap, no duplicate, in order ({round} reconnects)"
    );
    assert!(round >= 5, "the test reconnected only {round} times");
    server.shutdown();
    server.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_old_or_other_epoch_is_said_plainly_and_history_pages() {
    let server = start(|c| c.engine.history_size = 5);
    let addr = server.ws_addr();
    let tok = token("hist", None);
    let mut c = Client::connect(addr, Fmt::Json, &tok).await;
    let mut epoch = String::new();
    for i in 1..=12 {
        let r = c
            .call(json!({"cmd": "publish", "channel": "room:h", "data": i}))
            .await;
        epoch = r["result"]["epoch"].as_str().unwrap().to_string();
    }
    // Kept: offsets 8..=12.
    let r = c.call(json!({"cmd": "history", "channel": "room:h"})).await;
    assert_eq!(offsets(&r), [8, 9, 10, 11, 12], "{r}");
    assert_eq!(r["result"]["offset"], json!(12));
    let r = c
        .call(json!({"cmd": "history", "channel": "room:h", "since": 9, "limit": 2}))
        .await;
    assert_eq!(offsets(&r), [10, 11]);
    let r = c
        .call(json!({"cmd": "history", "channel": "room:h", "reverse": true, "limit": 2}))
        .await;
    assert_eq!(offsets(&r), [12, 11]);
    assert_eq!(r["result"]["publications"][0]["data"], json!(12));
    let r = c
        .call(json!({"cmd": "history", "channel": "room:h", "since": "x"}))
        .await;
    assert_eq!(r["error"]["code"], 104, "{r}");

    // Recoverable: everything after 7 is kept.
    let mut s = Client::connect(addr, Fmt::MsgPack, &tok).await;
    let r = s
        .call(json!({"cmd": "subscribe", "channel": "room:h", "since": {"epoch": epoch, "offset": 7}}))
        .await;
    assert_eq!(r["result"]["recovered"], json!(true), "{r}");
    assert_eq!(offsets(&r), [8, 9, 10, 11, 12]);
    // Too old: 6 was dropped, so "after 5" cannot be complete.
    let mut s = Client::connect(addr, Fmt::Json, &tok).await;
    let r = s
        .call(json!({"cmd": "subscribe", "channel": "room:h", "since": {"epoch": epoch, "offset": 5}}))
        .await;
    assert_eq!(r["result"]["recovered"], json!(false), "{r}");
    assert_eq!(
        r["result"]["offset"],
        json!(12),
        "says where the stream is: {r}"
    );
    assert_eq!(offsets(&r), Vec::<u64>::new());
    // Another epoch (for example from before a restart): not recovered either.
    let mut s = Client::connect(addr, Fmt::Json, &tok).await;
    let r = s
        .call(json!({"cmd": "subscribe", "channel": "room:h", "since": {"epoch": "0000000000000001", "offset": 11}}))
        .await;
    assert_eq!(r["result"]["recovered"], json!(false), "{r}");
    assert_eq!(r["result"]["epoch"], json!(epoch));
    // Malformed position: an error, the connection stays.
    let r = s
        .call(json!({"cmd": "subscribe", "channel": "room:x", "since": {"epoch": 5}}))
        .await;
    assert_eq!(r["error"]["code"], 104, "{r}");
    // The same through the server API, with an API key.
    let admin = server.admin_addr();
    let auth = format!("Bearer {API_KEY}");
    let (status, body) = http(
        admin,
        "GET",
        "/api/history?channel=room:h&reverse=true&limit=2",
        &[("Authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let cursor = v["cursor"].clone();
    assert!(cursor.is_string(), "older ones follow: {v}");
    assert_eq!(
        v,
        json!({"channel": "room:h", "epoch": epoch, "offset": 12,
            "publications": [{"offset": 12, "data": 12}, {"offset": 11, "data": 11}],
            "cursor": cursor})
    );
    let (status, body) = http(admin, "GET", "/api/history?channel=room:h", &[], "").await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = http(
        admin,
        "GET",
        "/api/history?limit=x",
        &[("Authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("bad_request"), "{body}");
    // History is subject to the token's channels claim.
    let mut limited = Client::connect(addr, Fmt::Json, &token("l", Some(&["room:other"]))).await;
    let r = limited
        .call(json!({"cmd": "history", "channel": "room:h"}))
        .await;
    assert_eq!(r["error"]["code"], 103, "{r}");
    server.shutdown();
    server.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retries_get_the_original_position_and_are_not_delivered_twice() {
    let server = start(|_| {});
    let addr = server.ws_addr();
    let tok = token("idem", None);
    let mut sub = Client::connect(addr, Fmt::Json, &tok).await;
    sub.call(json!({"cmd": "subscribe", "channel": "room:idem"}))
        .await;
    // Publishers on both shards, so one of them is forwarded to the owner.
    let mut p0 = client_on_shard(addr, Fmt::MsgPack, &tok, 0).await;
    let mut p1 = client_on_shard(addr, Fmt::Json, &tok, 1).await;
    let a = p0
        .call(json!({"cmd": "publish", "channel": "room:idem", "data": "a", "key": "msg-1"}))
        .await;
    assert_eq!(a["result"]["offset"], json!(1), "{a}");
    assert!(a["result"].get("duplicate").is_none(), "{a}");
    // The retry (say its reply was lost), from another connection on the other shard.
    let retry = p1
        .call(json!({"cmd": "publish", "channel": "room:idem", "data": "a", "key": "msg-1"}))
        .await;
    assert_eq!(
        retry["result"],
        json!({"epoch": a["result"]["epoch"], "offset": 1, "duplicate": true})
    );
    let b = p1
        .call(json!({"cmd": "publish", "channel": "room:idem", "data": "b", "key": "msg-2"}))
        .await;
    assert_eq!(b["result"]["offset"], json!(2));
    let c = p0
        .call(json!({"cmd": "publish", "channel": "room:idem", "data": "c"}))
        .await;
    assert_eq!(c["result"]["offset"], json!(3));
    // The server API dedupes the same way.
    let admin = server.admin_addr();
    let auth = format!("Bearer {API_KEY}");
    let body = r#"{"channel":"room:idem","data":"d","key":"api-1"}"#;
    let (_, first) = http(
        admin,
        "POST",
        "/api/publish",
        &[("Authorization", &auth)],
        body,
    )
    .await;
    let (_, again) = http(
        admin,
        "POST",
        "/api/publish",
        &[("Authorization", &auth)],
        body,
    )
    .await;
    let first: Value = serde_json::from_str(&first).unwrap();
    let again: Value = serde_json::from_str(&again).unwrap();
    assert_eq!(first["offset"], json!(4), "{first}");
    assert_eq!(
        (&again["offset"], &again["duplicate"]),
        (&json!(4), &json!(true))
    );
    let (status, bad) = http(
        admin,
        "POST",
        "/api/publish",
        &[("Authorization", &auth)],
        r#"{"channel":"room:idem","data":1,"key":""}"#,
    )
    .await;
    assert_eq!(status, 400, "{bad}");
    // The subscriber got each publication once: a, b, c, d.
    for (offset, data) in [(1, "a"), (2, "b"), (3, "c"), (4, "d")] {
        let p = sub.next_publication().await;
        assert_eq!((&p["offset"], &p["data"]), (&json!(offset), &json!(data)));
    }
    let r = sub.call(json!({"cmd": "ping"})).await;
    assert!(r.get("result").is_some());
    assert!(
        sub.backlog.is_empty(),
        "no duplicate delivery: {:?}",
        sub.backlog
    );
    server.shutdown();
    server.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_travels_opaque_and_history_returns_it_unchanged() {
    let server = start(|_| {});
    let addr = server.ws_addr();
    let tok = token("meta", None);
    let mut json_sub = Client::connect(addr, Fmt::Json, &tok).await;
    let mut mp_sub = Client::connect(addr, Fmt::MsgPack, &tok).await;
    for s in [&mut json_sub, &mut mp_sub] {
        s.call(json!({"cmd": "subscribe", "channel": "case:9"}))
            .await;
    }
    let meta = json!({"client_id": "c-77", "content_type": "application/pdf",
        "attachments": [{"name": "intake.pdf", "size": 52311, "url": "s3://bucket/k"}]});
    let mut publisher = Client::connect(addr, Fmt::Json, &tok).await;
    let r = publisher
        .call(json!({"cmd": "publish", "channel": "case:9", "data": {"text": "see attached"}, "meta": meta}))
        .await;
    assert_eq!(r["result"]["offset"], json!(1), "{r}");
    let admin = server.admin_addr();
    let auth = format!("Bearer {API_KEY}");
    let (status, body) = http(
        admin,
        "POST",
        "/api/publish",
        &[("Authorization", &auth)],
        r#"{"channel":"case:9","data":"no meta here"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for s in [&mut json_sub, &mut mp_sub] {
        let p = s.next_publication().await;
        assert_eq!((&p["offset"], &p["meta"]), (&json!(1), &meta), "{p}");
        let p = s.next_publication().await;
        assert_eq!(p["offset"], json!(2));
        assert!(p.get("meta").is_none(), "{p}");
    }
    let r = mp_sub
        .call(json!({"cmd": "history", "channel": "case:9"}))
        .await;
    assert_eq!(r["result"]["publications"][0]["meta"], meta, "{r}");
    assert_eq!(
        r["result"]["publications"][0]["data"],
        json!({"text": "see attached"})
    );
    assert!(r["result"]["publications"][1].get("meta").is_none());
    let (_, body) = http(
        admin,
        "GET",
        "/api/history?channel=case:9&limit=1",
        &[("Authorization", &auth)],
        "",
    )
    .await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["publications"][0]["meta"], meta, "{body}");
    server.shutdown();
    server.wait();
}
