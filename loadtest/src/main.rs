//! `switchboard-loadtest`: run a scenario, or act as one of a run's worker processes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchboard_loadtest::report;
use switchboard_loadtest::run::{self, RunOptions};
use switchboard_loadtest::scenario::Scenario;

#[derive(Parser)]
#[command(
    name = "switchboard-loadtest",
    version,
    about = "Load tests for Switchboard and the servers it replaces"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a scenario (a TOML file, or the name of one in loadtest/scenarios/).
    Run {
        /// Scenario file or name (idle, fanout, rooms, echo, connect-storm, slow-consumers).
        scenario: String,
        /// Override a scenario key: --set connections=5000 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Sample this server process's RSS and CPU; repeat for the nodes of a cluster
        /// (their sum is reported).
        #[arg(long)]
        server_pid: Vec<u32>,
        /// Sample Redis's CPU and RSS too (nodes sharing Redis), reported apart.
        #[arg(long)]
        redis_pid: Option<u32>,
        /// Scrape the server's Prometheus endpoint (`http://127.0.0.1:7401/metrics`) before
        /// and after, and report how every metric changed.
        #[arg(long)]
        metrics_url: Option<String>,
        /// Directory for the JSON result.
        #[arg(long, default_value = "loadtest-results")]
        out: PathBuf,
        /// No progress lines.
        #[arg(long)]
        quiet: bool,
        /// File name (without extension) of the JSON and HTML results; default
        /// `<scenario name>-<unix time>`.
        #[arg(long)]
        stem: Option<String>,
    },
    /// Compare runs: a side-by-side table with ratios to the first, and an HTML page
    /// with the runs overlaid.
    Compare {
        /// Result files (JSON) written by `run`.
        #[arg(required = true, num_args = 2..)]
        results: Vec<PathBuf>,
        /// Where to write the HTML comparison.
        #[arg(long, default_value = "loadtest-results/compare.html")]
        html: PathBuf,
    },
    /// Step a scenario's rate up until p99 passes a bound or deliveries are lost; report
    /// the highest rate that held.
    Knee {
        /// Scenario file or name.
        scenario: String,
        /// Override a scenario key (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// The p99 latency bound, ms.
        #[arg(long, default_value_t = 50.0)]
        p99_ms: f64,
        /// First rate (the scenario's `rate` key).
        #[arg(long)]
        start_rate: f64,
        /// Each step multiplies the rate by this.
        #[arg(long, default_value_t = 1.5)]
        factor: f64,
        /// Most steps.
        #[arg(long, default_value_t = 10)]
        max_steps: usize,
        /// Sample this server process.
        #[arg(long)]
        server_pid: Option<u32>,
        /// Directory for the step results.
        #[arg(long, default_value = "loadtest-results")]
        out: PathBuf,
    },
    /// Fit memory per connection and CPU per delivery from runs, and predict cores and
    /// memory for a target.
    Capacity {
        /// Result files (JSON) of runs made with --server-pid.
        #[arg(required = true)]
        results: Vec<PathBuf>,
        /// Target connections.
        #[arg(long)]
        connections: f64,
        /// Target deliveries per second.
        #[arg(long)]
        deliveries_per_s: f64,
        /// Highest CPU utilisation to plan for (0..1].
        #[arg(long, default_value_t = 0.7)]
        utilisation: f64,
    },
    /// Regenerate the HTML report and the text summary of results from their JSON
    /// (`<stem>.html` and `<stem>.txt` beside each file, or in `--out`).
    Report {
        /// Result files (JSON) written by `run`.
        #[arg(required = true)]
        results: Vec<PathBuf>,
        /// Directory for the reports (default: beside each result).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print each server's ratio to a baseline server measured in the same run, per
    /// scenario and metric, with the spread over passes (results named
    /// `<prefix>-p<pass>-<server>-<scenario>.json`, as `bench-all.sh versus` writes them).
    Ratios {
        /// Result files (JSON) written by `run`.
        #[arg(required = true)]
        results: Vec<PathBuf>,
        /// The server every other is divided by.
        #[arg(long, default_value = "bun")]
        baseline: String,
    },
    /// Print a Markdown table of results (one row per result file), for docs.
    Markdown {
        /// Result files (JSON) written by `run`.
        #[arg(required = true)]
        results: Vec<PathBuf>,
    },
    /// Internal: one worker process of a run (driven by `run` over stdin/stdout).
    #[command(hide = true)]
    Worker,
}

