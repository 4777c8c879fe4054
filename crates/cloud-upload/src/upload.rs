//! IoT Hub file upload with a device identity, as the tutorial's Avro writer does:
//! 1. `POST https://{hub}/devices/{id}/files` `{"blobName"}` → a SAS URI for a blob;
//! 2. `PUT https://{hostName}/{containerName}/{blobName}{sasToken}` (`x-ms-blob-type: BlockBlob`);
//! 3. `POST https://{hub}/devices/{id}/files/notifications` with the outcome.
//!
//! The bodies are [`edge_protocol::file_upload`]'s, as the local runtime's IoT Hub reads and
//! writes them. A container SAS URL ([`ContainerUploader`]) skips steps 1 and 3.
//!
//! The device connection string comes from the environment or from the IoT Edge
//! configuration file bind-mounted into the module (`/etc/aziot/config.toml` on 1.2+,
//! `/etc/iotedge/config.yaml` on 1.1, or `/app/iotconfig/config.yaml` where the tutorial's
//! manifest binds 1.1's folder), as in the tutorial.

use crate::Error;
use bytes::Bytes;
use edge_protocol::file_upload::{self, ErrorBody, Notification, SasUri, SasUriRequest};
use edge_protocol::{sas, ConnectionString};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The IoT Hub REST API version used.
pub use edge_protocol::file_upload::API_VERSION;
/// Variables holding a device connection string, checked in order before the config files.
pub const CONNECTION_STRING_VARS: [&str; 2] =
    ["DeviceConnectionString", "IOTHUB_DEVICE_CONNECTION_STRING"];
/// Where IoT Edge 1.2+ keeps the device identity.
pub const CONFIG_TOML: &str = "/etc/aziot/config.toml";
/// Where IoT Edge 1.1 kept it.
pub const CONFIG_YAML: &str = "/etc/iotedge/config.yaml";
/// Where the tutorial's manifest binds IoT Edge 1.0/1.1's folder (`/etc/iotedge:/app/iotconfig`)
/// and its writer read `config.yaml`.
pub const TUTORIAL_CONFIG_YAML: &str = "/app/iotconfig/config.yaml";

/// Where an uploaded file went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    /// Blob URL without the SAS token.
    pub url: String,
}

/// Reads the device connection string from a 1.2+ `config.toml` (`[provisioning]`
/// `source = "manual"`, `connection_string = "…"`).
pub fn connection_string_from_toml(text: &str) -> Result<ConnectionString, Error> {
    let v: toml::Value =
        toml::from_str(text).map_err(|e| Error::Config(format!("config.toml is not TOML: {e}")))?;
    let cs = v
        .get("provisioning")
        .and_then(|p| p.get("connection_string"))
        .and_then(|c| c.as_str())
        .ok_or_else(|| {
            Error::Config(
                "config.toml has no [provisioning] connection_string (manual provisioning)".into(),
            )
        })?;
    ConnectionString::parse(cs).map_err(|e| Error::Config(e.to_string()))
}

/// Reads the device connection string from a 1.1 `config.yaml` (`provisioning:`
/// `device_connection_string: "…"`).
pub fn connection_string_from_yaml(text: &str) -> Result<ConnectionString, Error> {
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(text)
        .map_err(|e| Error::Config(format!("config.yaml is not YAML: {e}")))?;
    let cs = v
        .get("provisioning")
        .and_then(|p| p.get("device_connection_string"))
        .and_then(|c| c.as_str())
        .ok_or_else(|| {
            Error::Config(
                "config.yaml has no provisioning.device_connection_string (manual provisioning)"
                    .into(),
            )
        })?;
    ConnectionString::parse(cs).map_err(|e| Error::Config(e.to_string()))
}

/// Finds the device connection string: an environment variable of [`CONNECTION_STRING_VARS`],
/// else the IoT Edge config file, its container path mapped to this machine by `resolve`
/// (a module's binds). [`Error::NoDeviceIdentity`] when there is none.
pub fn find_connection_string(
    resolve: impl Fn(&Path) -> PathBuf,
) -> Result<ConnectionString, Error> {
    for var in CONNECTION_STRING_VARS {
        if let Ok(cs) = std::env::var(var) {
            return ConnectionString::parse(&cs).map_err(|e| Error::Config(format!("{var}: {e}")));
        }
    }
    if let Ok(text) = std::fs::read_to_string(resolve(Path::new(CONFIG_TOML))) {
        return connection_string_from_toml(&text);
    }
    for yaml in [CONFIG_YAML, TUTORIAL_CONFIG_YAML] {
        if let Ok(text) = std::fs::read_to_string(resolve(Path::new(yaml))) {
            return connection_string_from_yaml(&text);
        }
    }
    Err(Error::NoDeviceIdentity)
}

