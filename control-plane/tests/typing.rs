//! Typing indicators over real sockets on two shards: start and stop reach the other
//! members, repeated starts are throttled per connection, a start without a stop is
//! stopped by the server, starting in another channel stops the first, and nothing is
//! stored. (Backpressure dropping typing first: `engine` unit test
//! `typing_is_dropped_first_under_backpressure`.)

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// The next typing push or publication (a marker).
async fn next_typing_or_publication(c: &mut Client) -> Value {
    c.next_push(&["typing", "publication"]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_start_stop_throttle_expiry() {
    let server = start(|c| {
        c.engine.typing_throttle_ms = 300;
        c.engine.typing_timeout_ms = 600;
    });
    let addr = server.ws_addr();
    let mut ann = client_on_shard(addr, Fmt::Json, &token("ann", None), 0).await;
    let mut ben = client_on_shard(addr, Fmt::MsgPack, &token("ben", None), 1).await;
    for c in [&mut ann, &mut ben] {
        for ch in ["chat:a", "chat:b"] {
            let r = c.call(json!({"cmd": "subscribe", "channel": ch})).await;
            assert!(r.get("result").is_some(), "{r}");
        }
    }
    let r = ann
        .call(json!({"cmd": "typing", "channel": "chat:a"}))
        .await;
    assert_eq!(r["result"], json!({}), "{r}");
    let t = next_typing_or_publication(&mut ben).await;
    assert_eq!(
        (&t["channel"], &t["user"], &t["typing"]),
        (&json!("chat:a"), &json!("ann"), &json!(true)),
        "{t}"
    );
    // Repeats within the throttle window are absorbed.
    for _ in 0..5 {
        let r = ann
            .call(json!({"cmd": "typing", "channel": "chat:a"}))
            .await;
        assert!(r.get("result").is_some(), "{r}");
    }
    ann.call(json!({"cmd": "publish", "channel": "chat:a", "data": "m1"}))
        .await;
    assert_eq!(
        next_typing_or_publication(&mut ben).await["data"],
        json!("m1")
    );
    // A stop goes out.
    ann.call(json!({"cmd": "typing", "channel": "chat:a", "typing": false}))
        .await;
    let t = next_typing_or_publication(&mut ben).await;
    assert_eq!(
        (&t["user"], &t["typing"]),
        (&json!("ann"), &json!(false)),
        "{t}"
    );

    // A start that is never stopped: the server stops it after the timeout.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let started = Instant::now();
    ann.call(json!({"cmd": "typing", "channel": "chat:a"}))
        .await;
    assert_eq!(
        next_typing_or_publication(&mut ben).await["typing"],
        json!(true)
    );
    let t = next_typing_or_publication(&mut ben).await;
    assert_eq!(t["typing"], json!(false), "{t}");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "stopped too early"
    );

    // Starting in another channel stops the first.
    tokio::time::sleep(Duration::from_millis(350)).await;
    ann.call(json!({"cmd": "typing", "channel": "chat:a"}))
        .await;
    assert_eq!(
        next_typing_or_publication(&mut ben).await["typing"],
        json!(true)
    );
    ann.call(json!({"cmd": "typing", "channel": "chat:b"}))
        .await;
    let t1 = next_typing_or_publication(&mut ben).await;
    let t2 = next_typing_or_publication(&mut ben).await;
    assert_eq!(
        (&t1["channel"], &t1["typing"]),
        (&json!("chat:a"), &json!(false)),
        "{t1}"
    );
    assert_eq!(
        (&t2["channel"], &t2["typing"]),
        (&json!("chat:b"), &json!(true)),
        "{t2}"
    );

    // Refusals, and nothing stored.
    let r = ann
        .call(json!({"cmd": "typing", "channel": "chat:zzz"}))
        .await;
    assert_eq!(r["error"]["code"], json!(107), "{r}");
    let r = ann
        .call(json!({"cmd": "typing", "channel": "chat:a", "typing": "yes"}))
        .await;
    assert_eq!(r["error"]["code"], json!(104), "{r}");
    let r = ben
        .call(json!({"cmd": "history", "channel": "chat:b"}))
        .await;
    assert_eq!(r["result"]["publications"], json!([]), "{r}");
    drop((ann, ben));
    server.shutdown();
    server.wait();
}
