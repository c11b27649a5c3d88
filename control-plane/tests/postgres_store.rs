//! The PostgreSQL store against a real server (the Debian `postgresql` package, started
//! by the test in a temporary directory on a free port, stopped by PID): the schema is
//! created at the first start and left alone at the next, nodes migrating together do
//! it once, a newer schema is refused in plain words, and an unreachable server or a
//! refused login is an error naming the server and never the password.

mod common;

use std::time::Duration;

use switchboard_control_plane::store::postgres::{
    migrate, PgError, PgStore, TempServer, SCHEMA_VERSION,
};

const WAIT: Duration = Duration::from_secs(5);

/// A throwaway server with database `name`, and its URL (set up on a thread of its own:
/// the synchronous client cannot block a test's runtime).
fn temp_database(name: &'static str) -> (TempServer, String) {
    std::thread::spawn(move || {
        let pg = TempServer::start().expect("a PostgreSQL server");
        let url = pg.database(name).unwrap();
        (pg, url)
    })
    .join()
    .unwrap()
}

/// The data of `channel`'s publications as `admin`'s history shows them, once it shows
/// `want` (polling: stores write after they acknowledge), or fail.
async fn history_reaches(admin: std::net::SocketAddr, channel: &str, want: &[u64]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let path = format!("/api/history?channel={channel}&limit=1000");
        let (st, h) = common::api(admin, "GET", &path, &serde_json::Value::Null).await;
        assert_eq!(st, 200, "{h}");
        let got: Vec<u64> = h["publications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["data"].as_u64().unwrap())
            .collect();
        if got == want {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{got:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn the_schema_is_migrated_once_and_a_newer_one_is_refused() {
    let pg = TempServer::start().expect("a PostgreSQL server");
    let url = pg.database("switchboard").unwrap();
    // Three nodes starting at once: one migrates, the others find it done.
    let found: Vec<i32> = (0..3)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || migrate(&mut PgStore::connect(&url, WAIT).unwrap()).unwrap())
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let mut sorted = found.clone();
    sorted.sort();
    assert_eq!(sorted, [0, SCHEMA_VERSION, SCHEMA_VERSION], "{found:?}");
    let mut store = PgStore::connect(&url, WAIT).unwrap();
    let tables: Vec<String> = store
        .client
        .query(
            "SELECT table_name::text FROM information_schema.tables
             WHERE table_schema = 'public' ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for t in [
        "audit",
        "call_quality",
        "calls",
        "marks",
        "meta",
        "notification_recipients",
        "notification_topics",
        "notifications",
        "publications",
        "revisions",
        "revocations",
        "scheduled",
        "sio_sessions",
        "streams",
        "switchboard_schema",
    ] {
        assert!(tables.iter().any(|x| x == t), "{t} missing from {tables:?}");
    }
    assert_eq!(
        migrate(&mut store).unwrap(),
        SCHEMA_VERSION,
        "nothing left to do"
    );
    store
        .client
        .execute("UPDATE switchboard_schema SET version = 99", &[])
        .unwrap();
    let e = migrate(&mut PgStore::connect(&url, WAIT).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!(
            "schema version 99 is newer than this build's {SCHEMA_VERSION}"
        )),
        "{e}"
    );
    assert!(
        e.contains(&format!("127.0.0.1:{}/switchboard", pg.port)),
        "{e}"
    );
}

#[test]
fn an_unreachable_server_or_a_refused_login_is_a_clear_error() {
    let pg = TempServer::start().expect("a PostgreSQL server");
    // Nothing listens on this port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://sb:s3cret-pw@127.0.0.1:{closed}/chat");
    let e = PgStore::connect(&url, WAIT).unwrap_err();
    assert!(matches!(e, PgError::Connect { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.starts_with(&format!("PostgreSQL at 127.0.0.1:{closed}/chat: ")),
        "{text}"
    );
    assert!(
        !text.contains("s3cret-pw"),
        "the password stays secret: {text}"
    );
    // A database that does not exist: the server's own words.
    let url = format!(
        "postgres://postgres:s3cret-pw@127.0.0.1:{}/nowhere",
        pg.port
    );
    let text = PgStore::connect(&url, WAIT).unwrap_err().to_string();
    assert!(
        text.contains("database \"nowhere\" does not exist"),
        "{text}"
    );
    assert!(!text.contains("s3cret-pw"), "{text}");
    let text = PgStore::connect("mysql://x", WAIT).unwrap_err().to_string();
    assert!(
        text.starts_with("store.postgres_url is not a PostgreSQL URL"),
        "{text}"
    );
}

/// A second node started on a database a running node uses stops at start, saying why;
/// once the first has stopped, it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_running_node_per_database() {
    let (pg, url) = temp_database("node");
    let on_pg = |c: &mut switchboard_control_plane::Config| {
        c.store.backend = switchboard_control_plane::store::Backend::Postgres;
        c.store.postgres_url = Some(url.clone());
    };
    let first = common::start(on_pg);
    let mut cfg = common::failing_start_config(&common::temp_store());
    on_pg(&mut cfg);
    let e = switchboard_control_plane::Server::start(cfg.clone())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("in use by another running Switchboard node") && e.contains("/node"),
        "{e}"
    );
    first.shutdown();
    first.wait();
    let second = common::start(on_pg);
    second.shutdown();
    second.wait();
    drop(pg);
}

/// The database ends every session of the server (as a restart or a failover does):
/// the writer, the history reader and the workers connect again, and nothing
/// acknowledged is lost; a publication made while the writer reconnects is refused
/// (111) or acknowledged once stored, never acknowledged and lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_the_database_ends_are_connected_again() {
    use serde_json::{json, Value};
    let (pg, url) = temp_database("lost");
    let server = common::start(|c| {
        c.namespaces.insert(
            "chat".into(),
            toml::from_str("durability = \"sync\"\nhistory_size = 2").expect("namespace parses"),
        );
        c.store.backend = switchboard_control_plane::store::Backend::Postgres;
        c.store.postgres_url = Some(url.clone());
        c.store.retry_ms = 50;
    });
    let admin = server.admin_addr();
    let publish = |n: u64| async move {
        let body = json!({"channel": "chat:room", "data": n});
        common::api(admin, "POST", "/api/publish", &body).await
    };
    let mut acked = Vec::new();
    for n in 1..=5 {
        let (st, r) = publish(n).await;
        assert_eq!(st, 200, "{r}");
        acked.push(n);
    }
    let admin_url = url.clone();
    let ended: i64 = std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&admin_url, postgres::NoTls).unwrap();
        c.query_one(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = 'lost' AND pid <> pg_backend_pid()",
            &[],
        )
        .unwrap()
        .get(0)
    })
    .join()
    .unwrap();
    assert!(
        ended >= 5,
        "the writer, reader and workers' sessions ended: {ended}"
    );
    // Publications go on: refused while the writer reconnects, then stored again.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for n in 6..=10 {
        loop {
            let (st, r) = publish(n).await;
            if st == 200 {
                acked.push(n);
                break;
            }
            assert_eq!(r["error"]["code"], json!("store_unavailable"), "{st} {r}");
            assert!(
                std::time::Instant::now() < deadline,
                "never stored again: {r}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The reader (older than memory's two) and a worker (notifications) work again.
    let (st, h) = common::api(
        admin,
        "GET",
        "/api/history?channel=chat:room&limit=100",
        &Value::Null,
    )
    .await;
    assert_eq!(st, 200, "{h}");
    let data: Vec<u64> = h["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["data"].as_u64().unwrap())
        .collect();
    assert_eq!(
        data, acked,
        "every acknowledged publication, once, in order"
    );
    let (st, r) = common::api(
        admin,
        "POST",
        "/api/notifications",
        &json!({"user": "ann", "kind": "visit", "data": {}}),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    server.shutdown();
    server.wait();
    drop(pg);
}

/// Nodes sharing Redis and one PostgreSQL database: each stores the shared
/// publications it published, so either serves the whole history of a channel far
/// beyond what Redis and memory keep; each keeps its own run marks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_sharing_redis_keep_long_history_in_one_database() {
    use serde_json::json;
    let (pg, url) = temp_database("cluster");
    let redis = common::RedisServer::start();
    let on_pg = |c: &mut switchboard_control_plane::Config| {
        c.namespaces.insert(
            "chat".into(),
            toml::from_str("durability = \"async\"\nhistory_size = 4").expect("namespace parses"),
        );
        c.store.backend = switchboard_control_plane::store::Backend::Postgres;
        c.store.postgres_url = Some(url.clone());
    };
    let nodes = [
        common::cluster_node(&redis, "n1", on_pg),
        common::cluster_node(&redis, "n2", on_pg),
    ];
    for n in 1..=40u64 {
        let node = &nodes[(n % 2) as usize];
        let body = json!({"channel": "chat:long", "data": n});
        let (st, r) = common::api(node.admin_addr(), "POST", "/api/publish", &body).await;
        assert_eq!((st, &r["offset"]), (200, &json!(n)), "{r}");
    }
    let all: Vec<u64> = (1..=40).collect();
    for node in &nodes {
        history_reaches(node.admin_addr(), "chat:long", &all).await;
    }
    // A node restarted on the database continues the channel where Redis has it.
    let [n1, n2] = nodes;
    n1.shutdown();
    n1.wait();
    let n1 = common::cluster_node(&redis, "n1", on_pg);
    let body = json!({"channel": "chat:long", "data": 41});
    let (st, r) = common::api(n1.admin_addr(), "POST", "/api/publish", &body).await;
    assert_eq!((st, &r["offset"]), (200, &json!(41)), "{r}");
    let all: Vec<u64> = (1..=41).collect();
    history_reaches(n1.admin_addr(), "chat:long", &all).await;
    for n in [n1, n2] {
        n.shutdown();
        n.wait();
    }
    let marks: Vec<(String, String)> = std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        c.query(
            "SELECT key, value FROM meta WHERE key LIKE 'clean%' ORDER BY key",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
    })
    .join()
    .unwrap();
    assert_eq!(
        marks,
        [
            ("clean:n1".into(), "1".into()),
            ("clean:n2".into(), "1".into())
        ],
        "each node's clean stop, apart"
    );
    drop(pg);
}

mod journal_and_pages {
    use super::*;
    use std::sync::Arc;

    use bytes::Bytes;
    use switchboard_control_plane::store::postgres::{journal, pages};
    use switchboard_engine::journal::{Batch, MarkKind, MarkRecord, Record};
    use switchboard_protocol::history::Page;
    use switchboard_protocol::{Format, Position, Revision};

    const EPOCH: u64 = 7;
    const BASE_MS: i64 = 1_800_000_000_000;

    fn record(offset: u64, data: &str, revises: Option<Revision>) -> Record {
        Record {
            channel: Arc::from("chat:pg"),
            epoch: EPOCH,
            offset,
            format: Format::Json,
            data: Bytes::from(data.to_string()),
            meta: None,
            key: None,
            from: None,
            author: Some(Arc::from("ann")),
            event: None,
            revises,
            keep: 64,
        }
    }

    fn batch(seq: u64, records: Vec<Record>, marks: Vec<MarkRecord>) -> Batch {
        Batch {
            shard: 0,
            seq,
            notify: true,
            records,
            marks,
            sessions: Vec::new(),
        }
    }

    /// A database as the build of schema version 2 left it — `chat:case-1` holds 30
    /// publications `{"text": "message N"}` in epoch 7, stored a second apart — is
    /// migrated when a server starts on it, which serves its history and continues the
    /// stream.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_version_2_database_is_migrated_and_its_streams_continue() {
        use serde_json::{json, Value};
        // The synchronous client and the server's set-up on a thread of their own.
        let (pg, url) = std::thread::spawn(|| {
            let pg = TempServer::start().expect("a PostgreSQL server");
            let url = pg.database("version2").unwrap();
            let mut store = PgStore::connect(&url, WAIT).unwrap();
            switchboard_control_plane::store::postgres::migrate_to(&mut store, 2).unwrap();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64;
            for i in 1..=30u64 {
                let mut r = record(i, &format!("{{\"text\":\"message {i}\"}}"), None);
                r.channel = Arc::from("chat:case-1");
                journal::write(
                    &mut store.client,
                    "",
                    &[batch(i, vec![r], vec![])],
                    now - 30_000 + i as i64 * 1000,
                )
                .unwrap();
            }
            (pg, url)
        })
        .join()
        .unwrap();
        let server = common::start(|c| {
            c.namespaces.insert(
                "chat".into(),
                switchboard_control_plane::config::NamespaceConfig {
                    durability: switchboard_engine::Durability::Sync,
                    history_size: Some(16),
                    ..Default::default()
                },
            );
            c.store.backend = switchboard_control_plane::store::Backend::Postgres;
            c.store.postgres_url = Some(url.clone());
        });
        let admin = server.admin_addr();
        let (st, h) = common::api(
            admin,
            "GET",
            "/api/history?channel=chat:case-1&limit=100",
            &Value::Null,
        )
        .await;
        assert_eq!(st, 200, "{h}");
        let pubs = h["publications"].as_array().unwrap();
        assert_eq!(pubs.len(), 30, "{h}");
        assert_eq!(pubs[0]["data"], json!({"text": "message 1"}), "{h}");
        assert_eq!(h["epoch"], json!("0000000000000007"), "{h}");
        let (st, r) = common::api(
            admin,
            "POST",
            "/api/publish",
            &json!({"channel": "chat:case-1", "data": {"text": "message 31"}}),
        )
        .await;
        assert_eq!(
            (st, &r["offset"], &r["epoch"]),
            (200, &json!(31), &json!("0000000000000007")),
            "{r}"
        );
        server.shutdown();
        server.wait();
        let version = std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            c.query_one("SELECT version FROM switchboard_schema", &[])
                .unwrap()
                .get::<_, i32>(0)
        })
        .join()
        .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        drop(pg);
    }

    /// A commit made again (its first try committed, but the answer was lost) stores
    /// nothing twice and does not fail: the writer's retry would otherwise fail forever.
    #[test]
    fn a_commit_made_again_is_taken_once() {
        let pg = TempServer::start().expect("a PostgreSQL server");
        let url = pg.database("again").unwrap();
        let mut store = PgStore::connect(&url, WAIT).unwrap();
        migrate(&mut store).unwrap();
        let commit = |from: u64| {
            batch(
                0,
                (from..from + 10).map(|i| record(i, "1", None)).collect(),
                vec![],
            )
        };
        journal::write(&mut store.client, "", &[commit(1)], BASE_MS).unwrap();
        // The same ten, and ten new ones beside them.
        journal::write(&mut store.client, "", &[commit(1), commit(11)], BASE_MS + 1).unwrap();
        let row = store
            .client
            .query_one(
                "SELECT COUNT(*), MIN(ts_ms), MAX(\"offset\") FROM publications",
                &[],
            )
            .unwrap();
        assert_eq!(
            (
                row.get::<_, i64>(0),
                row.get::<_, i64>(1),
                row.get::<_, i64>(2)
            ),
            (20, BASE_MS, 20),
            "the first ten as first stored, the next ten added"
        );
    }

    fn offsets(p: &pages::PgPage) -> Vec<u64> {
        p.entries.iter().map(|e| e.offset).collect()
    }

    #[test]
    fn group_commits_are_read_back_as_pages_with_revisions_folded() {
        let pg = TempServer::start().expect("a PostgreSQL server");
        let url = pg.database("journal").unwrap();
        let mut store = PgStore::connect(&url, WAIT).unwrap();
        migrate(&mut store).unwrap();
        // Ten commits of 100, a second apart; then an edit of 5 and a deletion of 6.
        for k in 0..10u64 {
            let records = (1..=100)
                .map(|i| record(k * 100 + i, &format!("{}", k * 100 + i), None))
                .collect();
            let mark = MarkRecord {
                channel: Arc::from("chat:pg"),
                kind: MarkKind::Receipt,
                who: "bob".into(),
                epoch: EPOCH,
                delivered: (k + 1) * 100,
                read: k * 100,
                at_ms: 1,
            };
            let b = batch(k, records, vec![mark]);
            journal::write(&mut store.client, "", &[b], BASE_MS + k as i64 * 1000).unwrap();
        }
        let revisions = vec![
            record(
                1001,
                "\"five, fixed\"",
                Some(Revision {
                    target: 5,
                    delete: false,
                }),
            ),
            record(
                1002,
                "null",
                Some(Revision {
                    target: 6,
                    delete: true,
                }),
            ),
        ];
        journal::write(
            &mut store.client,
            "",
            &[batch(10, revisions, Vec::new())],
            BASE_MS + 20_000,
        )
        .unwrap();
        let top = Position {
            epoch: EPOCH,
            offset: 1002,
        };
        let row = store
            .client
            .query_one("SELECT top FROM streams WHERE channel = 'chat:pg'", &[])
            .unwrap();
        assert_eq!(row.get::<_, i64>(0), 1002);
        let row = store
            .client
            .query_one("SELECT delivered, read FROM marks WHERE who = 'bob'", &[])
            .unwrap();
        assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (1000, 900));

        // Newest first, 300 a page, to the start.
        let mut page = Page {
            epoch: Some(EPOCH),
            reverse: true,
            limit: 300,
            ..Page::default()
        };
        let mut all = Vec::new();
        loop {
            let p = pages::read(&mut store, "chat:pg", &page, top, &[])
                .unwrap()
                .unwrap();
            all.extend(offsets(&p));
            if !p.more {
                break;
            }
            page = page.next(EPOCH, *all.last().unwrap());
        }
        assert_eq!(all, (1..=1002).rev().collect::<Vec<u64>>());
        // Oldest first after an offset; a time range (the third commit exactly).
        let after = Page {
            epoch: Some(EPOCH),
            after: 500,
            limit: 3,
            ..Page::default()
        };
        let p = pages::read(&mut store, "chat:pg", &after, top, &[])
            .unwrap()
            .unwrap();
        assert_eq!((offsets(&p), p.more), (vec![501, 502, 503], true));
        let range = Page {
            epoch: Some(EPOCH),
            from_ms: Some((BASE_MS + 2000) as u64),
            to_ms: Some((BASE_MS + 2000) as u64),
            limit: 1000,
            ..Page::default()
        };
        let p = pages::read(&mut store, "chat:pg", &range, top, &[])
            .unwrap()
            .unwrap();
        assert_eq!(offsets(&p), (201..=300).collect::<Vec<u64>>());
        // Revisions folded: 5 edited, 6 deleted, 7 as published.
        let first = Page {
            epoch: Some(EPOCH),
            after: 4,
            limit: 3,
            ..Page::default()
        };
        let p = pages::read(&mut store, "chat:pg", &first, top, &[])
            .unwrap()
            .unwrap();
        assert_eq!(&p.entries[0].data[..], b"\"five, fixed\"");
        assert!(p.entries[0].revised.is_some_and(|r| !r.deleted));
        assert_eq!(&p.entries[1].data[..], b"null");
        assert!(p.entries[1].revised.is_some_and(|r| r.deleted));
        assert_eq!(&p.entries[2].data[..], b"7");
        assert!(p.entries[2].revised.is_none());
        // Another epoch that was never stored.
        let other = Page {
            epoch: Some(99),
            ..Page::default()
        };
        assert!(pages::read(&mut store, "chat:pg", &other, top, &[])
            .unwrap()
            .is_none());
    }
}
