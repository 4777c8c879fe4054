//! The runtime's management API on its control socket (`runtime.sock`, used by the `twin`
//! and `status` commands; the client is `runtime_state::control`).

use crate::agent::AgentHandle;
use crate::edgehub::hub::{Hub, MethodError};
use crate::edgehub::twin::TwinError;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

/// The module supervisor, once it runs (it starts after the control socket).
pub type AgentSlot = Arc<OnceLock<AgentHandle>>;

/// Connections the management API serves at once.
pub const CONNECTIONS: usize = 32;

/// Serves the management API.
pub async fn serve(
    socket: std::path::PathBuf,
    hub: Arc<Hub>,
    agent: AgentSlot,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket)?;
    let app = Router::new()
        .route("/twins/{module}/desired", patch(patch_desired))
        .route("/twins/{module}", get(get_twin))
        .route("/status", get(status))
        .route("/methods/{module}", post(invoke))
        .with_state(hub)
        .merge(
            Router::new()
                .route("/modules", get(processes))
                .route("/modules/{module}/restart", post(restart))
                .with_state(agent),
        );
    let make = move || hyper_util::service::TowerToHyperService::new(app.clone());
    Ok(tokio::spawn(edge_process::http::serve(
        "management API",
        edge_process::http::Limits {
            // A method call may wait for its module up to 300 s with no byte moving.
            idle_timeout: std::time::Duration::from_secs(310),
            ..edge_process::http::Limits::new(CONNECTIONS)
        },
        listener,
        edge_process::http::plain,
        make,
    )))
}

async fn patch_desired(
    State(hub): State<Arc<Hub>>,
    Path(module): Path<String>,
    body: Bytes,
) -> Response {
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(p)) => match hub.patch_desired(&module, &p) {
            Ok(v) => Json(json!({ "$version": v })).into_response(),
            Err(e) => {
                let status = match e {
                    TwinError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                    TwinError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
                };
                (status, Json(json!({"message": e.to_string()}))).into_response()
            }
        },
        _ => (
            StatusCode::BAD_REQUEST,
            Json(json!({"message": "the patch must be a JSON object"})),
        )
            .into_response(),
    }
}

/// `POST /methods/{module}` `{"methodName", "payload", "responseTimeoutInSeconds"}`, as IoT
/// Hub's "invoke module method": `{"status", "payload"}` from the module; 404 if it does not
/// listen, 504 if it does not answer in time.
async fn invoke(State(hub): State<Arc<Hub>>, Path(module): Path<String>, body: Bytes) -> Response {
    let bad =
        |msg: String| (StatusCode::BAD_REQUEST, Json(json!({ "message": msg }))).into_response();
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad(format!("the call must be JSON: {e}")),
    };
    let Some(method) = req.get("methodName").and_then(Value::as_str) else {
        return bad("the call needs a \"methodName\" string".into());
    };
    let timeout = req
        .get("responseTimeoutInSeconds")
        .and_then(Value::as_f64)
        .filter(|t| *t > 0.0 && *t <= 300.0)
        .unwrap_or(30.0);
    let payload = req.get("payload").cloned().unwrap_or(Value::Null);
    match hub
        .invoke_method(
            &module,
            method,
            &payload,
            std::time::Duration::from_secs_f64(timeout),
        )
        .await
    {
        Ok((status, payload)) => {
            Json(json!({ "status": status, "payload": payload })).into_response()
        }
        Err(e @ MethodError::NotListening(_)) => (
            StatusCode::NOT_FOUND,
            Json(json!({ "message": e.to_string() })),
        )
            .into_response(),
        Err(e) => (
            StatusCode::GATEWAY_TIMEOUT,
            Json(json!({ "message": e.to_string() })),
        )
            .into_response(),
    }
}

/// `GET /modules`: each module process (pid, restarts, last exit).
async fn processes(State(agent): State<AgentSlot>) -> Response {
    let status = agent.get().map(AgentHandle::status).unwrap_or_default();
    Json(json!(status)).into_response()
}

/// `POST /modules/{module}/restart`: restarts the module's process now.
async fn restart(State(agent): State<AgentSlot>, Path(module): Path<String>) -> Response {
    let Some(agent) = agent.get() else {
        let msg = "this runtime starts no module processes (--skip, or none in the manifest)";
        return (StatusCode::NOT_FOUND, Json(json!({ "message": msg }))).into_response();
    };
    match agent.restart(&module) {
        Ok(()) => Json(json!({ "restarting": module })).into_response(),
        Err(msg) => (StatusCode::NOT_FOUND, Json(json!({ "message": msg }))).into_response(),
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
