//! Throttling failed credentials: API keys and admin tokens cannot be guessed fast.
//!
//! Owns, per client address, a bucket of failed attempts (a request to `/api/*` or
//! `/admin/*` that presented a key or token and was answered 401): [`BURST`] failures at once, then one per
//! [`REFILL_MS`]; an address that has none left gets 429 with `Retry-After` for every
//! `/api/*` and `/admin/*` request, right or wrong, until it refills — so a guesser
//! learns nothing from trying. A global bucket caps failures from all addresses
//! together ([`GLOBAL_PER_SECOND`]): past it, an address that fails is blocked at once.
//! Does not own checking credentials ([`super::keys`], [`super::admin_auth`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;

use super::errors::error;
use super::state::HttpState;

/// Failed attempts one address may make at once.
pub const BURST: f64 = 10.0;
/// After the burst, one failed attempt per this long (3,600 an hour at most).
pub const REFILL_MS: u64 = 1_000;
/// Failed attempts per second from all addresses together.
pub const GLOBAL_PER_SECOND: f64 = 50.0;
/// Addresses tracked at once; beyond, those with a full bucket are forgotten.
const MAX_ADDRESSES: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant, per_ms: f64, max: f64) {
        let ms = now.saturating_duration_since(self.at).as_secs_f64() * 1000.0;
        self.tokens = (self.tokens + ms * per_ms).min(max);
        self.at = now;
    }
}

/// Failed-credential buckets (see the module doc).
#[derive(Debug)]
pub struct Guesses {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    by_address: HashMap<IpAddr, Bucket>,
    global: Bucket,
}

impl Default for Guesses {
    fn default() -> Guesses {
        Guesses {
            inner: Mutex::new(Inner {
                by_address: HashMap::new(),
                global: Bucket {
                    tokens: GLOBAL_PER_SECOND * 2.0,
                    at: Instant::now(),
                },
            }),
        }
    }
}

impl Guesses {
    /// How long `ip` must wait, if it has no failures left.
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let b = inner.by_address.get_mut(&ip)?;
        b.refill(now, 1.0 / REFILL_MS as f64, BURST);
        (b.tokens < 1.0)
            .then(|| Duration::from_millis(((1.0 - b.tokens) * REFILL_MS as f64).ceil() as u64))
    }

    /// `ip` failed to authenticate.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .global
            .refill(now, GLOBAL_PER_SECOND / 1000.0, GLOBAL_PER_SECOND * 2.0);
        let global_spent = inner.global.tokens < 1.0;
        inner.global.tokens = (inner.global.tokens - 1.0).max(0.0);
        if inner.by_address.len() >= MAX_ADDRESSES && !inner.by_address.contains_key(&ip) {
            inner.by_address.retain(|_, b| {
                b.refill(now, 1.0 / REFILL_MS as f64, BURST);
                b.tokens < BURST
            });
        }
        let b = inner.by_address.entry(ip).or_insert(Bucket {
            tokens: BURST,
            at: now,
        });
        b.refill(now, 1.0 / REFILL_MS as f64, BURST);
        b.tokens = if global_spent {
            0.0
        } else {
            (b.tokens - 1.0).max(0.0)
        };
    }
}

/// Middleware: refuse `/api/*` and `/admin/*` from an address out of failed attempts,
/// and count each 401 against the address.
pub(super) async fn throttle(
    axum::extract::State(s): axum::extract::State<std::sync::Arc<HttpState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path();
    let guarded = path.starts_with("/api/") || path.starts_with("/admin/");
    let ip = req
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let (Some(ip), true) = (ip, guarded) else {
        return next.run(req).await;
    };
    if let Some(wait) = s.guesses.blocked(ip, Instant::now()) {
        tracing::warn!(target: "security", %ip, "request refused: too many failed credentials");
        let secs = wait.as_secs().max(1);
        let mut r = error(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_failures",
            &format!("too many failed credentials from this address; retry in {secs} s"),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return r;
    }
    // A guess is a credential that was presented and refused (a missing one is not).
    let presented = req.headers().contains_key(header::AUTHORIZATION)
        || req.headers().contains_key("x-api-key");
    let response = next.run(req).await;
    if presented && response.status() == StatusCode::UNAUTHORIZED {
        s.guesses.failed(ip, Instant::now());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_per_second() {
        let g = Guesses::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..BURST as usize {
            assert_eq!(g.blocked(ip, t0), None);
            g.failed(ip, t0);
        }
        let wait = g.blocked(ip, t0).expect("out of attempts");
        assert!(wait <= Duration::from_millis(REFILL_MS), "{wait:?}");
        assert_eq!(g.blocked(ip, t0 + Duration::from_millis(REFILL_MS)), None);
        // Another address is not affected.
        assert_eq!(g.blocked("10.0.0.2".parse().unwrap(), t0), None);
    }

    #[test]
    fn many_addresses_together_are_capped() {
        let g = Guesses::default();
        let t0 = Instant::now();
        for i in 0..(2.0 * GLOBAL_PER_SECOND) as u32 + 1 {
            g.failed(IpAddr::from(u32::to_be_bytes(0x0a00_0000 + i)), t0);
        }
        // The global budget is spent: the next address that fails is blocked at once.
        let late: IpAddr = "10.9.9.9".parse().unwrap();
        g.failed(late, t0);
        assert!(g.blocked(late, t0).is_some());
    }
}
