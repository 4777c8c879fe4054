//! `turbofanRulClassifier`, the IoT Edge module that scores telemetry with the RUL model in
//! ONNX Runtime, keeping the tutorial's Azure ML scoring contract:
//!
//! | input | output |
//! |---|---|
//! | `amlInput`: one telemetry object or an array of them | `amlOutput`: a JSON array echoing each object with `PredictedRul` |
//!
//! Two scoring modes (desired property `ScoringMode`):
//!
//! - `history` (the default when the history model is present): each row joins its leaf
//!   device's history and is scored by `rul_history.onnx` over it; the answer adds
//!   `PredictedRulLow`, `PredictedRulHigh` (an 80 % interval) and `HistoryCycles`.
//! - `row`: the tutorial's per-row model `rul.onnx`, `PredictedRul` only.
//!
//! Every answer carries the live model's name in the `ModelName` property. Messages that
//! arrive together are scored in one model run (micro-batching). A message that cannot be
//! scored goes out unchanged with a `ClassifierError` property.
//!
//! Environment: `MODEL_PATH` (default: `rul.onnx` next to the binary, else the workspace's
//! `models/rul.onnx`), `HISTORY_MODEL_PATH` (likewise `rul_history.onnx`; a missing default
//! file means row mode only), `HISTORY_STATE_PATH` (default: `/state/history.cbor` through
//! the manifest's bind), `ORT_DYLIB_PATH` (ONNX Runtime library), `ORT_EXECUTION_PROVIDER` (`cpu`, the default, or
//! `cuda`/`cuda:<device>`: ONNX Runtime's CUDA provider, with the GPU image; when CUDA cannot
//! run the models run on the CPU, and the log and `ExecutionProvider` say why), `SCORING_HTTP_ADDR`
//! (enables the debug endpoint, per-row model). Desired properties ([`Settings`], through
//! [`edge_client::desired`]: an invalid value is refused with a warning, `null` puts back the
//! default): `LoggingLevel`, `MaxBatchSize`, `MaxBatchWaitMs`, `MaxBodyBytes`, `ScoringMode`,
//! `HistoryMaxDevices`, `HistoryIdleSeconds`, `HistorySnapshotSeconds`. Reported: `ScoringMode`, the live
//! `Model` (name, hash, signature, execution provider), both `Models`, `ExecutionProvider`
//! (`Requested`, `Used`, `Fallback`), and the desired values applied.
#![allow(non_snake_case)] // the binary is named after the module, as the manifest names it

mod history;
mod http;
mod metrics;
mod scoring;
mod state;

use anyhow::Context;
use edge_client::desired::{self, whole_number, ModuleSettings, Property};
use edge_client::{AckToken, InputMessage, Message, ModuleClient, Prepared};
use rul_model::{HistoryModel, ModelInfo, Provider, ProviderUse, RulModel};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::watch;
use tracing::{error, info, warn, Instrument};
use turbofan_domain::history::HistoryStore;

use turbofan_domain::ports::classifier::{AML_INPUT, AML_OUTPUT};
use turbofan_domain::ports::properties::{CLASSIFIER_ERROR, MODEL_NAME};

/// State shared by the batcher, the snapshot task and the HTTP endpoint.
pub struct Shared {
    model: Mutex<RulModel>,
    model_info: Value,
    history_model: Option<Mutex<HistoryModel>>,
    history_info: Option<Value>,
    /// The settings in force (desired properties).
    settings: watch::Receiver<Settings>,
    store: Mutex<HistoryStore>,
    /// Where each batch's history changes go before it is acknowledged (none without a
    /// state file).
    log: Option<Mutex<state::ChangeLog>>,
    /// Held while a snapshot is written: one at a time.
    saving: Mutex<()>,
    /// The change log could not be written at the last try (warned once until it can).
    log_failing: AtomicBool,
    /// Histories changed since the last snapshot.
    dirty: AtomicBool,
    metrics: metrics::ClassifierMetrics,
}

