//! IoT Hub's cloud side for file upload: the REST endpoints a device calls (over HTTPS, with
//! its SAS token), and the blob store the SAS URIs point at — Azurite, the Azure Storage
//! emulator, or a folder of the state directory served by this runtime.
//!
//! - `POST /devices/{id}/files` `{"blobName"}` → `{blobName, containerName, correlationId, hostName, sasToken}`
//! - `POST /devices/{id}/files/notifications` `{correlationId, isSuccess, statusCode, statusDescription}` → 204
//!
//! The bodies are [`edge_protocol::file_upload`]'s, which the device side writes and reads.
//! - `PUT /localblob/{container}/{blob…}{sas}` (folder store only)
//!
//! As IoT Hub does, blobs are named `{deviceId}/{blobName}`.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::{Json, Router};
use bytes::Bytes;
use edge_protocol::file_upload::{self, ErrorBody, Notification, SasUri, SasUriRequest};
use edge_protocol::{sas, SasToken};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use runtime_state::KeyStore;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The account every Azurite instance has, and its key (public, documented by Microsoft).
pub use cloud_upload::{AZURITE_ACCOUNT, AZURITE_KEY};
/// Storage service version the SAS tokens are made for.
pub const SAS_VERSION: &str = "2020-08-04";

/// Where uploaded blobs go.
#[derive(Debug, Clone)]
pub enum BlobStore {
    /// A folder, served by this runtime at `https://{authority}/localblob/…`.
    Directory(PathBuf),
    /// Azurite at `https://{host}` (host includes the account path, e.g. `127.0.0.1:10000/devstoreaccount1`).
    Azurite {
        /// Host and account path.
        host: String,
    },
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

/// The expiry (`se`) of a SAS valid for `valid_for` from now.
fn sas_expiry(valid_for: Duration) -> Result<String, String> {
    let expiry =
        chrono::Utc::now() + chrono::Duration::from_std(valid_for).map_err(|e| e.to_string())?;
    Ok(expiry.format("%Y-%m-%dT%H:%M:%SZ").to_string())
}

/// An account SAS query string (without `?`) for the blob service.
pub fn account_sas(
    account: &str,
    key_b64: &str,
    permissions: &str,
    resource_types: &str,
    valid_for: Duration,
) -> Result<String, String> {
    let se = sas_expiry(valid_for)?;
    let to_sign =
        format!("{account}\n{permissions}\nb\n{resource_types}\n\n{se}\n\nhttps\n{SAS_VERSION}\n");
    let sig = sas::sign(key_b64, to_sign.as_bytes()).map_err(|e| e.to_string())?;
    Ok(format!(
        "sv={SAS_VERSION}&ss=b&srt={resource_types}&sp={permissions}&se={}&spr=https&sig={}",
        enc(&se),
        enc(&sig)
    ))
}

/// A service SAS query string (without `?`) for one blob: `permissions` on
/// `container/blob` only, for `valid_for`, over HTTPS.
pub fn blob_sas(
    account: &str,
    key_b64: &str,
    container: &str,
    blob: &str,
    permissions: &str,
    valid_for: Duration,
) -> Result<String, String> {
    let se = sas_expiry(valid_for)?;
    // The service SAS string to sign of versions 2018-11-09 to 2020-10-02: permissions,
    // start, expiry, canonical resource, identifier, IP, protocol, version, resource,
    // snapshot time, then the five response headers (none here).
    let to_sign = format!(
        "{permissions}\n\n{se}\n/blob/{account}/{container}/{blob}\n\n\nhttps\n{SAS_VERSION}\nb\n\n\n\n\n\n"
    );
    let sig = sas::sign(key_b64, to_sign.as_bytes()).map_err(|e| e.to_string())?;
    Ok(format!(
        "sv={SAS_VERSION}&sr=b&sp={permissions}&se={}&spr=https&sig={}",
        enc(&se),
        enc(&sig)
    ))
}

/// How long a file-upload SAS is valid, as IoT Hub's default.
pub const UPLOAD_SAS_VALID_FOR: Duration = Duration::from_secs(3600);

/// File uploads a device may have in progress (SAS issued, not yet notified), as IoT Hub
/// allows; older requests than [`UPLOAD_SAS_VALID_FOR`] are forgotten.
pub const MAX_UPLOADS_PER_DEVICE: usize = 10;

/// The file-upload service.
pub struct FileService {
    /// `host:port` devices use as their IoT Hub host name for HTTPS.
    pub authority: String,
    devices: KeyStore,
    container: String,
    store: BlobStore,
    local_key: String,
    /// Uploads in progress by correlation id: device, blob, when the SAS was issued.
    pending: Mutex<HashMap<String, PendingUpload>>,
    log: Mutex<std::fs::File>,
    /// Successful uploads notified by devices.
    pub uploaded: AtomicU64,
    /// Failed uploads notified by devices.
    pub failed: AtomicU64,
}

/// An upload a SAS was issued for and no notification came yet.
struct PendingUpload {
    device: String,
    blob: String,
    issued: std::time::Instant,
}

/// Whether `p` is a relative path of plain names only (no empty, `.` or `..` segment, no
/// leading `/`): joined to a folder, it stays inside it.
fn is_plain_path(p: &str) -> bool {
    !p.is_empty()
        && p.split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != ".." && !seg.contains('\0'))
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = ErrorBody {
        message: message.into(),
        error_code: None,
    };
    (status, Json(body)).into_response()
}

