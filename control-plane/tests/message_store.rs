//! The store across builds and restarts: an SQLite file written by schema version 3 or 4
//! (and a PostgreSQL database written by schema version 2) is migrated at start and its
//! streams continue with their history, epoch and offsets; stored publications are
//! served and reloaded after a restart, and pruned beyond their namespace's retention
//! (on the store under test: SQLite, or PostgreSQL in `.ci/run`'s second pass); a file
//! from a newer build is refused with an error that says so.

mod common;

use common::*;
use serde_json::{json, Value};
use switchboard_control_plane::config::NamespaceConfig;
use switchboard_engine::Durability;

/// `tests/fixtures/store-v3.db`: written by the build before schema version 4 (the
/// `chat` namespace stored `sync`): `chat:case-1` holds 30 publications
/// `{"text": "message N"}` named `message`, `chat:case-2` five strings `note N` with
/// meta `{"by": "ann"}`; stopped cleanly.
const FIXTURE_V3: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/store-v3.db");

/// `tests/fixtures/store-v4.db`: written by the build of schema version 4 (commit
/// 914652f, `chat` stored `sync`) by `tests/fixtures/make-store-v4.sh`:
/// `chat:case-1` holds 40 publications `{"text": "message N"}` (32 archived, the rest
/// still in the log's tail), `chat:case-2` three strings `note N` with meta `{"by": "ann"}`,
/// `inbox:bob` one direct message from ann; stopped cleanly.
const FIXTURE_V4: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/store-v4.db");

fn chat_namespace(c: &mut switchboard_control_plane::Config) {
    c.namespaces.insert(
        "chat".into(),
        NamespaceConfig {
            durability: Durability::Sync,
            history_size: Some(1000),
            history_ttl_ms: Some(10 * 365 * 24 * 3600 * 1000),
            ..Default::default()
        },
    );
    // The fixture's streams were last written when it was made.
    c.engine.stream_idle_ms = 10 * 365 * 24 * 3600 * 1000;
    // A few publications per channel are moved to the archive soon, not after 30 s.
    c.store.archive_after_ms = 200;
}

