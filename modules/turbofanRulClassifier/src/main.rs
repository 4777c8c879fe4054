//! `turbofanRulClassifier`, the IoT Edge module that scores telemetry with the RUL model in
//! ONNX Runtime, keeping the tutorial's Azure ML scoring contract:
//!
//! | input | output |
//! |---|---|
//! | `amlInput`: one telemetry object or an array of them | `amlOutput`: a JSON array echoing each object with `PredictedRul` |
//!
//! Messages that arrive together are scored in one model run (micro-batching). A message that
//! cannot be scored goes out unchanged with a `ClassifierError` property.
//!
//! Environment: `MODEL_PATH` (default: `rul.onnx` next to the binary, else the workspace's
//! `models/rul.onnx`), `ORT_DYLIB_PATH` (ONNX Runtime library), `SCORING_HTTP_ADDR` (enables
//! the debug endpoint). Desired properties: `LoggingLevel`, `MaxBatchSize`,
//! `MaxBatchWaitMs`, `MaxBodyBytes`. Reported: the model's name, hash and signature.
#![allow(non_snake_case)] // the binary is named after the module, as the manifest names it

mod http;
mod scoring;

use edge_client::{logging, AckToken, InputMessage, Message, ModuleClient, Prepared};
use rul_model::RulModel;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc::error::TryRecvError;
use tracing::{error, info, warn, Instrument};

/// The output the classifier answers on.
pub const AML_OUTPUT: &str = "amlOutput";
/// The input it listens on.
pub const AML_INPUT: &str = "amlInput";

/// State shared by the batcher and the HTTP endpoint.
pub struct Shared {
    model: Mutex<RulModel>,
    model_info: Value,
    max_batch: AtomicUsize,
    max_wait_ms: AtomicU64,
    max_body: AtomicUsize,
}

impl Shared {
    fn max_body(&self) -> usize {
        self.max_body.load(Ordering::Relaxed)
    }
}

fn model_path() -> PathBuf {
    if let Some(p) = std::env::var_os("MODEL_PATH") {
        return PathBuf::from(p);
    }
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(PathBuf::from))
        .unwrap_or_default();
    let beside = exe_dir.join("rul.onnx");
    let workspace = exe_dir.join("../../models/rul.onnx");
    if beside.is_file() || !workspace.is_file() {
        beside
    } else {
        workspace
    }
}

fn apply_desired(desired: &Value, s: &Shared, log: &logging::LogLevel) -> Value {
    let mut reported = serde_json::Map::new();
    if let Some(level) = desired.get("LoggingLevel").and_then(Value::as_str) {
        match log.set(level) {
            Ok(()) => {
                reported.insert("LoggingLevel".into(), json!(level));
            }
            Err(e) => warn!("{e}"),
        }
    }
    let mut number = |key: &str, min: u64, max: u64, apply: &dyn Fn(u64)| {
        if let Some(v) = desired.get(key) {
            match v.as_u64().filter(|n| (min..=max).contains(n)) {
                Some(n) => {
                    apply(n);
                    reported.insert(key.into(), json!(n));
                }
                None => {
                    warn!(value = %v, "{key} must be a whole number from {min} to {max}; ignored")
                }
            }
        }
    };
    number("MaxBatchSize", 1, 4096, &|n| {
        s.max_batch.store(n as usize, Ordering::Relaxed)
    });
    number("MaxBatchWaitMs", 0, 1000, &|n| {
        s.max_wait_ms.store(n, Ordering::Relaxed)
    });
    number("MaxBodyBytes", 1024, 16 << 20, &|n| {
        s.max_body.store(n as usize, Ordering::Relaxed)
    });
    Value::Object(reported)
}

/// Collects what arrived together (up to the batch size, waiting at most the batch wait).
async fn next_batch(
    inputs: &mut tokio::sync::mpsc::UnboundedReceiver<InputMessage>,
    first: InputMessage,
    s: &Shared,
) -> Vec<InputMessage> {
    let max = s.max_batch.load(Ordering::Relaxed).max(1);
    let wait = Duration::from_millis(s.max_wait_ms.load(Ordering::Relaxed));
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
            message.set_property(
                turbofan_domain::router::CLASSIFIER_ERROR,
                format!("unknown input '{input}'"),
            );
        }
        messages.push(message);
        tokens.push(token);
    }
    let scored = {
        let mut model = s.model.lock().unwrap_or_else(|p| p.into_inner());
        scoring::score_batch(&mut messages, s.max_body(), |f| model.predict(f))
    };
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
    if let Some(e) = m.property(turbofan_domain::router::CLASSIFIER_ERROR) {
        warn!(
            correlation_id = m.correlation_id.as_deref().unwrap_or(""),
            error = e,
            "not scored"
        );
    }
    let u = match client.prepare_output(AML_OUTPUT, m) {
        Ok(p) => return Some(p),
        Err(u) => u,
    };
    let m = scoring::unsendable_answer(*u.message, &u.reason);
    warn!(
        correlation_id = m.correlation_id.as_deref().unwrap_or(""),
        error = m.property(turbofan_domain::router::CLASSIFIER_ERROR),
        "answer too large to send"
    );
    match client.prepare_output(AML_OUTPUT, m) {
        Ok(p) => Some(p),
        Err(u) => {
            error!(
                correlation_id = u.message.correlation_id.as_deref().unwrap_or(""),
                "message dropped: even without its body its answer cannot be sent ({}); \
                 its properties are over MQTT's limits",
                u.reason
            );
            None
        }
    }
}

#[global_allocator]
static ALLOC: edge_client::Allocator = edge_client::Allocator;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let log = logging::init();
    let client = match ModuleClient::from_env().await {
        Ok(c) => c,
        Err(e) => {
            error!("cannot connect to edgeHub: {e}");
            std::process::exit(1);
        }
    };
    let path = model_path();
    let model = match RulModel::load(&path, 1) {
        Ok(m) => m,
        Err(e) => {
            // Say it where operators look (logs and the twin), then stop: a module without
            // its model must not take messages.
            error!("{e}");
            let _ = client
                .update_reported(&json!({"ModelStatus": "error", "ModelError": e.to_string()}))
                .await;
            client.close(Duration::from_secs(2)).await;
            std::process::exit(2);
        }
    };
    let i = model.info().clone();
    let model_info = json!({
        "Name": i.path.file_name().map(|n| n.to_string_lossy().into_owned()),
        "Sha256": i.sha256, "Producer": i.producer, "Version": i.version,
        "Input": i.input, "Output": i.output,
    });
    info!(model = %model_info, "model loaded");
    let shared = Arc::new(Shared {
        model: Mutex::new(model),
        model_info: model_info.clone(),
        max_batch: AtomicUsize::new(64),
        max_wait_ms: AtomicU64::new(0),
        max_body: AtomicUsize::new(256 * 1024),
    });
    let s = shared.clone();
    client
        .follow_desired(
            json!({"ModelStatus": "loaded", "Model": model_info}),
            move |d| apply_desired(d, &s, &log),
        )
        .await;
    if let Ok(addr) = std::env::var("SCORING_HTTP_ADDR") {
        if let Err(e) = http::serve(&addr, shared.clone()).await {
            error!("cannot serve HTTP scoring on {addr}: {e}");
            std::process::exit(1);
        }
    }

    let mut inputs = match client.inputs() {
        Ok(i) => i,
        Err(e) => {
            error!("{e}");
            std::process::exit(1);
        }
    };
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
    client.close(Duration::from_secs(10)).await;
    info!("turbofanRulClassifier stopped cleanly");
}