fn find_scenario(name: &str) -> PathBuf {
    let p = PathBuf::from(name);
    if p.exists() {
        return p;
    }
    let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(format!("{name}.toml"));
    if shipped.exists() {
        shipped
    } else {
        p
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Compare { results, html } => match compare(&results, &html) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Cmd::Knee {
            scenario,
            sets,
            p99_ms,
            start_rate,
            factor,
            max_steps,
            server_pid,
            out,
        } => {
            match knee(
                &scenario, &sets, p99_ms, start_rate, factor, max_steps, server_pid, &out,
            ) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Capacity {
            results,
            connections,
            deliveries_per_s,
            utilisation,
        } => match capacity(&results, connections, deliveries_per_s, utilisation) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Cmd::Report { results, out } => match report_files(&results, out.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Cmd::Ratios { results, baseline } => match ratios(&results, &baseline) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Cmd::Markdown { results } => match markdown(&results) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Cmd::Worker => match switchboard_loadtest::worker::run_stdio() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("worker: {e:#}");
                ExitCode::FAILURE
            }
        },
        Cmd::Run {
            scenario,
            sets,
            server_pid,
            redis_pid,
            metrics_url,
            out,
            quiet,
            stem,
        } => {
            let loaded =
                Scenario::load(&find_scenario(&scenario)).and_then(|s| s.with_overrides(&sets));
            let scenario = match loaded.and_then(|s| s.validate().map(|_| s)) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::from(2);
                }
            };
            let result = match run::run(
                &scenario,
                &RunOptions {
                    server_pid: server_pid.first().copied(),
                    more_server_pids: server_pid.iter().skip(1).copied().collect(),
                    redis_pid,
                    progress: !quiet,
                    worker_exe: None,
                    metrics_url,
                },
            ) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::FAILURE;
                }
            };
            print!("{}", report::summary(&result));
            if let Err(e) = std::fs::create_dir_all(&out) {
                eprintln!("error: cannot create {}: {e}", out.display());
                return ExitCode::FAILURE;
            }
            let stem = stem.unwrap_or_else(|| {
                format!(
                    "{}-{}",
                    result
                        .scenario
                        .as_ref()
                        .map(|s| s.name.as_str())
                        .unwrap_or("run"),
                    result.started_unix
                )
            });
            let json = out.join(format!("{stem}.json"));
            let page = out.join(format!("{stem}.html"));
            let written = serde_json::to_string_pretty(&result)
                .map_err(anyhow::Error::from)
                .and_then(|j| Ok(std::fs::write(&json, j)?))
                .and_then(|_| {
                    Ok(std::fs::write(
                        &page,
                        switchboard_loadtest::html::render(&result),
                    )?)
                });
            match written {
                Ok(()) => println!(
                    "result       {}\nreport       {}",
                    json.display(),
                    page.display()
                ),
                Err(e) => {
                    eprintln!("error: cannot write results to {}: {e}", out.display());
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
    }
}

