//! `iotedge-local`: a local IoT Edge runtime that runs a deployment manifest on one machine,
//! without Docker or an Azure account. It plays the parts a device and the cloud play, one
//! folder each:
//!
//! | part | module |
//! |---|---|
//! | edgeHub: MQTT/TLS server, SAS auth, routes, store-and-forward, twins | [`edgehub`] |
//! | workload API: signing with module keys, trust bundle | [`workload`] |
//! | edgeAgent: the deployment manifest, module processes | [`agent`] |
//! | IoT Hub: `$upstream` store, file upload and blob storage | [`iothub`] |
//!
//! [`runtime::Runtime`] assembles them from an [`agent::manifest::Manifest`] on a state
//! folder (its layout and key stores are the `runtime-state` crate's); [`control`] serves
//! the operator's commands on the control socket, [`logs`] reads module logs, [`check`] checks a machine as `iotedge check` does. With the `testing` feature, `testing`
//! starts a runtime on a temporary folder for tests and benchmarks.

pub mod agent;
pub mod check;
pub mod control;
pub mod edgehub;
pub mod iothub;
pub mod logs;
pub mod runtime;
#[cfg(feature = "testing")]
pub mod testing;
pub mod workload;

pub use runtime::{Options, Runtime};
