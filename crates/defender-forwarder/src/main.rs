//! `defender-forwarder --config FILE`: runs the pipeline until SIGINT/SIGTERM (or idle).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use defender_forwarder::config::Config;
use defender_forwarder::pipeline::{self, Ended, RunOptions, Summary};
use tokio_util::sync::CancellationToken;

/// Forwards Microsoft Defender XDR advanced-hunting events from Azure Event Hubs to Sekoia.io,
/// a local archive and stdout, at least once: a checkpoint never passes an undelivered event.
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "Examples:\n  defender-forwarder --config examples/forward-to-sekoia.toml\n  defender-forwarder --config examples/archive.toml --exit-when-idle 30 --metrics 9464\n\nConfiguration reference: docs/configuration.md"
)]
struct Args {
    /// The configuration file (TOML; `${VAR}` and `${VAR:-default}` read the environment).
    #[arg(long, short)]
    config: PathBuf,
    /// Exit once nothing new arrived for SECS seconds and every partition (or container) is read
    /// to its end, here or by a live other instance, and delivered and checkpointed (exit 0).
    /// While a partition waits for a silent owner's lease to expire, it keeps waiting.
    #[arg(long, value_name = "SECS")]
    exit_when_idle: Option<f64>,
    /// With --exit-when-idle: give up after SECS seconds, name what is unread and exit 3.
    #[arg(long, value_name = "SECS", requires = "exit_when_idle")]
    max_wait: Option<f64>,
    /// Serve Prometheus `/metrics`, `/healthz` and `/readyz` on PORT (127.0.0.1) or ADDR:PORT.
    #[arg(long, value_name = "[ADDR:]PORT")]
    metrics: Option<String>,
    /// Log format on standard error.
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// Check the configuration and exit.
    #[arg(long)]
    check_config: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logs(args.log_format);
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let metrics_addr = match args.metrics.as_deref().map(parse_metrics_addr).transpose() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: --metrics: {e}");
            return ExitCode::from(2);
        }
    };
    let (exit_when_idle, max_wait) = match (
        seconds("--exit-when-idle", args.exit_when_idle),
        seconds("--max-wait", args.max_wait),
    ) {
        (Ok(idle), Ok(max)) => (idle, max),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        println!(
            "configuration OK: {} source(s), {} sink(s)",
            config.sources.len(),
            config.sinks.len()
        );
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let stop = CancellationToken::new();
        tokio::spawn(signals(stop.clone()));
        let options = RunOptions {
            exit_when_idle,
            max_wait,
            metrics_addr,
            stop,
            ..RunOptions::default()
        };
        match pipeline::run(config, options).await {
            Ok(summary) => stopped(&summary),
            Err(e) => {
                tracing::error!(error = %e, "cannot run");
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn seconds(flag: &str, s: Option<f64>) -> Result<Option<Duration>, String> {
    match s {
        Some(s) if !(s.is_finite() && s >= 0.0) => Err(format!("{flag}: expected a number of seconds, got {s}")),
        s => Ok(s.map(Duration::from_secs_f64)),
    }
}

/// Logs the summary and picks the exit code: 0 when everything read was delivered and
/// checkpointed (and, with --exit-when-idle, everything was read), 1 when the shutdown could not
/// finish that, 3 when --max-wait ran out.
fn stopped(summary: &Summary) -> ExitCode {
    let out: Vec<String> = summary
        .records_out
        .iter()
        .map(|(sink, n)| format!("{sink}={n}"))
        .collect();
    tracing::info!(
        records_in = summary.records_in,
        delivered = %out.join(" "),
        dead_letters = summary.dead_letters,
        clean = summary.clean,
        owner_id = %summary.owner_id,
        owned = %summary.units_in("owned").join(","),
        other = %summary.units_in("other").join(","),
        waiting = %summary.units_in("waiting").join(","),
        unowned = %summary.units_in("unowned").join(","),
        "stopped"
    );
    match (summary.ended, summary.clean) {
        (Ended::GaveUp, _) => {
            eprintln!(
                "error: --max-wait ran out; not read to the end: {}",
                summary.unread().join(", ")
            );
            ExitCode::from(3)
        }
        (_, false) => {
            eprintln!(
                "error: the shutdown could not deliver and checkpoint everything in time; it is read again on the next start"
            );
            ExitCode::FAILURE
        }
        _ => ExitCode::SUCCESS,
    }
}

fn parse_metrics_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    s.parse::<SocketAddr>()
        .map_err(|_| format!("`{s}` is neither a port nor ADDR:PORT"))
}

/// The first SIGINT/SIGTERM drains and exits; a second one exits at once.
async fn signals(stop: CancellationToken) {
    let mut seen = false;
    loop {
        wait_signal().await;
        if seen {
            eprintln!("second signal: exiting without draining (undelivered events are read again on the next start)");
            std::process::exit(130);
        }
        seen = true;
        tracing::info!("signal received: draining (send it again to exit at once)");
        stop.cancel();
    }
}

#[cfg(unix)]
async fn wait_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(not(unix))]
async fn wait_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

fn init_logs(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("DEFENDER_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info,azure_messaging_eventhubs=warn,azure_core_amqp=warn,fe2o3_amqp=warn"));
    // Colours only on a terminal: logs in files and journals stay plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