impl FileService {
    /// A service for devices of `devices`, storing into `store`; notifications are appended to
    /// `notifications` (JSON lines).
    pub fn new(
        authority: String,
        devices: KeyStore,
        container: &str,
        store: BlobStore,
        notifications: PathBuf,
    ) -> std::io::Result<Self> {
        if let Some(dir) = notifications.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(notifications)?;
        Ok(FileService {
            authority,
            devices,
            container: container.to_owned(),
            store,
            local_key: runtime_state::new_key(),
            pending: Mutex::new(HashMap::new()),
            log: Mutex::new(log),
            uploaded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        })
    }

    /// Checks the device's SAS token; the error is the reason, answered as 401.
    fn authorize(&self, headers: &HeaderMap, device: &str) -> Result<(), String> {
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or("missing Authorization header")?;
        let key = self.devices.key(device).ok_or("unknown device")?;
        let resource = sas::resource_uri(&self.authority, device, None);
        SasToken::parse(token)
            .and_then(|t| t.verify(&resource, &key, now_secs()))
            .map_err(|e| e.to_string())
    }

    /// A device's request: its SAS token checked (401), then its JSON body (400, `what` says
    /// what was expected).
    fn device_request<T: serde::de::DeserializeOwned>(
        &self,
        headers: &HeaderMap,
        device: &str,
        body: &[u8],
        what: &str,
    ) -> Result<T, (StatusCode, String)> {
        self.authorize(headers, device)
            .map_err(|e| (StatusCode::UNAUTHORIZED, e))?;
        serde_json::from_slice(body).map_err(|e| (StatusCode::BAD_REQUEST, format!("{what}: {e}")))
    }

    fn sas_for(&self, blob: &str) -> Result<(String, String), String> {
        match &self.store {
            BlobStore::Azurite { host } => {
                let token = blob_sas(
                    AZURITE_ACCOUNT,
                    AZURITE_KEY,
                    &self.container,
                    blob,
                    "cw",
                    UPLOAD_SAS_VALID_FOR,
                )?;
                Ok((host.clone(), format!("?{token}")))
            }
            BlobStore::Directory(_) => {
                let se = now_secs() + UPLOAD_SAS_VALID_FOR.as_secs();
                let sig = sas::sign(
                    &self.local_key,
                    format!("{}/{blob}\n{se}", self.container).as_bytes(),
                )
                .map_err(|e| e.to_string())?;
                Ok((
                    format!("{}/localblob", self.authority),
                    format!("?se={se}&sig={}", enc(&sig)),
                ))
            }
        }
    }

    fn record(&self, entry: Value) {
        let mut f = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = writeln!(f, "{entry}").and_then(|_| f.sync_data()) {
            tracing::warn!(error = %e, "could not record a file-upload notification");
        }
    }
}

