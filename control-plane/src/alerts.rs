//! Alerts evaluated inside the server: threshold rules on its own metrics, with levels,
//! a `for` duration, automatic resolve, a bounded history, and delivery to webhooks in
//! Slack's incoming-webhook format (`{"text": …}`).
//!
//! Owns the rules' state and one thread that samples the shards' counters every
//! `alerts.interval_ms`, turns counters into rates and histograms into p99 over that
//! interval, and moves each rule: inactive → pending (above its threshold) → firing
//! (above for `for_ms`) → resolved (back below; a resolved notice is sent). Webhooks
//! are POSTed with `ureq` over `http://` or `https://` (rustls; Mozilla's roots, or only
//! the certificates of `alerts.ca_file`), 5 s timeout, no redirects; repeated failures
//! open the `webhooks` breaker for a minute (listed by `/admin/breakers`). Webhook URLs
//! are secrets (Slack's carry a token in the path): logs name only scheme and host.
//!
//! Does not own the metrics (the shards count) or Prometheus alerting (`deploy/`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use switchboard_engine::metrics::LATENCY_BUCKETS_US;
use switchboard_engine::EngineHandle;

use crate::clock::now_ms;
use crate::store::StoreView;
use crate::worker::WorkerHandle;
use ureq::tls::Certificate;

/// What a rule watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertMetric {
    /// p99 command handling time over the interval, seconds.
    CommandP99Seconds,
    /// p99 publish-to-delivery time over the interval, seconds.
    DeliveryP99Seconds,
    /// Error replies / commands over the interval (rate-limit and subscription-state
    /// answers, 106, 107 and 114, are not errors of the server).
    ErrorRate,
    /// Resident memory of the process, bytes.
    MemoryBytes,
    /// Connections held.
    Connections,
    /// 1 while the store cannot write.
    StoreDown,
    /// Slow-consumer disconnects per second over the interval.
    SlowConsumersPerSecond,
    /// Rate-limit refusals per second over the interval.
    RateLimitedPerSecond,
}

/// How loud.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// For the record.
    Info,
    /// Look soon.
    Warning,
    /// Act now.
    Critical,
    /// Everyone, now.
    Emergency,
}

/// `[[alerts.rules]]`: fire when `metric` is above `above` for `for_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    /// Its name (in notices and the API).
    pub name: String,
    /// What it watches.
    pub metric: AlertMetric,
    /// The threshold.
    pub above: f64,
    /// How long it must stay above before firing (0: at the first sample).
    #[serde(default)]
    pub for_ms: u64,
    /// How loud.
    pub level: Level,
}

/// `[alerts]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    /// Evaluate the rules this often.
    pub interval_ms: u64,
    /// Where firing and resolved notices are POSTed (`https://host/path` or
    /// `http://host:port/path`).
    pub webhooks: Vec<String>,
    /// PEM file of the certificates to trust for `https://` webhooks instead of the
    /// built-in Mozilla roots (a private CA or a self-signed relay).
    pub ca_file: Option<String>,
    /// Notices kept for `GET /admin/alerts`.
    pub history_size: usize,
    /// The rules (defaults: the old servers' thresholds).
    pub rules: Vec<AlertRule>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        let rule = |name: &str, metric, above, for_ms, level| AlertRule {
            name: name.into(),
            metric,
            above,
            for_ms,
            level,
        };
        AlertsConfig {
            interval_ms: 10_000,
            webhooks: Vec::new(),
            ca_file: None,
            history_size: 500,
            rules: vec![
                rule(
                    "slow responses",
                    AlertMetric::CommandP99Seconds,
                    1.0,
                    60_000,
                    Level::Warning,
                ),
                rule(
                    "slow delivery",
                    AlertMetric::DeliveryP99Seconds,
                    1.0,
                    60_000,
                    Level::Critical,
                ),
                rule(
                    "error rate",
                    AlertMetric::ErrorRate,
                    0.05,
                    60_000,
                    Level::Warning,
                ),
                rule(
                    "memory",
                    AlertMetric::MemoryBytes,
                    8e9,
                    60_000,
                    Level::Critical,
                ),
                rule(
                    "connections",
                    AlertMetric::Connections,
                    18_000.0,
                    60_000,
                    Level::Warning,
                ),
                rule(
                    "store down",
                    AlertMetric::StoreDown,
                    0.0,
                    0,
                    Level::Critical,
                ),
            ],
        }
    }
}

