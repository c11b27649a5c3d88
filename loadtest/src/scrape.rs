//! Reading a server's Prometheus `/metrics` over plain HTTP.
//!
//! Owns one GET and the parse of the text exposition format into per-metric sums (the
//! labels are summed away: `closes_total{shard="0"}` and `{shard="1"}` add up). The
//! coordinator scrapes before the ramp and after the drain and reports the differences.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Fetch `url` (`http://host:port/path`, loopback only) and sum each metric over labels.
pub fn scrape(url: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("--metrics-url must start with http://"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/metrics"),
    };
    let addr = authority
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| anyhow::anyhow!("--metrics-url host {authority} does not resolve"))?;
    if !addr.ip().is_loopback() {
        anyhow::bail!("--metrics-url must point at a loopback address");
    }
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    let (head, text) = body
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("{url}: no HTTP response"))?;
    if !head.starts_with("HTTP/1.1 200") {
        anyhow::bail!("{url}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(parse(text))
}

/// Sum every sample of the exposition text by metric name.
pub fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series);
        *out.entry(name.to_string()).or_insert(0.0) += value;
    }
    out
}

/// `after − before` for every metric in `after` (missing before counts as 0).
pub fn delta(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_over_labels() {
        let text = "# HELP x y\n# TYPE a counter\na{shard=\"0\"} 3\na{shard=\"1\"} 4\nb 1.5\nbroken line\nc{le=\"+Inf\"} 2\n";
        let m = parse(text);
        assert_eq!(m["a"], 7.0);
        assert_eq!(m["b"], 1.5);
        assert_eq!(m["c"], 2.0);
        let d = delta(&parse("a 1\n"), &m);
        assert_eq!(d["a"], 6.0);
        assert_eq!(d["b"], 1.5);
        assert!(scrape("http://10.0.0.1:80/metrics").is_err());
        assert!(scrape("ftp://127.0.0.1/").is_err());
    }
}
