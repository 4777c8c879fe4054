//! The client of a running runtime's control socket ([`layout::control_socket`]): its
//! management API of module twins and status, used by `iotedge-local twin`/`status` and by
//! the demo report.
//!
//! [`layout::control_socket`]: crate::layout::control_socket

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use std::path::{Path, PathBuf};

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
    /// The runtime refused the call.
    #[error("runtime answered {status}: {body}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// Its answer (JSON, or text as a string).
        body: Value,
    },
}

/// Calls the management API of the runtime whose control socket is `socket`: `method` on
/// `path` (e.g. `GET /status`, `PATCH /twins/<module>/desired`), with a JSON `body`. The
/// answer as JSON (a body that is not JSON comes as a string).
pub async fn call(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<String>,
) -> Result<Value, ControlError> {
    let (status, value) = exchange(socket, method, path, body).await?;
    if !(200..300).contains(&status) {
        return Err(ControlError::Refused {
            status,
            body: value,
        });
    }
    Ok(value)
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
        let e = call(&socket, "GET", "/status", None).await.unwrap_err();
        assert!(matches!(e, ControlError::Unreachable { .. }), "{e}");
        assert!(e.to_string().contains("iotedge-local run"), "{e}");
    }
}
