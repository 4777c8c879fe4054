//! `iotedge-local`: a local IoT Edge runtime that runs a deployment manifest on one machine,
//! without Docker or an Azure account. It plays the parts a device and the cloud play:
//!
//! | part | module |
//! |---|---|
//! | edgeHub: MQTT/TLS server, SAS auth, routes, store-and-forward, twins | [`broker`], [`hub`], [`endpoint`], [`twin`] |
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

/// The memory allocator of a process that hosts edgeHub (`iotedge-local`, the benchmarks):
/// declare it with `#[global_allocator] static ALLOC: HubAllocator = HubAllocator;`.
///
/// edgeHub allocates and frees a few dozen small buffers per message on several threads
/// (connections, journal, upstream store); mimalloc does that with less CPU than glibc's
/// allocator, which spends it in cross-thread frees and bin consolidation. The modules keep
/// glibc's, whose resident memory is smaller (docs/decisions.md).
pub use mimalloc::MiMalloc as HubAllocator;
