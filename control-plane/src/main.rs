//! The `switchboard` binary: `serve` (the default: `switchboard --listen …` serves),
//! `token`, `probe-io`, `config check` and `tune check`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use switchboard_control_plane::config::ProcessEnv;
use switchboard_control_plane::{auth, Config, Server};

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "A thread-per-core real-time connection engine",
    // `switchboard --listen …` is `switchboard serve --listen …`.
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// With no subcommand: `serve`'s flags.
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server (the default).
    Serve(ServeArgs),
    /// Print a signed HS256 token.
    Token(TokenArgs),
    /// Check whether the io_uring backend can run here (exit 0) or not (exit 1, why).
    ProbeIo(ProbeArgs),
    /// Configuration files: `config check FILE`.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// This host: `tune check` (limits, sysctls, io_uring, cores).
    #[command(subcommand)]
    Tune(TuneCmd),
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Print the effective configuration of FILE (with SWITCHBOARD_* overrides) as
    /// TOML, or the errors naming their keys (exit 2).
    Check {
        /// The file.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum TuneCmd {
    /// What this host allows for the configuration, with the sysctl and ulimit lines
    /// that fix what does not fit (exit 1 when something stops it from working).
    Check {
        /// Config file (default: the built-in defaults).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Args)]
struct ProbeArgs {
    /// Config file (its engine.uring_buffers and engine.uring_buffer_bytes are probed).
    #[arg(long, short)]
    config: Option<PathBuf>,
}

#[derive(Args, Default)]
struct ServeArgs {
    /// Config file (TOML); see tuning/default.toml.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// WebSocket listen address (overrides engine.listen).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Admin HTTP listen address (overrides admin.listen).
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Number of shards (overrides engine.shards; 0 = one per core).
    #[arg(long)]
    shards: Option<usize>,
    /// I/O backend: auto, uring or epoll (overrides engine.io).
    #[arg(long)]
    io: Option<switchboard_engine::IoMode>,
}

#[derive(Args)]
struct TokenArgs {
    /// User id (the `sub` claim).
    #[arg(long)]
    sub: String,
    /// Channel patterns the token allows, comma-separated (`room:*,news`); all if omitted.
    #[arg(long)]
    channels: Option<String>,
    /// User-id patterns the token may send direct messages to, comma-separated (`*`).
    #[arg(long)]
    send_to: Option<String>,
    /// Let the token schedule messages.
    #[arg(long)]
    schedule: bool,
    /// Lifetime: a number with s, m, h or d (`90s`, `30m`, `1h`, `7d`).
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    ttl: Duration,
    /// Config file to read auth.hmac_secret (and issuer/audience) from.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The HS256 secret (overrides the config file).
    #[arg(long, env = "SWITCHBOARD_TOKEN_SECRET")]
    secret: Option<String>,
    /// Mint an admin token (for `/admin/*`) with admin.jwt_secret and admin.role.
    #[arg(long)]
    admin: bool,
    /// Notification topics the token may subscribe to, comma-separated (`news,alerts`).
    #[arg(long)]
    topics: Option<String>,
    /// The `role` claim (namespaces' access rules: `provider`, `patient`, `admin`…).
    #[arg(long)]
    role: Option<String>,
    /// The `team` claim, comma-separated for several (access rules like `case:{team}:*`).
    #[arg(long)]
    team: Option<String>,
    /// The `tier` claim (rate-limit tiers, `engine.rate_limits` `tier`).
    #[arg(long)]
    tier: Option<String>,
    /// Any other claim: `KEY=VALUE`, VALUE as JSON when it parses (`--claim clinic=7`,
    /// `--claim 'langs=["en","es"]'`); repeat for several.
    #[arg(long = "claim", value_parser = parse_claim)]
    claims: Vec<(String, serde_json::Value)>,
    /// The `aud` claim (default: auth.audience).
    #[arg(long)]
    aud: Option<String>,
    /// The `iss` claim (default: auth.issuer).
    #[arg(long)]
    iss: Option<String>,
}

/// Claims the server sets itself or reads from their own flags.
const RESERVED_CLAIMS: [&str; 9] = [
    "sub", "exp", "nbf", "iat", "iss", "aud", "channels", "send_to", "schedule",
];

fn parse_claim(s: &str) -> Result<(String, serde_json::Value), String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}' is not KEY=VALUE"))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("'{s}': the claim needs a name"));
    }
    if RESERVED_CLAIMS.contains(&key) {
        return Err(format!(
            "'{key}' has its own flag (or is set by the server)"
        ));
    }
    let value = serde_json::from_str(value).unwrap_or_else(|_| value.into());
    Ok((key.to_string(), value))
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration like 90s, 30m, 1h, 7d"))?;
    let secs = match unit {
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("unknown unit '{unit}' (use s, m, h or d)")),
    };
    Ok(Duration::from_secs(secs))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Cmd::Serve(cli.serve)) {
        Cmd::Serve(args) => serve(args),
        Cmd::Token(args) => token(args),
        Cmd::ProbeIo(args) => probe_io(args),
        Cmd::Config(ConfigCmd::Check { file }) => config_check(&file),
        Cmd::Tune(TuneCmd::Check { config }) => tune_check(config.as_deref()),
    }
}

