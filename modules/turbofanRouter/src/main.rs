//! `turbofanRouter`, the IoT Edge module that routes the tutorial's messages:
//!
//! | input | outputs |
//! |---|---|
//! | `deviceInput` (leaf telemetry) | `classOutput` (to the classifier) |
//! | `rulInput` (classifier answers) | `hubOutput` (RUL messages for IoT Hub), `avroOutput` (records for the Avro writer) |
//! | anything bad | `deadMessages` (`DeadLetter=true`, `DeadLetterReason`) |
//!
//! Desired properties ([`edge_client::desired`]: an invalid value is refused with a warning,
//! `null` puts back the default): `LoggingLevel`; `RulThreshold` (only predictions below it
//! go to `hubOutput`; the Avro record is always written; default none: all go).
#![allow(non_snake_case)] // the binary is named after the module, as the manifest names it

use anyhow::Context;
use edge_client::desired::{self, ModuleSettings, Property};
use edge_client::{Message, ModuleClient};
use serde_json::{json, Value};
use std::process::ExitCode;
use tokio::sync::watch;
use tracing::{info, warn};
use turbofan_domain::ports::properties::DEAD_LETTER_REASON;
use turbofan_domain::ports::router::{DEAD_OUTPUT, DEVICE_INPUT, RUL_INPUT};
use turbofan_domain::router;

/// Settings from desired properties.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Settings {
    /// `RulThreshold`: only predictions below it go to `hubOutput` (default: none, all go).
    rul_threshold: Option<f64>,
}

impl ModuleSettings for Settings {
    fn properties() -> Vec<Property<Settings>> {
        vec![Property::new(
            "RulThreshold",
            |s: &mut Settings| &mut s.rul_threshold,
            |_, v| match v {
                Value::Number(n) => Ok(n.as_f64()),
                _ => Err("must be a number (or null for none)".into()),
            },
            |t| json!(t),
        )]
    }
}

/// The outputs for input message `m`, made ready to send.
fn handle(
    client: &ModuleClient,
    settings: &watch::Receiver<Settings>,
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
            let threshold = settings.borrow().rul_threshold;
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

fn main() -> ExitCode {
    edge_client::exit_code(run())
}

#[tokio::main(flavor = "current_thread")]
async fn run() -> anyhow::Result<()> {
    // The router's metrics are the client's: messages in per input, out per output (its
    // dead letters are those on deadMessages).
    let edge_client::ModuleProcess { client, log, .. } = edge_client::start_module()
        .await
        .context("cannot connect to edgeHub")?;
    let (settings, current) = watch::channel(Settings::default());
    desired::follow(&client, log, settings, json!({}), |_| Value::Null).await;
    info!("turbofanRouter running");
    let c = client.clone();
    edge_client::forward_inputs(&client, edge_client::shutdown_signal(), move |input, m| {
        handle(&c, &current, input, m)
    })
    .await?;
    info!("turbofanRouter stopped cleanly");
    Ok(())
}
