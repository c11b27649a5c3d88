//! The coordinator: one run of a scenario over one or more worker processes.
//!
//! Owns spawning workers (this same binary, `worker` subcommand), handing each its
//! plan, waiting until every connection is ready, giving all workers one start time,
//! sampling the server (`--server-pid`) and the machine each second and exactly at the
//! run's boundaries, then merging the workers' results into a [`RunResult`].

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::clock::mono_ns;
use crate::report::{
    HarnessUse, Messages, Percentiles, RampPoint, RunResult, ServerUse, StormPoint, TimelinePoint,
};
use crate::resources::{self, ProcSample};
use crate::scenario::{Kind, Scenario};
use crate::stats::{self, WorkerResult};
use crate::storm::StormStep;
use crate::worker::WorkerPlan;

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Server process to sample (RSS, CPU).
    pub server_pid: Option<u32>,
    /// More server processes (the other nodes of a cluster): summed with the first.
    pub more_server_pids: Vec<u32>,
    /// Redis, sampled and reported apart (nodes sharing Redis).
    pub redis_pid: Option<u32>,
    /// Print progress lines to stderr.
    pub progress: bool,
    /// The `switchboard-loadtest` executable to start workers from (default: this one).
    pub worker_exe: Option<std::path::PathBuf>,
    /// The server's Prometheus endpoint, scraped before the ramp and after the drain.
    pub metrics_url: Option<String>,
}