/// Why a blob was not written: no answer (the transport's reason), or its data not read.
enum PutFailure {
    Transport(String),
    Read(PathBuf, std::io::Error),
}

async fn put_block_blob(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    data: Bytes,
) -> Result<(u16, String), PutFailure> {
    let r = http
        .put(format!("{url}{token}"))
        .header("x-ms-blob-type", "BlockBlob")
        .header("content-type", "application/octet-stream")
        .body(data)
        .send()
        .await
        // Without the URL: it holds the SAS token.
        .map_err(|e| PutFailure::Transport(e.without_url().to_string()))?;
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    Ok((
        status.as_u16(),
        if status.is_success() {
            "uploaded".to_owned()
        } else {
            text
        },
    ))
}

/// Files up to this size go in one `Put Blob`; larger ones as blocks of this size
/// (`Put Block`, then `Put Block List`), read from the file one block at a time.
pub const BLOCK_BYTES: usize = 4 * 1024 * 1024;

/// What a blob is made from.
#[derive(Debug, Clone)]
pub enum BlobData {
    /// Bytes in memory.
    Bytes(Bytes),
    /// A file, read a block at a time.
    File(PathBuf),
}

/// The id of block `n` of a blob: base64 of a fixed-width number, as every id of a blob
/// must have the same length.
pub fn block_id(n: usize) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("block-{n:010}"))
}

/// The body of a `Put Block List` committing `ids` in order.
pub fn block_list_xml(ids: &[String]) -> String {
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList>");
    for id in ids {
        xml.push_str("<Latest>");
        xml.push_str(id);
        xml.push_str("</Latest>");
    }
    xml.push_str("</BlockList>");
    xml
}

/// Stores `data` at `url` (a blob URL; `token` its SAS query, starting with `?`): one
/// `Put Blob` for bytes and for a file of up to [`BLOCK_BYTES`], blocks for a larger file.
/// Returns the last status and, on failure, the service's answer.
async fn put_blob(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    data: &BlobData,
) -> Result<(u16, String), PutFailure> {
    let path = match data {
        BlobData::Bytes(b) => return put_block_blob(http, url, token, b.clone()).await,
        BlobData::File(p) => p,
    };
    let read_err = |e: std::io::Error| PutFailure::Read(path.clone(), e);
    let mut file = tokio::fs::File::open(path).await.map_err(read_err)?;
    let len = file.metadata().await.map_err(read_err)?.len();
    if len <= BLOCK_BYTES as u64 {
        let bytes = tokio::fs::read(path).await.map_err(read_err)?;
        return put_block_blob(http, url, token, Bytes::from(bytes)).await;
    }
    let send = |req: reqwest::RequestBuilder| async move {
        let r = req
            .send()
            .await
            // Without the URL: it holds the SAS token.
            .map_err(|e| PutFailure::Transport(e.without_url().to_string()))?;
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        Ok::<_, PutFailure>((status.as_u16(), status.is_success(), text))
    };
    let mut ids = Vec::new();
    loop {
        use tokio::io::AsyncReadExt;
        let mut block = Vec::with_capacity(BLOCK_BYTES);
        (&mut file)
            .take(BLOCK_BYTES as u64)
            .read_to_end(&mut block)
            .await
            .map_err(read_err)?;
        if block.is_empty() {
            break;
        }
        let id = block_id(ids.len());
        let q = format!(
            "{url}{token}&comp=block&blockid={}",
            percent_encoding::utf8_percent_encode(&id, percent_encoding::NON_ALPHANUMERIC)
        );
        let (code, ok, text) = send(http.put(q).body(block)).await?;
        if !ok {
            return Ok((code, format!("block {}: {text}", ids.len())));
        }
        ids.push(id);
    }
    let (code, ok, text) = send(
        http.put(format!("{url}{token}&comp=blocklist"))
            .header("content-type", "application/xml")
            .body(block_list_xml(&ids)),
    )
    .await?;
    Ok((code, if ok { "uploaded".to_owned() } else { text }))
}

/// What writing a blob at `url` came to: `Ok` for a 2xx answer, else the failure sorted by
/// the answer's status (a transport failure may pass if tried again).
fn blob_outcome(url: &str, put: Result<(u16, String), PutFailure>) -> Result<(), Error> {
    const STEP: &str = "writing the blob";
    match put {
        Ok((code, _)) if (200..300).contains(&code) => Ok(()),
        Ok((code, text)) => Err(Error::from_status(
            STEP,
            code,
            false,
            format!("{url}: {code} {text}"),
        )),
        Err(PutFailure::Transport(e)) => Err(Error::transport(STEP, format!("{url}: {e}"))),
        Err(PutFailure::Read(path, source)) => Err(Error::Read { path, source }),
    }
}

