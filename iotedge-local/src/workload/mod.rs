//! The workload API: one unix socket per module (`workload/{module}.sock`), so a module can
//! only sign with its own key. Keys never leave the runtime.
//!
//! - `POST /modules/{module}/genid/{genid}/sign` `{"keyId":"primary","algo":"HMACSHA256","data":b64}` → `{"digest":b64}`
//! - `GET /trust-bundle` → `{"certificate": PEM}`
//!
//! The routes and bodies are defined once, in [`edge_protocol::workload`], which the module
//! client uses too.
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
use edge_protocol::workload::{
    self as api, ErrorResponse, SignRequest, SignResponse, TrustBundleResponse,
};
use runtime_state::KeyStore;
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

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(ErrorResponse { message })).into_response()
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
    if !req.is_supported() {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "only keyId '{}' with algo '{}' is supported",
                api::KEY_ID_PRIMARY,
                api::ALGO_HMAC_SHA256
            ),
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
        Ok(digest) => Json(SignResponse { digest }).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn trust_bundle(State(w): State<Arc<ModuleWorkload>>) -> Response {
    Json(TrustBundleResponse {
        certificate: w.trust_bundle.clone(),
    })
    .into_response()
}

/// Connections a module's workload API serves at once.
pub const CONNECTIONS: usize = 16;

/// The user a module runs as, numerically: whom its workload socket admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketOwner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

impl SocketOwner {
    /// A user as `createOptions.User` or an image's `USER` gives it: `uid` (its group the
    /// same number, as distroless's `nonroot` 65532 has) or `uid:gid`. `None` for a name,
    /// which only the container's own `/etc/passwd` can resolve.
    pub fn parse(user: &str) -> Option<SocketOwner> {
        let (u, g) = match user.trim().split_once(':') {
            Some((u, g)) => (u, g),
            None => (user.trim(), user.trim()),
        };
        Some(SocketOwner {
            uid: u.parse().ok()?,
            gid: g.parse().ok()?,
        })
    }
}

/// Serves the workload API of one module on `socket` (replacing a stale socket file).
///
/// The socket admits its module's user and only it (and root): mode 0600 in a folder only the
/// runtime's user can enter (0700: no other user reaches it, not even before the mode is set),
/// owned by `owner` when given (the module's `createOptions.User`, for a module that runs as
/// another user than the runtime's, as a container would), else by the runtime's user (a
/// module process it starts itself). A container is given its own socket file, not the folder.
/// An owner the runtime cannot give it to (not root) is a warning: the socket stays its own.
pub async fn serve(
    socket: std::path::PathBuf,
    w: ModuleWorkload,
    owner: Option<SocketOwner>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
    if let Some(o) = owner {
        if let Err(e) = std::os::unix::fs::chown(&socket, Some(o.uid), Some(o.gid)) {
            tracing::warn!(module = %w.module, uid = o.uid, gid = o.gid, error = %e,
                "cannot give the workload socket to the module's createOptions.User (the runtime is not root): it stays the runtime user's");
        }
    }
    let app = Router::new()
        .route(api::SIGN_ROUTE, post(sign))
        .route(api::TRUST_BUNDLE_ROUTE, get(trust_bundle))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn users_parse_as_numbers_or_not_at_all() {
        let o = |uid, gid| Some(SocketOwner { uid, gid });
        assert_eq!(SocketOwner::parse("65532"), o(65532, 65532));
        assert_eq!(SocketOwner::parse("1000:50"), o(1000, 50));
        assert_eq!(SocketOwner::parse("nonroot"), None);
        assert_eq!(SocketOwner::parse("1000:staff"), None);
    }

    /// Asks `socket`'s trust bundle as user `uid` (through `setpriv` and `curl`); whether
    /// it was answered.
    async fn answered_as(uid: u32, socket: &std::path::Path) -> bool {
        let out = tokio::process::Command::new("setpriv")
            .args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                "curl",
                "-sf",
                "--max-time",
                "5",
                "--unix-socket",
            ])
            .arg(socket)
            .arg("http://workload/trust-bundle")
            .output()
            .await
            .expect("setpriv (util-linux) and curl run");
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("PEM")
    }

    #[tokio::test]
    async fn a_socket_admits_its_modules_user_and_no_other() {
        if std::fs::metadata("/proc/self").map(|m| m.uid()).ok() != Some(0) {
            eprintln!("skipped: acting as other users needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let keys = Arc::new(KeyStore::new(dir.path().join("keys.json")));
        let w = |module: &str| ModuleWorkload {
            module: module.into(),
            generation_id: "g".into(),
            keys: keys.clone(),
            trust_bundle: "PEM".into(),
        };
        let owned = dir.path().join("router.sock");
        let router = SocketOwner {
            uid: 65532,
            gid: 65532,
        };
        let a = serve(owned.clone(), w("router"), Some(router))
            .await
            .unwrap();
        // The sockets' folder is the runtime's own; a container is given its socket file.
        // Here the folder is opened to reach the sockets as other users.
        assert_eq!(std::fs::metadata(dir.path()).unwrap().mode() & 0o777, 0o700);
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let meta = std::fs::metadata(&owned).unwrap();
        assert_eq!((meta.mode() & 0o777, meta.uid()), (0o600, 65532));
        assert!(answered_as(65532, &owned).await, "its module's user");
        assert!(!answered_as(65533, &owned).await, "another user");

        // No owner: the runtime's user only (a module process it starts itself).
        let plain = dir.path().join("writer.sock");
        let b = serve(plain.clone(), w("writer"), None).await.unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(std::fs::metadata(&plain).unwrap().mode() & 0o777, 0o600);
        assert!(
            !answered_as(65532, &plain).await,
            "a user that is not the runtime's"
        );
        a.abort();
        b.abort();
    }
}
