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