/// Wait until the store has moved at least `n` publications to the archive (SQLite;
/// PostgreSQL has none: its publications are one indexed table from their commit).
async fn wait_archived(admin: std::net::SocketAddr, n: u64) {
    if postgres_under_test() {
        return;
    }
    let deadline = std::time::Instant::now() + TIMEOUT;
    while metric(admin, "switchboard_store_archived_total").await < n {
        assert!(
            std::time::Instant::now() < deadline,
            "fewer than {n} publications archived"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn user_version(path: &std::path::Path) -> i64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_3_store_is_migrated_and_its_streams_continue() {
    let store = temp_store();
    std::fs::create_dir_all(store.parent().unwrap()).unwrap();
    std::fs::copy(FIXTURE_V3, &store).unwrap();
    assert_eq!(user_version(&store), 3);
    let server = start_on_file(|c| {
        chat_namespace(c);
        c.store.path = store.clone();
    });
    let admin = server.admin_addr();
    let (st, h) = api(
        admin,
        "GET",
        "/api/history?channel=chat:case-1&limit=100",
        &Value::Null,
    )
    .await;
    assert_eq!(st, 200, "{h}");
    let pubs = h["publications"].as_array().unwrap();
    assert_eq!(pubs.len(), 30, "{h}");
    assert_eq!(pubs[0]["offset"], json!(1));
    assert_eq!(pubs[29]["data"], json!({"text": "message 30"}));
    let epoch = h["epoch"].clone();
    let (st, h2) = api(
        admin,
        "GET",
        "/api/history?channel=chat:case-2",
        &Value::Null,
    )
    .await;
    assert_eq!(st, 200, "{h2}");
    assert_eq!(h2["publications"].as_array().unwrap().len(), 5, "{h2}");
    assert_eq!(h2["publications"][4]["data"], json!("note 5"));
    // The stream continues: same epoch, the next offset.
    let (st, r) = api(
        admin,
        "POST",
        "/api/publish",
        &json!({"channel": "chat:case-1", "data": {"text": "after the upgrade"}}),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!((&r["epoch"], &r["offset"]), (&epoch, &json!(31)), "{r}");
    // The writer moves the old log (and the new publication) to the archive.
    wait_archived(admin, 36).await;
    server.shutdown();
    server.wait();
    assert_eq!(user_version(&store), 5);
    let conn = rusqlite::Connection::open(&store).unwrap();
    let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(count("SELECT COUNT(*) FROM log"), 0);
    assert_eq!(count("SELECT COUNT(*) FROM archive"), 36);
    drop(conn);
    // And from the archive, after another restart, the same history.
    let server = start_on_file(|c| {
        chat_namespace(c);
        c.store.path = store.clone();
    });
    let (st, h) = api(
        server.admin_addr(),
        "GET",
        "/api/history?channel=chat:case-1&limit=100",
        &Value::Null,
    )
    .await;
    assert_eq!(st, 200, "{h}");
    assert_eq!(h["publications"].as_array().unwrap().len(), 31, "{h}");
    assert_eq!(h["epoch"], epoch);
    assert_eq!(
        h["publications"][30]["data"],
        json!({"text": "after the upgrade"})
    );
    server.shutdown();
    server.wait();
    let _ = std::fs::remove_dir_all(store.parent().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_4_store_is_migrated_and_pages_through_its_archive_and_log() {
    let store = temp_store();
    std::fs::create_dir_all(store.parent().unwrap()).unwrap();
    std::fs::copy(FIXTURE_V4, &store).unwrap();
    assert_eq!(user_version(&store), 4);
    let server = start_on_file(|c| {
        chat_namespace(c);
        c.store.path = store.clone();
    });
    let admin = server.admin_addr();
    // Newest first, three a page, by cursor: archive and log's tail both.
    let mut offsets = Vec::new();
    let mut path = "/api/history?channel=chat:case-1&reverse=true&limit=3".to_string();
    let mut epoch = Value::Null;
    for _ in 0..20 {
        let (st, h) = api(admin, "GET", &path, &Value::Null).await;
        assert_eq!(st, 200, "{h}");
        epoch = h["epoch"].clone();
        for p in h["publications"].as_array().unwrap() {
            let o = p["offset"].as_u64().unwrap();
            assert_eq!(p["data"], json!({"text": format!("message {o}")}), "{h}");
            offsets.push(o);
        }
        match h["cursor"].as_str() {
            Some(c) => path = format!("/api/history?channel=chat:case-1&limit=3&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(offsets, (1..=40).rev().collect::<Vec<u64>>());
    let (_, h) = api(
        admin,
        "GET",
        "/api/history?channel=chat:case-2",
        &Value::Null,
    )
    .await;
    assert_eq!(h["publications"][2]["meta"], json!({"by": "ann"}), "{h}");
    let (_, h) = api(admin, "GET", "/api/history?channel=inbox:bob", &Value::Null).await;
    assert_eq!(h["publications"][0]["from"], json!("ann"), "{h}");
    let (st, r) = api(
        admin,
        "POST",
        "/api/publish",
        &json!({"channel": "chat:case-1", "data": {"text": "message 41"}}),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!((&r["epoch"], &r["offset"]), (&epoch, &json!(41)), "{r}");
    server.shutdown();
    server.wait();
    assert_eq!(user_version(&store), 5);
    let conn = rusqlite::Connection::open(&store).unwrap();
    for table in ["log", "archive"] {
        let has: bool = conn
            .prepare(&format!(
                "SELECT 1 FROM pragma_table_info('{table}') WHERE name = 'author'"
            ))
            .unwrap()
            .exists([])
            .unwrap();
        assert!(has, "{table} has the author column");
    }
    drop(conn);
    let _ = std::fs::remove_dir_all(store.parent().unwrap());
}

#[test]
fn a_store_from_a_newer_build_is_refused_naming_the_versions() {
    let store = temp_store();
    std::fs::create_dir_all(store.parent().unwrap()).unwrap();
    std::fs::copy(FIXTURE_V3, &store).unwrap();
    rusqlite::Connection::open(&store)
        .unwrap()
        .execute_batch("PRAGMA user_version = 99")
        .unwrap();
    let cfg = failing_start_config(&store);
    let e = format!(
        "{:#}",
        switchboard_control_plane::Server::start(cfg).unwrap_err()
    );
    assert!(e.contains(&store.display().to_string()), "{e}");
    assert!(
        e.contains("schema version 99 is newer than this build's"),
        "{e}"
    );
    assert!(!e.contains("Invalid parameter"), "{e}");
    let _ = std::fs::remove_dir_all(store.parent().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archived_publications_are_reloaded_after_restarts() {
    let store = temp_store();
    let server = start(|c| {
        chat_namespace(c);
        c.store.path = store.clone();
    });
    let admin = server.admin_addr();
    let mut epochs = Vec::new();
    for ch in 0..3 {
        for i in 1..=100u64 {
            let (st, r) = api(
                admin,
                "POST",
                "/api/publish",
                &json!({"channel": format!("chat:room-{ch}"), "data": i, "meta": {"n": i}}),
            )
            .await;
            assert_eq!((st, &r["offset"]), (200, &json!(i)), "{r}");
            if i == 1 {
                epochs.push(r["epoch"].clone());
            }
        }
    }
    wait_archived(admin, 300).await;
    // Some more stay in the log's tail at the stop: both are read back.
    for ch in 0..3 {
        let (st, r) = api(
            admin,
            "POST",
            "/api/publish",
            &json!({"channel": format!("chat:room-{ch}"), "data": 101}),
        )
        .await;
        assert_eq!(st, 200, "{r}");
    }
    server.shutdown();
    server.wait();
    for round in 0..2 {
        let server = start(|c| {
            chat_namespace(c);
            c.store.path = store.clone();
        });
        let admin = server.admin_addr();
        for (ch, epoch) in epochs.iter().enumerate() {
            let (st, h) = api(
                admin,
                "GET",
                &format!("/api/history?channel=chat:room-{ch}&limit=1000"),
                &Value::Null,
            )
            .await;
            assert_eq!(st, 200, "{h}");
            let pubs = h["publications"].as_array().unwrap();
            let want = 101 + round;
            assert_eq!(pubs.len(), want, "round {round}, room {ch}: {h}");
            for (i, p) in pubs.iter().enumerate() {
                assert_eq!(p["offset"], json!(i + 1), "{h}");
            }
            assert_eq!(pubs[41]["meta"], json!({"n": 42}));
            assert_eq!(&h["epoch"], epoch, "{h}");
            let (st, r) = api(
                admin,
                "POST",
                "/api/publish",
                &json!({"channel": format!("chat:room-{ch}"), "data": "again"}),
            )
            .await;
            assert_eq!((st, &r["offset"]), (200, &json!(want + 1)), "{r}");
        }
        server.shutdown();
        server.wait();
    }
    let _ = std::fs::remove_dir_all(store.parent().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archived_publications_beyond_their_namespace_retention_are_pruned() {
    let store = temp_store();
    let server = start(|c| {
        chat_namespace(c);
        c.namespaces.insert(
            "brief".into(),
            NamespaceConfig {
                durability: Durability::Sync,
                retain_ms: Some(300),
                ..Default::default()
            },
        );
        c.namespaces.insert(
            "capped".into(),
            NamespaceConfig {
                durability: Durability::Sync,
                retain_count: Some(5),
                ..Default::default()
            },
        );
        c.store.prune_interval_ms = 100;
        c.store.path = store.clone();
    });
    let admin = server.admin_addr();
    // Ten on one channel that keeps them forever; one on each of 300 that keep them
    // 300 ms (more channels than one pruning step visits); 20 on one that keeps 5.
    let mut channels: Vec<String> = vec!["chat:x".into(); 10];
    channels.extend((0..300).map(|i| format!("brief:{i}")));
    channels.extend(std::iter::repeat_n("capped:1".to_string(), 20));
    for (i, channel) in channels.iter().enumerate() {
        let (st, r) = api(
            admin,
            "POST",
            "/api/publish",
            &json!({"channel": channel, "data": i}),
        )
        .await;
        assert_eq!(st, 200, "{r}");
    }
    wait_archived(admin, 330).await;
    let deadline = std::time::Instant::now() + TIMEOUT;
    while metric(admin, "switchboard_store_pruned_total").await < 315 {
        assert!(
            std::time::Instant::now() < deadline,
            "not everything pruned"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let left = |pattern: &str| -> i64 {
        store_count(
            &store,
            &format!("SELECT COUNT(*) FROM archive WHERE channel LIKE '{pattern}'"),
            &format!("SELECT COUNT(*) FROM publications WHERE channel LIKE '{pattern}'"),
        )
    };
    assert_eq!(
        (left("brief:%"), left("chat:%"), left("capped:%")),
        (0, 10, 5)
    );
    let oldest = store_count(
        &store,
        "SELECT MIN(offset) FROM archive WHERE channel = 'capped:1'",
        "SELECT MIN(\"offset\") FROM publications WHERE channel = 'capped:1'",
    );
    assert_eq!(oldest, 16, "the newest five kept");
    server.shutdown();
    server.wait();
    let _ = std::fs::remove_dir_all(store.parent().unwrap());
}
