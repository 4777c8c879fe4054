//! The runtime's control socket ([`layout::control_socket`]): its management API of module
//! twins, direct methods, status and module processes, defined once for both sides. The
//! runtime routes [`routes`] to its handlers and answers with the types below; the tools
//! (`iotedge-local twin`/`invoke`/`status`/`restart`, the demo report, the tests) call it
//! through [`Request`] or the one function per operation ([`twin`], [`patch_desired`],
//! [`invoke`], [`status`], [`processes`], [`restart`]).
//!
//! [`layout::control_socket`]: crate::layout::control_socket

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The routes the runtime serves, with their `{module}` parameter (axum's syntax).
pub mod routes {
    /// `GET`: a module's twin ([`super::Twin`]).
    pub const TWIN: &str = "/twins/{module}";
    /// `PATCH` a JSON object: merged into the module's desired properties
    /// ([`super::PatchAnswer`]).
    pub const DESIRED: &str = "/twins/{module}/desired";
    /// `POST` a [`super::MethodCall`]: a direct method of the module ([`super::MethodAnswer`]).
    pub const METHOD: &str = "/methods/{module}";
    /// `GET`: edgeHub's counters and queues ([`super::Status`]).
    pub const STATUS: &str = "/status";
    /// `GET`: each module process ([`super::ProcessStatus`] by module).
    pub const MODULES: &str = "/modules";
    /// `POST`: restarts the module's process now ([`super::Restarting`]).
    pub const RESTART: &str = "/modules/{module}/restart";
}

/// A module's twin: its desired and reported properties, each with its `$version`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Twin {
    /// Desired properties.
    pub desired: Value,
    /// Reported properties.
    pub reported: Value,
}

/// The answer to a desired-properties patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchAnswer {
    /// The desired properties' new version.
    #[serde(rename = "$version")]
    pub version: u64,
}

/// Longest a method call may wait for its module, seconds.
pub const MAX_METHOD_TIMEOUT_SECS: f64 = 300.0;
/// How long a method call waits when it does not say (or says something out of range).
pub const DEFAULT_METHOD_TIMEOUT_SECS: f64 = 30.0;

/// A direct method call, as IoT Hub's "invoke module method" takes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MethodCall {
    /// The method's name.
    pub method_name: String,
    /// Its JSON payload (`null` when absent).
    #[serde(default)]
    pub payload: Value,
    /// Seconds to wait for the module's answer, up to [`MAX_METHOD_TIMEOUT_SECS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_timeout_in_seconds: Option<f64>,
}

impl MethodCall {
    /// How long to wait: the call's timeout when it is in (0, [`MAX_METHOD_TIMEOUT_SECS`]],
    /// else [`DEFAULT_METHOD_TIMEOUT_SECS`].
    pub fn timeout(&self) -> std::time::Duration {
        let secs = self
            .response_timeout_in_seconds
            .filter(|t| *t > 0.0 && *t <= MAX_METHOD_TIMEOUT_SECS)
            .unwrap_or(DEFAULT_METHOD_TIMEOUT_SECS);
        std::time::Duration::from_secs_f64(secs)
    }
}

/// The module's answer to a direct method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodAnswer {
    /// The status the module gave (2xx: success).
    pub status: u16,
    /// Its JSON payload.
    pub payload: Value,
}

impl MethodAnswer {
    /// Whether the module answered with a 2xx status.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// edgeHub's counters and queues.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// Messages received from clients.
    pub received: u64,
    /// Messages that matched no route.
    pub unrouted: u64,
    /// Copies routed to module inputs.
    pub to_modules: u64,
    /// Copies routed to `$upstream`.
    pub to_upstream: u64,
    /// Connections refused for their credentials.
    pub auth_failures: u64,
    /// Records in the `$upstream` store.
    pub upstream_stored: u64,
    /// Each module's queue, by module.
    pub modules: BTreeMap<String, QueueStats>,
    /// IoT Hub's message routing since the runtime started.
    #[serde(default)]
    pub hub_routing: HubRoutingCounts,
}

/// What IoT Hub's message routing did since the runtime started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HubRoutingCounts {
    /// Messages each hub route took (the fallback route's for those only it took).
    pub routes: BTreeMap<String, u64>,
    /// Messages each endpoint got (`events` is the built-in one).
    pub endpoints: BTreeMap<String, u64>,
    /// Messages no route and no fallback took: dropped, as IoT Hub drops them.
    pub dropped: u64,
}

