//! Wire facts of Azure IoT Edge, shared by the edge module client and the local runtime.
//!
//! Nothing here opens a connection. The crate knows:
//! - [`Message`]: a telemetry/module message with its system and application properties;
//! - [`mqtt`]: MQTT 3.1.1 framing over any byte stream, and the packet size limits;
//! - [`properties`]: the URL-encoded property bag carried at the end of MQTT topics;
//! - [`topic`]: the MQTT topic scheme of IoT Hub and edgeHub (outputs, inputs, twin);
//! - [`sas`]: shared access signature tokens (make and verify);
//! - [`connection_string`]: device and module connection strings;
//! - [`identity`]: IoT Hub's rules for device and module ids;
//! - [`env`](mod@env): the `IOTEDGE_*` environment a runtime gives a module;
//! - [`workload`]: the workload API's routes, paths and JSON bodies;
//! - [`file_upload`]: the bodies of IoT Hub's file-upload API for devices;
//! - `trust` (feature `tls`): rustls root stores and client settings from PEM bundles.

pub mod connection_string;
pub mod env;
pub mod file_upload;
pub mod identity;
pub mod message;
pub mod mqtt;
pub mod properties;
pub mod sas;
pub mod topic;
#[cfg(feature = "tls")]
pub mod trust;
pub mod workload;

pub use compact_str::CompactString;
pub use connection_string::{ConnectionString, ConnectionStringError};
pub use message::{Message, SystemProperty};
pub use sas::{SasError, SasToken};
pub use topic::{Topic, TopicError};
