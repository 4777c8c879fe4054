//! The edge module client: how every module of this project talks to edgeHub.
//!
//! A module starts the way modules start on a real IoT Edge device: from the `IOTEDGE_*`
//! environment (SAS tokens signed by the workload API, TLS verified against its trust bundle,
//! MQTT 3.1.1 to the gateway), or from a module connection string. Then it
//! - sends messages to named outputs ([`ModuleClient::send_output`], returns once accepted),
//! - handles messages per named input ([`ModuleClient::inputs`], [`run_inputs`], or
//!   [`forward_inputs`] for a module that turns each input into outputs), acknowledging
//!   each only after it was handled,
//! - reads its twin, receives desired-property patches and reports properties.
//!
//! The connection reconnects with capped exponential backoff (jittered, so a fleet does not
//! reconnect in step) and renews its SAS token
//! before expiry; [`shutdown_signal`] and [`ModuleClient::close`] stop it cleanly.
//!
//! The same client serves a leaf device ([`Settings::from_device_connection_string`],
//! [`ModuleClient::send_event`]), as a device connects through the gateway.

mod acks;
mod client;
mod error;
pub mod logging;
mod run;
pub mod settings;
pub mod upload;
pub mod wire;
pub mod workload;

pub use acks::AckToken;
pub use client::{InputMessage, ModuleClient, Prepared, Unsendable};
pub use edge_protocol::{CompactString, Message};
pub use error::Error;
pub use run::{forward_inputs, next_input, run_inputs, shutdown_signal};
pub use settings::Settings;

/// The memory allocator of the project's processes (the modules, the runtime, the leaf
/// simulator): mimalloc, built without transparent huge pages. A binary declares it with
/// `#[global_allocator] static ALLOC: edge_client::Allocator = edge_client::Allocator;`.
///
/// Every message costs a few dozen small allocations in the client and in edgeHub, made and
/// freed in bursts and, in edgeHub, across threads; glibc's allocator spends a quarter of a
/// module's CPU on them (bin consolidation, cross-thread frees), mimalloc far less. Without
/// huge pages its resident memory stays within a megabyte or two of glibc's
/// (docs/decisions.md).
pub use mimalloc::MiMalloc as Allocator;
