//! `demo-report`: reads what a demo run left (sent log, IoT Hub's upstream store and
//! file-upload notifications, module twins and queues, the C-MAPSS truth) and writes
//! report.md, report.json and rul.svg. Optionally waits for the run to settle first.

use anyhow::{Context, Result};
use clap::Parser;
use demo_report::endpoint;
use demo_report::inputs::{self, Snapshot, Sources};
use demo_report::wait::{self, WaitGoal};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "demo-report",
    version,
    about = "Report on a demo run: messages sent, classified and dead-lettered, Avro records and uploads, and predicted against true RUL per engine (RMSE, PHM08 score, rul.svg)."
)]
struct Cli {
    #[command(flatten)]
    state: runtime_state::StateArg,
    /// The simulator's sent log (default: leaf-simulator/sent.jsonl in the state folder).
    #[arg(long, value_name = "FILE")]
    sent_log: Option<PathBuf>,
    /// Folder of the C-MAPSS files (default: ../shared/data/cmapss next to the workspace).
    #[arg(long, env = "CMAPSS_DIR", value_name = "DIR")]
    data: Option<PathBuf>,
    /// The replayed test file, in the data folder.
    #[arg(long, default_value = "test_FD003.txt", value_name = "FILE")]
    file: PathBuf,
    /// The true RUL file (default: the test file's, e.g. RUL_FD003.txt).
    #[arg(long, value_name = "FILE")]
    rul_file: Option<PathBuf>,
    /// Folder to write the report to (default: out/demo-<UTC time>).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// First wait up to this many seconds for every sent message to have its RUL message or
    /// a dead letter in IoT Hub.
    #[arg(long, default_value_t = 0.0, value_name = "SECS")]
    wait: f64,
    /// While waiting, also wait for the Avro writer to archive the RUL records and upload
    /// its files.
    #[arg(long)]
    wait_uploads: bool,
    /// Stop waiting when nothing changed for this many seconds.
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    stall: f64,
    /// Engines to draw in rul.svg, e.g. 24,77 (default: five spread over history lengths).
    #[arg(long, value_delimiter = ',', value_name = "UNITS")]
    plot_engines: Option<Vec<u32>>,
    /// No progress bar while waiting.
    #[arg(long)]
    quiet: bool,
    /// The per-row model to compare with: it scores the same rows the judged predictions
    /// came from (skipped, with a note, if it cannot be loaded).
    #[arg(
        long,
        env = "ROW_MODEL_PATH",
        default_value = "models/rul.onnx",
        value_name = "FILE"
    )]
    row_model: PathBuf,
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(Cli::parse()).await {
        eprintln!("demo-report: {e:#}");
        std::process::exit(2);
    }
}

/// The per-row model's prediction at each judged engine's row (same unit and cycle of the
/// replayed file), with its RMSE and PHM08 score against the same truth.
fn compare_row_model(
    model: &std::path::Path,
    data_file: &std::path::Path,
    engines: &[demo_report::analysis::EngineResult],
) -> Result<Option<demo_report::report::RowComparison>> {
    use demo_report::analysis;
    if engines.is_empty() {
        return Ok(None);
    }
    let rows = turbofan_domain::cmapss::read_rows(data_file)?;
    let by_key: std::collections::HashMap<(u32, u32), [f32; 21]> = rows
        .iter()
        .map(|r| ((r.unit, r.cycle), r.features()))
        .collect();
    let mut features = Vec::with_capacity(engines.len() * 21);
    for e in engines {
        let f = by_key.get(&(e.unit, e.cycle)).with_context(|| {
            format!(
                "{} has no row for engine {} cycle {}",
                data_file.display(),
                e.unit,
                e.cycle
            )
        })?;
        features.extend_from_slice(f);
    }
    let mut m = rul_model::RulModel::load(model, 1)?;
    let predicted: Vec<f64> = m.predict(&features)?.into_iter().map(f64::from).collect();
    let errors: Vec<f64> = predicted
        .iter()
        .zip(engines)
        .map(|(p, e)| p - e.actual)
        .collect();
    Ok(Some(demo_report::report::RowComparison {
        model: model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        engines: engines.len(),
        rmse: analysis::rmse(&errors).unwrap_or(f64::NAN),
        phm08_score: analysis::phm08_score(&errors).unwrap_or(f64::NAN),
        predicted,
    }))
}