/// One module's queue in edgeHub.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    /// Waiting to be sent (in memory and on disk).
    pub queued: u64,
    /// Of those, how many are only on disk.
    pub on_disk: u64,
    /// Sent, not yet acknowledged.
    pub in_flight: u64,
    /// Acknowledged by the module.
    pub delivered: u64,
    /// Dropped because older than the time-to-live.
    pub expired: u64,
    /// Dropped because their delivery would be over MQTT's packet limit (each logged).
    pub undeliverable: u64,
    /// Whether the module is connected and subscribed to its inputs.
    pub connected: bool,
}

/// What the runtime shows of a module process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessStatus {
    /// Current pid, when running.
    pub pid: Option<u32>,
    /// Times it was restarted.
    pub restarts: u32,
    /// Last exit, as text.
    pub last_exit: Option<String>,
    /// The container it runs in (container mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The image's health check, as the runtime last ran it (`starting`, `healthy`,
    /// `unhealthy: …`), in container mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
}

/// The answer to a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restarting {
    /// The module being restarted.
    pub restarting: String,
}

/// A refused call's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Why.
    pub message: String,
}

/// One call of the management API: its method, path and body are made here only.
#[derive(Debug, Clone, Copy)]
pub enum Request<'a> {
    /// [`routes::TWIN`].
    Twin {
        /// The module.
        module: &'a str,
    },
    /// [`routes::DESIRED`].
    PatchDesired {
        /// The module.
        module: &'a str,
        /// The patch (`null` removes a property).
        patch: &'a Map<String, Value>,
    },
    /// [`routes::METHOD`].
    Invoke {
        /// The module.
        module: &'a str,
        /// The call.
        call: &'a MethodCall,
    },
    /// [`routes::STATUS`].
    Status,
    /// [`routes::MODULES`].
    Processes,
    /// [`routes::RESTART`].
    Restart {
        /// The module.
        module: &'a str,
    },
}

impl Request<'_> {
    /// The HTTP method.
    pub fn method(&self) -> &'static str {
        match self {
            Request::Twin { .. } | Request::Status | Request::Processes => "GET",
            Request::PatchDesired { .. } => "PATCH",
            Request::Invoke { .. } | Request::Restart { .. } => "POST",
        }
    }

    /// The route it takes.
    pub fn route(&self) -> &'static str {
        match self {
            Request::Twin { .. } => routes::TWIN,
            Request::PatchDesired { .. } => routes::DESIRED,
            Request::Invoke { .. } => routes::METHOD,
            Request::Status => routes::STATUS,
            Request::Processes => routes::MODULES,
            Request::Restart { .. } => routes::RESTART,
        }
    }

    /// The path: the route with its module.
    pub fn path(&self) -> String {
        match self {
            Request::Twin { module }
            | Request::PatchDesired { module, .. }
            | Request::Invoke { module, .. }
            | Request::Restart { module } => self.route().replace("{module}", module),
            Request::Status | Request::Processes => self.route().to_owned(),
        }
    }

    /// The JSON body, if the call has one.
    pub fn body(&self) -> Option<String> {
        match self {
            Request::PatchDesired { patch, .. } => {
                Some(Value::Object((*patch).clone()).to_string())
            }
            Request::Invoke { call, .. } => serde_json::to_string(call).ok(),
            _ => None,
        }
    }

    /// Sends it to the runtime whose control socket is `socket`; the answer as JSON.
    pub async fn send(&self, socket: &Path) -> Result<Value, ControlError> {
        let (status, value) = exchange(socket, self.method(), &self.path(), self.body()).await?;
        if !(200..300).contains(&status) {
            return Err(ControlError::Refused {
                status,
                body: value,
            });
        }
        Ok(value)
    }

    /// Sends it and reads the answer as `T`.
    async fn answer<T: serde::de::DeserializeOwned>(
        &self,
        socket: &Path,
    ) -> Result<T, ControlError> {
        let value = self.send(socket).await?;
        serde_json::from_value(value).map_err(|e| ControlError::Answer {
            path: self.path(),
            source: e,
        })
    }
}

/// `module`'s twin.
pub async fn twin(socket: &Path, module: &str) -> Result<Twin, ControlError> {
    Request::Twin { module }.answer(socket).await
}

/// Merges `patch` into `module`'s desired properties; the module receives it.
pub async fn patch_desired(
    socket: &Path,
    module: &str,
    patch: &Map<String, Value>,
) -> Result<PatchAnswer, ControlError> {
    Request::PatchDesired { module, patch }.answer(socket).await
}

/// Calls `module`'s direct method; its answer whatever its status (see
/// [`MethodAnswer::is_success`]).
pub async fn invoke(
    socket: &Path,
    module: &str,
    call: &MethodCall,
) -> Result<MethodAnswer, ControlError> {
    Request::Invoke { module, call }.answer(socket).await
}

/// edgeHub's counters and queues.
pub async fn status(socket: &Path) -> Result<Status, ControlError> {
    Request::Status.answer(socket).await
}