fn config_check(file: &std::path::Path) -> ExitCode {
    let cfg = match Config::load(Some(file), &ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match toml::to_string(&cfg) {
        Ok(text) => {
            println!("# {}: valid; the effective configuration:", file.display());
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot print the configuration: {e}");
            ExitCode::FAILURE
        }
    }
}

fn tune_check(config: Option<&std::path::Path>) -> ExitCode {
    let cfg = match Config::load(config, &ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let host = switchboard_control_plane::tune::Host::read(&cfg);
    let report = switchboard_control_plane::tune::check(&host, &cfg);
    print!("{}", report.render());
    if report.failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn probe_io(args: ProbeArgs) -> ExitCode {
    let cfg = match Config::load(args.config.as_deref(), &ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match switchboard_engine::backend::probe_io_uring(&cfg.engine) {
        Ok(()) => {
            println!("io_uring: available");
            ExitCode::SUCCESS
        }
        Err(why) => {
            println!("io_uring: unavailable: {why}");
            ExitCode::FAILURE
        }
    }
}

fn token(args: TokenArgs) -> ExitCode {
    let cfg = match Config::load(args.config.as_deref(), &ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if args.admin {
        let Some(secret) = args.secret.or(cfg.admin.jwt_secret.clone()) else {
            eprintln!("error: no admin key: pass --secret, or set admin.jwt_secret in --config or SWITCHBOARD_ADMIN__JWT_SECRET");
            return ExitCode::from(2);
        };
        println!(
            "{}",
            auth::mint_admin(&secret, &args.sub, args.ttl, &cfg.admin.role)
        );
        return ExitCode::SUCCESS;
    }
    let Some(secret) = args.secret.or(cfg.auth.hmac_secret.clone()) else {
        eprintln!("error: no secret: pass --secret, or set auth.hmac_secret in --config or SWITCHBOARD_AUTH__HMAC_SECRET");
        return ExitCode::from(2);
    };
    let list = |c: String| -> Vec<String> {
        c.split(',')
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect()
    };
    let channels = args.channels.map(list);
    let send_to = args.send_to.map(list);
    let schedule = args.schedule.then_some(true);
    let mut extra: std::collections::BTreeMap<String, serde_json::Value> =
        args.claims.into_iter().collect();
    if let Some(t) = args.topics {
        extra.insert("topics".into(), serde_json::json!(list(t)));
    }
    if let Some(r) = args.role {
        extra.insert("role".into(), serde_json::json!(r));
    }
    if let Some(t) = args.team {
        let teams = list(t);
        let value = match teams.as_slice() {
            [one] => serde_json::json!(one),
            _ => serde_json::json!(teams),
        };
        extra.insert("team".into(), value);
    }
    if let Some(t) = args.tier {
        extra.insert("tier".into(), serde_json::json!(t));
    }
    println!(
        "{}",
        auth::mint_with(&secret, &args.sub, args.ttl, &cfg.auth, |c| {
            c.channels = channels;
            c.send_to = send_to;
            c.schedule = schedule;
            c.extra.extend(extra);
            if let Some(aud) = args.aud {
                c.aud = Some(auth::Audience::One(aud));
            }
            if let Some(iss) = args.iss {
                c.iss = Some(iss);
            }
        })
    );
    ExitCode::SUCCESS
}

fn serve(args: ServeArgs) -> ExitCode {
    let mut cfg = match Config::load(args.config.as_deref(), &ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(a) = args.listen {
        cfg.engine.listen = a;
    }
    if let Some(a) = args.admin {
        cfg.admin.listen = a;
    }
    if let Some(n) = args.shards {
        cfg.engine.shards = n;
    }
    if let Some(io) = args.io {
        cfg.engine.io = io;
    }
    if let Err(e) = cfg.validate() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log.level));
    // The HTTP and TLS clients (alert webhooks) log whole URLs at debug, and a
    // webhook's URL is its secret: capped at warn whatever the level asked for.
    for quiet in ["ureq=warn", "ureq_proto=warn", "rustls=warn"] {
        filter = filter.add_directive(quiet.parse().expect("a valid directive"));
    }
    // Security events (refused tokens and keys, admin actions, rate-limit
    // disconnects) carry the target `security`: shown in both formats so they can be
    // routed apart.
    // Colours only for a person at a terminal: a file or a log collector gets plain
    // text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match cfg.log.format {
        switchboard_control_plane::config::LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        switchboard_control_plane::config::LogFormat::Text => builder.init(),
    }

    let server = match Server::start(cfg.clone()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let ws = server.ws_addr();
    let admin = server.admin_addr();
    println!("switchboard {} listening", env!("CARGO_PKG_VERSION"));
    println!("  WebSocket  ws://{ws}/  (subprotocols switchboard.v1.msgpack, switchboard.v1.json)");
    println!("  Admin      http://{admin}/health/ready  http://{admin}/metrics");
    if let Some(dev) = &server.dev {
        println!();
        println!(
            "WARNING: dev mode. No auth key is configured, so this process generated a random"
        );
        println!("         secret and API key. Tokens die with the process. Not for production:");
        println!("         set auth.hmac_secret (or a key file) and admin.api_key.");
        println!("  Namespaces: room:* tracks presence; demo:* is stored (sync), with presence and edits.");
        println!("  Token (sub=dev, all channels, direct messages to anyone, scheduling, 24h):");
        println!("    {}", dev.token);
        println!("  Mint more:");
        println!(
            "    switchboard token --secret {} --sub alice --channels 'room:*' --ttl 1h",
            dev.secret
        );
    }
    if let Some(key) = &server.api_key {
        if server.dev.is_some() {
            println!("  API key: {key}");
            println!("    curl -H 'Authorization: Bearer {key}' -d '{{\"channel\":\"room:1\",\"data\":{{\"text\":\"hi\"}}}}' http://{admin}/api/publish");
        }
    }
    if let (Some(_), Some(secret)) = (&server.dev, &server.admin_secret) {
        let token = auth::mint_admin(
            secret,
            "dev-admin",
            Duration::from_secs(24 * 3600),
            &cfg.admin.role,
        );
        println!("  Admin token (role {}, 24h): {token}", cfg.admin.role);
        println!(
            "    curl -H 'Authorization: Bearer <ADMIN TOKEN>' http://{admin}/admin/rate-limits"
        );
    }

    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start signal handling: {e}");
            return ExitCode::FAILURE;
        }
    };
    let requested = server.shutdown_requested.clone();
    let signal = rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => Ok::<_, std::io::Error>("SIGTERM"),
            _ = int.recv() => Ok("SIGINT"),
            _ = requested.notified() => Ok("POST /admin/shutdown"),
        }
    });
    match signal {
        Ok(name) => tracing::info!("{name}: closing connections (1001) and draining"),
        Err(e) => tracing::error!("signal handling failed: {e}; shutting down"),
    }
    server.shutdown();
    server.wait();
    tracing::info!("stopped");
    ExitCode::SUCCESS
}