enum Event {
    Line(usize, String),
    Gone(usize),
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// The server's processes together (every node of a cluster).
fn sample_server(opts: &RunOptions) -> Option<ProcSample> {
    let first = resources::sample(opts.server_pid?)?;
    opts.more_server_pids.iter().try_fold(first, |acc, &pid| {
        let s = resources::sample(pid)?;
        Some(ProcSample {
            cpu_s: acc.cpu_s + s.cpu_s,
            rss_bytes: acc.rss_bytes + s.rss_bytes,
        })
    })
}

/// Run `scenario` and return its result.
pub fn run(scenario: &Scenario, opts: &RunOptions) -> anyhow::Result<RunResult> {
    scenario.validate()?;
    let workers = scenario.worker_count();
    let exe = match &opts.worker_exe {
        Some(p) => p.clone(),
        None => std::env::current_exe()?,
    };
    let (tx, rx) = mpsc::channel::<Event>();
    let mut children: Vec<Child> = Vec::with_capacity(workers);
    let server_before = sample_server(opts);
    let metrics_before = opts
        .metrics_url
        .as_deref()
        .map(crate::scrape::scrape)
        .transpose()?;
    if opts.server_pid.is_some() && server_before.is_none() {
        anyhow::bail!(
            "--server-pid {}: no such process",
            opts.server_pid.unwrap_or(0)
        );
    }
    for index in 0..workers {
        let mut child = Command::new(&exe)
            .arg("worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let plan = WorkerPlan {
            scenario: scenario.clone(),
            index,
        };
        let stdin = child.stdin.as_mut().expect("piped");
        writeln!(stdin, "{}", serde_json::to_string(&plan)?)?;
        stdin.flush()?;
        let out = child.stdout.take().expect("piped");
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(Event::Line(index, line)).is_err() {
                    return;
                }
            }
            let _ = tx.send(Event::Gone(index));
        });
        children.push(child);
    }
    drop(tx);

    // Ramp: wait until every worker reports ready.
    let mut ready = vec![None::<(u64, u64)>; workers];
    let mut progress = vec![(0u64, 0u64); workers];
    let mut results: Vec<Option<WorkerResult>> = vec![None; workers];
    let mut last_print = std::time::Instant::now();
    let ramp_start = std::time::Instant::now();
    let mut ramp: Vec<RampPoint> = Vec::new();
    while ready.iter().any(Option::is_none) {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(Event::Line(w, line)) => {
                let mut p = line.split_whitespace();
                let kind = p.next().unwrap_or("");
                let a = p.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                let b = p.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                match kind {
                    "progress" => progress[w] = (a, b),
                    "ready" => {
                        progress[w] = (a, b);
                        ready[w] = Some((a, b));
                    }
                    _ => {}
                }
            }
            Ok(Event::Gone(w)) => anyhow::bail!("worker {w} exited during the ramp"),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                anyhow::bail!("every worker exited during the ramp")
            }
        }
        // About once a second, and once more when the last worker is ready.
        if last_print.elapsed() >= Duration::from_secs(1) || ready.iter().all(Option::is_some) {
            last_print = std::time::Instant::now();
            let (ok, failed) = progress.iter().fold((0, 0), |a, p| (a.0 + p.0, a.1 + p.1));
            ramp.push(RampPoint {
                t: ramp_start.elapsed().as_secs_f64(),
                ready: ok,
                failed,
            });
            if opts.progress {
                eprintln!(
                    "ramp: {ok}/{} connections ready, {failed} failed",
                    scenario.total_connections()
                );
            }
        }
    }
    let server_ramped = sample_server(opts);

    // Run: one start time for all.
    let t0 = mono_ns() + 300_000_000;
    let run_ns = if scenario.kind == Kind::ConnectStorm {
        u64::MAX / 4
    } else {
        (scenario.duration_s * 1e9) as u64
    };
    let end = t0 + run_ns;
    for child in &mut children {
        let stdin = child.stdin.as_mut().expect("piped");
        writeln!(stdin, "start {t0} {end}")?;
        stdin.flush()?;
    }
    let drain_end = end.saturating_add((scenario.drain_s * 1e9) as u64);
    let mut samples: Vec<(u64, ProcSample)> = Vec::new();
    let mut machine_t0 = None;
    let mut server_t0 = None;
    let mut server_end = None;
    let mut machine_end = None;
    let (mut redis_t0, mut redis_end) = (None, None);
    let mut next_sample = t0;
    while results.iter().any(Option::is_none) {
        let now = mono_ns();
        if now >= next_sample && now < drain_end {
            if machine_t0.is_none() {
                machine_t0 = resources::machine();
                server_t0 = sample_server(opts);
                redis_t0 = opts.redis_pid.and_then(resources::sample);
            }
            if let Some(s) = sample_server(opts) {
                samples.push((now, s));
            }
            next_sample += 1_000_000_000;
            if opts.progress && scenario.kind != Kind::ConnectStorm {
                eprintln!(
                    "run: {:.0}/{:.0} s",
                    (now.saturating_sub(t0)) as f64 / 1e9,
                    scenario.duration_s
                );
            }
        }
        if now >= drain_end && machine_end.is_none() && scenario.kind != Kind::ConnectStorm {
            machine_end = resources::machine();
            server_end = sample_server(opts);
            redis_end = opts.redis_pid.and_then(resources::sample);
        }
        let wait = Duration::from_millis(50);
        match rx.recv_timeout(wait) {
            Ok(Event::Line(w, line)) => {
                if let Some(json) = line.strip_prefix("result ") {
                    results[w] = Some(serde_json::from_str(json)?);
                }
            }
            Ok(Event::Gone(w)) => {
                if results[w].is_none() {
                    anyhow::bail!("worker {w} exited without a result");
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    for mut c in children {
        let _ = c.wait();
    }
    let metrics_after = match (&opts.metrics_url, &metrics_before) {
        (Some(url), Some(_)) => Some(crate::scrape::scrape(url)?),
        _ => None,
    };
    if machine_end.is_none() {
        machine_end = resources::machine();
        server_end = sample_server(opts);
        redis_end = opts.redis_pid.and_then(resources::sample);
    }
    let results: Vec<WorkerResult> = results
        .into_iter()
        .map(|r| r.ok_or_else(|| anyhow::anyhow!("missing worker result")))
        .collect::<Result<_, _>>()?;
    let merged = stats::merge(&results)?;

    let mut r = RunResult {
        schema: "switchboard-loadtest/1".into(),
        scenario: Some(scenario.clone()),
        protocol: crate::proto::for_scenario(scenario).name(),
        started_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        machine: machine_facts(),
        connections_target: scenario.total_connections(),
        connections_ok: merged.counts.connected,
        connections_failed: ready.iter().map(|r| r.map_or(0, |x| x.1)).sum(),
        connect_latency_ms: Percentiles::of(&merged.connect),
        latency_ms: Percentiles::of(&merged.latency),
        service_latency_ms: Percentiles::of(&merged.service),
        ack_latency_ms: Percentiles::of(&merged.ack),
        server_metrics: match (&metrics_before, &metrics_after) {
            (Some(b), Some(a)) => crate::scrape::delta(b, a),
            _ => Default::default(),
        },
        ramp,
        errors: merged.counts.errors.clone(),
        error_samples: merged.counts.error_samples.clone(),
        latency_histogram: stats::encode_histogram(&merged.latency),
        ..RunResult::default()
    };
    let sent: u64 = merged.counts.sent.values().sum();
    let expected = merged.counts.expected();
    r.messages = Messages {
        sent,
        expected,
        received: merged.counts.received,
        unique: merged.counts.unique(),
        lost: merged.counts.lost(),
        duplicates: merged.counts.duplicates,
        out_of_order: merged.counts.out_of_order,
        foreign: merged.counts.foreign,
        acked: merged.counts.acked,
        loss_ratio: if expected > 0 {
            merged.counts.lost() as f64 / expected as f64
        } else {
            0.0
        },
    };
    r.sent_per_s = sent as f64 / scenario.duration_s;
    r.acked_per_s = merged.counts.acked as f64 / scenario.duration_s;
    r.delivered_per_s = merged.counts.unique() as f64 / scenario.duration_s;

    // Timeline, with server samples matched by second.
    let mut by_second: BTreeMap<u64, (f64, Option<f64>)> = BTreeMap::new();
    let mut prev: Option<(u64, ProcSample)> = server_t0.map(|s| (t0, s));
    for (t, s) in &samples {
        let second = t.saturating_sub(t0) / 1_000_000_000;
        let cpu_pct = prev.and_then(|(pt, ps)| {
            (t > &pt).then(|| 100.0 * (s.cpu_s - ps.cpu_s) / ((t - pt) as f64 / 1e9))
        });
        by_second.insert(second, (mib(s.rss_bytes), cpu_pct));
        prev = Some((*t, *s));
    }
    r.timeline = merged
        .seconds
        .iter()
        .enumerate()
        .map(|(i, (sent, delivered, h))| {
            let server = by_second.get(&(i as u64));
            TimelinePoint {
                t: i as u64,
                sent: *sent,
                delivered: *delivered,
                p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
                p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
                max_ms: h.max() as f64 / 1000.0,
                server_rss_mib: server.map(|s| s.0),
                server_cpu_pct: server.and_then(|s| s.1),
            }
        })
        .collect();

    // Server use.
    let run_wall_s = (drain_end.min(mono_ns()).saturating_sub(t0)) as f64 / 1e9;
    let unique = merged.counts.unique();
    let process_use = |pid: u32,
                       before: ProcSample,
                       ramped: ProcSample,
                       stop: ProcSample,
                       start: ProcSample,
                       conns: f64| {
        let cpu_s = stop.cpu_s - start.cpu_s;
        ServerUse {
            pid,
            rss_before_mib: mib(before.rss_bytes),
            rss_ramped_mib: mib(ramped.rss_bytes),
            rss_end_mib: mib(stop.rss_bytes),
            bytes_per_connection: if conns > 0.0 {
                (ramped.rss_bytes as f64 - before.rss_bytes as f64) / conns
            } else {
                0.0
            },
            cpu_s,
            cpu_pct: if run_wall_s > 0.0 {
                100.0 * cpu_s / run_wall_s
            } else {
                0.0
            },
            cpu_us_per_delivery: (unique > 0).then(|| cpu_s * 1e6 / unique as f64),
            more_pids: Vec::new(),
        }
    };
    if let (Some(pid), Some(before), Some(ramped)) = (opts.server_pid, server_before, server_ramped)
    {
        let start = server_t0.unwrap_or(ramped);
        let stop = server_end.unwrap_or(start);
        let conns = merged.counts.connected.max(1) as f64;
        let mut used = process_use(pid, before, ramped, stop, start, conns);
        used.more_pids = opts.more_server_pids.clone();
        r.server = Some(used);
    }
    if let (Some(pid), Some(start), Some(stop)) = (opts.redis_pid, redis_t0, redis_end) {
        // Redis is not the connections' server: no memory per connection.
        r.redis = Some(process_use(pid, start, start, stop, start, 0.0));
    }

    // Harness use and warnings.
    let cores = resources::cores();
    let machine_busy_pct = match (machine_t0, machine_end) {
        (Some((b0, t0j)), Some((b1, t1j))) if t1j > t0j => {
            100.0 * (b1 - b0) as f64 / (t1j - t0j) as f64
        }
        _ => 0.0,
    };
    let max_worker = results
        .iter()
        .map(|w| {
            if w.wall_s > 0.0 {
                100.0 * w.cpu_s / w.wall_s
            } else {
                0.0
            }
        })
        .fold(0.0, f64::max);
    r.harness = HarnessUse {
        workers,
        cpu_s: merged.cpu_s,
        max_worker_cpu_pct: max_worker,
        machine_busy_pct,
        cores,
    };
    if max_worker > 90.0 {
        r.warnings.push(format!(
            "a worker used {max_worker:.0}% of a core: the generator, not the server, may be the limit; add workers (--set workers=N)"
        ));
    }
    if machine_busy_pct > 95.0 {
        r.warnings.push(format!(
            "the machine was {machine_busy_pct:.0}% busy: generator and server share {cores} cores, so latency and throughput are bounded by the machine; compare servers by CPU per delivery"
        ));
    }
    if r.connections_failed > 0 {
        r.warnings.push(format!(
            "{} connections failed to open",
            r.connections_failed
        ));
    }
    if opts.server_pid.is_some() && server_end.is_none() {
        r.warnings
            .push("the server process disappeared during the run".into());
    }

    // Connect storm: add the workers' steps up by index.
    if scenario.kind == Kind::ConnectStorm {
        let mut points: Vec<(StormPoint, hdrhistogram::Histogram<u64>)> = Vec::new();
        for w in &results {
            let steps: Vec<StormStep> = w
                .extra
                .get("storm_steps")
                .map(|v| serde_json::from_value(v.clone()))
                .transpose()?
                .unwrap_or_default();
            for (i, st) in steps.iter().enumerate() {
                while points.len() <= i {
                    points.push((
                        StormPoint {
                            rate: st.rate,
                            ..StormPoint::default()
                        },
                        stats::histogram(),
                    ));
                }
                points[i].0.attempts += st.attempts;
                points[i].0.ok += st.ok;
                points[i].0.failed += st.failed;
                points[i].1.add(stats::decode_histogram(&st.latency)?)?;
            }
        }
        for (p, h) in &mut points {
            p.latency_ms = Percentiles::of(h);
            p.held = p.attempts > 0
                && (p.failed as f64) <= scenario.storm_max_failure_ratio * p.attempts as f64
                && p.latency_ms.p99 <= scenario.storm_p99_ms;
        }
        r.storm = points.into_iter().map(|(p, _)| p).collect();
        r.storm_max_rate = r.storm.iter().take_while(|p| p.held).last().map(|p| p.rate);
        let total_ok: u64 = r.storm.iter().map(|p| p.ok).sum();
        if let (Some(sv), true) = (r.server.as_mut(), total_ok > 0) {
            sv.cpu_us_per_delivery = None;
            let _ = sv;
        }
    }
    Ok(r)
}

fn machine_facts() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("cores".into(), resources::cores().to_string());
    if let Ok(cpu) = std::fs::read_to_string("/proc/cpuinfo") {
        if let Some(model) = cpu
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
        {
            m.insert("cpu".into(), model.trim().to_string());
        }
    }
    if let Ok(mem) = std::fs::read_to_string("/proc/meminfo") {
        if let Some(total) = mem.lines().next() {
            m.insert(
                "memory".into(),
                total.trim_start_matches("MemTotal:").trim().to_string(),
            );
        }
    }
    if let Ok(k) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        m.insert("kernel".into(), k.trim().to_string());
    }
    m
}

/// One step of a knee search.
#[derive(Debug, Clone)]
pub struct KneeStep {
    /// The scenario's `rate` at this step.
    pub rate: f64,
    /// What the run measured.
    pub result: RunResult,
    /// p99 within the bound, nothing lost, every connection opened.
    pub held: bool,
}

/// Run `base` at `start_rate`, `start_rate × factor`, … until a step fails (p99 above
/// `p99_ms`, a delivery lost or a connection failed) or `max_steps` ran. The last step
/// that held is the knee.
pub fn knee(
    base: &Scenario,
    opts: &RunOptions,
    p99_ms: f64,
    start_rate: f64,
    factor: f64,
    max_steps: usize,
) -> anyhow::Result<Vec<KneeStep>> {
    if factor <= 1.0 || start_rate <= 0.0 {
        anyhow::bail!("the knee search needs start_rate > 0 and factor > 1");
    }
    let mut steps = Vec::new();
    let mut rate = start_rate;
    for step in 0..max_steps {
        let mut s = base.clone();
        s.rate = rate;
        s.name = format!("{}-knee-{step}", base.name);
        let result = run(&s, opts)?;
        let held = result.latency_ms.p99 <= p99_ms
            && result.messages.lost == 0
            && result.connections_failed == 0;
        steps.push(KneeStep { rate, result, held });
        if !held {
            break;
        }
        rate *= factor;
    }
    Ok(steps)
}
