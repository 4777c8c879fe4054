//! The runtime's management API on its control socket (`runtime.sock`, used by the `twin`
//! and `status` commands; the client is `runtime_state::control`).

use crate::edgehub::hub::Hub;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Serves the management API.
pub async fn serve(
    socket: std::path::PathBuf,
    hub: Arc<Hub>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket)?;
    let app = Router::new()
        .route("/twins/{module}/desired", patch(patch_desired))
        .route("/twins/{module}", get(get_twin))
        .route("/status", get(status))
        .with_state(hub);
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "management API stopped");
        }
    }))
}

async fn patch_desired(
    State(hub): State<Arc<Hub>>,
    Path(module): Path<String>,
    body: Bytes,
) -> Response {
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(p)) => {
            let v = hub.patch_desired(&module, &p);
            Json(json!({ "$version": v })).into_response()
        }
        _ => (
            StatusCode::BAD_REQUEST,
            Json(json!({"message": "the patch must be a JSON object"})),
        )
            .into_response(),
    }
}

async fn get_twin(State(hub): State<Arc<Hub>>, Path(module): Path<String>) -> Response {
    let id = format!("{}/{}", hub.config().device_id, module);
    Json(hub.twins.get(&id)).into_response()
}

async fn status(State(hub): State<Arc<Hub>>) -> Response {
    let m = &hub.metrics;
    Json(json!({
        "received": m.received.load(Ordering::Relaxed),
        "unrouted": m.unrouted.load(Ordering::Relaxed),
        "toModules": m.to_modules.load(Ordering::Relaxed),
        "toUpstream": m.to_upstream.load(Ordering::Relaxed),
        "authFailures": m.auth_failures.load(Ordering::Relaxed),
        "upstreamStored": hub.upstream.count(),
        "modules": hub.endpoint_stats(),
    }))
    .into_response()
}
