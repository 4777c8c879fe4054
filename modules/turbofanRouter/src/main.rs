//! `turbofanRouter`, the IoT Edge module that routes the tutorial's messages:
//!
//! | input | outputs |
//! |---|---|
//! | `deviceInput` (leaf telemetry) | `classOutput` (to the classifier) |
//! | `rulInput` (classifier answers) | `hubOutput` (RUL messages for IoT Hub), `avroOutput` (records for the Avro writer) |
//! | anything bad | `deadMessages` (`DeadLetter=true`, `DeadLetterReason`) |
//!
//! Desired properties: `LoggingLevel`; `RulThreshold` (only predictions below it go to
//! `hubOutput`; the Avro record is always written).
#![allow(non_snake_case)] // the binary is named after the module, as the manifest names it

use edge_client::{logging, Message, ModuleClient};
use serde_json::{json, Value};
use std::sync::{Arc, RwLock};
use tracing::{error, info, warn};
use turbofan_domain::ports::properties::DEAD_LETTER_REASON;
use turbofan_domain::ports::router::{DEAD_OUTPUT, DEVICE_INPUT, RUL_INPUT};
use turbofan_domain::router;

/// Settings from desired properties.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Settings {
    rul_threshold: Option<f64>,
}

/// Applies a desired document or patch; returns what to report.
fn apply_desired(desired: &Value, settings: &RwLock<Settings>, log: &logging::LogLevel) -> Value {
    let mut reported = serde_json::Map::new();
    if let Some(level) = log.apply_desired(desired) {
        reported.insert(logging::LOGGING_LEVEL.into(), json!(level));
    }
    if let Some(t) = desired.get("RulThreshold") {
        let mut s = settings.write().unwrap_or_else(|p| p.into_inner());
        match t {
            Value::Null => s.rul_threshold = None,
            Value::Number(n) => s.rul_threshold = n.as_f64(),
            other => {
                warn!(value = %other, "RulThreshold must be a number or null; keeping {:?}", s.rul_threshold)
            }
        }
        info!(threshold = ?s.rul_threshold, "RulThreshold");
        reported.insert("RulThreshold".into(), json!(s.rul_threshold));
    }
    Value::Object(reported)
}

/// The outputs for input message `m`, made ready to send.
fn handle(
    client: &ModuleClient,
    settings: &RwLock<Settings>,
    input: &str,
    m: Message,
) -> Vec<edge_client::Prepared> {
    let outgoing = match input {
        DEVICE_INPUT => router::device_input(
            m,
            || chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            || uuid::Uuid::new_v4().to_string(),
        ),
        RUL_INPUT => {
            let threshold = settings
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .rul_threshold;
            router::rul_input(m, threshold)
        }
        other => vec![(
            DEAD_OUTPUT,
            router::dead_letter(m, format!("unknown input '{other}'")),
        )],
    };
    for (output, m) in &outgoing {
        if *output == DEAD_OUTPUT {
            warn!(
                correlation_id = m.correlation_id.as_deref().unwrap_or(""),
                message_id = m.message_id.as_deref().unwrap_or(""),
                reason = m.property(DEAD_LETTER_REASON).unwrap_or(""),
                "dead letter"
            );
        }
    }
    // Sent together; the input is acknowledged when edgeHub has accepted them all.
    outgoing
        .into_iter()
        .filter_map(|(output, m)| prepare(client, output, m))
        .collect()
}

/// `m` made ready for `output`; if MQTT cannot carry it, its dead letter without the body
/// instead (sent again, it would fail again); `None` if not even that can be sent.
fn prepare(client: &ModuleClient, output: &str, m: Message) -> Option<edge_client::Prepared> {
    client.prepare_or_instead(output, m, |m, reason| {
        let dead = router::unsendable(m, output, reason);
        warn!(
            correlation_id = dead.correlation_id.as_deref().unwrap_or(""),
            message_id = dead.message_id.as_deref().unwrap_or(""),
            reason = dead.property(DEAD_LETTER_REASON).unwrap_or(""),
            "dead letter without its body"
        );
        (DEAD_OUTPUT, dead)
    })
}

#[global_allocator]
static ALLOC: edge_client::Allocator = edge_client::Allocator;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // The router's metrics are the client's: messages in per input, out per output (its
    // dead letters are those on deadMessages).
    let edge_client::ModuleProcess { client, log, .. } = edge_client::start_module().await;
    let settings = Arc::new(RwLock::new(Settings::default()));
    let s = settings.clone();
    client
        .follow_desired(json!({}), move |d| apply_desired(d, &s, &log))
        .await;
    info!("turbofanRouter running");
    let c = client.clone();
    let result =
        edge_client::forward_inputs(&client, edge_client::shutdown_signal(), move |input, m| {
            handle(&c, &settings, input, m)
        })
        .await;
    match result {
        Ok(()) => info!("turbofanRouter stopped cleanly"),
        Err(e) => {
            error!("{e}");
            std::process::exit(1);
        }
    }
}
