//! The whole turbofan pipeline on the local runtime, as CI proves it and as the load benchmark
//! drives it: the project's own `deployment.template.json` (so edgeAgent starts the three real
//! module processes exactly as the manifest says), optionally Azurite as the blob store, and
//! leaf devices connected through edgeHub.
//!
//! - [`pipeline`]: starting, restarting and observing a run (module processes, twins, the
//!   Avro archive, uploaded blobs);
//! - [`upstream`]: what reached IoT Hub, sorted into RUL messages and dead letters;
//! - [`tally`]: matching what was sent with what came out, counting losses and duplicates;
//! - [`run`]: leaf devices run against a pipeline, and the accounting of what they sent;
//! - [`procfs`]: memory and CPU of module processes, from `/proc`.

pub mod metrics;
pub mod pipeline;
pub mod procfs;
pub mod run;
pub mod tally;

/// What reached IoT Hub: the one reader of the `$upstream` store, shared with the demo report.
pub use hub_records as upstream;

pub use pipeline::{Pipeline, Uploads, CLASSIFIER, MODULES, ROUTER, WRITER};
pub use tally::Tally;
