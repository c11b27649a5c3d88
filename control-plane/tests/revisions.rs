//! Editing and deleting messages on a real SQLite store: by their author or a
//! moderator (a namespace `moderate` rule), checked from memory for recent ones and
//! from the store for older ones; subscribers get each revision live; history shows
//! every original as it is now (latest text and when it changed, or deleted), also
//! after a restart; bad revisions get clear errors.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use switchboard_control_plane::config::NamespaceConfig;
use switchboard_control_plane::{auth, Config};

fn configure(c: &mut Config, store: &std::path::Path) {
    let chat: NamespaceConfig = toml::from_str(
        r#"
        durability = "sync"
        history_size = 4
        edits = true
        moderate = [{ role = "moderator" }]
        "#,
    )
    .expect("namespace parses");
    c.namespaces.insert("chat".into(), chat);
    c.store.archive_after_ms = 200;
    c.store.path = store.to_owned();
}

fn token_with_role(sub: &str, role: &str) -> String {
    auth::mint_with(
        SECRET,
        sub,
        Duration::from_secs(600),
        &Default::default(),
        |c| {
            c.extra = [("role".to_string(), json!(role))].into_iter().collect();
        },
    )
}

fn offsets(pubs: &Value) -> Vec<u64> {
    pubs.as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authors_and_moderators_edit_and_delete_and_history_shows_it() {
    let store = temp_store();
    let server = start(|c| configure(c, &store));
    let ws = server.ws_addr();
    let mut ann = Client::connect(ws, Fmt::Json, &token("ann", None)).await;
    let mut bob = Client::connect(ws, Fmt::MsgPack, &token("bob", None)).await;
    let mut moderator = Client::connect(ws, Fmt::Json, &token_with_role("mo", "moderator")).await;
    let r = bob
        .call(json!({"cmd": "subscribe", "channel": "chat:room"}))
        .await;
    assert!(r["result"]["epoch"].is_string(), "{r}");
    for n in 1..=10 {
        let r = ann
            .call(json!({"cmd": "publish", "channel": "chat:room", "data": {"text": format!("m{n}")}}))
            .await;
        assert_eq!(r["result"]["offset"], json!(n), "{r}");
    }
    for _ in 1..=10 {
        bob.next_publication().await;
    }
    // Memory keeps 7..=10: an edit of 9 is checked there, of 2 in the store.
    let r = ann
        .call(json!({"cmd": "edit", "channel": "chat:room", "offset": 9, "data": {"text": "m9 fixed"}}))
        .await;
    assert_eq!(r["result"]["offset"], json!(11), "{r}");
    let live = bob.next_publication().await;
    assert_eq!(
        (&live["offset"], &live["edit"], &live["data"]),
        (&json!(11), &json!(9), &json!({"text": "m9 fixed"})),
        "{live}"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let r = ann
        .call(json!({"cmd": "edit", "channel": "chat:room", "offset": 2,
            "data": {"text": "m2 fixed"}, "meta": {"attachments": [{"name": "a.png",
            "type": "image/png", "size": 10, "url": "https://files.example/a.png"}]}}))
        .await;
    assert_eq!(r["result"]["offset"], json!(12), "{r}");
    assert_eq!(bob.next_publication().await["edit"], json!(2));
    // Others may not, in memory or in the store; a moderator may.
    for target in [3, 10] {
        let r = bob
            .call(json!({"cmd": "delete", "channel": "chat:room", "offset": target}))
            .await;
        assert_eq!(r["error"]["code"], json!(103), "{target}: {r}");
    }
    let r = moderator
        .call(json!({"cmd": "delete", "channel": "chat:room", "offset": 4}))
        .await;
    assert_eq!(r["result"]["offset"], json!(13), "{r}");
    let live = bob.next_publication().await;
    assert_eq!(
        (&live["delete"], &live["data"]),
        (&json!(4), &Value::Null),
        "{live}"
    );
    // Bad revisions.
    let refused = [
        (
            json!({"cmd": "edit", "channel": "chat:room", "offset": 4, "data": 1}),
            113,
        ),
        (
            json!({"cmd": "edit", "channel": "chat:room", "offset": 11, "data": 1}),
            104,
        ),
        (
            json!({"cmd": "delete", "channel": "chat:room", "offset": 99}),
            112,
        ),
        (
            json!({"cmd": "delete", "channel": "chat:room", "offset": 1, "epoch": "0000000000000001"}),
            104,
        ),
        (
            json!({"cmd": "edit", "channel": "chat:room", "offset": 1}),
            104,
        ),
        (
            json!({"cmd": "delete", "channel": "chat:room", "offset": 0}),
            104,
        ),
        (
            json!({"cmd": "delete", "channel": "room:x", "offset": 1}),
            103,
        ),
    ];
    for (cmd, code) in refused {
        let r = ann.call(cmd.clone()).await;
        assert_eq!(r["error"]["code"], json!(code), "{cmd} → {r}");
    }

    let check = |pubs: &Value| {
        assert_eq!(offsets(pubs), (1..=13).collect::<Vec<u64>>(), "{pubs}");
        let p = |o: usize| &pubs[o - 1];
        assert_eq!(p(2)["data"], json!({"text": "m2 fixed"}), "{pubs}");
        assert!(p(2)["edited_ms"].as_u64().unwrap() > 0, "{pubs}");
        assert_eq!(p(2)["meta"]["attachments"][0]["name"], json!("a.png"));
        assert_eq!(p(9)["data"], json!({"text": "m9 fixed"}), "{pubs}");
        assert!(p(9)["edited_ms"].is_u64(), "{pubs}");
        assert_eq!(p(4)["data"], Value::Null, "{pubs}");
        assert!(p(4)["deleted_ms"].is_u64(), "{pubs}");
        assert_eq!(p(3)["data"], json!({"text": "m3"}), "{pubs}");
        assert!(p(3).get("edited_ms").is_none(), "{pubs}");
        assert_eq!(
            (&p(11)["edit"], &p(12)["edit"], &p(13)["delete"]),
            (&json!(9), &json!(2), &json!(4))
        );
    };
    let h = ann
        .call(json!({"cmd": "history", "channel": "chat:room", "limit": 100}))
        .await;
    check(&h["result"]["publications"]);
    // The same after a restart: memory reloaded from the store, older ones read there.
    server.shutdown();
    server.wait();
    let server = start(|c| configure(c, &store));
    let mut ann = Client::connect(server.ws_addr(), Fmt::Json, &token("ann", None)).await;
    let h = ann
        .call(json!({"cmd": "history", "channel": "chat:room", "limit": 100}))
        .await;
    check(&h["result"]["publications"]);
    let (st, h) = api(
        server.admin_addr(),
        "GET",
        "/api/history?channel=chat:room&limit=100",
        &Value::Null,
    )
    .await;
    assert_eq!(st, 200, "{h}");
    check(&h["publications"]);
    server.shutdown();
    server.wait();
    let _ = std::fs::remove_dir_all(store.parent().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_api_edits_and_deletes_any_publication() {
    let store = temp_store();
    let server = start(|c| configure(c, &store));
    let admin = server.admin_addr();
    for n in 1..=3 {
        let (st, r) = api(
            admin,
            "POST",
            "/api/publish",
            &json!({"channel": "chat:desk", "data": n}),
        )
        .await;
        assert_eq!(st, 200, "{r}");
    }
    let (st, r) = api(
        admin,
        "POST",
        "/api/edit",
        &json!({"channel": "chat:desk", "offset": 1, "data": "one"}),
    )
    .await;
    assert_eq!((st, &r["offset"]), (200, &json!(4)), "{r}");
    let (st, r) = api(
        admin,
        "POST",
        "/api/delete",
        &json!({"channel": "chat:desk", "offset": 2}),
    )
    .await;
    assert_eq!((st, &r["offset"]), (200, &json!(5)), "{r}");
    for (path, body, status) in [
        (
            "/api/delete",
            json!({"channel": "chat:desk", "offset": 2}),
            409,
        ),
        (
            "/api/delete",
            json!({"channel": "chat:desk", "offset": 99}),
            404,
        ),
        (
            "/api/delete",
            json!({"channel": "chat:desk", "offset": 3, "data": 1}),
            400,
        ),
        (
            "/api/edit",
            json!({"channel": "chat:desk", "offset": 3}),
            400,
        ),
        (
            "/api/edit",
            json!({"channel": "chat:desk", "offset": 0, "data": 1}),
            400,
        ),
        (
            "/api/edit",
            json!({"channel": "room:desk", "offset": 1, "data": 1}),
            403,
        ),
    ] {
        let (st, r) = api(admin, "POST", path, &body).await;
        assert_eq!(st, status, "{path} {body} → {r}");
    }
    let (_, h) = api(admin, "GET", "/api/history?channel=chat:desk", &Value::Null).await;
    let pubs = &h["publications"];
    assert_eq!(offsets(pubs), [1, 2, 3, 4, 5], "{h}");
    assert_eq!(pubs[0]["data"], json!("one"), "{h}");
    assert!(pubs[1]["deleted_ms"].is_u64(), "{h}");
    server.shutdown();
    server.wait();
    let _ = std::fs::remove_dir_all(store.parent().unwrap());
}