async fn create_sas_uri(
    State(s): State<Arc<FileService>>,
    Path(device): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req: SasUriRequest =
        match s.device_request(&headers, &device, &body, "body must be {\"blobName\": …}") {
            Ok(r) => r,
            Err((status, message)) => return error(status, message),
        };
    let name = req.blob_name.trim_start_matches('/');
    let blob = format!("{device}/{name}");
    if name.is_empty() || !is_plain_path(&blob) {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "blob name '{}' of device '{device}' is not valid (empty, '.' or '..' segments)",
                req.blob_name
            ),
        );
    }
    let (host, token) = match s.sas_for(&blob) {
        Ok(x) => x,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let cid = uuid::Uuid::new_v4().to_string();
    {
        let mut pending = s.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.retain(|_, u| u.issued.elapsed() < UPLOAD_SAS_VALID_FOR);
        let in_progress = pending.values().filter(|u| u.device == device).count();
        if in_progress >= MAX_UPLOADS_PER_DEVICE {
            tracing::warn!(
                device,
                in_progress,
                "file upload refused: too many in progress"
            );
            // IoT Hub's answer: 403006 DeviceMaximumActiveFileUploadLimitExceeded.
            let body = ErrorBody {
                message: format!(
                    "device '{device}' has {in_progress} file uploads in progress, IoT Hub's limit: notify the hub of those first"
                ),
                error_code: Some(file_upload::TOO_MANY_ACTIVE_UPLOADS),
            };
            return (StatusCode::FORBIDDEN, Json(body)).into_response();
        }
        pending.insert(
            cid.clone(),
            PendingUpload {
                device: device.clone(),
                blob: blob.clone(),
                issued: std::time::Instant::now(),
            },
        );
    }
    Json(SasUri {
        blob_name: blob,
        container_name: s.container.clone(),
        correlation_id: cid,
        host_name: host,
        sas_token: token,
    })
    .into_response()
}

async fn notify(
    State(s): State<Arc<FileService>>,
    Path(device): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let n: Notification =
        match s.device_request(&headers, &device, &body, "not a file-upload notification") {
            Ok(n) => n,
            Err((status, message)) => return error(status, message),
        };
    let upload = {
        let mut pending = s.pending.lock().unwrap_or_else(|p| p.into_inner());
        match pending.get(&n.correlation_id) {
            Some(u) if u.device == device => pending.remove(&n.correlation_id),
            _ => None,
        }
    };
    let Some(PendingUpload { blob, .. }) = upload else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no upload with correlation id {}", n.correlation_id),
        );
    };
    let counter = if n.is_success { &s.uploaded } else { &s.failed };
    counter.fetch_add(1, Ordering::Relaxed);
    let url = match &s.store {
        BlobStore::Azurite { host } => format!("https://{host}/{}/{blob}", s.container),
        BlobStore::Directory(root) => root.join(&s.container).join(&blob).display().to_string(),
    };
    tracing::info!(device, blob, success = n.is_success, "file upload notified");
    s.record(json!({
        "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "deviceId": device, "blobName": blob, "container": s.container, "url": url,
        "isSuccess": n.is_success, "statusCode": n.status_code, "statusDescription": n.status_description,
    }));
    StatusCode::NO_CONTENT.into_response()
}