impl AlertsConfig {
    /// The first problem, naming the key.
    pub fn problem(&self) -> Option<String> {
        if self.interval_ms == 0 || self.history_size == 0 {
            return Some(
                "alerts.interval_ms and alerts.history_size must be greater than 0".into(),
            );
        }
        for (i, w) in self.webhooks.iter().enumerate() {
            if webhook_host(w).is_none() {
                return Some(format!(
                    "alerts.webhooks[{i}]: expected an http:// or https:// URL with a host"
                ));
            }
        }
        if let Err(e) = self.trusted() {
            return Some(e);
        }
        for (i, r) in self.rules.iter().enumerate() {
            if r.name.is_empty() || !r.above.is_finite() {
                return Some(format!(
                    "alerts.rules[{i}]: a name and a finite 'above' are required"
                ));
            }
        }
        None
    }
}

/// One notice: a rule started firing or resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notice {
    /// The rule.
    pub rule: String,
    /// Its level.
    pub level: Level,
    /// `firing` or `resolved`.
    pub state: &'static str,
    /// The value that decided it.
    pub value: f64,
    /// The threshold.
    pub above: f64,
    /// When, Unix milliseconds.
    pub at: u64,
}

/// An alert firing now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Active {
    /// The rule.
    pub rule: String,
    /// Its level.
    pub level: Level,
    /// The last value.
    pub value: f64,
    /// Firing since, Unix milliseconds.
    pub since: u64,
}

/// What the API shows and the webhook breaker.
#[derive(Debug, Default)]
pub struct AlertsView {
    state: Mutex<(Vec<Active>, VecDeque<Notice>)>,
    /// Webhook deliveries that failed.
    pub webhook_failures: AtomicU64,
    /// Webhook deliveries that worked.
    pub webhook_sent: AtomicU64,
    /// The webhook breaker is open (deliveries skipped).
    pub webhook_open: AtomicBool,
}

impl AlertsView {
    /// Alerts firing now, and the notices, newest first.
    pub fn snapshot(&self) -> (Vec<Active>, Vec<Notice>) {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (s.0.clone(), s.1.iter().rev().cloned().collect())
    }
}

/// Start the evaluator thread.
pub fn spawn(
    cfg: AlertsConfig,
    engine: Arc<EngineHandle>,
    store: Option<StoreView>,
) -> std::io::Result<(Arc<AlertsView>, WorkerHandle)> {
    let agent = webhook_agent(&cfg).map_err(std::io::Error::other)?;
    let view = Arc::new(AlertsView::default());
    let shared = view.clone();
    let handle = WorkerHandle::spawn("alerts", move |stop| {
        let mut e = Evaluator {
            cfg,
            agent,
            engine,
            store,
            view: shared,
            last: None,
            rules: Vec::new(),
            failures_in_a_row: 0,
            open_until: None,
        };
        e.rules = e.cfg.rules.iter().map(|_| RuleState::default()).collect();
        let tick = Duration::from_millis(e.cfg.interval_ms);
        let mut next = Instant::now() + tick;
        while !stop.load(Relaxed) {
            std::thread::sleep(Duration::from_millis(50).min(tick));
            if Instant::now() >= next {
                e.evaluate();
                next = Instant::now() + tick;
            }
        }
    })?;
    Ok((view, handle))
}

#[derive(Debug, Default, Clone)]
struct RuleState {
    above_since: Option<u64>,
    firing_since: Option<u64>,
}

/// Counters summed over the shards at one sample.
#[derive(Debug, Clone, Default)]
struct Sample {
    at: Option<Instant>,
    commands: u64,
    errors: u64,
    slow: u64,
    limited: u64,
    command_buckets: [u64; 15],
    delivery_buckets: [u64; 15],
}

struct Evaluator {
    cfg: AlertsConfig,
    agent: ureq::Agent,
    engine: Arc<EngineHandle>,
    store: Option<StoreView>,
    view: Arc<AlertsView>,
    last: Option<Sample>,
    rules: Vec<RuleState>,
    failures_in_a_row: u32,
    open_until: Option<Instant>,
}

fn p99(now: &[u64; 15], before: &[u64; 15]) -> f64 {
    let counts: Vec<u64> = now
        .iter()
        .zip(before)
        .map(|(a, b)| a.saturating_sub(*b))
        .collect();
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let want = (total as f64 * 0.99).ceil() as u64;
    let mut seen = 0;
    for (i, c) in counts.iter().enumerate() {
        seen += c;
        if seen >= want {
            // The bucket's upper bound; past the last bound, twice it.
            let us = LATENCY_BUCKETS_US
                .get(i)
                .copied()
                .unwrap_or(LATENCY_BUCKETS_US[LATENCY_BUCKETS_US.len() - 1] * 2);
            return us as f64 / 1e6;
        }
    }
    0.0
}

