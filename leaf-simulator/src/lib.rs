//! Leaf devices that replay NASA C-MAPSS engines through the edge gateway, as the tutorial's
//! device simulator does: engine unit N of a test file becomes device `Client_{N:03}`, which
//! sends its engine's rows, one per engine cycle and in cycle order, as device-to-cloud
//! telemetry (docs/architecture.md §2).
//!
//! Every device is a real leaf device of the local runtime: it is registered in the runtime's
//! device registry, signs its own SAS tokens with its own key, connects over MQTT/TLS to
//! edgeHub while trusting the runtime's CA, and counts a message as sent only once edgeHub has
//! acknowledged it (QoS 1 PUBACK).
//!
//! - [`Gateway`]: where the running runtime is (its `runtime.json` ready file);
//! - [`plan`]: which device sends which rows;
//! - [`simulate`]: the run itself, observable through [`Progress`];
//! - [`sent_log`]: the JSON-lines record of every acknowledged message, which the demo
//!   report matches with what reached IoT Hub.

mod error;
mod gateway;
pub mod plan;
mod run;
pub mod sent_log;

pub use error::SimError;
pub use gateway::Gateway;
pub use plan::{device_id, DevicePlan};
pub use run::{simulate, Progress, SimConfig, Summary, DEFAULT_RATE};
pub use sent_log::SentRecord;