/// `report`: each result's HTML page and text summary, as `run` wrote them.
fn report_files(files: &[PathBuf], out: Option<&std::path::Path>) -> anyhow::Result<()> {
    use switchboard_loadtest::report::RunResult;
    for f in files {
        let text =
            std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        let result: RunResult = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: not a loadtest result: {e}", f.display()))?;
        let dir = match out {
            Some(d) => d.to_path_buf(),
            None => f.parent().map(PathBuf::from).unwrap_or_default(),
        };
        std::fs::create_dir_all(&dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        let stem = f
            .file_stem()
            .ok_or_else(|| anyhow::anyhow!("{}: no file name", f.display()))?;
        let page = dir.join(stem).with_extension("html");
        let summary = dir.join(stem).with_extension("txt");
        std::fs::write(&page, switchboard_loadtest::html::render(&result))
            .map_err(|e| anyhow::anyhow!("{}: {e}", page.display()))?;
        std::fs::write(&summary, report::summary(&result))
            .map_err(|e| anyhow::anyhow!("{}: {e}", summary.display()))?;
        println!("{}  {}", page.display(), summary.display());
    }
    Ok(())
}

fn compare(files: &[PathBuf], html: &std::path::Path) -> anyhow::Result<()> {
    use switchboard_loadtest::html;
    use switchboard_loadtest::report::RunResult;
    let runs: Vec<RunResult> = files
        .iter()
        .map(|f| -> anyhow::Result<RunResult> {
            let text =
                std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
            serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: not a loadtest result: {e}", f.display()))
        })
        .collect::<Result<_, _>>()?;
    let refs: Vec<&RunResult> = runs.iter().collect();
    // Runs are named by their file names: two runs of one scenario share a scenario name.
    let labels: Vec<String> = files
        .iter()
        .map(|f| {
            f.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    let width = labels.iter().map(|l| l.len()).max().unwrap_or(10).max(12);
    print!("{:<26}", "metric");
    for l in &labels {
        print!(" {l:>width$}");
    }
    for l in labels.iter().skip(1) {
        print!(
            " {:>width$}",
            format!("{} ÷ 1st", l.split(' ').next().unwrap_or(""))
        );
    }
    println!();
    for (label, vals, _) in html::table_rows(&refs) {
        print!("{label:<26}");
        for v in &vals {
            print!(
                " {:>width$}",
                v.map(html::fmt_cell).unwrap_or_else(|| "–".into())
            );
        }
        for v in vals.iter().skip(1) {
            let ratio = match (vals[0], *v) {
                (Some(a), Some(b)) if a != 0.0 => format!("{:.2}×", b / a),
                _ => "–".into(),
            };
            print!(" {ratio:>width$}");
        }
        println!();
    }
    if let Some(dir) = html.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(html, html::render_compare(&refs, &labels))?;
    println!("report       {}", html.display());
    Ok(())
}

fn ratios(files: &[PathBuf], baseline: &str) -> anyhow::Result<()> {
    use switchboard_loadtest::ratios::{parse_stem, table, Named};
    let mut named = Vec::new();
    for f in files {
        let stem = f
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some((pass, server, scenario)) = parse_stem(&stem) else {
            anyhow::bail!(
                "{}: not named <prefix>-p<pass>-<server>-<scenario>",
                f.display()
            );
        };
        let text =
            std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        let result =
            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        named.push(Named {
            pass,
            server,
            scenario,
            result,
        });
    }
    print!("{}", table(&named, baseline));
    Ok(())
}

fn markdown(files: &[PathBuf]) -> anyhow::Result<()> {
    use switchboard_loadtest::report::RunResult;
    println!("| run | server | delivered/s | delivered | p50 ms | p99 ms | service p99 ms | server µs/delivery | server CPU % | server B/conn |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for f in files {
        let text =
            std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        let r: RunResult =
            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        let stem = f
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let delivered = if r.messages.expected > 0 {
            format!(
                "{:.1}%",
                100.0 * r.messages.unique as f64 / r.messages.expected as f64
            )
        } else {
            "–".into()
        };
        let opt = |v: Option<f64>, digits: usize| {
            v.map(|x| format!("{x:.digits$}"))
                .unwrap_or_else(|| "–".into())
        };
        let sv = r.server.as_ref();
        let lat = |v: f64| {
            if r.messages.unique > 0 {
                format!("{v:.1}")
            } else {
                "–".into()
            }
        };
        println!(
            "| {stem} | {} | {:.0} | {delivered} | {} | {} | {} | {} | {} | {} |",
            r.protocol,
            r.delivered_per_s,
            lat(r.latency_ms.p50),
            lat(r.latency_ms.p99),
            lat(r.service_latency_ms.p99),
            opt(sv.and_then(|s| s.cpu_us_per_delivery), 2),
            opt(sv.map(|s| s.cpu_pct), 0),
            opt(
                sv.map(|s| s.bytes_per_connection).filter(|b| *b > 0.0
                    && r.scenario
                        .as_ref()
                        .is_some_and(|s| s.kind == switchboard_loadtest::scenario::Kind::Idle)),
                0
            ),
        );
    }
    Ok(())
}

fn load_results(files: &[PathBuf]) -> anyhow::Result<Vec<switchboard_loadtest::report::RunResult>> {
    files
        .iter()
        .map(|f| {
            let text =
                std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
            serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: not a loadtest result: {e}", f.display()))
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn knee(
    scenario: &str,
    sets: &[String],
    p99_ms: f64,
    start_rate: f64,
    factor: f64,
    max_steps: usize,
    server_pid: Option<u32>,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let base = Scenario::load(&find_scenario(scenario))?.with_overrides(sets)?;
    base.validate()?;
    std::fs::create_dir_all(out)?;
    let opts = RunOptions {
        server_pid,
        progress: false,
        worker_exe: None,
        metrics_url: None,
        ..Default::default()
    };
    let steps = run::knee(&base, &opts, p99_ms, start_rate, factor, max_steps)?;
    println!(
        "{:>12} {:>14} {:>10} {:>10} {:>10} {:>8}",
        "rate", "deliveries/s", "p99 ms", "loss %", "µs/deliv", "verdict"
    );
    for st in &steps {
        let r = &st.result;
        std::fs::write(
            out.join(format!(
                "{}.json",
                r.scenario
                    .as_ref()
                    .map(|s| s.name.as_str())
                    .unwrap_or("knee")
            )),
            serde_json::to_string_pretty(r)?,
        )?;
        println!(
            "{:>12.1} {:>14.0} {:>10.2} {:>10.4} {:>10} {:>8}",
            st.rate,
            r.delivered_per_s,
            r.latency_ms.p99,
            100.0 * r.messages.loss_ratio,
            r.server
                .as_ref()
                .and_then(|s| s.cpu_us_per_delivery)
                .map(|u| format!("{u:.2}"))
                .unwrap_or_else(|| "–".into()),
            if st.held { "held" } else { "failed" }
        );
    }
    match steps.iter().take_while(|s| s.held).last() {
        Some(st) => println!(
            "knee: highest rate that held p99 <= {p99_ms} ms with no loss: {:.1} ({:.0} deliveries/s)",
            st.rate, st.result.delivered_per_s
        ),
        None => println!("knee: even the first rate failed (p99 > {p99_ms} ms or loss)"),
    }
    Ok(())
}

fn capacity(
    files: &[PathBuf],
    connections: f64,
    deliveries: f64,
    utilisation: f64,
) -> anyhow::Result<()> {
    let runs = load_results(files)?;
    let model = switchboard_loadtest::capacity::fit(&runs)?;
    let p = model.predict(connections, deliveries, utilisation);
    println!(
        "model        {:.3} µs server CPU per delivery + {:.3} cores fixed; {:.0} B per connection over a {:.1} MiB base ({} runs)",
        model.us_per_delivery, model.fixed_cores, model.bytes_per_connection, model.base_rss_mib, model.runs
    );
    println!(
        "target       {connections:.0} connections, {deliveries:.0} deliveries/s, planned at {:.0}% CPU",
        utilisation * 100.0
    );
    println!(
        "prediction   {:.2} cores busy → {:.2} cores to provision; {:.0} MiB resident memory",
        p.busy_cores, p.cores, p.memory_mib
    );
    Ok(())
}
