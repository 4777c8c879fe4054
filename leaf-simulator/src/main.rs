//! `leaf-simulator`: replays NASA C-MAPSS engines as leaf devices `Client_001`… through the
//! local runtime's edgeHub, each with its own identity, and prints what it sent.

use anyhow::{Context, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use leaf_simulator::{sent_log, simulate, Progress, SimConfig, DEFAULT_RATE};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "leaf-simulator",
    version,
    about = "Replay NASA C-MAPSS engines as leaf devices (engine N = device Client_{N:03}) through the local IoT Edge runtime, over MQTT/TLS with each device's own identity."
)]
struct Cli {
    #[command(flatten)]
    state: runtime_state::StateArg,
    /// Folder of the C-MAPSS files (default: ../shared/data/cmapss next to the workspace).
    #[arg(long, env = "CMAPSS_DIR", value_name = "DIR")]
    data: Option<PathBuf>,
    /// The file to replay, in the data folder.
    #[arg(long, default_value = "test_FD003.txt", value_name = "FILE")]
    file: PathBuf,
    /// Only the first N engines (default: all).
    #[arg(long, value_name = "N")]
    devices: Option<usize>,
    /// Messages per second per device.
    #[arg(long, default_value_t = DEFAULT_RATE, value_name = "R")]
    rate: f64,
    /// At most this many messages per device (its first cycles).
    #[arg(long, value_name = "N")]
    max_messages: Option<u64>,
    /// Where to write the sent log (JSON lines: device, unit, cycle, correlationId, sentAt);
    /// default: leaf-simulator/sent.jsonl in the state folder.
    #[arg(long, value_name = "FILE")]
    sent_log: Option<PathBuf>,
    /// No progress bar; only the summary.
    #[arg(long)]
    quiet: bool,
}

#[global_allocator]
static ALLOC: edge_client::Allocator = edge_client::Allocator;

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    edge_client::logging::init_or("error");
    match run(cli).await {
        Ok(Outcome::Complete) => {}
        Ok(Outcome::Incomplete) => std::process::exit(1),
        // The shell convention for "ended by Ctrl-C", so that scripts stop too.
        Ok(Outcome::Interrupted) => std::process::exit(130),
        Err(e) => {
            eprintln!("leaf-simulator: {e:#}");
            std::process::exit(2);
        }
    }
}

fn progress_bar(quiet: bool) -> Result<ProgressBar> {
    let bar = ProgressBar::new(0);
    if quiet {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40.cyan/blue} {pos}/{len} messages {per_sec} {msg}",
        )
        .context("progress bar template")?
        .progress_chars("=> "),
    );
    Ok(bar)
}

/// How a run ended.
enum Outcome {
    /// Every message was acknowledged.
    Complete,
    /// Some messages were not acknowledged.
    Incomplete,
    /// Stopped by Ctrl-C.
    Interrupted,
}

/// Runs the simulation.
async fn run(cli: Cli) -> Result<Outcome> {
    let data = cli.data.unwrap_or_else(turbofan_domain::cmapss::data_dir);
    let file = data.join(&cli.file);
    let file = std::fs::canonicalize(&file).unwrap_or(file);
    let mut cfg = SimConfig::new(&cli.state.dir, file);
    cfg.devices = cli.devices;
    cfg.rate = cli.rate;
    cfg.max_messages = cli.max_messages;
    cfg.sent_log = Some(
        cli.sent_log
            .unwrap_or_else(|| sent_log::default_path(&cli.state.dir)),
    );

    let progress = Progress::new();
    let bar = progress_bar(cli.quiet)?;
    let watcher = {
        let (p, bar) = (progress.clone(), bar.clone());
        tokio::spawn(async move {
            loop {
                bar.set_length(p.planned());
                bar.set_position(p.sent() + p.failed());
                let failed = match p.failed() {
                    0 => String::new(),
                    f => format!(", {f} failed"),
                };
                bar.set_message(format!(
                    "({}/{} devices connected{failed})",
                    p.connected(),
                    p.devices()
                ));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let interrupted = Arc::new(AtomicBool::new(false));
    let stopper = {
        let (p, flag) = (progress.clone(), interrupted.clone());
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("leaf-simulator: stopping (waiting for messages in flight)");
                flag.store(true, Ordering::SeqCst);
                p.stop();
            }
        })
    };
    let result = simulate(&cfg, progress.clone()).await;
    watcher.abort();
    stopper.abort();
    bar.finish_and_clear();
    let summary = result?;
    println!("leaf-simulator: {}", cfg.data_file.display());
    println!("{summary}");
    Ok(if interrupted.load(Ordering::SeqCst) {
        Outcome::Interrupted
    } else if summary.is_complete() {
        Outcome::Complete
    } else {
        Outcome::Incomplete
    })
}