/// Uploads files to IoT Hub's storage with a device identity.
#[derive(Clone)]
pub struct FileUploader {
    device: ConnectionString,
    http: reqwest::Client,
}

impl std::fmt::Debug for FileUploader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "FileUploader({} via {})",
            self.device.device_id, self.device.host_name
        )
    }
}

impl FileUploader {
    /// An uploader for the device `cs`, trusting the system's roots plus `extra_roots_pem`
    /// (the edge trust bundle, when the hub or storage is local).
    pub fn new(cs: ConnectionString, extra_roots_pem: Option<&str>) -> Result<Self, Error> {
        Ok(FileUploader {
            device: cs,
            http: crate::https::client(extra_roots_pem)?,
        })
    }

    /// The device identity used.
    pub fn device(&self) -> &ConnectionString {
        &self.device
    }

    fn token(&self) -> Result<String, Error> {
        let expiry = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            + 3600;
        let resource = sas::resource_uri(&self.device.host_name, &self.device.device_id, None);
        sas::make_token(&resource, &self.device.shared_access_key, expiry)
            .map_err(|e| Error::Config(e.to_string()))
    }

    /// POSTs `body` to the hub's `path` as the device; the answer's body when it succeeded.
    async fn post_json(
        &self,
        step: &'static str,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<Bytes, Error> {
        let url = format!(
            "https://{}{path}?api-version={API_VERSION}",
            self.device.host_name
        );
        let body = serde_json::to_vec(body).map_err(|e| Error::Refused {
            step,
            reason: format!("the request's body: {e}"),
        })?;
        let resp = self
            .http
            .post(&url)
            .header("authorization", self.token()?)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| Error::transport(step, format!("{url}: {e}")))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| Error::transport(step, e.to_string()))?;
        if !status.is_success() {
            // Too many uploads in progress: they expire, so a later try may pass.
            let busy = serde_json::from_slice::<ErrorBody>(&bytes)
                .is_ok_and(|b| b.error_code == Some(file_upload::TOO_MANY_ACTIVE_UPLOADS));
            let reason = format!(
                "{url} answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
            return Err(Error::from_status(step, status.as_u16(), busy, reason));
        }
        Ok(bytes)
    }

    /// Uploads `data` as `blob_name` (IoT Hub stores it under the device's folder).
    pub async fn upload(&self, blob_name: &str, data: Bytes) -> Result<Uploaded, Error> {
        self.upload_data(blob_name, &BlobData::Bytes(data)).await
    }

    /// Uploads the file at `path` as `blob_name`, streamed: a file larger than
    /// [`BLOCK_BYTES`] goes as blocks, read one at a time.
    pub async fn upload_file(&self, blob_name: &str, path: &Path) -> Result<Uploaded, Error> {
        self.upload_data(blob_name, &BlobData::File(path.to_path_buf()))
            .await
    }

    async fn upload_data(&self, blob_name: &str, data: &BlobData) -> Result<Uploaded, Error> {
        const STEP: &str = "getting a SAS URI";
        let request = SasUriRequest {
            blob_name: blob_name.to_owned(),
        };
        let device = &self.device.device_id;
        let answer = self
            .post_json(STEP, &file_upload::sas_uri_path(device), &request)
            .await?;
        let sas: SasUri = serde_json::from_slice(&answer).map_err(|e| Error::Refused {
            step: STEP,
            reason: format!("unexpected answer: {e}"),
        })?;
        let url = sas.blob_url();
        let put = put_blob(&self.http, &url, &sas.sas_token, data).await;
        let (code, description) = match &put {
            Ok((code, text)) => (*code, text.clone()),
            Err(PutFailure::Transport(e)) => (500, e.clone()),
            Err(PutFailure::Read(path, e)) => (500, format!("reading {}: {e}", path.display())),
        };
        let note = Notification {
            correlation_id: sas.correlation_id,
            is_success: (200..300).contains(&code),
            status_code: Some(code.into()),
            status_description: Some(description),
        };
        let notified = self
            .post_json(
                "notifying the hub",
                &file_upload::notification_path(device),
                &note,
            )
            .await;
        blob_outcome(&url, put)?;
        notified?;
        Ok(Uploaded { url })
    }
}

/// Uploads files straight into a blob container through a container SAS URL
/// (`https://{account}.blob.core.windows.net/{container}?{sas}`), without IoT Hub.
#[derive(Clone)]
pub struct ContainerUploader {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for ContainerUploader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ContainerUploader({})", self.base)
    }
}