/// The classifier's settings: its desired properties, with their defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// `MaxBatchSize`: messages scored in one model run.
    max_batch: u64,
    /// `MaxBatchWaitMs`: how long a batch waits to fill.
    max_wait_ms: u64,
    /// `MaxBodyBytes`: larger messages are not scored.
    max_body: u64,
    /// `HistoryMaxDevices`: histories kept at most.
    max_devices: u64,
    /// `HistoryIdleSeconds`: a history not added to for this long is dropped.
    idle_secs: u64,
    /// `HistorySnapshotSeconds`: time between snapshots of the histories.
    snapshot_secs: u64,
    /// `ScoringMode`: `history` (true) or `row`.
    history_mode: bool,
    /// Whether the history model is loaded (not a property: `history` needs it).
    history_model: bool,
}

impl Settings {
    /// The defaults: `history` mode when the history model is loaded.
    fn defaults(history_model: bool) -> Settings {
        Settings {
            max_batch: 64,
            max_wait_ms: 0,
            max_body: 256 * 1024,
            max_devices: 10_000,
            idle_secs: 7 * 24 * 3600,
            snapshot_secs: 2,
            history_mode: history_model,
            history_model,
        }
    }
}

impl ModuleSettings for Settings {
    fn properties() -> Vec<Property<Settings>> {
        let number = |name, field: fn(&mut Settings) -> &mut u64, min, max| {
            let parse = whole_number(min, max);
            Property::new(name, field, move |_, v| parse(v), |n| json!(n))
        };
        vec![
            number("MaxBatchSize", |s| &mut s.max_batch, 1, 4096),
            number("MaxBatchWaitMs", |s| &mut s.max_wait_ms, 0, 1000),
            number("MaxBodyBytes", |s| &mut s.max_body, 1024, 16 << 20),
            number("HistoryMaxDevices", |s| &mut s.max_devices, 1, 10_000_000),
            number(
                "HistoryIdleSeconds",
                |s| &mut s.idle_secs,
                60,
                10 * 365 * 24 * 3600,
            ),
            number("HistorySnapshotSeconds", |s| &mut s.snapshot_secs, 1, 3600),
            Property::new(
                "ScoringMode",
                |s: &mut Settings| &mut s.history_mode,
                |s, v| match v.as_str() {
                    Some("history") if s.history_model => Ok(true),
                    Some("history") => Err(
                        "is 'history', but there is no history model (HISTORY_MODEL_PATH)".into(),
                    ),
                    Some("row") => Ok(false),
                    _ => Err("must be 'history' or 'row'".into()),
                },
                |h| json!(mode_name(*h)),
            ),
        ]
    }
}

fn mode_name(history: bool) -> &'static str {
    if history {
        "history"
    } else {
        "row"
    }
}

impl Shared {
    fn settings(&self) -> Settings {
        *self.settings.borrow()
    }

    fn max_body(&self) -> usize {
        self.settings().max_body as usize
    }
}

/// The model file: `var` if set (then it must load), else `file` beside the binary, else in
/// the workspace's `models/`. The flag says whether the path was given explicitly.
fn model_path(var: &str, file: &str) -> (PathBuf, bool) {
    if let Some(p) = std::env::var_os(var) {
        return (PathBuf::from(p), true);
    }
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(PathBuf::from))
        .unwrap_or_default();
    let beside = exe_dir.join(file);
    let workspace = exe_dir.join("../../models").join(file);
    if beside.is_file() || !workspace.is_file() {
        (beside, false)
    } else {
        (workspace, false)
    }
}

fn describe_model(i: &ModelInfo) -> Value {
    json!({
        "Name": i.name, "File": i.path.file_name().map(|n| n.to_string_lossy().into_owned()),
        "Sha256": i.sha256, "Producer": i.producer, "Version": i.version,
        "Input": i.input, "Output": i.output,
        "ExecutionProvider": i.provider.used.ort_name(),
    })
}

/// The reported `ExecutionProvider`: what the configuration asked for, what the models run on
/// and, when they differ, why.
fn describe_provider(p: &ProviderUse) -> Value {
    json!({
        "Requested": p.requested.to_string(),
        "Used": p.used.to_string(),
        "Fallback": p.fallback,
    })
}

impl Shared {
    fn live_model(&self) -> &Value {
        match (&self.history_info, self.settings().history_mode) {
            (Some(h), true) => h,
            _ => &self.model_info,
        }
    }

