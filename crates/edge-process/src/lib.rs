//! What every binary of the project (the three modules, `iotedge-local`, the leaf simulator,
//! the benchmarks) sets up the same way, so that each `main` is only its own wiring:
//!
//! - [`Allocator`], the global allocator;
//! - [`logging`]: `tracing` to stderr at `RUST_LOG`'s level, changeable at run time by the
//!   `LoggingLevel` desired property;
//! - [`observe`]: Prometheus metrics and liveness/readiness checks on one HTTP endpoint;
//! - [`http`]: HTTP/1 serving with a connection cap, a header deadline and an idle timeout,
//!   for every HTTP server of the project.
//!
//! A module starts with `edge_client::start_module`, which sets up logging and connects.

pub mod http;
pub mod logging;
pub mod observe;

pub use prometheus_client;

/// The memory allocator of the project's processes: mimalloc, built without transparent huge
/// pages. A binary declares it with
/// `#[global_allocator] static ALLOC: edge_process::Allocator = edge_process::Allocator;`
/// (a module through `edge_client::Allocator`, the same type).
///
/// Every message costs a few dozen small allocations in the client and in edgeHub, made and
/// freed in bursts and, in edgeHub, across threads; glibc's allocator spends a quarter of a
/// module's CPU on them (bin consolidation, cross-thread frees), mimalloc far less. Without
/// huge pages its resident memory stays within a megabyte or two of glibc's
/// (docs/decisions.md).
pub use mimalloc::MiMalloc as Allocator;
