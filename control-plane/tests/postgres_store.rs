//! The PostgreSQL store against a real server (the Debian `postgresql` package, started
//! by the test in a temporary directory on a free port, stopped by PID): the schema is
//! created at the first start and left alone at the next, nodes migrating together do
//! it once, a newer schema is refused in plain words, and an unreachable server or a
//! refused login is an error naming the server and never the password.

mod common;

use std::time::Duration;

use common::postgres::PostgresServer;
use switchboard_control_plane::pgstore::{PgError, PgStore, SCHEMA_VERSION};

const WAIT: Duration = Duration::from_secs(5);

#[test]
fn the_schema_is_migrated_once_and_a_newer_one_is_refused() {
    let pg = PostgresServer::start();
    let url = pg.database("switchboard");
    // Three nodes starting at once: one migrates, the others find it done.
    let found: Vec<i32> = (0..3)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || PgStore::connect(&url, WAIT).unwrap().migrate().unwrap())
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
        "marks",
        "notification_recipients",
        "notification_topics",
        "notifications",
        "publications",
        "revisions",
        "revocations",
        "scheduled",
        "streams",
        "switchboard_schema",
    ] {
        assert!(tables.iter().any(|x| x == t), "{t} missing from {tables:?}");
    }
    assert_eq!(
        store.migrate().unwrap(),
        SCHEMA_VERSION,
        "nothing left to do"
    );
    store
        .client
        .execute("UPDATE switchboard_schema SET version = 99", &[])
        .unwrap();
    let e = PgStore::connect(&url, WAIT)
        .unwrap()
        .migrate()
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
    let pg = PostgresServer::start();
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
