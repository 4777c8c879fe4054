//! The runtime's management API on its control socket (`runtime.sock`, used by the `twin`,
//! `invoke`, `status` and `restart` commands). Its routes and bodies are defined once, in
//! [`runtime_state::control`], whose client the tools use.

use crate::agent::AgentHandle;
use crate::edgehub::hub::{Hub, MethodError};
use crate::edgehub::twin::TwinError;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use bytes::Bytes;
use runtime_state::control::{
    routes, ErrorBody, MethodAnswer, MethodCall, PatchAnswer, ProcessStatus, Restarting, Status,
};
use serde_json::Value;
use std::collections::BTreeMap;
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
        .route(routes::DESIRED, patch(patch_desired))
        .route(routes::TWIN, get(get_twin))
        .route(routes::STATUS, get(status))
        .route(routes::METHOD, post(invoke))
        .with_state(hub)
        .merge(
            Router::new()
                .route(routes::MODULES, get(processes))
                .route(routes::RESTART, post(restart))
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

/// A refusal: `status` with `{"message"}`.
fn refuse(status: StatusCode, message: String) -> Response {
    (status, Json(ErrorBody { message })).into_response()
}

async fn patch_desired(
    State(hub): State<Arc<Hub>>,
    Path(module): Path<String>,
    body: Bytes,
) -> Response {
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(p)) => match hub.patch_desired(&module, &p) {
            Ok(version) => Json(PatchAnswer { version }).into_response(),
            Err(e) => {
                let status = match e {
                    TwinError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                    TwinError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
                };
                refuse(status, e.to_string())
            }
        },
        _ => refuse(
            StatusCode::BAD_REQUEST,
            "the patch must be a JSON object".into(),
        ),
    }
}

/// `POST /methods/{module}` [`MethodCall`], as IoT Hub's "invoke module method":
/// [`MethodAnswer`] from the module; 404 if it does not listen, 504 if it does not answer in
/// time.
async fn invoke(State(hub): State<Arc<Hub>>, Path(module): Path<String>, body: Bytes) -> Response {
    let call: MethodCall = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("the call must be a JSON object with a \"methodName\" string: {e}"),
            )
        }
    };
    match hub
        .invoke_method(&module, &call.method_name, &call.payload, call.timeout())
        .await
    {
        Ok((status, payload)) => Json(MethodAnswer { status, payload }).into_response(),
        Err(e @ MethodError::NotListening(_)) => refuse(StatusCode::NOT_FOUND, e.to_string()),
        Err(e) => refuse(StatusCode::GATEWAY_TIMEOUT, e.to_string()),
    }
}

/// `GET /modules`: each module process (pid, restarts, last exit).
async fn processes(State(agent): State<AgentSlot>) -> Response {
    let status: BTreeMap<String, ProcessStatus> = agent
        .get()
        .map(AgentHandle::status)
        .unwrap_or_default()
        .into_iter()
        .collect();
    Json(status).into_response()
}

/// `POST /modules/{module}/restart`: restarts the module's process now.
async fn restart(State(agent): State<AgentSlot>, Path(module): Path<String>) -> Response {
    let Some(agent) = agent.get() else {
        let msg = "this runtime starts no module processes (--skip, or none in the manifest)";
        return refuse(StatusCode::NOT_FOUND, msg.into());
    };
    match agent.restart(&module) {
        Ok(()) => Json(Restarting { restarting: module }).into_response(),
        Err(msg) => refuse(StatusCode::NOT_FOUND, msg),
    }
}

async fn get_twin(State(hub): State<Arc<Hub>>, Path(module): Path<String>) -> Response {
    let id = format!("{}/{}", hub.config().device_id, module);
    Json(hub.twins.twin(&id)).into_response()
}

async fn status(State(hub): State<Arc<Hub>>) -> Response {
    let m = &hub.metrics;
    Json(Status {
        received: m.received.load(Ordering::Relaxed),
        unrouted: m.unrouted.load(Ordering::Relaxed),
        to_modules: m.to_modules.load(Ordering::Relaxed),
        to_upstream: m.to_upstream.load(Ordering::Relaxed),
        auth_failures: m.auth_failures.load(Ordering::Relaxed),
        upstream_stored: hub.upstream.count(),
        modules: hub.endpoint_stats().into_iter().collect(),
        hub_routing: hub.upstream.routing().counts(),
    })
    .into_response()
}