/// Each module process, by module.
pub async fn processes(socket: &Path) -> Result<BTreeMap<String, ProcessStatus>, ControlError> {
    Request::Processes.answer(socket).await
}

/// Restarts `module`'s process now.
pub async fn restart(socket: &Path, module: &str) -> Result<Restarting, ControlError> {
    Request::Restart { module }.answer(socket).await
}

/// Why a call to the control socket failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Nothing answers on the socket.
    #[error("cannot reach the runtime at {} (is `iotedge-local run` running with this --state?): {source}", socket.display())]
    Unreachable {
        /// The socket tried.
        socket: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("the runtime's control socket broke off: {0}")]
    Http(#[from] hyper::Error),
    /// The request could not be made (a bad method or path).
    #[error("bad control request: {0}")]
    Request(#[from] hyper::http::Error),
    /// The runtime's answer is not what the call answers.
    #[error("unexpected answer to {path}: {source}")]
    Answer {
        /// The path called.
        path: String,
        /// Why it does not read.
        source: serde_json::Error,
    },
    /// The runtime refused the call.
    #[error("runtime answered {status}: {body}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// Its answer (JSON, or text as a string).
        body: Value,
    },
}

/// One HTTP/1.1 request to the server on unix socket `socket` (the runtime's control socket,
/// or a container engine's API): the answer's status and body as JSON (a body that is not
/// JSON comes as a string), whatever the status.
pub async fn exchange(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<String>,
) -> Result<(u16, Value), ControlError> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|source| ControlError::Unreachable {
            socket: socket.to_path_buf(),
            source,
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
    let resp = sender.send_request(req).await;
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            conn.abort();
            return Err(e.into());
        }
    };
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await;
    conn.abort();
    let bytes = bytes?.to_bytes();
    let value: Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::from(String::from_utf8_lossy(&bytes).into_owned()));
    Ok((status, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn no_runtime_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let socket = crate::layout::control_socket(dir.path());
        let e = status(&socket).await.unwrap_err();
        assert!(matches!(e, ControlError::Unreachable { .. }), "{e}");
        assert!(e.to_string().contains("iotedge-local run"), "{e}");
    }

    #[test]
    fn requests_fill_their_routes() {
        let patch = Map::new();
        let call = MethodCall {
            method_name: "ping".into(),
            payload: Value::Null,
            response_timeout_in_seconds: Some(5.0),
        };
        let m = "avroFileWriter";
        let cases = [
            (Request::Twin { module: m }, "GET /twins/avroFileWriter"),
            (
                Request::PatchDesired {
                    module: m,
                    patch: &patch,
                },
                "PATCH /twins/avroFileWriter/desired",
            ),
            (
                Request::Invoke {
                    module: m,
                    call: &call,
                },
                "POST /methods/avroFileWriter",
            ),
            (Request::Status, "GET /status"),
            (Request::Processes, "GET /modules"),
            (
                Request::Restart { module: m },
                "POST /modules/avroFileWriter/restart",
            ),
        ];
        for (r, want) in cases {
            assert_eq!(format!("{} {}", r.method(), r.path()), want);
        }
        let body: Value = serde_json::from_str(
            &Request::Invoke {
                module: m,
                call: &call,
            }
            .body()
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            body,
            serde_json::json!({"methodName": "ping", "payload": null, "responseTimeoutInSeconds": 5.0})
        );
    }

    #[test]
    fn method_timeouts_out_of_range_are_the_default() {
        let call = |t| MethodCall {
            method_name: "m".into(),
            payload: Value::Null,
            response_timeout_in_seconds: t,
        };
        let secs = |t| call(t).timeout().as_secs_f64();
        assert_eq!(secs(Some(5.0)), 5.0);
        for t in [None, Some(0.0), Some(-1.0), Some(301.0)] {
            assert_eq!(secs(t), DEFAULT_METHOD_TIMEOUT_SECS);
        }
        let read: MethodCall = serde_json::from_str(r#"{"methodName":"m"}"#).unwrap();
        assert_eq!(read, call(None));
    }

    #[test]
    fn answers_read_back() {
        let patch: PatchAnswer = serde_json::from_str(r#"{"$version": 3}"#).unwrap();
        assert_eq!(patch.version, 3);
        let status = Status {
            received: 4,
            modules: BTreeMap::from([(
                "m".to_owned(),
                QueueStats {
                    queued: 1,
                    ..Default::default()
                },
            )]),
            ..Default::default()
        };
        let v = serde_json::to_value(&status).unwrap();
        assert_eq!(v["upstreamStored"], 0);
        assert_eq!(v["modules"]["m"]["in_flight"], 0);
        assert_eq!(serde_json::from_value::<Status>(v).unwrap(), status);
    }
}
