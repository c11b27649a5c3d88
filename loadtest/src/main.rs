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
            let path = out.join(format!(
                "{}-{}.json",
                result
                    .scenario
                    .as_ref()
                    .map(|s| s.name.as_str())
                    .unwrap_or("run"),
                result.started_unix
            ));
            match serde_json::to_string_pretty(&result)
                .map_err(anyhow::Error::from)
                .and_then(|j| Ok(std::fs::write(&path, j)?))
            {
                Ok(()) => println!("result       {}", path.display()),
                Err(e) => {
                    eprintln!("error: cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
    }
}
