//! Tests of config.

use super::*;
use std::path::PathBuf;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn write(text: &str) -> tempfile_path::TempPath {
    tempfile_path::TempPath::with(text)
}

/// A tiny temp-file helper (no extra crate for one use).
mod tempfile_path {
    pub struct TempPath(pub std::path::PathBuf);
    impl TempPath {
        pub fn with(text: &str) -> TempPath {
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let p = std::env::temp_dir().join(format!("sb-config-{}-{n}.toml", std::process::id()));
            std::fs::write(&p, text).unwrap();
            TempPath(p)
        }
    }
    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

#[test]
fn defaults_and_shipped_profile_load() {
    let c = Config::load(None, &env(&[])).unwrap();
    assert_eq!(c, Config::default());
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tuning/default.toml");
    let from_file = Config::load(Some(&shipped), &env(&[])).unwrap();
    assert_eq!(
        from_file,
        Config::default(),
        "tuning/default.toml documents the defaults"
    );
}

#[test]
fn the_shipped_cluster_profile_loads() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tuning/cluster.toml");
    let c = Config::load(Some(&shipped), &env(&[])).unwrap();
    assert!(c.cluster.enabled());
    assert_eq!(c.cluster.node_ttl_ms, 5_000);
    assert_eq!(c.socketio.recovery_ms, 120_000);
}

#[test]
fn the_shipped_profiles_load_and_change_what_they_say() {
    let load = |name: &str| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../tuning/{name}.toml"));
        Config::load(Some(&path), &env(&[])).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let low = load("low-latency");
    assert_eq!(low.engine.uring_coalesce_us, 0);
    assert_eq!(low.engine.max_outbound_bytes, 131_072);
    let fanout = load("high-fanout");
    assert_eq!(fanout.engine.max_outbound_bytes, 1_048_576);
    assert_eq!(fanout.engine.inbox_capacity, 262_144);
    let many = load("max-connections");
    assert_eq!(many.engine.max_connections, 1_000_000);
    assert_eq!(many.engine.max_connections_per_ip, 0);
    assert_eq!(many.engine.backlog, 65_535);
}

#[test]
fn env_overrides() {
    let c = Config::load(
        None,
        &env(&[
            ("SWITCHBOARD_ENGINE__MAX_FRAME_BYTES", "1024"),
            ("SWITCHBOARD_ENGINE__MAX_MESSAGE_BYTES", "4096"),
            ("SWITCHBOARD_AUTH__HMAC_SECRET", "0123456789abcdef0123"),
            ("SWITCHBOARD_ADMIN__LISTEN", "127.0.0.1:9000"),
            ("UNRELATED", "x"),
        ]),
    )
    .unwrap();
    assert_eq!(c.engine.max_frame_bytes, 1024);
    assert_eq!(c.auth.hmac_secret.as_deref(), Some("0123456789abcdef0123"));
    assert_eq!(c.admin.listen.port(), 9000);
}

