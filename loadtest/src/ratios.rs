//! Ratios to a baseline server measured in the same run, with their spread.
//!
//! `bench-all.sh versus` runs each scenario on every server, alternating, several
//! passes, and names its results `<prefix>-p<pass>-<server>-<scenario>.json`. This
//! module pairs each server's pass with the baseline's pass of the same scenario and
//! reports, per scenario and metric, the ratio (server ÷ baseline) over the passes:
//! lowest, median, highest — the way ../shared/TARGETS.md states its targets. Does not
//! run anything or read the JSON files itself (the caller passes parsed results).

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::report::RunResult;

/// One result, named by its pass, server and scenario.
#[derive(Debug, Clone)]
pub struct Named {
    /// Pass number (1, 2, …).
    pub pass: u32,
    /// Server label (`epoll`, `uring`, `bun`, …).
    pub server: String,
    /// Scenario label (`echo`, `fanout-1m`, …).
    pub scenario: String,
    /// The run.
    pub result: RunResult,
}

/// Split a result stem `<prefix>-p<pass>-<server>-<scenario>`; `None` if it does not
/// have that shape. The server label has no `-`; the scenario may.
pub fn parse_stem(stem: &str) -> Option<(u32, String, String)> {
    let parts: Vec<&str> = stem.split('-').collect();
    let at = parts.iter().position(|p| {
        p.strip_prefix('p')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    })?;
    let pass = parts[at][1..].parse().ok()?;
    let server = parts.get(at + 1)?;
    let scenario = parts.get(at + 2..).filter(|s| !s.is_empty())?.join("-");
    Some((pass, (*server).to_string(), scenario))
}

/// The metrics compared, each with whether lower is better.
const METRICS: [(&str, bool); 5] = [
    ("server µs/delivery", true),
    ("p99 ms", true),
    ("delivered %", false),
    ("server B/conn", true),
    ("connects/s held", false),
];

fn metric(r: &RunResult, name: &str) -> Option<f64> {
    let delivered = r.messages.expected > 0 && r.messages.unique > 0;
    match name {
        "server µs/delivery" => r.server.as_ref()?.cpu_us_per_delivery,
        "p99 ms" => delivered.then_some(r.latency_ms.p99),
        "delivered %" => {
            delivered.then(|| 100.0 * r.messages.unique as f64 / r.messages.expected as f64)
        }
        "server B/conn" => r
            .server
            .as_ref()
            .map(|s| s.bytes_per_connection)
            .filter(|b| *b > 0.0),
        "connects/s held" => r.storm_max_rate,
        _ => None,
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A Markdown table: per scenario, metric and server, its values over the passes and
/// the ratio to `baseline` (pass by pass: lowest, median, highest).
pub fn table(results: &[Named], baseline: &str) -> String {
    // scenario → server → pass → result
    let mut by: BTreeMap<&str, BTreeMap<&str, BTreeMap<u32, &RunResult>>> = BTreeMap::new();
    for n in results {
        by.entry(&n.scenario)
            .or_default()
            .entry(&n.server)
            .or_default()
            .insert(n.pass, &n.result);
    }
    let mut o = String::new();
    let _ = writeln!(
        o,
        "| scenario | metric | server | values over passes | ÷ {baseline}: low · median · high |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|");
    for (scenario, servers) in &by {
        let base = servers.get(baseline);
        for (name, _lower_better) in METRICS {
            for (server, passes) in servers {
                let values: Vec<f64> = passes.values().filter_map(|r| metric(r, name)).collect();
                if values.is_empty() {
                    continue;
                }
                let shown: Vec<String> = values.iter().map(|v| fmt(*v)).collect();
                let ratio = if *server == baseline {
                    "—".to_string()
                } else {
                    let mut r: Vec<f64> = passes
                        .iter()
                        .filter_map(|(pass, res)| {
                            let b = metric(base?.get(pass)?, name)?;
                            let v = metric(res, name)?;
                            (b > 0.0).then(|| v / b)
                        })
                        .collect();
                    if r.is_empty() {
                        "no baseline".to_string()
                    } else {
                        let (lo, hi) = (
                            r.iter().copied().fold(f64::INFINITY, f64::min),
                            r.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                        );
                        format!("{lo:.2} · {:.2} · {hi:.2}", median(&mut r))
                    }
                };
                let _ = writeln!(
                    o,
                    "| {scenario} | {name} | {server} | {} | {ratio} |",
                    shown.join(", ")
                );
            }
        }
    }
    o
}

fn fmt(v: f64) -> String {
    if v >= 1000.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Messages, Percentiles, ServerUse};

    fn run(us: f64, p99: f64) -> RunResult {
        RunResult {
            server: Some(ServerUse {
                cpu_us_per_delivery: Some(us),
                ..ServerUse::default()
            }),
            latency_ms: Percentiles {
                p99,
                ..Percentiles::default()
            },
            messages: Messages {
                expected: 100,
                unique: 100,
                ..Messages::default()
            },
            ..RunResult::default()
        }
    }

    #[test]
    fn stems_name_pass_server_and_scenario() {
        assert_eq!(
            parse_stem("vs-p2-uring-fanout-1m"),
            Some((2, "uring".into(), "fanout-1m".into()))
        );
        assert_eq!(
            parse_stem("vs-p10-bun-echo"),
            Some((10, "bun".into(), "echo".into()))
        );
        assert_eq!(parse_stem("vs-bun-echo"), None);
        assert_eq!(parse_stem("vs-p1-bun"), None);
    }

    #[test]
    fn ratios_pair_passes_and_show_their_spread() {
        let named = |pass, server: &str, us| Named {
            pass,
            server: server.into(),
            scenario: "echo".into(),
            result: run(us, 2.0),
        };
        let t = table(
            &[
                named(1, "bun", 20.0),
                named(1, "epoll", 10.0),
                named(2, "bun", 25.0),
                named(2, "epoll", 20.0),
                named(3, "bun", 10.0),
                named(3, "epoll", 9.0),
                // A pass the baseline lacks is not paired.
                named(4, "epoll", 1.0),
            ],
            "bun",
        );
        let row = t
            .lines()
            .find(|l| l.contains("µs/delivery") && l.contains("| epoll |"))
            .unwrap();
        assert!(row.contains("0.50 · 0.80 · 0.90"), "{row}");
        assert!(row.contains("10.0, 20.0, 9.00, 1.00"), "{row}");
        let base = t
            .lines()
            .find(|l| l.contains("µs/delivery") && l.contains("| bun |"))
            .unwrap();
        assert!(base.ends_with("| — |"), "{base}");
        assert!(
            t.contains("| echo | p99 ms | epoll | 2.00, 2.00, 2.00, 2.00 | 1.00 · 1.00 · 1.00 |")
        );
    }
}
