//! `iotedge-local`: a local IoT Edge runtime that runs a deployment manifest on one machine,
//! without Docker or an Azure account. It plays the parts a device and the cloud play:
//!
//! | part | module |
//! |---|---|
//! | edgeHub: MQTT/TLS server, SAS auth, routes, store-and-forward, twins | [`broker`], [`hub`], [`hub_message`], [`endpoint`], [`journal`], [`twin`] |
//! | workload API: signing with module keys, trust bundle | [`workload`], [`certs`], [`identity`] |
//! | edgeAgent: module processes | [`agent`] |
//! | IoT Hub: device registry, `$upstream` store, file upload and blob storage | [`identity`], [`upstream`], [`files`] |
//!
//! [`runtime::Runtime`] assembles them from a [`manifest::Manifest`].

pub mod agent;
pub mod broker;
pub mod certs;
pub mod endpoint;
pub mod files;
pub mod hub;
pub mod hub_message;
pub mod identity;
pub mod journal;
pub mod manifest;
pub mod mgmt;
pub mod runtime;
pub mod testing;
pub mod twin;
pub mod upstream;
pub mod workload;

pub use runtime::{Options, Runtime};