async fn put_local_blob(
    State(s): State<Arc<FileService>>,
    Path((container, blob)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let BlobStore::Directory(root) = &s.store else {
        return error(
            StatusCode::NOT_FOUND,
            "this runtime stores blobs in Azurite",
        );
    };
    let (Some(se), Some(sig)) = (
        q.get("se").and_then(|v| v.parse::<u64>().ok()),
        q.get("sig"),
    ) else {
        return error(StatusCode::FORBIDDEN, "missing se or sig");
    };
    let expected =
        sas::sign(&s.local_key, format!("{container}/{blob}\n{se}").as_bytes()).unwrap_or_default();
    if se <= now_secs() || *sig != expected || container != s.container {
        return error(StatusCode::FORBIDDEN, "signature not valid for this blob");
    }
    if !is_plain_path(&container) || !is_plain_path(&blob) {
        return error(StatusCode::BAD_REQUEST, "blob path leaves the container");
    }
    let path = root.join(&container).join(&blob);
    // Blocks wait beside the store (never inside a container) until their list commits them.
    let blocks = root.join(".blocks").join(&container).join(&blob);
    // Files are written on a blocking thread: a commit copies a whole blob.
    type Job = Box<dyn FnOnce() -> std::io::Result<()> + Send>;
    let job: Job = match q.get("comp").map(String::as_str) {
        None => Box::new(move || write_blob(&path, &[&body[..]])),
        Some("block") => {
            let Some(id) = q.get("blockid").and_then(|id| block_file_name(id)) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "blockid must be base64 of at most 64 bytes",
                );
            };
            Box::new(move || write_blob(&blocks.join(id), &[&body[..]]))
        }
        Some("blocklist") => {
            let Some(ids) = block_list(&body) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "not a block list (<BlockList><Latest>id</Latest>…)",
                );
            };
            let mut parts = Vec::with_capacity(ids.len());
            for id in &ids {
                let Some(name) = block_file_name(id) else {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("block id {id} is not base64 of at most 64 bytes"),
                    );
                };
                parts.push(blocks.join(name));
            }
            Box::new(move || {
                commit_blocks(&path, &parts)?;
                let _ = std::fs::remove_dir_all(&blocks);
                Ok(())
            })
        }
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("comp={other} is not supported here"),
            )
        }
    };
    let result = tokio::task::spawn_blocking(job)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
    match result {
        Ok(()) => StatusCode::CREATED.into_response(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => error(
            StatusCode::BAD_REQUEST,
            "the block list names a block that was not uploaded",
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// A temporary name beside `path`, its own (no two writes share one).
fn partial_name(path: &std::path::Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.partial", uuid::Uuid::new_v4().simple()));
    path.with_file_name(name)
}

/// Writes `parts` as the file `path`, atomically (temporary file, sync, rename).
pub(crate) fn write_blob(path: &std::path::Path, parts: &[&[u8]]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = partial_name(path);
    {
        let mut f = std::fs::File::create(&tmp)?;
        for p in parts {
            f.write_all(p)?;
        }
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Writes the blob `path` from the block files `blocks`, in order, streamed.
fn commit_blocks(path: &std::path::Path, blocks: &[PathBuf]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = partial_name(path);
    {
        let mut f = std::fs::File::create(&tmp)?;
        for b in blocks {
            std::io::copy(&mut std::fs::File::open(b)?, &mut f)?;
        }
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// The file name a block id is kept under (hex of its bytes), if it is a valid id.
fn block_file_name(id: &str) -> Option<String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD.decode(id).ok()?;
    if bytes.is_empty() || bytes.len() > 64 {
        return None;
    }
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The block ids of a `Put Block List` body, in order (`Latest`, `Committed` or
/// `Uncommitted` elements alike: this store keeps no committed blocks to choose from).
fn block_list(body: &[u8]) -> Option<Vec<String>> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("<BlockList>")? + "<BlockList>".len();
    let end = text.rfind("</BlockList>")?;
    let mut rest = text.get(start..end)?.trim();
    let mut ids = Vec::new();
    while !rest.is_empty() {
        let open_end = rest.find('>')?;
        let tag = rest.get(1..open_end)?;
        if !rest.starts_with('<') || !matches!(tag, "Latest" | "Committed" | "Uncommitted") {
            return None;
        }
        let close = format!("</{tag}>");
        let body_end = rest.find(&close)?;
        ids.push(rest.get(open_end + 1..body_end)?.trim().to_owned());
        rest = rest.get(body_end + close.len()..)?.trim_start();
    }
    Some(ids)
}

/// The largest body one PUT to the folder store takes: a block (the writer's are 4 MiB) or a
/// blob written in one piece. Larger blobs are written as blocks, as Azure takes them.
pub const LOCAL_BLOB_MAX_BODY: usize = 8 * 1024 * 1024;

/// The service's routes.
pub fn router(service: Arc<FileService>) -> Router {
    Router::new()
        .route(file_upload::SAS_URI_ROUTE, post(create_sas_uri))
        .route(file_upload::NOTIFICATION_ROUTE, post(notify))
        .route(
            "/localblob/{container}/{*blob}",
            // A block (or a small blob) at a time: larger blobs come as blocks.
            put(put_local_blob).layer(axum::extract::DefaultBodyLimit::max(LOCAL_BLOB_MAX_BODY)),
        )
        .with_state(service)
}

/// Connections the file-upload API serves at once.
pub const HTTPS_CONNECTIONS: usize = 256;

/// Serves `app` over TLS on `listener`: at most [`HTTPS_CONNECTIONS`] at once, each with
/// the header deadline (TLS handshake included) and idle timeout of
/// [`edge_process::http::Limits`].
pub async fn serve_https(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let prepare = move |tcp| {
        let acceptor = acceptor.clone();
        async move { acceptor.accept(tcp).await.ok() }
    };
    let make = move || hyper_util::service::TowerToHyperService::new(app.clone());
    edge_process::http::serve(
        "file-upload API",
        edge_process::http::Limits::new(HTTPS_CONNECTIONS),
        listener,
        prepare,
        make,
    )
    .await;
}

/// A running Azurite (blob service only), stopped when dropped.
pub struct Azurite {
    child: tokio::process::Child,
    /// `127.0.0.1:{port}/devstoreaccount1`.
    pub host: String,
    launch: AzuriteLaunch,
}

/// How Azurite was started, to start it again on the same port and data.
#[derive(Clone)]
struct AzuriteLaunch {
    bin: PathBuf,
    location: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    log: PathBuf,
    port: u16,
    container: String,
    ca_pem: String,
}

impl Azurite {
    /// Starts Azurite from `bin` with its data in `location`, serving HTTPS with the
    /// runtime's certificate, and creates `container`.
    pub async fn start(
        bin: &std::path::Path,
        location: &std::path::Path,
        cert: &std::path::Path,
        key: &std::path::Path,
        log: &std::path::Path,
        container: &str,
        ca_pem: &str,
    ) -> anyhow::Result<Azurite> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        Azurite::launch(AzuriteLaunch {
            bin: bin.to_path_buf(),
            location: location.to_path_buf(),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            log: log.to_path_buf(),
            port,
            container: container.to_owned(),
            ca_pem: ca_pem.to_owned(),
        })
        .await
    }

    async fn launch(l: AzuriteLaunch) -> anyhow::Result<Azurite> {
        use anyhow::Context;
        let (bin, log, port) = (&l.bin, &l.log, l.port);
        std::fs::create_dir_all(&l.location)?;
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let child = tokio::process::Command::new(bin)
            .args([
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &port.to_string(),
                "--skipApiVersionCheck",
                "--loose",
            ])
            .arg("--location")
            .arg(&l.location)
            .arg("--cert")
            .arg(&l.cert)
            .arg("--key")
            .arg(&l.key)
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "starting Azurite ({}); install it with scripts/setup-node.sh",
                    bin.display()
                )
            })?;
        let host = format!("127.0.0.1:{port}/{AZURITE_ACCOUNT}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "Azurite did not start listening within 30 s (see {})",
                log.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let az = Azurite {
            child,
            host,
            launch: l.clone(),
        };
        az.create_container(&l.container, &l.ca_pem).await?;
        tracing::info!(host = %az.host, container = %l.container, "Azurite blob service ready");
        Ok(az)
    }

    /// Stops Azurite gracefully: SIGTERM lets it save its blob metadata (kept in memory and
    /// saved every few seconds), so blobs uploaded just before are there after a restart.
    /// Killed after 10 s if it has not exited.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
                .await
                .is_ok()
            {
                return;
            }
            tracing::warn!("Azurite did not stop within 10 s of SIGTERM; killing it");
        }
        let _ = self.child.kill().await;
    }

    /// Stops Azurite if it still runs, and starts it again on the same port with the same
    /// data (fault tests: blob storage down for a while, then back).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let _ = self.child.kill().await;
        *self = Azurite::launch(self.launch.clone()).await?;
        Ok(())
    }

    async fn create_container(&self, container: &str, ca_pem: &str) -> anyhow::Result<()> {
        let http = https_client(ca_pem)?;
        let token = account_sas(
            AZURITE_ACCOUNT,
            AZURITE_KEY,
            "rwdlac",
            "sco",
            Duration::from_secs(600),
        )
        .map_err(anyhow::Error::msg)?;
        let url = format!(
            "https://{}/{container}?restype=container&{token}",
            self.host
        );
        let r = http.put(&url).header("content-length", "0").send().await?;
        anyhow::ensure!(
            r.status().is_success() || r.status() == reqwest::StatusCode::CONFLICT,
            "creating container {container} in Azurite answered {}: {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
        Ok(())
    }

    /// The process id (for fault tests that stop it).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// An HTTPS client trusting the runtime's CA.
pub fn https_client(ca_pem: &str) -> anyhow::Result<reqwest::Client> {
    use edge_protocol::trust;
    // An empty `ca_pem` gives a client for plain HTTP only (tests).
    let mut roots = rustls::RootCertStore::empty();
    trust::add_roots(&mut roots, ca_pem.as_bytes())?;
    let tls = trust::client_config(roots)?;
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()?)
}

/// Reads a blob back (tests and reports): from Azurite with an account SAS, or from the folder.
pub async fn read_blob(
    store: &BlobStore,
    container: &str,
    blob: &str,
    ca_pem: &str,
) -> anyhow::Result<Vec<u8>> {
    match store {
        BlobStore::Directory(root) => {
            anyhow::ensure!(
                is_plain_path(container) && is_plain_path(blob),
                "blob path '{container}/{blob}' leaves the store"
            );
            Ok(std::fs::read(root.join(container).join(blob))?)
        }
        BlobStore::Azurite { host } => {
            let token = account_sas(
                AZURITE_ACCOUNT,
                AZURITE_KEY,
                "r",
                "o",
                Duration::from_secs(600),
            )
            .map_err(anyhow::Error::msg)?;
            let r = https_client(ca_pem)?
                .get(format!("https://{host}/{container}/{blob}?{token}"))
                .send()
                .await?;
            anyhow::ensure!(
                r.status().is_success(),
                "reading blob {blob} answered {}",
                r.status()
            );
            Ok(r.bytes().await?.to_vec())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine as _;

    #[test]
    fn block_lists_and_ids_read_as_azure_writes_them_and_nothing_else() {
        let body = br#"<?xml version="1.0" encoding="utf-8"?><BlockList><Latest>YQ==</Latest> <Uncommitted>Yg==</Uncommitted><Committed>Yw==</Committed></BlockList>"#;
        assert_eq!(block_list(body).unwrap(), ["YQ==", "Yg==", "Yw=="]);
        assert_eq!(
            block_list(b"<BlockList></BlockList>").unwrap(),
            Vec::<String>::new()
        );
        for bad in [
            &b"<BlockList><Other>YQ==</Other></BlockList>"[..],
            b"no list",
            b"<BlockList><Latest>YQ==</BlockList>",
        ] {
            assert!(
                block_list(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(block_file_name("YQ==").as_deref(), Some("61"));
        assert_eq!(block_file_name("../x"), None, "not base64: never a path");
        assert_eq!(block_file_name(""), None);
        assert_eq!(block_file_name(&"QUFB".repeat(30)), None, "over 64 bytes");
    }

    #[test]
    fn blob_paths_stay_inside_their_container() {
        for ok in [
            "edge-device/2026/1/2/3/5.avro",
            "Client_001/x.avro",
            "a/..b/c.",
            "%2e%2e/x",
        ] {
            assert!(is_plain_path(ok), "{ok}");
        }
        for bad in [
            "",
            "/x",
            "../x",
            "../../etc/x",
            "dev/./x",
            "dev//x",
            "dev/",
            "a/..",
            "..",
        ] {
            assert!(!is_plain_path(bad), "{bad}");
        }
    }

    #[test]
    fn account_sas_signs_the_documented_fields() {
        let q = account_sas(
            "devstoreaccount1",
            AZURITE_KEY,
            "cw",
            "o",
            Duration::from_secs(60),
        )
        .unwrap();
        let fields: HashMap<&str, &str> =
            q.split('&').filter_map(|kv| kv.split_once('=')).collect();
        assert_eq!(
            (
                fields["sv"],
                fields["ss"],
                fields["srt"],
                fields["sp"],
                fields["spr"]
            ),
            (SAS_VERSION, "b", "o", "cw", "https")
        );
        let se = percent_encoding::percent_decode_str(fields["se"])
            .decode_utf8()
            .unwrap();
        let to_sign = format!("devstoreaccount1\ncw\nb\no\n\n{se}\n\nhttps\n{SAS_VERSION}\n");
        let sig = percent_encoding::percent_decode_str(fields["sig"])
            .decode_utf8()
            .unwrap();
        assert_eq!(sig, sas::sign(AZURITE_KEY, to_sign.as_bytes()).unwrap());
        assert_eq!(B64.decode(sig.as_bytes()).unwrap().len(), 32);
    }
}
