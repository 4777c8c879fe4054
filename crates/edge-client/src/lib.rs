//! The edge module client: how every module of this project talks to edgeHub.
//!
//! A module starts the way modules start on a real IoT Edge device: from the `IOTEDGE_*`
//! environment (SAS tokens signed by the workload API, TLS verified against its trust bundle,
//! MQTT 3.1.1 to the gateway), or from a module connection string. Then it
//! - sends messages to named outputs ([`ModuleClient::send_output`], returns once accepted),
//! - handles messages per named input ([`ModuleClient::inputs`], [`run_inputs`], or
//!   [`forward_inputs`] for a module that turns each input into outputs), acknowledging
//!   each only after it was handled,
//! - reads its twin, receives desired-property patches and reports properties; a module's
//!   settings follow its desired properties the same way in every module ([`desired`]).
//!
//! The connection reconnects with capped exponential backoff (jittered, so a fleet does not
//! reconnect in step) and renews its SAS token
//! before expiry; [`shutdown_signal`] and [`ModuleClient::close`] stop it cleanly.
//!
//! The same client serves a leaf device ([`Settings::from_device_connection_string`],
//! [`ModuleClient::send_event`]), as a device connects through the gateway.

mod acks;
mod backoff;
mod client;
pub mod desired;
mod driver;
mod error;
pub mod metrics;
mod run;
mod session;
pub mod settings;
mod tls;
mod token;
pub mod workload;

pub use acks::AckToken;
pub use client::{InputMessage, MethodHandler, ModuleClient, Prepared, Unsendable};
pub use edge_protocol::{CompactString, Message};
pub use error::Error;
pub use run::{
    exit_code, forward_inputs, next_input, run_inputs, shutdown_signal, start, start_module,
    ModuleProcess, Started,
};
pub use settings::Settings;

/// Logging, with the `LoggingLevel` desired property (see [`edge_process::logging`]).
pub use edge_process::logging;
/// The project's global allocator (see [`edge_process::Allocator`]); a module declares
/// `#[global_allocator] static ALLOC: edge_client::Allocator = edge_client::Allocator;`.
pub use edge_process::Allocator;
/// Metrics and health checks (see [`edge_process::observe`]).
pub use edge_process::{observe, prometheus_client};
