//! The state folder of `iotedge-local` (`--state`, `.edge-state/` by default), as the runtime
//! and the tools beside it (the leaf simulator, the demo report) share it:
//!
//! - [`layout`]: where each file of the folder is;
//! - [`keys`]: the identity key stores (module keys, the leaf-device registry);
//! - [`control`]: the client of the running runtime's control socket (twins, status);
//! - [`ready`]: the ready file a running runtime writes, and its readers.
//!
//! A tool that needs these depends on this crate, not on the runtime.

pub mod control;
pub mod keys;
pub mod layout;
pub mod ready;

pub use keys::{new_key, write_private, KeyStore};

use std::path::{Path, PathBuf};

pub use ready::{Ready, ReadyError};

/// Whether process `pid` exists (checked where `/proc` is available; assumed elsewhere).
pub fn process_exists(pid: u32) -> bool {
    let proc = Path::new("/proc");
    !proc.is_dir() || proc.join(pid.to_string()).exists()
}

/// The ready file of the runtime running on `state`, if one is running: the file says so and
/// its process exists.
pub fn running_runtime(state: &Path) -> Option<ready::Ready> {
    ready::Ready::running(state).ok()
}

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
