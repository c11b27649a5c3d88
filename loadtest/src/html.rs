//! Self-contained HTML reports: one run, or several runs overlaid (`compare`).
//!
//! Owns rendering charts as inline SVG (no script, no external file), so a report is a
//! single file that opens anywhere and can be attached to a ticket.

use std::fmt::Write as _;

use crate::report::RunResult;

const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// One line of a chart.
pub struct Series {
    /// Legend.
    pub name: String,
    /// Stroke colour.
    pub color: &'static str,
    /// Points (x, y).
    pub points: Vec<(f64, f64)>,
    /// Dashed stroke.
    pub dashed: bool,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// An SVG line chart.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let (w, h, left, right, top, bottom) = (720.0, 260.0, 70.0, 20.0, 30.0, 40.0);
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .collect();
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img"><title>{}</title>"#,
        esc(title)
    );
    let _ = write!(
        svg,
        r#"<text x="{left}" y="18" font-size="14" font-weight="bold">{}</text>"#,
        esc(title)
    );
    if all.is_empty() {
        let _ = write!(
            svg,
            r#"<text x="{left}" y="{}" font-size="12">no data</text></svg>"#,
            h / 2.0
        );
        return svg;
    }
    let xmax = all.iter().map(|p| p.0).fold(f64::MIN, f64::max).max(1.0);
    let ymax = all.iter().map(|p| p.1).fold(0.0, f64::max).max(1e-9) * 1.1;
    let (pw, ph) = (w - left - right, h - top - bottom);
    let sx = |x: f64| left + pw * x / xmax;
    let sy = |y: f64| top + ph * (1.0 - y / ymax);
    for i in 0..=4 {
        let y = ymax * i as f64 / 4.0;
        let _ = write!(
            svg,
            r##"<line x1="{left}" x2="{}" y1="{py}" y2="{py}" stroke="#ddd"/><text x="{}" y="{}" font-size="11" text-anchor="end">{}</text>"##,
            w - right,
            left - 6.0,
            sy(y) + 4.0,
            fmt_num(y),
            py = sy(y)
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" font-size="11" text-anchor="middle">{}</text>"#,
        left + pw / 2.0,
        h - 6.0,
        esc(x_label)
    );
    let _ = write!(
        svg,
        r#"<text x="14" y="{}" font-size="11" transform="rotate(-90 14 {})" text-anchor="middle">{}</text>"#,
        top + ph / 2.0,
        top + ph / 2.0,
        esc(y_label)
    );
    for (i, s) in series.iter().enumerate() {
        if s.points.is_empty() {
            continue;
        }
        let path: Vec<String> = s
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let dash = if s.dashed {
            r#" stroke-dasharray="5,4""#
        } else {
            ""
        };
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.8"{dash} points="{}"/>"#,
            s.color,
            path.join(" ")
        );
        let ly = top + 14.0 * i as f64 + 6.0;
        let _ = write!(
            svg,
            r#"<line x1="{}" x2="{}" y1="{}" y2="{}" stroke="{}" stroke-width="2"{dash}/><text x="{}" y="{}" font-size="11">{}</text>"#,
            w - right - 204.0,
            w - right - 188.0,
            ly - 3.0,
            ly - 3.0,
            s.color,
            w - right - 184.0,
            ly,
            esc(&s.name)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn fmt_num(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:12px 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}.warn{color:#a00}pre{background:#f6f6f6;padding:8px;white-space:pre-wrap}";

fn charts(runs: &[&RunResult], labels: &[String]) -> String {
    let mut lat = Vec::new();
    let mut thr = Vec::new();
    // Publications and deliveries differ by the fan-out factor: separate charts.
    let mut sent = Vec::new();
    let mut rss = Vec::new();
    let mut cpu = Vec::new();
    let mut conns = Vec::new();
    for (i, r) in runs.iter().enumerate() {
        let label = |what: &str| {
            if runs.len() == 1 {
                what.to_string()
            } else {
                format!("{} {what}", labels[i])
            }
        };
        let c = COLORS[i % COLORS.len()];
        let pts = |f: &dyn Fn(&crate::report::TimelinePoint) -> Option<f64>| -> Vec<(f64, f64)> {
            r.timeline
                .iter()
                .filter_map(|p| f(p).map(|v| (p.t as f64, v)))
                .collect()
        };
        lat.push(Series {
            name: label("p99"),
            color: c,
            points: pts(&|p| Some(p.p99_ms)),
            dashed: false,
        });
        lat.push(Series {
            name: label("p50"),
            color: c,
            points: pts(&|p| Some(p.p50_ms)),
            dashed: true,
        });
        thr.push(Series {
            name: label("delivered/s"),
            color: c,
            points: pts(&|p| Some(p.delivered as f64)),
            dashed: false,
        });
        sent.push(Series {
            name: label("sent/s"),
            color: c,
            points: pts(&|p| Some(p.sent as f64)),
            dashed: false,
        });
        rss.push(Series {
            name: label("server RSS"),
            color: c,
            points: pts(&|p| p.server_rss_mib),
            dashed: false,
        });
        cpu.push(Series {
            name: label("server CPU"),
            color: c,
            points: pts(&|p| p.server_cpu_pct),
            dashed: false,
        });
        conns.push(Series {
            name: label("connected"),
            color: c,
            points: r.ramp.iter().map(|p| (p.t, p.ready as f64)).collect(),
            dashed: false,
        });
        conns.push(Series {
            name: label("failed"),
            color: c,
            points: r.ramp.iter().map(|p| (p.t, p.failed as f64)).collect(),
            dashed: true,
        });
    }
    let mut o = String::new();
    o.push_str(&line_chart(
        "Latency from intended send time",
        "seconds",
        "ms",
        &lat,
    ));
    o.push_str("<br>");
    o.push_str(&line_chart(
        "Deliveries per second",
        "seconds",
        "per second",
        &thr,
    ));
    o.push_str("<br>");
    o.push_str(&line_chart(
        "Messages published per second",
        "seconds",
        "per second",
        &sent,
    ));
    o.push_str("<br>");
    o.push_str(&line_chart(
        "Server resident memory",
        "seconds",
        "MiB",
        &rss,
    ));
    o.push_str("<br>");
    o.push_str(&line_chart("Server CPU", "seconds", "% of one core", &cpu));
    o.push_str("<br>");
    o.push_str(&line_chart(
        "Connections during the ramp",
        "seconds since the first attempt",
        "connections",
        &conns,
    ));
    o
}

/// A short label for a run.
pub fn run_label(r: &RunResult) -> String {
    let name = r
        .scenario
        .as_ref()
        .map(|s| s.name.clone())
        .unwrap_or_default();
    format!("{name} [{}]", r.protocol)
}

/// Rows of the comparison table: (label, value per run, lower is better).
pub fn table_rows(runs: &[&RunResult]) -> Vec<(&'static str, Vec<Option<f64>>, bool)> {
    let col = |f: &dyn Fn(&RunResult) -> Option<f64>| runs.iter().map(|r| f(r)).collect::<Vec<_>>();
    vec![
        (
            "connections ok",
            col(&|r| Some(r.connections_ok as f64)),
            false,
        ),
        ("sent msg/s", col(&|r| Some(r.sent_per_s)), false),
        ("deliveries/s", col(&|r| Some(r.delivered_per_s)), false),
        (
            "loss %",
            col(&|r| Some(100.0 * r.messages.loss_ratio)),
            true,
        ),
        ("latency p50 ms", col(&|r| Some(r.latency_ms.p50)), true),
        ("latency p99 ms", col(&|r| Some(r.latency_ms.p99)), true),
        ("latency p99.9 ms", col(&|r| Some(r.latency_ms.p999)), true),
        ("latency max ms", col(&|r| Some(r.latency_ms.max)), true),
        (
            "service latency p99 ms",
            col(&|r| Some(r.service_latency_ms.p99)),
            true,
        ),
        (
            "server µs CPU / delivery",
            col(&|r| r.server.as_ref().and_then(|s| s.cpu_us_per_delivery)),
            true,
        ),
        (
            "server CPU % of a core",
            col(&|r| r.server.as_ref().map(|s| s.cpu_pct)),
            true,
        ),
        (
            "server RSS ramped MiB",
            col(&|r| r.server.as_ref().map(|s| s.rss_ramped_mib)),
            true,
        ),
        (
            "server bytes / connection",
            col(&|r| r.server.as_ref().map(|s| s.bytes_per_connection)),
            true,
        ),
        (
            "connect p99 ms",
            col(&|r| Some(r.connect_latency_ms.p99)),
            true,
        ),
        ("harness CPU s", col(&|r| Some(r.harness.cpu_s)), true),
        (
            "machine busy %",
            col(&|r| Some(r.harness.machine_busy_pct)),
            true,
        ),
    ]
}

fn table_html(runs: &[&RunResult], labels: &[String]) -> String {
    let mut o = String::from("<table><tr><th>metric</th>");
    for l in labels {
        let _ = write!(o, "<th>{}</th>", esc(l));
    }
    for l in labels.iter().skip(1) {
        let _ = write!(o, "<th>{} ÷ first</th>", esc(l));
    }
    o.push_str("</tr>");
    for (label, vals, _) in table_rows(runs) {
        let _ = write!(o, "<tr><td>{label}</td>");
        for v in &vals {
            let _ = write!(
                o,
                "<td>{}</td>",
                v.map(fmt_cell).unwrap_or_else(|| "–".into())
            );
        }
        if runs.len() > 1 {
            for v in &vals[1..] {
                let ratio = match (vals[0], *v) {
                    (Some(a), Some(b)) if a != 0.0 => format!("{:.2}×", b / a),
                    _ => "–".into(),
                };
                let _ = write!(o, "<td>{ratio}</td>");
            }
        }
        o.push_str("</tr>");
    }
    o.push_str("</table>");
    o
}

/// Format a table cell.
pub fn fmt_cell(v: f64) -> String {
    if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// The report of one run.
pub fn render(r: &RunResult) -> String {
    let mut o = String::new();
    let _ = write!(o, "<!doctype html><html><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>", esc(&run_label(r)));
    let _ = write!(
        o,
        "<h1>{}</h1><pre>{}</pre>",
        esc(&run_label(r)),
        esc(&crate::report::summary(r))
    );
    for w in &r.warnings {
        let _ = write!(o, "<p class=\"warn\">⚠ {}</p>", esc(w));
    }
    let labels = [run_label(r)];
    o.push_str(&table_html(&[r], &labels));
    o.push_str(&charts(&[r], &labels));
    let _ = write!(
        o,
        "<h2>Scenario</h2><pre>{}</pre><h2>Machine</h2><pre>{}</pre></body></html>",
        esc(&r
            .scenario
            .as_ref()
            .map(|s| toml::to_string(s).unwrap_or_default())
            .unwrap_or_default()),
        esc(&format!("{:#?}", r.machine))
    );
    o
}

/// Several runs overlaid, with a ratio table; `labels` name the runs (file names).
pub fn render_compare(runs: &[&RunResult], labels: &[String]) -> String {
    let mut o = String::new();
    let _ = write!(o, "<!doctype html><html><head><meta charset=\"utf-8\"><title>comparison</title><style>{STYLE}</style></head><body><h1>Comparison</h1>");
    o.push_str(&table_html(runs, labels));
    o.push_str(&charts(runs, labels));
    o.push_str("</body></html>");
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::TimelinePoint;

    #[test]
    fn renders_a_self_contained_page() {
        let r = RunResult {
            protocol: "switchboard/msgpack".into(),
            timeline: (0..5)
                .map(|t| TimelinePoint {
                    t,
                    sent: 10,
                    delivered: 100,
                    p50_ms: 1.0,
                    p99_ms: 2.0 + t as f64,
                    ..Default::default()
                })
                .collect(),
            warnings: vec!["<danger>".into()],
            sent_per_s: 10.0,
            ..RunResult::default()
        };
        let html = render(&r);
        assert!(html.contains("<svg") && html.contains("polyline"));
        assert!(html.contains("&lt;danger&gt;"), "escaped");
        assert!(!html.contains("<script"), "no script");
        let cmp = render_compare(&[&r, &r], &["a".into(), "b".into()]);
        assert!(cmp.contains("1.00×"));
    }
}