impl ContainerUploader {
    /// An uploader for a container SAS URL (the SAS must allow create and write).
    pub fn new(container_sas_url: &str, extra_roots_pem: Option<&str>) -> Result<Self, Error> {
        let (base, query) = container_sas_url
            .split_once('?')
            .ok_or_else(|| Error::Config("the container SAS URL has no ?sv=… token".into()))?;
        if !base.starts_with("https://") {
            return Err(Error::Config(
                "the container SAS URL must be https://…".into(),
            ));
        }
        Ok(ContainerUploader {
            base: base.trim_end_matches('/').to_owned(),
            token: format!("?{query}"),
            http: crate::https::client(extra_roots_pem)?,
        })
    }

    /// The container URL (without the token).
    pub fn container_url(&self) -> &str {
        &self.base
    }

    /// Uploads `data` as `blob_name` in the container.
    pub async fn upload(&self, blob_name: &str, data: Bytes) -> Result<Uploaded, Error> {
        self.upload_data(blob_name, &BlobData::Bytes(data)).await
    }

    /// Uploads the file at `path` as `blob_name` in the container, streamed (blocks for a
    /// file larger than [`BLOCK_BYTES`]).
    pub async fn upload_file(&self, blob_name: &str, path: &Path) -> Result<Uploaded, Error> {
        self.upload_data(blob_name, &BlobData::File(path.to_path_buf()))
            .await
    }

    async fn upload_data(&self, blob_name: &str, data: &BlobData) -> Result<Uploaded, Error> {
        let url = format!("{}/{}", self.base, crate::blob::escape_path(blob_name));
        blob_outcome(&url, put_blob(&self.http, &url, &self.token, data).await)?;
        Ok(Uploaded { url })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_sas_upload_names_the_blob_but_not_the_token() {
        // Nothing listens on port 9 here: the connection fails before any answer.
        let u = ContainerUploader::new("https://127.0.0.1:9/avro?sv=2017-04-17&sig=c2VjcmV0", None)
            .unwrap();
        let e = u
            .upload("edge#1/2026/11/21/5/15.avro", Bytes::from_static(b"x"))
            .await
            .unwrap_err();
        assert!(e.is_retryable(), "{e}");
        let e = e.to_string();
        assert!(!e.contains("sig=") && !e.contains("c2VjcmV0"), "{e}");
        assert!(
            e.contains("https://127.0.0.1:9/avro/edge%231/2026/11/21/5/15.avro"),
            "{e}"
        );
    }

    #[test]
    fn finds_config_yaml_where_the_tutorial_binds_it() {
        let dir = std::env::temp_dir().join(format!("cloud-upload-{}", std::process::id()));
        let bound = dir.join("etc-iotedge");
        std::fs::create_dir_all(&bound).unwrap();
        std::fs::write(
            bound.join("config.yaml"),
            "provisioning:\n  source: \"manual\"\n  device_connection_string: \"HostName=h;DeviceId=tutorial;SharedAccessKey=a2V5\"\n",
        )
        .unwrap();
        // The tutorial's bind: the host's /etc/iotedge at /app/iotconfig.
        let resolve = |p: &Path| match p.strip_prefix("/app/iotconfig") {
            Ok(rest) => bound.join(rest),
            Err(_) => dir.join("nowhere").join(p.strip_prefix("/").unwrap_or(p)),
        };
        let found = find_connection_string(resolve);
        let _ = std::fs::remove_dir_all(&dir);
        if CONNECTION_STRING_VARS
            .iter()
            .all(|v| std::env::var(v).is_err())
        {
            assert_eq!(found.unwrap().device_id, "tutorial");
        }
    }

    #[test]
    fn reads_both_config_file_generations() {
        let toml = "hostname = \"edge\"\n[provisioning]\nsource = \"manual\"\nconnection_string = \"HostName=hub.azure-devices.net;DeviceId=edge;SharedAccessKey=a2V5\"\n";
        let cs = connection_string_from_toml(toml).unwrap();
        assert_eq!(
            (cs.host_name.as_str(), cs.device_id.as_str()),
            ("hub.azure-devices.net", "edge")
        );
        let yaml = "provisioning:\n  source: \"manual\"\n  device_connection_string: \"HostName=h;DeviceId=d;SharedAccessKey=a2V5\"\nagent:\n  name: edgeAgent\n";
        assert_eq!(connection_string_from_yaml(yaml).unwrap().device_id, "d");
        let e = connection_string_from_toml("[provisioning]\nsource = \"dps\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("connection_string"), "{e}");
        assert!(connection_string_from_yaml("provisioning: [").is_err());
    }
}