impl Evaluator {
    fn sample(&self) -> Sample {
        let mut s = Sample {
            at: Some(Instant::now()),
            ..Default::default()
        };
        for m in self.engine.metrics() {
            s.commands += m.commands.iter().map(|c| c.load(Relaxed)).sum::<u64>();
            s.errors += m
                .command_errors
                .iter()
                .enumerate()
                .filter(|(i, _)| ![6, 7, 14].contains(i))
                .map(|(_, c)| c.load(Relaxed))
                .sum::<u64>();
            s.slow += m.closes[switchboard_engine::CloseKind::SlowConsumer as usize].load(Relaxed);
            s.limited += m.rate_limited.iter().map(|c| c.load(Relaxed)).sum::<u64>();
            for i in 0..15 {
                s.command_buckets[i] += m.command_latency_buckets[i].load(Relaxed);
                s.delivery_buckets[i] += m.latency_buckets[i].load(Relaxed);
            }
        }
        s
    }
}

/// A rule's metric between two samples.
fn value(
    engine: &EngineHandle,
    store: Option<&StoreView>,
    metric: AlertMetric,
    now: &Sample,
    before: &Sample,
) -> f64 {
    {
        let secs = match (now.at, before.at) {
            (Some(a), Some(b)) => a.saturating_duration_since(b).as_secs_f64().max(1e-3),
            _ => 1.0,
        };
        match metric {
            AlertMetric::CommandP99Seconds => p99(&now.command_buckets, &before.command_buckets),
            AlertMetric::DeliveryP99Seconds => p99(&now.delivery_buckets, &before.delivery_buckets),
            AlertMetric::ErrorRate => {
                let commands = now.commands.saturating_sub(before.commands);
                let errors = now.errors.saturating_sub(before.errors);
                if commands == 0 {
                    0.0
                } else {
                    errors as f64 / commands as f64
                }
            }
            AlertMetric::MemoryBytes => crate::process::resident_bytes().unwrap_or(0.0),
            AlertMetric::Connections => engine.connections() as f64,
            AlertMetric::StoreDown => {
                f64::from(u8::from(store.is_some_and(|s| !s.state.healthy())))
            }
            AlertMetric::SlowConsumersPerSecond => {
                now.slow.saturating_sub(before.slow) as f64 / secs
            }
            AlertMetric::RateLimitedPerSecond => {
                now.limited.saturating_sub(before.limited) as f64 / secs
            }
        }
    }
}

impl Evaluator {
    fn evaluate(&mut self) {
        let now = self.sample();
        let before = self.last.replace(now.clone()).unwrap_or_default();
        let at = now_ms();
        let mut notices = Vec::new();
        let mut active = Vec::new();
        for (rule, state) in self.cfg.rules.iter().zip(self.rules.iter_mut()) {
            let v = value(
                &self.engine,
                self.store.as_ref(),
                rule.metric,
                &now,
                &before,
            );
            if v > rule.above {
                let since = *state.above_since.get_or_insert(at);
                if state.firing_since.is_none() && at.saturating_sub(since) >= rule.for_ms {
                    state.firing_since = Some(at);
                    notices.push(notice(rule, "firing", v, at));
                }
            } else {
                state.above_since = None;
                if state.firing_since.take().is_some() {
                    notices.push(notice(rule, "resolved", v, at));
                }
            }
            if let Some(since) = state.firing_since {
                active.push(Active {
                    rule: rule.name.clone(),
                    level: rule.level,
                    value: v,
                    since,
                });
            }
        }
        {
            let mut s = self.view.state.lock().unwrap_or_else(|e| e.into_inner());
            s.0 = active;
            for n in &notices {
                s.1.push_back(n.clone());
                while s.1.len() > self.cfg.history_size {
                    s.1.pop_front();
                }
            }
        }
        for n in notices {
            tracing::warn!(
                target: "alerts",
                rule = %n.rule,
                level = ?n.level,
                state = n.state,
                value = n.value,
                above = n.above,
                "alert"
            );
            self.deliver(&n);
        }
    }

    /// POST the notice to every webhook, unless the breaker is open.
    fn deliver(&mut self, n: &Notice) {
        if self.cfg.webhooks.is_empty() {
            return;
        }
        // Open: skip, unless an operator reset the breaker (`/admin/breakers`).
        let reset = !self.view.webhook_open.load(Relaxed);
        if self.open_until.is_some_and(|t| Instant::now() < t) && !reset {
            return;
        }
        if self.open_until.take().is_some() {
            self.failures_in_a_row = 0;
        }
        self.view.webhook_open.store(false, Relaxed);
        let text = format!(
            "[{}] {} {}: {} = {} (threshold {})",
            serde_json::to_value(n.level)
                .ok()
                .and_then(|v| v.as_str().map(str::to_uppercase))
                .unwrap_or_default(),
            n.rule,
            n.state,
            n.rule,
            n.value,
            n.above
        );
        let body = serde_json::json!({ "text": text, "alert": n }).to_string();
        for url in &self.cfg.webhooks {
            match post(&self.agent, url, &body) {
                Ok(()) => {
                    self.failures_in_a_row = 0;
                    self.view.webhook_sent.fetch_add(1, Relaxed);
                }
                Err(e) => {
                    self.failures_in_a_row += 1;
                    self.view.webhook_failures.fetch_add(1, Relaxed);
                    let host = webhook_host(url).unwrap_or_default();
                    tracing::warn!(target: "alerts", webhook = %host, "webhook delivery failed: {e}");
                    if self.failures_in_a_row >= 5 {
                        self.open_until = Some(Instant::now() + Duration::from_secs(60));
                        self.view.webhook_open.store(true, Relaxed);
                        return;
                    }
                }
            }
        }
    }
}

