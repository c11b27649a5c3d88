//! `/metrics/snapshot`: the same numbers as `/metrics`, as JSON for scripts and probes —
//! every family with its type and help, each sample's labels and value — and one family
//! alone (`/metrics/snapshot/NAME`).
//!
//! Owns reading the exposition text back into families. It reads only what
//! [`super::render`] writes (`# HELP`, `# TYPE`, `name{labels} value` lines), so a
//! snapshot and a scrape never disagree. Does not own the routes (`crate::http`).

use serde::Serialize;
use serde_json::{Map, Value};

/// One metric family.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Family {
    /// `counter`, `gauge` or `histogram`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its help text.
    pub help: String,
    /// Its samples (a histogram's are its `_bucket`, `_sum` and `_count` series).
    pub samples: Vec<Sample>,
}

/// One sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// The series' name (a histogram's `_bucket`, `_sum`, `_count`; else the family's).
    pub name: String,
    /// Its labels.
    pub labels: Map<String, Value>,
    /// Its value.
    pub value: f64,
}

/// The families of exposition `text`, in order.
pub fn families(text: &str) -> Vec<(String, Family)> {
    let mut out: Vec<(String, Family)> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push((
                name.to_owned(),
                Family {
                    kind: "untyped".into(),
                    help: help.to_owned(),
                    samples: Vec::new(),
                },
            ));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let (Some((name, kind)), Some((last, family))) =
                (rest.split_once(' '), out.last_mut())
            {
                if last == name {
                    family.kind = kind.to_owned();
                }
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let Some(sample) = sample(line) else {
                continue;
            };
            if let Some((_, family)) = out.last_mut() {
                family.samples.push(sample);
            }
        }
    }
    out
}

fn sample(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (name, labels(rest.strip_suffix('}')?)?),
        None => (series, Map::new()),
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// `a="x",b="y"` (values escaped as the exposition format escapes them).
fn labels(text: &str) -> Option<Map<String, Value>> {
    let mut out = Map::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        out.insert(key.trim_start_matches(',').to_owned(), Value::String(value));
        rest = after[end + 1..].trim_start_matches(',');
    }
    Some(out)
}

/// The snapshot: `{"metrics": {NAME: family, …}}`.
pub fn snapshot(text: &str) -> Value {
    let metrics: Map<String, Value> = families(text)
        .into_iter()
        .map(|(name, f)| (name, serde_json::to_value(f).unwrap_or(Value::Null)))
        .collect();
    serde_json::json!({ "metrics": metrics })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP sb_conn Open connections.\n# TYPE sb_conn gauge\n\
        sb_conn{shard=\"0\"} 3\nsb_conn{shard=\"1\"} 4\n\
        # HELP sb_lat Latency.\n# TYPE sb_lat histogram\n\
        sb_lat_bucket{shard=\"0\",le=\"0.001\"} 1\nsb_lat_bucket{shard=\"0\",le=\"+Inf\"} 2\n\
        sb_lat_sum{shard=\"0\"} 0.5\nsb_lat_count{shard=\"0\"} 2\n\
        # HELP sb_up Up.\n# TYPE sb_up gauge\nsb_up 1\n\
        # HELP sb_q Quoted.\n# TYPE sb_q counter\nsb_q{who=\"a \\\"b\\\", c\",n=\"1\"} 7\n";

    #[test]
    fn families_read_back_what_was_written() {
        let f = families(TEXT);
        assert_eq!(f.len(), 4);
        assert_eq!(f[0].0, "sb_conn");
        assert_eq!(f[0].1.kind, "gauge");
        assert_eq!(f[0].1.samples[1].labels["shard"], "1");
        assert_eq!(f[0].1.samples[1].value, 4.0);
        assert_eq!(f[1].1.samples[1].labels["le"], "+Inf");
        assert_eq!(f[1].1.samples[2].name, "sb_lat_sum");
        assert!(f[2].1.samples[0].labels.is_empty());
        assert_eq!(f[3].1.samples[0].labels["who"], "a \"b\", c");
        assert_eq!(f[3].1.samples[0].labels["n"], "1");
        let s = snapshot(TEXT);
        assert_eq!(s["metrics"]["sb_up"]["samples"][0]["value"], 1.0);
        assert_eq!(s["metrics"]["sb_lat"]["type"], "histogram");
    }
}
