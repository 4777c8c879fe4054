//! The workload API: one unix socket per module (`workload/{module}.sock`), so a module can
//! only sign with its own key. Keys never leave the runtime.
//!
//! - `POST /modules/{module}/genid/{genid}/sign` `{"keyId":"primary","algo":"HMACSHA256","data":b64}` → `{"digest":b64}`
//! - `GET /trust-bundle` → `{"certificate": PEM}`
//!
//! [`certs`] makes the CA and edgeHub's server certificate the trust bundle carries.

pub mod certs;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use runtime_state::KeyStore;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use tokio::net::UnixListener;

/// What the socket of one module answers with.
pub struct ModuleWorkload {
    /// The module this socket belongs to.
    pub module: String,
    /// Its current generation id.
    pub generation_id: String,
    /// Module keys.
    pub keys: Arc<KeyStore>,
    /// The trust bundle (PEM).
    pub trust_bundle: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SignRequest {
    key_id: String,
    algo: String,
    data: String,
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "message": message }))).into_response()
}

async fn sign(
    State(w): State<Arc<ModuleWorkload>>,
    Path((module, genid)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    // Clients may omit the content type (the Python SDK does), so the body is parsed here.
    let req: SignRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("body is not a sign request: {e}"),
            )
        }
    };
    if module != w.module {
        return error(
            StatusCode::FORBIDDEN,
            format!("this socket signs for module '{}' only", w.module),
        );
    }
    if genid != w.generation_id {
        return error(
            StatusCode::NOT_FOUND,
            format!("module '{module}' has no generation '{genid}'"),
        );
    }
    if req.key_id != "primary" || req.algo != "HMACSHA256" {
        return error(
            StatusCode::BAD_REQUEST,
            "only keyId 'primary' with algo 'HMACSHA256' is supported".into(),
        );
    }
    let Ok(data) = B64.decode(req.data.as_bytes()) else {
        return error(StatusCode::BAD_REQUEST, "data is not base64".into());
    };
    let Some(key) = w.keys.key(&w.module) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no key for module '{}'", w.module),
        );
    };
    match edge_protocol::sas::sign(&key, &data) {
        Ok(digest) => Json(json!({ "digest": digest })).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn trust_bundle(State(w): State<Arc<ModuleWorkload>>) -> Response {
    Json(json!({ "certificate": w.trust_bundle })).into_response()
}

/// Connections a module's workload API serves at once.
pub const CONNECTIONS: usize = 16;

/// Serves the workload API of one module on `socket` (replacing a stale socket file).
pub async fn serve(
    socket: std::path::PathBuf,
    w: ModuleWorkload,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)?;
    let app = Router::new()
        .route("/modules/{module}/genid/{genid}/sign", post(sign))
        .route("/trust-bundle", get(trust_bundle))
        .with_state(Arc::new(w));
    let make = move || hyper_util::service::TowerToHyperService::new(app.clone());
    Ok(tokio::spawn(edge_process::http::serve(
        "workload API",
        edge_process::http::Limits::new(CONNECTIONS),
        listener,
        edge_process::http::plain,
        make,
    )))
}
