//! The runtime's management API on `runtime.sock` (used by the `twin` and `status`
//! commands), and its client.

use crate::hub::Hub;
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

/// Calls the management API of the runtime whose socket is `socket`.
pub async fn call(
    socket: &std::path::Path,
    method: &str,
    path: &str,
    body: Option<String>,
) -> anyhow::Result<Value> {
    use anyhow::Context;
    use http_body_util::{BodyExt, Full};
    let stream = tokio::net::UnixStream::connect(socket).await.with_context(|| {
        format!("cannot reach the runtime at {} (is `iotedge-local run` running with this --state?)", socket.display())
    })?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    let conn = tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    conn.abort();
    let value: Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::from(String::from_utf8_lossy(&bytes).into_owned()));
    if !status.is_success() {
        anyhow::bail!("runtime answered {status}: {value}");
    }
    Ok(value)
}