/// The hub routes' counts and the RUL figures read from the `ruldata` storage endpoint,
/// beside the hub's; waits up to 30 s for the endpoint to hold every RUL message the hub
/// received (it writes every few seconds). `None` when the hub has no such endpoint.
async fn hub_routing(
    sources: &Sources,
    snapshot: &Snapshot,
    truth: &demo_report::analysis::Truth,
) -> Result<Option<endpoint::HubRouting>> {
    use std::collections::HashSet;
    let sent: HashSet<&str> = snapshot
        .sent
        .iter()
        .map(|s| s.correlation_id.as_str())
        .collect();
    let in_hub: Vec<_> = snapshot
        .upstream
        .ruls
        .iter()
        .filter(|r| sent.contains(r.correlation_id.as_str()))
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let read = loop {
        let Some(read) = endpoint::read(&sources.state_dir, endpoint::RUL_ENDPOINT).await? else {
            return Ok(None);
        };
        let mine = read
            .ruls
            .iter()
            .filter(|r| sent.contains(r.correlation_id.as_str()))
            .count();
        if mine >= in_hub.len() || std::time::Instant::now() >= deadline {
            break read;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let from_endpoint: Vec<_> = read
        .ruls
        .iter()
        .filter(|r| sent.contains(r.correlation_id.as_str()))
        .collect();
    let units = demo_report::analysis::units_of_devices(&snapshot.sent);
    Ok(Some(endpoint::HubRouting {
        routes: endpoint::route_counts(&sources.upstream())?,
        endpoint: read.endpoint.clone(),
        container: read.container.clone(),
        blobs: read.blobs,
        messages: read.messages,
        from_endpoint: endpoint::Figures::of(&from_endpoint, &units, truth),
        from_hub: endpoint::Figures::of(&in_hub, &units, truth),
    }))
}

fn secs(v: f64, what: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(v).with_context(|| format!("--{what} must be a number of seconds"))
}

async fn run(cli: Cli) -> Result<()> {
    let data = cli.data.unwrap_or_else(turbofan_domain::cmapss::data_dir);
    let data = std::fs::canonicalize(&data).unwrap_or(data);
    let mut sources = Sources::new(&cli.state.dir, &data.join(&cli.file));
    if let Some(p) = cli.sent_log {
        sources.sent_log = p;
    }
    if let Some(p) = cli.rul_file {
        sources.rul_file = data.join(p);
    }
    let goal = WaitGoal {
        timeout: secs(cli.wait, "wait")?,
        stall: secs(cli.stall, "stall")?,
        uploads: cli.wait_uploads,
    };
    let truth = inputs::read_truth(&sources)?;
    let mut snapshot = Snapshot::read(&sources).await?;

    let waited = if goal.timeout > Duration::ZERO {
        let bar = ProgressBar::new(0);
        if cli.quiet {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40.green/blue} {pos}/{len} with an outcome in IoT Hub {msg}",
            )
            .context("progress bar template")?
            .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        let uploads = goal.uploads;
        let result = wait::wait(&sources, &mut snapshot, goal, |s| {
            bar.set_length(s.sent as u64);
            bar.set_position(s.done as u64);
            if uploads && s.outcomes_done() {
                bar.set_message(format!(
                    "; Avro: {} records archived, {} files uploaded, {} waiting",
                    s.archived.map_or_else(|| "?".into(), |a| a.to_string()),
                    s.uploaded,
                    s.files_left
                ));
            }
        })
        .await?;
        bar.finish_and_clear();
        Some(result)
    } else {
        None
    };

    let now = chrono::Utc::now();
    let (mut report, mut plot) = demo_report::report::build(
        &snapshot,
        &truth,
        &sources,
        cli.plot_engines.as_deref(),
        waited,
        &now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    );
    match compare_row_model(&cli.row_model, &sources.data_file, &report.engines) {
        Ok(Some(c)) => {
            plot.last_row = report
                .engines
                .iter()
                .zip(&c.predicted)
                .map(|(e, p)| (e.actual, *p))
                .collect();
            report.row_model = Some(c);
        }
        Ok(None) => {}
        Err(e) => report.notes.push(format!("no per-row comparison: {e:#}")),
    }
    match hub_routing(&sources, &snapshot, &truth).await {
        Ok(h) => report.hub_routing = h,
        Err(e) => report
            .notes
            .push(format!("IoT Hub routing not reported: {e:#}")),
    }
    let out = cli.out.unwrap_or_else(|| {
        PathBuf::from("out").join(format!("demo-{}", now.format("%Y%m%dT%H%M%SZ")))
    });
    let written = demo_report::write(&report, &plot, &out)?;
    println!("Demo report ({}):", report.generated_at);
    print!("{}", report.summary());
    println!("  report        {}", written.markdown.display());
    println!("                {}", written.json.display());
    println!("                {}", written.picture.display());
    Ok(())
}
