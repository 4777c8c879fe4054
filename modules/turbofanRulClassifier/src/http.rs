//! The local HTTP scoring endpoint, for debugging the way the Azure ML docs describe:
//! `GET /` answers health and the model's identity, `POST /score` takes the same contract as
//! `amlInput`. Errors are 4xx with a short JSON message and no internal details. Off unless
//! `SCORING_HTTP_ADDR` is set.

use crate::Shared;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::json;
use std::sync::Arc;
use turbofan_domain::scoring::{Request, ScoringError};

async fn health(State(s): State<Arc<Shared>>) -> Response {
    Json(json!({"status": "healthy", "model": s.model_info})).into_response()
}

async fn score(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    let limit = s.max_body();
    let req = match Request::parse(&body, limit) {
        Ok(r) => r,
        Err(e) => {
            let status = match e {
                ScoringError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::BAD_REQUEST,
            };
            return (status, Json(json!({"error": e.to_string()}))).into_response();
        }
    };
    let predictions = {
        let mut model = s.model.lock().unwrap_or_else(|p| p.into_inner());
        model.predict(&req.features)
    };
    match predictions {
        Ok(p) => {
            let mut out = Vec::new();
            req.write_response(&p, &mut out);
            ([("content-type", "application/json")], out).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "scoring over HTTP failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"error": "scoring failed"})),
            )
                .into_response()
        }
    }
}

/// The endpoint's routes.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(health))
        .route("/score", post(score))
        .with_state(shared)
}

/// Connections the scoring endpoint serves at once.
pub const SCORE_CONNECTIONS: usize = 256;

/// Serves the endpoint on `addr` until the process ends: at most [`SCORE_CONNECTIONS`] at
/// once, each closed when idle (see [`edge_process::http`]).
pub async fn serve(addr: &str, shared: Arc<Shared>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr, "HTTP scoring endpoint listening (GET /, POST /score)");
    let app = router(shared);
    let make = move || hyper_util::service::TowerToHyperService::new(app.clone());
    tokio::spawn(edge_process::http::serve(
        "scoring endpoint",
        edge_process::http::Limits::new(SCORE_CONNECTIONS),
        listener,
        edge_process::http::plain,
        make,
    ));
    Ok(())
}