    fn mode_name(&self) -> &'static str {
        mode_name(self.settings().history_mode)
    }

    /// Applies new settings to the history store; returns the live model, to report.
    fn settings_changed(&self, new: &Settings) -> Value {
        self.store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_bounds(new.max_devices as usize, new.idle_secs);
        info!(mode = self.mode_name(), model = %self.live_model()["Name"], "scoring mode");
        json!({"Model": self.live_model()})
    }
}

/// Collects what arrived together (up to the batch size, waiting at most the batch wait).
async fn next_batch(
    inputs: &mut tokio::sync::mpsc::UnboundedReceiver<InputMessage>,
    first: InputMessage,
    s: &Shared,
) -> Vec<InputMessage> {
    let settings = s.settings();
    let max = (settings.max_batch as usize).max(1);
    let wait = Duration::from_millis(settings.max_wait_ms);
    let deadline = tokio::time::Instant::now() + wait;
    let mut batch = vec![first];
    while batch.len() < max {
        match inputs.try_recv() {
            Ok(m) => batch.push(m),
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) if wait.is_zero() => break,
            Err(TryRecvError::Empty) => {
                match tokio::time::timeout_at(deadline, inputs.recv()).await {
                    Ok(Some(m)) => batch.push(m),
                    _ => break,
                }
            }
        }
    }
    batch
}

/// Scores a batch in one model run and sends each answer; each input is acknowledged once
/// edgeHub has accepted its answer.
async fn score_and_send(batch: Vec<InputMessage>, s: &Shared, client: &ModuleClient) {
    let mut tokens: Vec<AckToken> = Vec::with_capacity(batch.len());
    let mut messages: Vec<Message> = Vec::with_capacity(batch.len());
    for m in batch {
        let (input, mut message, token) = m.into_parts();
        if input != AML_INPUT {
            message.set_property(CLASSIFIER_ERROR, format!("unknown input '{input}'"));
        }
        messages.push(message);
        tokens.push(token);
    }
    let started = std::time::Instant::now();
    let (scored, model_name, mode) = match (&s.history_model, s.settings().history_mode) {
        (Some(h), true) => {
            let mut store = s.store.lock().unwrap_or_else(|p| p.into_inner());
            let mut model = h.lock().unwrap_or_else(|p| p.into_inner());
            let mut changes = Vec::new();
            let n = history::score_batch(
                &mut messages,
                s.max_body(),
                &mut store,
                state::now(),
                &mut changes,
                |f| model.predict(f),
            );
            // Logged under the store's lock, before any of the batch is acknowledged.
            if let Some(log) = &s.log {
                let written = log
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .append(&changes);
                match written {
                    Ok(()) if s.log_failing.swap(false, Ordering::Relaxed) => {
                        info!("the history change log is written again")
                    }
                    Ok(()) => {}
                    Err(e) if !s.log_failing.swap(true, Ordering::Relaxed) => {
                        warn!("cannot write the history change log ({e}): a crash now loses the histories' cycles since the last snapshot")
                    }
                    Err(_) => {}
                }
            }
            s.dirty.store(true, Ordering::Relaxed);
            (n, model.info().name.clone(), "history")
        }
        _ => {
            let mut model = s.model.lock().unwrap_or_else(|p| p.into_inner());
            let n = scoring::score_batch(&mut messages, s.max_body(), |f| model.predict(f));
            (n, model.info().name.clone(), "row")
        }
    };
    s.metrics.batch(
        mode,
        messages.len(),
        scored,
        started.elapsed().as_secs_f64(),
    );
    for m in &mut messages {
        m.set_property(MODEL_NAME, model_name.as_str());
    }
    tracing::debug!(batch = messages.len(), scored, "batch scored");
    for (m, token) in messages.into_iter().zip(tokens) {
        // Debug level, as the module client's message spans. A message that could not be
        // scored is named in its warning; a failed send is the connection's (the message
        // is delivered again) and is not.
        let span = tracing::debug_span!(
            "message",
            correlation_id = m.correlation_id.as_deref().unwrap_or("")
        );
        let answer = span.in_scope(|| prepare_answer(client, m));
        if let Err(e) = client.forward(token, answer).instrument(span).await {
            warn!(error = %e, "answer not sent; left for redelivery");
        }
    }
}

