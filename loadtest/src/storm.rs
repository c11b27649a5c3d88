//! The connect-storm scenario: connect + authenticate at rising rates.
//!
//! Owns the step schedule of one worker: at each step it opens connections at its share
//! of the step's rate (open model: latency is measured from each attempt's intended
//! time), closes each right after authentication, and reports per step the attempts,
//! successes, failures and a latency histogram. The coordinator adds the workers' steps
//! up and finds the highest rate that stayed within the latency bound and failure ratio.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::{instant_at, mono_ns};
use crate::proto::ConnCtx;
use crate::stats;
use crate::worker::{open, WorkerView};

/// One step of one worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StormStep {
    /// Target rate of the whole run at this step, connections/s.
    pub rate: f64,
    /// Attempts started.
    pub attempts: u64,
    /// Connections that authenticated.
    pub ok: u64,
    /// Attempts that failed or timed out.
    pub failed: u64,
    /// Connect + upgrade + auth latency from the intended time, µs (base64 HDR V2).
    pub latency: String,
}

/// Run the storm's steps for one worker.
pub async fn run_worker(view: &WorkerView, index: usize) -> Vec<StormStep> {
    let s = &view.scenario;
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(b"ready 0 0\n");
        let _ = out.flush();
    }
    let mut start = view.start.clone();
    let t0 = loop {
        if let Some((t0, _)) = *start.borrow_and_update() {
            break t0;
        }
        if start.changed().await.is_err() {
            return Vec::new();
        }
    };
    let workers = s.worker_count() as f64;
    let proto: Rc<dyn crate::proto::Protocol> = Rc::from((view.proto)());
    let mut steps = Vec::new();
    let mut rate = s.storm_start_rate;
    let mut step_start = t0;
    let mut serial: u64 = 0;
    while rate <= s.storm_max_rate {
        let gap = (1e9 / (rate / workers)) as u64;
        let step_end = step_start + (s.storm_step_s * 1e9) as u64;
        let tally = Rc::new(RefCell::new((stats::histogram(), 0u64, 0u64)));
        let mut handles = Vec::new();
        let mut k = 0u64;
        loop {
            let at = step_start + k * gap;
            if at >= step_end {
                break;
            }
            if at > mono_ns() {
                tokio::time::sleep_until(instant_at(at)).await;
            }
            serial += 1;
            let sub = format!("storm-{index}-{serial}");
            let token = s.token_secret.as_ref().map(|secret| {
                let exp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
                    + 3600;
                jsonwebtoken::encode(
                    &jsonwebtoken::Header::default(),
                    &serde_json::json!({"sub": sub, "exp": exp}),
                    &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
                )
                .unwrap_or_default()
            });
            let ctx = ConnCtx {
                token: token.or_else(|| s.token.clone()),
                channel: None,
            };
            let (proto, tally) = (proto.clone(), tally.clone());
            let (server, host, path, source) = (
                view.server,
                view.host.clone(),
                view.path.clone(),
                view.source(index, serial),
            );
            let timeout = Duration::from_millis(s.connect_timeout_ms);
            handles.push(tokio::task::spawn_local(async move {
                let r = tokio::time::timeout(
                    timeout,
                    open(&*proto, &ctx, server, &host, &path, source, &[]),
                )
                .await;
                let mut t = tally.borrow_mut();
                match r {
                    Ok(Ok(_client)) => {
                        stats::record(&mut t.0, mono_ns().saturating_sub(at) / 1_000);
                        t.1 += 1;
                    }
                    _ => t.2 += 1,
                }
            }));
            k += 1;
        }
        for h in handles {
            let _ = h.await;
        }
        let (hist, ok, failed) = &*tally.borrow();
        steps.push(StormStep {
            rate,
            attempts: k,
            ok: *ok,
            failed: *failed,
            latency: stats::encode_histogram(hist),
        });
        let p99_ms = hist.value_at_quantile(0.99) as f64 / 1000.0;
        if *failed * 2 > k || p99_ms > s.storm_p99_ms * 10.0 {
            break; // far past the knee: stop hammering
        }
        rate += s.storm_step_rate;
        step_start = mono_ns().max(step_end);
    }
    steps
}