#[test]
fn errors_name_the_key() {
    let f = write("[engine]\nmax_frame_bytes = \"lots\"\n");
    let e = Config::load(Some(&f.0), &env(&[])).unwrap_err().to_string();
    assert!(e.contains("max_frame_bytes"), "{e}");
    let f = write("[engine]\nmax_fram_bytes = 10\n");
    let e = Config::load(Some(&f.0), &env(&[])).unwrap_err().to_string();
    assert!(e.contains("max_fram_bytes"), "{e}");
    let f = write("[engine\n");
    assert!(matches!(
        Config::load(Some(&f.0), &env(&[])),
        Err(Error::ConfigParse { .. })
    ));
    let e = Config::load(None, &env(&[("SWITCHBOARD_ENGINE__TICK_MS", "0")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("engine.tick_ms"), "{e}");
    let e = Config::load(None, &env(&[("SWITCHBOARD_NOPE__X", "1")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("SWITCHBOARD_NOPE__X"), "{e}");
    let e = Config::load(None, &env(&[("SWITCHBOARD_AUTH__HMAC_SECRET", "short")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("auth.hmac_secret"), "{e}");
    // The keys of the io_uring backend and of channel streams.
    let f = write("[engine]\nio = \"kqueue\"\n");
    let e = Config::load(Some(&f.0), &env(&[])).unwrap_err().to_string();
    assert!(e.contains("io") && e.contains("kqueue"), "{e}");
    for (var, value, key) in [
        ("SWITCHBOARD_ENGINE__IO", "fast", "engine.io"),
        (
            "SWITCHBOARD_ENGINE__URING_BUFFERS",
            "1000",
            "engine.uring_buffers",
        ),
        (
            "SWITCHBOARD_ENGINE__URING_BUFFER_BYTES",
            "100",
            "engine.uring_buffer_bytes",
        ),
        (
            "SWITCHBOARD_ENGINE__URING_COALESCE_US",
            "200000",
            "engine.uring_coalesce_us",
        ),
        (
            "SWITCHBOARD_ENGINE__STREAM_IDLE_MS",
            "0",
            "engine.stream_idle_ms",
        ),
        (
            "SWITCHBOARD_ENGINE__HISTORY_TTL_MS",
            "0",
            "engine.history_ttl_ms",
        ),
        (
            "SWITCHBOARD_ENGINE__DEDUPE_WINDOW_MS",
            "0",
            "engine.dedupe_window_ms",
        ),
        ("SWITCHBOARD_ENGINE__HISTORY_SIZE", "-1", "history_size"),
        // Every section can be set from the environment.
        (
            "SWITCHBOARD_ALERTS__CA_FILE",
            "/nonexistent/ca.pem",
            "alerts.ca_file",
        ),
        (
            "SWITCHBOARD_ALERTS__WEBHOOKS",
            r#"["ftp://relay/x"]"#,
            "alerts.webhooks[0]",
        ),
        (
            "SWITCHBOARD_CALLS__RING_TIMEOUT_MS",
            "0",
            "calls.ring_timeout_ms",
        ),
        (
            "SWITCHBOARD_NOTIFICATIONS__MAX_PER_USER",
            "0",
            "notifications.max_per_user",
        ),
    ] {
        let e = Config::load(None, &env(&[(var, value)]))
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{var}={value}: {e}");
    }
    assert!(matches!(
        Config::load(Some(Path::new("/nonexistent.toml")), &env(&[])),
        Err(Error::ConfigRead { .. })
    ));
    // Notifications and calls.
    for (text, key) in [
        (
            "[notifications]\npublic_topics = [\"news\", \"a b\"]\n",
            "notifications.public_topics[1]",
        ),
        (
            "[notifications]\nmax_per_user = 0\n",
            "notifications.max_per_user",
        ),
        ("[notifications]\nttl_ms = -1\n", "ttl_ms"),
        ("[notifications]\ntopics = []\n", "topics"),
        ("[calls]\nring_timeout_ms = 0\n", "calls.ring_timeout_ms"),
        ("[calls]\ngrace_ms = \"soon\"\n", "grace_ms"),
        ("[calls]\nmax_calls = 1\n", "max_calls"),
        (
            "[[engine.rate_limits]]\nscope = \"user\"\nevent = \"publish\"\nrate = 0\nper_ms = 1000\n",
            "engine.rate_limits[0]",
        ),
        (
            "[[engine.rate_limits]]\nscope = \"user\"\nevent = \"chat\"\nrate = 1\nper_ms = 1000\n",
            "chat",
        ),
        (
            "[[engine.rate_limits]]\nscope = \"room\"\nevent = \"publish\"\nrate = 1\nper_ms = 1000\n",
            "room",
        ),
        ("[engine]\nmax_connection_rate_per_ip = -1\n", "max_connection_rate_per_ip"),
        ("[engine]\nallowed_origins = \"https://a\"\n", "allowed_origins"),
        ("[engine]\nrate_limit_disconnect_after = \"x\"\n", "rate_limit_disconnect_after"),
        ("[engine]\nrate_limit_users = 9999999\n", "engine.rate_limit_users"),
        ("[engine]\nrate_limit_users = -1\n", "rate_limit_users"),
        ("[engine]\nchannel_homes = 2147483648\n", "engine.channel_homes"),
        ("[engine]\nchannel_homes = \"many\"\n", "channel_homes"),
        (
            "[[admin.api_keys]]\nname = \"a\"\nkey = \"short\"\nscopes = [\"read\"]\n",
            "admin.api_keys[0].key",
        ),
        (
            "[[admin.api_keys]]\nname = \"a\"\nkey = \"0123456789abcdef0\"\nscopes = [\"write\"]\n",
            "admin.api_keys[0].scopes",
        ),
        ("[admin]\njwt_secret = \"short\"\n", "admin.jwt_secret"),
        (
            "[auth]\nhmac_secret = \"same-secret-0123456789\"\n[admin]\njwt_secret = \"same-secret-0123456789\"\n",
            "admin.jwt_secret",
        ),
        ("[admin]\nrole = \"\"\n", "admin.role"),
        ("[log]\nformat = \"xml\"\n", "xml"),
        ("[alerts]\ninterval_ms = 0\n", "alerts.interval_ms"),
        ("[alerts]\nwebhooks = [\"hooks.example.com/x\"]\n", "alerts.webhooks[0]"),
        ("[alerts]\nca_file = \"/nonexistent/ca.pem\"\n", "alerts.ca_file"),
        (
            "[[alerts.rules]]\nname = \"x\"\nmetric = \"cpu\"\nabove = 1.0\nlevel = \"warning\"\n",
            "cpu",
        ),
        (
            "[[alerts.rules]]\nname = \"x\"\nmetric = \"connections\"\nabove = 1.0\nlevel = \"loud\"\n",
            "loud",
        ),
    ] {
        let f = write(text);
        let e = Config::load(Some(&f.0), &env(&[])).unwrap_err().to_string();
        assert!(e.contains(key), "{text}: {e}");
    }
}

#[test]
fn store_and_namespaces_load_and_bad_values_name_the_key() {
    let f = write(
        "[store]\npath = \"/var/lib/sb/x.db\"\n[namespaces.ledger]\ndurability = \"sync\"\nhistory_size = 500\n[namespaces.chat]\ndurability = \"async\"\n",
    );
    let c = Config::load(Some(&f.0), &env(&[("SWITCHBOARD_STORE__MAX_BATCH", "128")])).unwrap();
    assert_eq!(c.store.path, PathBuf::from("/var/lib/sb/x.db"));
    assert_eq!(c.store.max_batch, 128);
    let engine = c.engine_config();
    let ledger = engine
        .namespaces
        .iter()
        .find(|n| n.name == "ledger")
        .unwrap();
    assert_eq!(
        (ledger.durability, ledger.history_size),
        (Durability::Sync, 500)
    );
    let chat = engine.namespaces.iter().find(|n| n.name == "chat").unwrap();
    assert_eq!(
        chat.history_size, c.engine.history_size,
        "inherits the engine's"
    );
    for (text, key) in [
        ("[namespaces.x]\ndurability = \"maybe\"\n", "durability"),
        (
            "[namespaces.x]\nhistory_ttl_ms = 0\n",
            "namespaces.x.history_ttl_ms",
        ),
        (
            "[namespaces.x]\ndurability = \"sync\"\nhistory_size = 0\n",
            "namespaces.x.history_size",
        ),
        ("[namespaces.\"a:b\"]\n", "namespaces.a:b"),
        ("[namespaces.x]\nretention = 3\n", "retention"),
        (
            "[namespaces.x]\ndurability = \"sync\"\nretain_ms = 0\n",
            "namespaces.x.retain_ms",
        ),
        (
            "[namespaces.x]\nretain_count = 100\n",
            "namespaces.x.retain_count",
        ),
        ("[namespaces.x]\nretain_count = -1\n", "retain_count"),
        ("[inbox]\nretain_ms = 0\n", "inbox.retain_ms"),
        ("[namespaces.x]\nedits = \"yes\"\n", "edits"),
        (
            "[namespaces.x]\nmoderate = [{ channel = \"x:{team\" }]\n",
            "namespaces.x.moderate[0].channel",
        ),
        ("[inbox]\ndurability = \"none\"\n", "inbox.durability"),
        (
            "[namespaces.case]\nsubscribe = [{ role = \"a\" }, { channel = \"case:{team\" }]\n",
            "namespaces.case.subscribe[1].channel",
        ),
        (
            "[engine]\npersonal_namespace = \"a:b\"\n",
            "engine.personal_namespace",
        ),
        (
            "[engine]\nuser_presence_namespace = \"a:b\"\n",
            "engine.user_presence_namespace",
        ),
        (
            "[namespaces.x]\npresence_events = \"yes\"\n",
            "presence_events",
        ),
        ("[namespaces.x]\npublish = [{ role = 3 }]\n", "publish"),
        ("[inbox]\nnamespace = \"a:b\"\n", "inbox.namespace"),
        ("[inbox]\nhistory_size = 0\n", "inbox.history_size"),
        (
            "[namespaces.inbox]\ndurability = \"sync\"\n",
            "namespaces.inbox",
        ),
        ("[store]\nmax_backlog = 0\n", "store.max_backlog"),
        ("[store]\narchive_after_ms = 0\n", "store.archive_after_ms"),
        ("[store]\npath = \"\"\n", "store.path"),
        ("[store]\nbackend = \"mysql\"\n", "backend"),
        ("[ai]\nlanguages = [\"en\", \"xx-yy\"]\n", "ai.languages[1]"),
        (
            "[[ai.entities]]\nkind = \"case\"\npattern = \"(\"\n",
            "ai.entities[0].pattern",
        ),
        (
            "[[ai.intents]]\nintent = \"help\"\nkeywords = []\n",
            "ai.intents[0].keywords",
        ),
        ("[ai]\nmodel = \"gpt\"\n", "model"),
        (
            "[store]\nbackend = \"postgres\"\npostgres_url = \"postgres://u@h/db\"\n\
             [cluster]\nredis_url = \"redis://127.0.0.1:6379\"\n",
            "cluster.node_id",
        ),
        ("[store]\nbackend = \"postgres\"\n", "store.postgres_url"),
        (
            "[store]\nbackend = \"postgres\"\npostgres_url = \"mysql://x:secret@h/db\"\n",
            "store.postgres_url",
        ),
    ] {
        let f = write(text);
        let e = Config::load(Some(&f.0), &env(&[])).unwrap_err().to_string();
        assert!(e.contains(key), "{text}: {e}");
        assert!(
            !e.contains("secret"),
            "a URL's password is never shown: {e}"
        );
    }
}

#[test]
fn memory_limits_load_and_bad_values_name_the_key() {
    let c = Config::load(
        None,
        &env(&[
            ("SWITCHBOARD_ENGINE__MAX_STREAMS", "5000"),
            ("SWITCHBOARD_INBOX__MAX_BYTES", "0"),
        ]),
    )
    .unwrap();
    assert_eq!(c.engine.max_streams, 5000);
    let inbox = c.engine_config();
    let inbox = inbox.namespaces.iter().find(|n| n.name == "inbox").unwrap();
    assert_eq!(inbox.max_channel_bytes, 0, "0 turns the limit off");
    for (text, key) in [
        ("[inbox]\nmax_bytes = 1000\n", "inbox.max_bytes"),
        ("[inbox]\nmax_bytes = -1\n", "max_bytes"),
        ("[inbox]\nmax_bytes = \"big\"\n", "max_bytes"),
        ("[engine]\nmax_streams = -5\n", "max_streams"),
        (
            "[namespaces.chat]\nmax_channel_bytes = 10\n",
            "namespaces.chat.max_channel_bytes",
        ),
        (
            "[namespaces.chat]\nmax_chanel_bytes = 10\n",
            "max_chanel_bytes",
        ),
    ] {
        let f = write(text);
        let e = Config::load(Some(&f.0), &env(&[])).unwrap_err().to_string();
        assert!(e.contains(key), "{text}: {e}");
    }
}

#[test]
fn socketio_keys_are_checked_and_named() {
    let f = write(
        "[socketio]\nping_interval_ms = 300\nrecovery_ms = 120000\n[socketio.namespaces.\"/chat\"]\nanonymous = true\nevents_url = \"http://127.0.0.1:9/e\"\n",
    );
    let c = Config::load(Some(&f.0), &env(&[])).unwrap();
    assert_eq!(c.socketio.ping_interval_ms, 300);
    assert_eq!(c.socketio.recovery_ms, 120_000);
    assert!(c.socketio.namespaces["/chat"].anonymous);
    assert!(
        c.socketio.namespaces.contains_key("/"),
        "the main namespace stays"
    );
    assert_eq!(c.engine_config().socketio, c.socketio, "the engine gets it");
    for (text, key) in [
        ("[socketio]\npath = \"socket.io\"\n", "socketio.path"),
        (
            "[socketio]\nping_timeout_ms = 0\n",
            "socketio.ping_timeout_ms",
        ),
        (
            "[socketio]\nmax_payload_bytes = 10\n",
            "socketio.max_payload_bytes",
        ),
        ("[socketio]\npong_ms = 10\n", "pong_ms"),
        (
            "[socketio]\nrecovery_ms = 100000000\n",
            "socketio.recovery_ms",
        ),
        (
            "[socketio.namespaces.\"/a\"]\nevents_url = \"ftp://x\"\n",
            "socketio.namespaces.\"/a\".events_url",
        ),
        (
            "[socketio.namespaces.\"/a\"]\nhook_concurrency = 0\n",
            "socketio.namespaces.\"/a\".hook_concurrency",
        ),
        ("[socketio.namespaces.\"a\"]\n", "socketio.namespaces.\"a\""),
        (
            "[socketio.namespaces.\"/a\"]\nanonymus = true\n",
            "anonymus",
        ),
    ] {
        let f = write(text);
        let e = Config::load(Some(&f.0), &env(&[])).unwrap_err().to_string();
        assert!(e.contains(key), "{text}: {e}");
    }
    let e = Config::load(
        None,
        &env(&[("SWITCHBOARD_SOCKETIO__PING_TIMEOUT_MS", "1")]),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("socketio.ping_timeout_ms"), "{e}");
}

#[test]
fn cluster_keys_are_checked_and_named() {
    let f = write("[cluster]\nredis_url = \"redis://127.0.0.1:6390\"\nnode_id = \"n-1\"\n");
    let c = Config::load(Some(&f.0), &env(&[])).unwrap();
    assert!(c.cluster.enabled());
    assert_eq!(c.cluster.node_id, "n-1");
    assert!(
        !Config::default().cluster.enabled(),
        "a node alone by default"
    );
    for (text, key) in [
        ("[cluster]\nredis_url = \"http://x\"\n", "cluster.redis_url"),
        ("[cluster]\nnode_id = \"a b\"\n", "cluster.node_id"),
        ("[cluster]\nkey_prefix = \"\"\n", "cluster.key_prefix"),
        ("[cluster]\nheartbeat_ms = 10\n", "cluster.heartbeat_ms"),
        (
            "[cluster]\nheartbeat_ms = 1000\nnode_ttl_ms = 1500\n",
            "cluster.node_ttl_ms",
        ),
        ("[cluster]\nredis = \"x\"\n", "redis"),
        (
            "[cluster]\nsentinels = [\"127.0.0.1\"]\n",
            "cluster.sentinels[0]",
        ),
        (
            "[cluster]\nsentinels = [\"127.0.0.1:26379\"]\nsentinel_master = \"\"\n",
            "cluster.sentinel_master",
        ),
        (
            "[cluster]\nredis_cluster = [\"127.0.0.1:7000\", \"nohost\"]\n",
            "cluster.redis_cluster[1]",
        ),
        (
            "[cluster]\nredis_cluster = [\"127.0.0.1:7000\"]\nsentinels = [\"127.0.0.1:26379\"]\n",
            "cluster.redis_cluster",
        ),
        (
            "[cluster]\nredis_url = \"redis://127.0.0.1\"\nsync_replicas = 1\nsync_timeout_ms = 0\n",
            "cluster.sync_timeout_ms",
        ),
        ("[cluster]\nqueue_batches = 1\n", "cluster.queue_batches"),
        ("[cluster]\nsync_replicas = -1\n", "sync_replicas"),
    ] {
        let f = write(text);
        let e = Config::load(Some(&f.0), &env(&[])).unwrap_err().to_string();
        assert!(e.contains(key), "{text}: {e}");
    }
    let e = Config::load(None, &env(&[("SWITCHBOARD_CLUSTER__REDIS_URL", "nope://")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("cluster.redis_url"), "{e}");
}
