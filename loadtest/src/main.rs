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
        /// Sample this server process's RSS and CPU.
        #[arg(long)]
        server_pid: Option<u32>,
        /// Directory for the JSON result.
        #[arg(long, default_value = "loadtest-results")]
        out: PathBuf,
        /// No progress lines.
        #[arg(long)]
        quiet: bool,
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
            out,
            quiet,
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
                    server_pid,
                    progress: !quiet,
                    worker_exe: None,
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
            let stem = format!(
                "{}-{}",
                result
                    .scenario
                    .as_ref()
                    .map(|s| s.name.as_str())
                    .unwrap_or("run"),
                result.started_unix
            );
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
    let labels: Vec<String> = refs.iter().map(|r| html::run_label(r)).collect();
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
    std::fs::write(html, html::render_compare(&refs))?;
    println!("report       {}", html.display());
    Ok(())
}
