//! The state folder of `iotedge-local` (`--state`, `.edge-state/` by default), as the runtime
//! and the tools beside it (the leaf simulator, the demo report) share it:
//!
//! - [`layout`]: where each file of the folder is;
//! - [`keys`]: the identity key stores (module keys, the leaf-device registry);
//! - [`control`]: the client of the running runtime's control socket (twins, status).
//!
//! A tool that needs these depends on this crate, not on the runtime.

pub mod control;
pub mod keys;
pub mod layout;

pub use keys::{new_key, KeyStore};

use std::path::PathBuf;

/// The state folder when none is given.
pub const DEFAULT_STATE: &str = ".edge-state";
/// The environment variable that names the state folder.
pub const STATE_ENV: &str = "IOTEDGE_LOCAL_STATE";

/// The `--state DIR` option every tool takes (`#[command(flatten)]`), also from
/// `IOTEDGE_LOCAL_STATE`, else `.edge-state`.
#[derive(Debug, Clone, clap::Args)]
pub struct StateArg {
    /// State folder of the runtime (`iotedge-local --state`): keys, device registry, logs,
    /// IoT Hub's `$upstream` store.
    #[arg(
        long = "state",
        global = true,
        default_value = DEFAULT_STATE,
        env = STATE_ENV,
        value_name = "DIR"
    )]
    pub dir: PathBuf,
}
