//! Where each file of a state folder is.

use std::path::{Path, PathBuf};

/// Leaf-device registry (IoT Hub's device identities and their keys).
pub fn registry(state: &Path) -> PathBuf {
    state.join("registry.json")
}

/// Module keys (used only by the workload API and edgeHub).
pub fn module_keys(state: &Path) -> PathBuf {
    state.join("identities").join("modules.json")
}

/// The runtime's control socket (its management API).
pub fn control_socket(state: &Path) -> PathBuf {
    state.join("runtime.sock")
}

/// Written when the runtime is ready: its pid, edgeHub's port, the IoT Hub host name, the CA.
pub fn ready_file(state: &Path) -> PathBuf {
    state.join("runtime.json")
}

/// A module's workload socket.
pub fn workload_socket(state: &Path, module: &str) -> PathBuf {
    state.join("workload").join(format!("{module}.sock"))
}

/// A module's log file (its stdout and stderr).
pub fn module_log(state: &Path, module: &str) -> PathBuf {
    state.join("logs").join(format!("{module}.log"))
}

/// TLS material.
pub fn certs(state: &Path) -> PathBuf {
    state.join("certs")
}

/// File-upload notifications received by IoT Hub.
pub fn file_notifications(state: &Path) -> PathBuf {
    state.join("files").join("notifications.jsonl")
}

/// IoT Hub's store of what edgeHub sent `$upstream`: one JSON line per message.
pub fn upstream_store(state: &Path) -> PathBuf {
    state.join("upstream").join("messages.jsonl")
}

/// What IoT Hub's message routing keeps for storage endpoint `endpoint`: its blob log and
/// how far into the upstream store it has written.
pub fn endpoint_dir(state: &Path, endpoint: &str) -> PathBuf {
    state.join("upstream").join("endpoints").join(endpoint)
}

/// The blobs storage endpoint `endpoint` wrote, one JSON line each
/// (`hub_records::routed::BlobWritten`).
pub fn endpoint_blob_log(state: &Path, endpoint: &str) -> PathBuf {
    endpoint_dir(state, endpoint).join("blobs.jsonl")
}

/// The hub configuration (routes and endpoints) the running runtime applies, as it read it.
pub fn hub_config(state: &Path) -> PathBuf {
    state.join("upstream").join("hub.json")
}
