//! The capacity model: from measured runs to cores and memory for a target.
//!
//! Owns the fit. Memory: the server's base RSS plus resident bytes per connection (the
//! largest per-connection figure among the runs that ramped connections). CPU: server
//! cores used = fixed + per-delivery × deliveries/s, fitted by least squares over the
//! runs (with one run, the fixed part is taken as zero). The prediction divides by a
//! target utilisation, so the answer leaves headroom.

use serde::{Deserialize, Serialize};

use crate::report::RunResult;

/// A fitted model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Model {
    /// Server cores used with no deliveries (heartbeats, timers).
    pub fixed_cores: f64,
    /// Server CPU per delivery, microseconds.
    pub us_per_delivery: f64,
    /// Resident bytes per connection.
    pub bytes_per_connection: f64,
    /// Server RSS with no connections, MiB.
    pub base_rss_mib: f64,
    /// Runs the fit used.
    pub runs: usize,
}

/// A prediction for a target.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Prediction {
    /// Cores needed at the target utilisation.
    pub cores: f64,
    /// Server cores the load itself uses (at 100% utilisation).
    pub busy_cores: f64,
    /// Memory, MiB.
    pub memory_mib: f64,
}

/// Fit a model from runs that sampled the server (`--server-pid`).
pub fn fit(runs: &[RunResult]) -> anyhow::Result<Model> {
    let points: Vec<(f64, f64)> = runs
        .iter()
        .filter_map(|r| {
            r.server
                .as_ref()
                .map(|s| (r.delivered_per_s, s.cpu_pct / 100.0))
        })
        .filter(|(d, _)| *d > 0.0)
        .collect();
    if points.is_empty() {
        anyhow::bail!("no run with server CPU samples and deliveries: run with --server-pid");
    }
    let (fixed, per_delivery) = if points.len() == 1 {
        (0.0, points[0].1 / points[0].0)
    } else {
        let n = points.len() as f64;
        let (sx, sy) = points
            .iter()
            .fold((0.0, 0.0), |a, p| (a.0 + p.0, a.1 + p.1));
        let (mx, my) = (sx / n, sy / n);
        let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
        let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        if sxx == 0.0 {
            (0.0, my / mx)
        } else {
            let slope = sxy / sxx;
            ((my - slope * mx).max(0.0), slope)
        }
    };
    let ramped: Vec<&crate::report::ServerUse> = runs
        .iter()
        .filter(|r| r.connections_ok > 100)
        .filter_map(|r| r.server.as_ref())
        .filter(|s| s.bytes_per_connection > 0.0)
        .collect();
    let bytes_per_connection = ramped
        .iter()
        .map(|s| s.bytes_per_connection)
        .fold(0.0, f64::max);
    let base_rss_mib = ramped
        .iter()
        .map(|s| s.rss_before_mib)
        .fold(f64::MAX, f64::min);
    Ok(Model {
        fixed_cores: fixed,
        us_per_delivery: per_delivery * 1e6,
        bytes_per_connection,
        base_rss_mib: if base_rss_mib == f64::MAX {
            0.0
        } else {
            base_rss_mib
        },
        runs: points.len(),
    })
}

impl Model {
    /// Cores and memory for `connections` and `deliveries_per_s` at `utilisation` (0..1].
    pub fn predict(&self, connections: f64, deliveries_per_s: f64, utilisation: f64) -> Prediction {
        let busy = self.fixed_cores + self.us_per_delivery * 1e-6 * deliveries_per_s;
        Prediction {
            cores: busy / utilisation.clamp(0.05, 1.0),
            busy_cores: busy,
            memory_mib: self.base_rss_mib
                + connections * self.bytes_per_connection / (1024.0 * 1024.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::ServerUse;

    fn run(delivered: f64, cpu_pct: f64, conns: u64, bpc: f64) -> RunResult {
        RunResult {
            delivered_per_s: delivered,
            connections_ok: conns,
            server: Some(ServerUse {
                cpu_pct,
                bytes_per_connection: bpc,
                rss_before_mib: 10.0,
                ..ServerUse::default()
            }),
            ..RunResult::default()
        }
    }

    #[test]
    fn fits_a_line_and_predicts() {
        // 0.05 cores fixed + 5 µs per delivery.
        let runs = [
            run(20_000.0, 15.0, 2000, 1100.0),
            run(50_000.0, 30.0, 5000, 1200.0),
        ];
        let m = fit(&runs).unwrap();
        assert!((m.fixed_cores - 0.05).abs() < 1e-9, "{m:?}");
        assert!((m.us_per_delivery - 5.0).abs() < 1e-9, "{m:?}");
        assert_eq!(m.bytes_per_connection, 1200.0);
        let p = m.predict(10_000.0, 100_000.0, 0.5);
        assert!((p.busy_cores - 0.55).abs() < 1e-9);
        assert!((p.cores - 1.1).abs() < 1e-9);
        assert!((p.memory_mib - (10.0 + 10_000.0 * 1200.0 / 1048576.0)).abs() < 1e-9);
        assert!(fit(&[RunResult::default()]).is_err());
    }
}