/// The answer `m` made ready to send; if MQTT cannot carry it, the answer without its body,
/// saying so (the router dead-letters it: sent again, it would fail again); `None` if not
/// even that can be sent.
fn prepare_answer(client: &ModuleClient, m: Message) -> Option<Prepared> {
    if let Some(e) = m.property(CLASSIFIER_ERROR) {
        warn!(
            correlation_id = m.correlation_id.as_deref().unwrap_or(""),
            error = e,
            "not scored"
        );
    }
    client.prepare_or_instead(AML_OUTPUT, m, |m, reason| {
        let m = scoring::unsendable_answer(m, reason);
        warn!(
            correlation_id = m.correlation_id.as_deref().unwrap_or(""),
            error = m.property(CLASSIFIER_ERROR),
            "answer too large to send"
        );
        (AML_OUTPUT, m)
    })
}

/// Writes the histories when they changed, every `HistorySnapshotSeconds`.
async fn snapshots(s: Arc<Shared>, path: PathBuf) {
    loop {
        let secs = s.settings().snapshot_secs.max(1);
        tokio::time::sleep(Duration::from_secs(secs)).await;
        if s.dirty.swap(false, Ordering::Relaxed) {
            snapshot(&s, &path).await;
        }
    }
}

async fn snapshot(s: &Arc<Shared>, path: &std::path::Path) {
    let (s2, p) = (s.clone(), path.to_path_buf());
    let started = std::time::Instant::now();
    let saved = tokio::task::spawn_blocking(move || match &s2.log {
        Some(log) => state::save(&s2.store, log, &s2.saving, &p),
        None => Ok(0),
    });
    match saved.await {
        Ok(Ok(devices)) => tracing::debug!(
            devices,
            ms = started.elapsed().as_millis() as u64,
            "history snapshot written"
        ),
        Ok(Err(e)) => warn!(path = %path.display(), "history snapshot not written: {e}"),
        Err(e) => warn!("history snapshot task failed: {e}"),
    }
}

#[global_allocator]
static ALLOC: edge_client::Allocator = edge_client::Allocator;