fn notice(rule: &AlertRule, state: &'static str, value: f64, at: u64) -> Notice {
    Notice {
        rule: rule.name.clone(),
        level: rule.level,
        state,
        value,
        above: rule.above,
        at,
    }
}

impl AlertsConfig {
    /// The certificates of `ca_file`, if set (an error names the key).
    fn trusted(&self) -> Result<Option<Vec<Certificate<'static>>>, String> {
        let Some(path) = &self.ca_file else {
            return Ok(None);
        };
        let pem = std::fs::read(path).map_err(|e| format!("alerts.ca_file: {path}: {e}"))?;
        let certs = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("alerts.ca_file: {path}: {e}"))?;
        if certs.is_empty() {
            return Err(format!("alerts.ca_file: {path}: no PEM certificate in it"));
        }
        Ok(Some(certs))
    }
}

/// `scheme://host[:port]` of a webhook URL (what logs may show: the path of a Slack
/// webhook is its secret), if it is an `http://` or `https://` URL with a host.
fn webhook_host(url: &str) -> Option<String> {
    let uri: ureq::http::Uri = url.parse().ok()?;
    let scheme = uri.scheme_str().filter(|s| *s == "http" || *s == "https")?;
    let authority = uri.authority().filter(|a| !a.host().is_empty())?;
    Some(format!("{scheme}://{authority}"))
}

/// The HTTP client for webhooks: 5 s for the whole exchange, no redirects, statuses
/// other than 2xx are failures.
fn webhook_agent(cfg: &AlertsConfig) -> Result<ureq::Agent, String> {
    let mut config = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .max_redirects(0)
        .http_status_as_error(true)
        .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")));
    if let Some(certs) = cfg.trusted()? {
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
            .build();
        config = config.tls_config(tls);
    }
    Ok(config.build().new_agent())
}

/// One POST of JSON; a 2xx answer is success.
fn post(agent: &ureq::Agent, url: &str, body: &str) -> Result<(), String> {
    agent
        .post(url)
        .header("content-type", "application/json")
        .send(body)
        .map(drop)
        .map_err(|e| match e {
            ureq::Error::StatusCode(code) => format!("answered {code}"),
            e => e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_over_an_interval_and_urls() {
        let mut before = [0u64; 15];
        let mut now = [0u64; 15];
        before[0] = 500;
        now[0] = 599; // 99 fast ones in the interval
        now[6] = 1; // one at 5 ms
        assert_eq!(p99(&now, &before), 50e-6, "99 of 100 under 50 µs");
        now[6] = 2;
        assert_eq!(p99(&now, &before), 5e-3);
        assert_eq!(p99(&before, &before), 0.0);
        assert_eq!(
            webhook_host("http://relay:8080/hooks/x").as_deref(),
            Some("http://relay:8080")
        );
        assert_eq!(
            webhook_host("https://hooks.slack.com/services/T0/B0/secret").as_deref(),
            Some("https://hooks.slack.com")
        );
        for bad in [
            "http:///x",
            "ftp://relay/x",
            "relay:8080/x",
            "/hooks",
            "",
            "https://",
        ] {
            assert_eq!(webhook_host(bad), None, "{bad}");
        }
        let mut cfg = AlertsConfig::default();
        assert_eq!(cfg.problem(), None);
        cfg.webhooks
            .push("https://hooks.slack.com/services/x".into());
        assert_eq!(cfg.problem(), None);
        cfg.webhooks.push("ftp://relay/x".into());
        assert!(cfg.problem().unwrap().starts_with("alerts.webhooks[1]"));
        cfg.webhooks.pop();
        cfg.ca_file = Some("/nonexistent/ca.pem".into());
        assert!(cfg.problem().unwrap().starts_with("alerts.ca_file"));
        let dir = std::env::temp_dir().join(format!("sb-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        cfg.ca_file = Some(empty.display().to_string());
        let problem = cfg.problem().unwrap();
        assert!(
            problem.starts_with("alerts.ca_file") && problem.contains("no PEM"),
            "{problem}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
