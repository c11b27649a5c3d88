//! `/metrics` is valid Prometheus text: scraped after real traffic and parsed by a
//! strict reader of the exposition format (every sample's family declared once with a
//! type, label syntax, no duplicate series, cumulative histogram buckets ending in a
//! `+Inf` equal to `_count`, counters named `_total` and never negative), with bounded
//! label names (no per-user labels) and the families operators alert on present.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use serde_json::json;

#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (name, after) = rest
            .split_once("=\"")
            .ok_or(format!("label without value: {s}"))?;
        let valid_name = name
            .chars()
            .enumerate()
            .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
        if name.is_empty() || !valid_name {
            return Err(format!("bad label name {name:?}"));
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => return Err(format!("bad escape {other:?} in {s}")),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => return Err(format!("unterminated label value in {s}")),
            }
        };
        if out.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} twice in {s}"));
        }
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    Ok(out)
}

/// Parse the exposition; every rule broken is an error naming the line.
fn parse(text: &str) -> Result<(BTreeMap<String, String>, Vec<Sample>), String> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    let mut series = BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or_else(|| at("bad TYPE".into()))?;
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(at(format!("unknown type {kind}")));
            }
            if types.insert(name.to_string(), kind.to_string()).is_some() {
                return Err(at(format!("{name} declared twice")));
            }
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with('#') {
            continue;
        }
        let (head, value) = line.rsplit_once(' ').ok_or_else(|| at("no value".into()))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| at(format!("bad value {v}")))?,
        };
        let (name, labels) = match head.split_once('{') {
            Some((name, l)) => {
                let l = l
                    .strip_suffix('}')
                    .ok_or_else(|| at("unclosed labels".into()))?;
                (name, parse_labels(l).map_err(at)?)
            }
            None => (head, BTreeMap::new()),
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        let kind = types
            .get(family)
            .ok_or_else(|| at(format!("{family} has no TYPE before it")))?;
        if kind == "counter" && (!name.ends_with("_total") || value < 0.0) {
            return Err(at(
                "a counter must be named _total and not be negative".into()
            ));
        }
        if !series.insert(format!("{name}{labels:?}")) {
            return Err(at("duplicate series".into()));
        }
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    // Histograms: cumulative buckets, +Inf last and equal to _count.
    for (family, kind) in &types {
        if kind != "histogram" {
            continue;
        }
        let mut by_series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        let mut counts: BTreeMap<String, f64> = BTreeMap::new();
        for s in &samples {
            let mut key = s.labels.clone();
            let le = key.remove("le");
            let key = format!("{key:?}");
            if s.name == format!("{family}_bucket") {
                let le = le.ok_or(format!("{family} bucket without le"))?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().map_err(|_| format!("bad le {le}"))?
                };
                by_series.entry(key).or_default().push((le, s.value));
            } else if s.name == format!("{family}_count") {
                counts.insert(key, s.value);
            }
        }
        for (key, buckets) in by_series {
            let ordered = buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1);
            let last = buckets.last().unwrap();
            if !ordered || last.0 != f64::INFINITY || Some(&last.1) != counts.get(&key) {
                return Err(format!(
                    "{family}{key}: buckets not cumulative or +Inf != count"
                ));
            }
        }
    }
    Ok((types, samples))
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_valid_prometheus_text_with_bounded_labels() {
    let server = start(|_| {});
    let (addr, admin) = (server.ws_addr(), server.admin_addr());
    let mut clients = Vec::new();
    for i in 0..4 {
        let mut c = Client::connect(addr, Fmt::Json, &token(&format!("user-{i}"), None)).await;
        c.call(json!({"cmd": "subscribe", "channel": "room:1"}))
            .await;
        for _ in 0..70 {
            c.call(json!({"cmd": "publish", "channel": "room:1", "data": i}))
                .await;
        }
        c.call(json!({"cmd": "nope"})).await;
        c.call(json!({"cmd": "unsubscribe", "channel": "room:2"}))
            .await;
        clients.push(c);
    }
    let _anonymous = Client::open(addr, Fmt::Json).await;
    let (status, text) = http(admin, "GET", "/metrics", &[], "").await;
    assert_eq!(status, 200);
    let (types, samples) = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));

    // Bounded label names: shards, reasons, commands, codes, events, buckets.
    let allowed = [
        "shard", "reason", "event", "result", "command", "code", "le", "version", "backend",
        "shards", "breaker", "state",
    ];
    for s in &samples {
        for k in s.labels.keys() {
            assert!(
                allowed.contains(&k.as_str()),
                "unexpected label {k} on {}",
                s.name
            );
        }
        for v in s.labels.values() {
            assert!(
                !v.starts_with("user-"),
                "a per-user label value on {}",
                s.name
            );
        }
    }
    for family in [
        "switchboard_connections",
        "switchboard_connections_authenticated",
        "switchboard_commands_total",
        "switchboard_command_results_total",
        "switchboard_command_errors_total",
        "switchboard_command_duration_seconds",
        "switchboard_deliveries_total",
        "switchboard_closes_total",
        "switchboard_rate_limited_total",
        "switchboard_publish_to_flush_seconds",
        "switchboard_store_up",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "switchboard_shard_inbox_depth",
        "switchboard_breaker_open",
    ] {
        assert!(types.contains_key(family), "{family} missing");
    }
    assert_eq!(
        value(&samples, "switchboard_connections_authenticated", &[]),
        4.0
    );
    assert_eq!(value(&samples, "switchboard_connections", &[]), 5.0);
    assert_eq!(
        value(
            &samples,
            "switchboard_connections_by_state",
            &[("state", "open")]
        ),
        4.0
    );
    assert_eq!(
        value(
            &samples,
            "switchboard_connections_by_state",
            &[("state", "awaiting_connect")]
        ),
        1.0
    );
    assert!(types.contains_key("switchboard_outbound_queued_bytes"));
    assert!(types.contains_key("switchboard_outbound_max_queued_bytes"));
    assert_eq!(
        value(
            &samples,
            "switchboard_commands_total",
            &[("command", "publish")]
        ),
        280.0
    );
    assert_eq!(
        value(
            &samples,
            "switchboard_commands_total",
            &[("command", "invalid")]
        ),
        4.0
    );
    assert_eq!(
        value(
            &samples,
            "switchboard_command_errors_total",
            &[("code", "104")]
        ),
        4.0
    );
    // Every command was answered: results by command and result add up to the commands.
    let results = [
        ("connect", "ok", 4.0),
        ("subscribe", "ok", 4.0),
        ("publish", "ok", 280.0),
        ("invalid", "rejected", 4.0),
        ("unsubscribe", "rejected", 4.0),
    ];
    for (command, result, n) in results {
        assert_eq!(
            value(
                &samples,
                "switchboard_command_results_total",
                &[("command", command), ("result", result)]
            ),
            n,
            "{command} {result}"
        );
    }
    assert_eq!(
        value(&samples, "switchboard_command_results_total", &[]),
        value(&samples, "switchboard_commands_total", &[])
    );
    assert_eq!(
        value(
            &samples,
            "switchboard_command_errors_total",
            &[("code", "107")]
        ),
        4.0
    );
    // 4 connects + 4 subscribes + 280 publishes + 4 invalid + 4 unsubscribes = 296: at
    // least 4 sampled (1 in 64).
    assert!(value(&samples, "switchboard_command_duration_seconds_count", &[]) >= 4.0);
    assert!(value(&samples, "process_resident_memory_bytes", &[]) > 1e6);
    assert!(value(&samples, "process_cpu_seconds_total", &[]) > 0.0);
    drop(clients);
    server.shutdown();
    server.wait();
}

