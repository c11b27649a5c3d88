//! The store across builds, on a real SQLite file: a file written by schema version 3
//! is opened (and migrated when this build's schema is newer) and its streams continue
//! with their history, epoch and offsets; a file from a newer build is refused with an
//! error that says so.

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
}

fn user_version(path: &std::path::Path) -> i64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_3_store_opens_and_its_streams_continue() {
    let store = temp_store();
    std::fs::create_dir_all(store.parent().unwrap()).unwrap();
    std::fs::copy(FIXTURE_V3, &store).unwrap();
    assert_eq!(user_version(&store), 3);
    let server = start(|c| {
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
    server.shutdown();
    server.wait();
    assert!(user_version(&store) >= 3);
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