/// Why the module stopped without its models (exit status 2, so it is told from a lost
/// connection).
#[derive(Debug, thiserror::Error)]
#[error("cannot load the models: {0}")]
struct NoModels(rul_model::ModelError);

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            match e.downcast_ref::<NoModels>() {
                Some(_) => ExitCode::from(2),
                None => ExitCode::FAILURE,
            }
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn run() -> anyhow::Result<()> {
    let edge_client::ModuleProcess {
        client,
        log,
        metrics,
    } = edge_client::start_module()
        .await
        .context("cannot connect to edgeHub")?;
    let models_loaded = Arc::new(AtomicBool::new(false));
    let loaded_flag = models_loaded.clone();
    metrics.ready_when(move || match loaded_flag.load(Ordering::SeqCst) {
        true => Ok(()),
        false => Err("loading the models".into()),
    });
    let (path, _) = model_path("MODEL_PATH", "rul.onnx");
    let loaded = Provider::from_env()
        .map_err(rul_model::ModelError::from)
        .and_then(|provider| Ok((provider, RulModel::load_on(&path, 1, provider)?)));
    let loaded = loaded.and_then(|(provider, row)| {
        let (hpath, explicit) = model_path("HISTORY_MODEL_PATH", "rul_history.onnx");
        if !explicit && !hpath.is_file() {
            info!(path = %hpath.display(), "no history model: scoring per row only");
            return Ok((row, None));
        }
        let h = HistoryModel::load_on(
            &hpath,
            1,
            provider,
            turbofan_domain::history::N_FEATURES,
            turbofan_domain::history::FEATURE_SET,
        )?;
        Ok((row, Some(h)))
    });
    let (model, history_model) = match loaded {
        Ok(m) => m,
        Err(e) => {
            // Say it where operators look (logs and the twin), then stop: a module without
            // its models must not take messages.
            let _ = client
                .update_reported(&json!({"ModelStatus": "error", "ModelError": e.to_string()}))
                .await;
            client.close(Duration::from_secs(2)).await;
            return Err(NoModels(e).into());
        }
    };
    // Both models are asked for the same provider; a fallback of either is the one to report.
    let provider = history_model
        .as_ref()
        .map(|h| &h.info().provider)
        .filter(|h| h.fallback.is_some())
        .unwrap_or(&model.info().provider)
        .clone();
    match &provider.fallback {
        Some(why) => warn!(requested = %provider.requested, "{why}"),
        None => info!(provider = provider.used.ort_name(), "execution provider"),
    }
    let model_info = describe_model(model.info());
    let history_info = history_model.as_ref().map(|h| describe_model(h.info()));
    info!(model = %model_info, history_model = ?history_info, "models loaded");
    models_loaded.store(true, Ordering::SeqCst);
    // An explicit path, or the bind of the manifest, may create the folder; the bare
    // container path is only used where the volume is mounted.
    let container = std::path::Path::new(state::CONTAINER_PATH);
    let (state_path, create) = match std::env::var_os("HISTORY_STATE_PATH") {
        Some(p) => (PathBuf::from(p), true),
        None => {
            let p = client.settings().container_path(container);
            let mapped = p != container;
            (p, mapped)
        }
    };
    let defaults = Settings::defaults(history_model.is_some());
    let opened = state::check_writable(&state_path, create).and_then(|()| {
        state::open(
            &state_path,
            defaults.max_devices as usize,
            defaults.idle_secs,
        )
    });
    let (store, change_log, state_path) = match opened {
        Ok(o) => {
            info!(
                devices = o.store.len(),
                replayed = o.replayed,
                "histories ready (the snapshot and the changes logged since)"
            );
            (o.store, Some(Mutex::new(o.log)), Some(state_path))
        }
        Err(e) => {
            warn!(path = %state_path.display(), "cannot write the history state file ({e}): histories are kept in memory only and start empty after a restart");
            (
                HistoryStore::new(defaults.max_devices as usize, defaults.idle_secs),
                None,
                None,
            )
        }
    };
    let (settings, current) = watch::channel(defaults);
    let shared = Arc::new(Shared {
        model: Mutex::new(model),
        model_info: model_info.clone(),
        settings: current,
        history_model: history_model.map(Mutex::new),
        history_info: history_info.clone(),
        store: Mutex::new(store),
        log: change_log,
        saving: Mutex::new(()),
        log_failing: AtomicBool::new(false),
        dirty: AtomicBool::new(false),
        metrics: metrics::ClassifierMetrics::default(),
    });
    shared.metrics.register(&metrics);
    let s = shared.clone();
    metrics.on_scrape(move || {
        let devices = s.store.lock().unwrap_or_else(|p| p.into_inner()).len();
        s.metrics.history_devices.set(devices as i64);
    });
    let s = shared.clone();
    desired::follow(
        &client,
        log,
        settings,
        json!({
            "ModelStatus": "loaded",
            "ScoringMode": shared.mode_name(),
            "Model": shared.live_model(),
            "Models": {"row": model_info, "history": history_info},
            "ExecutionProvider": describe_provider(&provider),
        }),
        move |new| s.settings_changed(new),
    )
    .await;
    if let Some(path) = state_path.clone() {
        tokio::spawn(snapshots(shared.clone(), path));
    }
    if let Ok(addr) = std::env::var("SCORING_HTTP_ADDR") {
        http::serve(&addr, shared.clone())
            .await
            .with_context(|| format!("cannot serve HTTP scoring on {addr}"))?;
    }

    let mut inputs = client.inputs()?;
    info!("turbofanRulClassifier running");
    // Nothing waits per answer: `forward` acknowledges each input when edgeHub has
    // accepted its answer.
    let stop = edge_client::shutdown_signal();
    tokio::pin!(stop);
    while let Some(first) = edge_client::next_input(&mut inputs, stop.as_mut()).await {
        let batch = next_batch(&mut inputs, first, &shared).await;
        score_and_send(batch, &shared, &client).await;
    }
    drop(inputs);
    if let Some(path) = state_path {
        snapshot(&shared, &path).await;
    }
    client.close(Duration::from_secs(10)).await;
    info!("turbofanRulClassifier stopped cleanly");
    Ok(())
}