#[test]
fn the_reader_refuses_what_prometheus_would() {
    for bad in [
        "x 1\n",
        "# TYPE x counter\nx 1\n",
        "# TYPE x_total counter\nx_total -1\n",
        "# TYPE g gauge\ng{a=\"1} 2\n",
        "# TYPE g gauge\ng{1a=\"1\"} 2\n",
        "# TYPE g gauge\ng 1\ng 2\n",
        "# TYPE g gauge\n# TYPE g gauge\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_count 3\n",
        "# TYPE g gauge\ng one\n",
    ] {
        assert!(parse(bad).is_err(), "accepted: {bad}");
    }
    let good = "# HELP g A gauge.\n# TYPE g gauge\ng{a=\"x\\\"y\"} 1.5\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n";
    parse(good).unwrap();
}

/// The metric names a deploy file refers to (`switchboard_…`, `process_…`).
fn referenced_metrics(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for start in ["switchboard_", "process_"] {
        let mut rest = text;
        while let Some(i) = rest.find(start) {
            let before = rest[..i].chars().next_back();
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                out.insert(tail[..end].to_string());
            }
            rest = &tail[end..];
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_files_name_real_metrics_and_a_valid_config() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let alerts = std::fs::read_to_string(root.join("prometheus/alerts.yml")).unwrap();
    let dashboard = std::fs::read_to_string(root.join("grafana/switchboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard JSON");
    assert!(!dash["panels"].as_array().unwrap().is_empty());
    let server = start(|_| {});
    let (_, text) = http(server.admin_addr(), "GET", "/metrics", &[], "").await;
    let (types, _) = parse(&text).unwrap();
    let served = |name: &str| {
        types.contains_key(name)
            || ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| name.strip_suffix(s).is_some_and(|f| types.contains_key(f)))
    };
    let names: BTreeSet<String> = referenced_metrics(&alerts)
        .into_iter()
        .chain(referenced_metrics(&dashboard))
        .collect();
    assert!(names.len() >= 12, "{names:?}");
    for name in &names {
        assert!(
            served(name),
            "deploy files name {name}, which /metrics does not serve"
        );
    }
    // Every alert has a severity of the four levels.
    let severities: Vec<&str> = alerts
        .lines()
        .filter_map(|l| l.trim().strip_prefix("severity: "))
        .collect();
    assert_eq!(severities.len(), alerts.matches("- alert:").count());
    for s in severities {
        assert!(
            ["info", "warning", "critical", "emergency"].contains(&s),
            "{s}"
        );
    }
    // The Kubernetes ConfigMap holds a configuration Switchboard accepts.
    let k8s = std::fs::read_to_string(root.join("kubernetes/switchboard.yaml")).unwrap();
    let block = k8s
        .split("switchboard.toml: |\n")
        .nth(1)
        .unwrap()
        .split("\n---")
        .next()
        .unwrap();
    let toml: String = block
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let path = std::env::temp_dir().join(format!("sb-k8s-{}.toml", std::process::id()));
    std::fs::write(&path, toml).unwrap();
    // What the pod adds: the Secret's variables and its own name as the node id.
    let mut env: Vec<(String, String)> = k8s
        .lines()
        .filter_map(|l| {
            let (k, v) = l.trim().split_once(": ")?;
            k.starts_with("SWITCHBOARD_")
                .then(|| (k.to_string(), v.trim_matches('"').to_string()))
        })
        .collect();
    env.push((
        "SWITCHBOARD_CLUSTER__NODE_ID".into(),
        "switchboard-0".into(),
    ));
    let loaded = switchboard_control_plane::Config::load(Some(&path), &env);
    let _ = std::fs::remove_file(&path);
    let cfg = loaded.expect("the Kubernetes config loads");
    assert_eq!(cfg.admin.listen.port(), 7401);
    assert_eq!(cfg.engine.allowed_origins, ["https://app.example.com"]);
    assert!(cfg.cluster.enabled(), "pods share Redis");
    assert_eq!(
        cfg.store.backend,
        switchboard_control_plane::store::Backend::Postgres,
        "and PostgreSQL: no per-pod store"
    );
    assert!(!k8s.contains("emptyDir"));
    // The compose file's nodes: tuning/cluster.toml with their environment.
    let compose = std::fs::read_to_string(root.join("compose.yaml")).unwrap();
    let mut env: Vec<(String, String)> = compose
        .lines()
        .filter_map(|l| {
            let (k, v) = l.trim().split_once(": ")?;
            k.starts_with("SWITCHBOARD_")
                .then(|| (k.to_string(), v.to_string()))
        })
        .filter(|(k, _)| !k.starts_with("SWITCHBOARD_CLUSTER__NODE_ID"))
        .collect();
    env.push(("SWITCHBOARD_CLUSTER__NODE_ID".into(), "node-a".into()));
    let cluster_profile = root.join("../tuning/cluster.toml");
    let cfg = switchboard_control_plane::Config::load(Some(&cluster_profile), &env)
        .expect("the compose nodes' configuration loads");
    assert_eq!(cfg.cluster.redis_url, "redis://redis:6379");
    assert_eq!(
        cfg.store.backend,
        switchboard_control_plane::store::Backend::Postgres
    );
    server.shutdown();
    server.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_snapshot_agrees_with_the_text_and_reads_one_family() {
    let server = start(|_| {});
    let admin = server.admin_addr();
    let _c = Client::connect(server.ws_addr(), Fmt::Json, &token("snap", None)).await;
    let (status, v) = api(admin, "GET", "/metrics/snapshot", &json!(null)).await;
    assert_eq!(status, 200, "{v}");
    assert!(v["at_ms"].as_u64().unwrap() > 0);
    let conns = &v["metrics"]["switchboard_connections"];
    assert_eq!(conns["type"], "gauge", "{conns}");
    let open: f64 = conns["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["value"].as_f64().unwrap())
        .sum();
    assert!(open >= 1.0, "{conns}");
    assert!(v["metrics"].as_object().unwrap().len() > 20);
    let (status, one) = api(
        admin,
        "GET",
        "/metrics/snapshot/switchboard_connections",
        &json!(null),
    )
    .await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["name"], "switchboard_connections");
    assert_eq!(one["samples"][0]["labels"]["shard"], "0", "{one}");
    let (status, err) = api(
        admin,
        "GET",
        "/metrics/snapshot/no_such_metric",
        &json!(null),
    )
    .await;
    assert_eq!(status, 404);
    assert!(err["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no_such_metric"));
    server.shutdown();
    server.wait();
}

/// Run deploy/nagios/check_switchboard against `port` (off the runtime: it blocks).
async fn nagios(port: u16, extra: &[&str]) -> (i32, String) {
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/nagios/check_switchboard");
        let out = std::process::Command::new(script)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .args(extra)
            .output()
            .expect("bash and curl");
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nagios_check_reads_health_ready() {
    let secret = "nagios-admin-secret-0123456789";
    let server = start(|c| c.admin.jwt_secret = Some(secret.into()));
    let port = server.admin_addr().port();
    let _c = Client::connect(server.ws_addr(), Fmt::Json, &token("n", None)).await;
    let (code, out) = nagios(port, &[]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("SWITCHBOARD OK - ready, 1 connections"),
        "{out}"
    );
    assert!(out.contains("| connections=1;"), "{out}");
    let (code, out) = nagios(port, &["-w", "1", "-c", "5"]).await;
    assert_eq!(code, 1, "{out}");
    let (code, out) = nagios(port, &["-c", "1"]).await;
    assert_eq!(code, 2, "{out}");
    // Maintenance: not ready, critical.
    let body = r#"{"on": true, "message": "upgrade"}"#;
    let admin = server.admin_addr();
    let (status, _) = admin_request(admin, secret, "POST", "/admin/maintenance", body).await;
    assert_eq!(status, 200);
    let (code, out) = nagios(port, &[]).await;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("maintenance (HTTP 503)"), "{out}");
    server.shutdown();
    server.wait();
    let (code, out) = nagios(port, &["-t", "2"]).await;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("no answer"), "{out}");
}
