//! Where quiet files go: the seam between the upload scanner and an upload target.
//!
//! The scanner ([`crate::scanner`]) calls [`Uploader::upload`] once per quiet file with the
//! file's path and its blob name (the path relative to the archive root, e.g.
//! `2026/11/21/5/15.avro`), and deletes the file only after `upload` returned `Ok`. An
//! uploader must therefore return `Ok` only once the file is stored for good at the target;
//! on `Err` the file stays and is offered again after a backoff.
//!
//! [`UploadTarget`] is the uploader the module is configured with ([`UploadTarget::from_env`]),
//! in this order:
//! 1. a local directory ([`UploadTarget::Directory`], env `AVRO_UPLOAD_DIR`);
//! 2. a blob container SAS URL ([`UploadTarget::Container`], env `AVRO_UPLOAD_CONTAINER_SAS_URL`);
//! 3. a storage account's connection string ([`UploadTarget::Account`], env
//!    `AVRO_UPLOAD_STORAGE_CONNECTION_STRING`, container `AVRO_UPLOAD_CONTAINER`, default
//!    `avrofiles`): block blobs signed with the account key (Shared Key), into the "Azure Blob
//!    Storage on IoT Edge" module on the device
//!    (`DefaultEndpointsProtocol=http;BlobEndpoint=http://azureblobstorageoniotedge:11002/{account};AccountName={account};AccountKey={key}`)
//!    or a cloud account (`DefaultEndpointsProtocol=https;AccountName=…;AccountKey=…;EndpointSuffix=core.windows.net`);
//!    the container is created if missing. This needs no IoT Hub identity: the way for a
//!    device provisioned through DPS or with X.509, since IoT Hub file upload works only for
//!    device identities, not module identities (`cloud_upload::AccountUploader`);
//! 4. IoT Hub file upload with the device identity, as the tutorial does
//!    ([`UploadTarget::IotHub`]: ask the hub for a blob SAS URI, `PUT` the blob, notify the
//!    hub; `cloud_upload::FileUploader`), when a device connection string is found in the
//!    environment or in the IoT Edge config file bind-mounted into the module.
//!
//! Remote targets return `Ok` once the blob is stored (and, for IoT Hub, the hub notified),
//! [`UploadError::Refused`] with what the hub or the blob store answered otherwise
//! ([`cloud_upload::Error`]: unreachable or busy, unauthorized, not found, refused).
//! [`Uploader::describe`] names where files go, never a key or SAS token.

use crate::container;
use std::future::Future;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Why an upload did not happen. The file stays in the archive and is retried.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The blob name is not a relative path without `..` (a defect of the caller).
    #[error("blob name '{0}' is not a relative path inside the archive")]
    BadBlobName(String),
    /// The archived file could not be read.
    #[error("cannot read {path}: {source}")]
    Source {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The target did not take the file.
    #[error("cannot store blob {blob} in {target}: {source} (check that the target exists, is writable and has space)")]
    Store {
        /// The blob name.
        blob: String,
        /// The target, for the operator.
        target: String,
        /// The error.
        source: io::Error,
    },
    /// A remote service refused the upload (for uploaders that talk to one).
    #[error("the upload service refused blob {blob}: {source}")]
    Refused {
        /// The blob name.
        blob: String,
        /// What went wrong, sorted by what can be done about it.
        source: cloud_upload::Error,
    },
}

/// Something that stores archived files; see the module documentation for the contract.
pub trait Uploader: Send + Sync + 'static {
    /// Stores the file at `path` as `blob_name`; `Ok` only once it is stored for good.
    fn upload(
        &self,
        path: &Path,
        blob_name: &str,
    ) -> impl Future<Output = Result<(), UploadError>> + Send;

    /// Where files go, for logs and reported properties.
    fn describe(&self) -> String;
}

/// The upload targets the module knows.
#[derive(Debug, Clone)]
pub enum UploadTarget {
    /// Copy each file to `<dir>/<blob name>`, atomically (temporary file, `fsync`, rename).
    Directory(PathBuf),
    /// PUT each file into a blob container through a container SAS URL, as
    /// `<device id>/<blob name>` (the prefix: see [`device_prefix`]).
    Container(cloud_upload::ContainerUploader, String),
    /// PUT each file into a container of a storage account, signed with the account key.
    Account(cloud_upload::AccountUploader, String),
    /// IoT Hub file upload with the device identity.
    IotHub(cloud_upload::FileUploader),
}

/// Environment variable naming the directory target.
pub const UPLOAD_DIR_VAR: &str = "AVRO_UPLOAD_DIR";
/// Environment variable holding a container SAS URL.
pub const CONTAINER_SAS_VAR: &str = "AVRO_UPLOAD_CONTAINER_SAS_URL";
/// Environment variable holding an Azure Storage connection string.
pub const STORAGE_CONNECTION_STRING_VAR: &str = "AVRO_UPLOAD_STORAGE_CONNECTION_STRING";
/// Environment variable naming the container of the storage-account target.
pub const CONTAINER_VAR: &str = "AVRO_UPLOAD_CONTAINER";
/// The storage-account target's container when [`CONTAINER_VAR`] is not set.
pub const DEFAULT_CONTAINER: &str = "avrofiles";

/// Where a blob-store target puts a file: `<prefix>/<blob name>`, the prefix being the device
/// id (IoT Edge's `IOTEDGE_DEVICEID`), as IoT Hub file upload names blobs, so that a fleet's
/// devices can share one container; no prefix without a device id.
pub fn device_prefix(get: &impl Fn(&str) -> Option<String>) -> String {
    var(get, "IOTEDGE_DEVICEID")
        .map(|d| format!("{d}/"))
        .unwrap_or_default()
}

/// A variable's value, trimmed, when set and not blank.
fn var(get: &impl Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    get(name)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

impl UploadTarget {
    /// The local-directory target configured by the environment, if any. `resolve` maps a
    /// container path to this machine (the runtime's binds).
    pub fn from_vars(
        get: impl Fn(&str) -> Option<String>,
        resolve: impl Fn(&Path) -> PathBuf,
    ) -> Option<UploadTarget> {
        get(UPLOAD_DIR_VAR)
            .filter(|d| !d.trim().is_empty())
            .map(|d| UploadTarget::Directory(resolve(Path::new(d.trim()))))
    }

    /// The blob-store target configured by the environment, if any: a container SAS URL,
    /// else a storage connection string (with its container). HTTPS trusts `trust_pem`
    /// besides the system roots. `Err` names the variable that is unusable.
    pub fn storage_from_vars(
        get: impl Fn(&str) -> Option<String>,
        trust_pem: &str,
    ) -> Result<Option<UploadTarget>, String> {
        if let Some(url) = var(&get, CONTAINER_SAS_VAR) {
            return cloud_upload::ContainerUploader::new(&url, Some(trust_pem))
                .map(|u| Some(UploadTarget::Container(u, device_prefix(&get))))
                .map_err(|e| format!("{CONTAINER_SAS_VAR}: {e}"));
        }
        let Some(text) = var(&get, STORAGE_CONNECTION_STRING_VAR) else {
            return Ok(None);
        };
        let account = cloud_upload::StorageAccount::from_connection_string(&text)
            .map_err(|e| format!("{STORAGE_CONNECTION_STRING_VAR}: {e}"))?;
        let container = var(&get, CONTAINER_VAR).unwrap_or_else(|| DEFAULT_CONTAINER.to_owned());
        cloud_upload::AccountUploader::new(account, &container, Some(trust_pem))
            .map(|u| Some(UploadTarget::Account(u, device_prefix(&get))))
            .map_err(|e| format!("{STORAGE_CONNECTION_STRING_VAR} with {CONTAINER_VAR}: {e}"))
    }

    /// The target in the order of the module documentation: directory, container SAS URL,
    /// storage connection string, IoT Hub with the device identity (from `settings`'
    /// environment or bind-mounted config file), trusting `trust_pem` besides the system
    /// roots. `Ok(None)` when nothing is configured; `Err` when a configuration is present
    /// but unusable.
    pub fn from_env(
        get: impl Fn(&str) -> Option<String>,
        settings: &edge_client::Settings,
        trust_pem: &str,
    ) -> Result<Option<UploadTarget>, String> {
        if let Some(t) = UploadTarget::from_vars(&get, |p| settings.container_path(p)) {
            return Ok(Some(t));
        }
        if let Some(t) = UploadTarget::storage_from_vars(&get, trust_pem)? {
            return Ok(Some(t));
        }
        match cloud_upload::find_connection_string(|p| settings.container_path(p)) {
            Ok(cs) => cloud_upload::FileUploader::new(cs, Some(trust_pem))
                .map(|u| Some(UploadTarget::IotHub(u)))
                .map_err(|e| e.to_string()),
            Err(cloud_upload::Error::NoDeviceIdentity) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// A remote store's answer as the scanner's result: what it said, when it refused.
fn refused<T>(blob: &str, r: Result<T, cloud_upload::Error>) -> Result<(), UploadError> {
    r.map(|_| ()).map_err(|source| UploadError::Refused {
        blob: blob.to_owned(),
        source,
    })
}

/// Reads a whole archived file (files are five-minute buckets: small).
async fn read_file(path: &Path) -> Result<bytes::Bytes, UploadError> {
    tokio::fs::read(path)
        .await
        .map(bytes::Bytes::from)
        .map_err(|source| UploadError::Source {
            path: path.to_path_buf(),
            source,
        })
}

impl Uploader for UploadTarget {
    async fn upload(&self, path: &Path, blob_name: &str) -> Result<(), UploadError> {
        match self {
            UploadTarget::Directory(dir) => {
                let (src, dir, blob) = (path.to_path_buf(), dir.clone(), blob_name.to_owned());
                tokio::task::spawn_blocking(move || copy_atomically(&src, &dir, &blob))
                    .await
                    .map_err(|e| UploadError::Store {
                        blob: blob_name.to_owned(),
                        target: self.describe(),
                        source: io::Error::other(e.to_string()),
                    })?
            }
            UploadTarget::Container(u, prefix) => {
                let name = format!("{prefix}{blob_name}");
                refused(&name, u.upload_file(&name, path).await)
            }
            UploadTarget::Account(u, prefix) => {
                let data = read_file(path).await?;
                let name = format!("{prefix}{blob_name}");
                refused(&name, u.upload(&name, data).await)
            }
            UploadTarget::IotHub(u) => refused(blob_name, u.upload_file(blob_name, path).await),
        }
    }

    fn describe(&self) -> String {
        match self {
            UploadTarget::Directory(d) => format!("directory {}", d.display()),
            UploadTarget::Container(u, _) => format!("blob container {}", u.container_url()),
            UploadTarget::Account(u, _) => format!(
                "blob container {} of storage account {}",
                u.container_url(),
                u.account().name()
            ),
            UploadTarget::IotHub(u) => format!(
                "IoT Hub file upload as device {} via {}",
                u.device().device_id,
                u.device().host_name
            ),
        }
    }
}

/// Copies `src` to `<dir>/<blob>` so that the destination is either absent or complete and
/// synced, even across a crash.
fn copy_atomically(src: &Path, dir: &Path, blob: &str) -> Result<(), UploadError> {
    let rel = Path::new(blob);
    if blob.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(UploadError::BadBlobName(blob.to_owned()));
    }
    let store = |source| UploadError::Store {
        blob: blob.to_owned(),
        target: format!("directory {}", dir.display()),
        source,
    };
    let dest = dir.join(rel);
    let parent = dest.parent().unwrap_or(dir);
    container::create_dirs_synced(parent).map_err(store)?;
    let mut input = std::fs::File::open(src).map_err(|source| UploadError::Source {
        path: src.to_path_buf(),
        source,
    })?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        io::copy(&mut input, &mut out)?;
        out.sync_all()?;
        std::fs::rename(&tmp, &dest)?;
        container::sync_dir(parent)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(store(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn copies_to_the_blob_path_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("15.avro");
        std::fs::write(&src, b"Obj\x01 data").unwrap();
        let target = UploadTarget::Directory(dir.path().join("up"));
        target.upload(&src, "2026/11/21/5/15.avro").await.unwrap();
        let dest = dir.path().join("up/2026/11/21/5/15.avro");
        assert_eq!(std::fs::read(&dest).unwrap(), b"Obj\x01 data");
        let names: Vec<_> = std::fs::read_dir(dest.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("15.avro")]);
        // Uploading again replaces the blob, as a blob store does.
        std::fs::write(&src, b"Obj\x01 more").unwrap();
        target.upload(&src, "2026/11/21/5/15.avro").await.unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"Obj\x01 more");
    }

    #[tokio::test]
    async fn refuses_names_that_leave_the_target_and_reports_unwritable_targets() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("f.avro");
        std::fs::write(&src, b"x").unwrap();
        let target = UploadTarget::Directory(dir.path().join("up"));
        for bad in ["../x.avro", "/etc/x.avro", ""] {
            let e = target.upload(&src, bad).await.unwrap_err();
            assert!(matches!(e, UploadError::BadBlobName(_)), "{bad}: {e}");
        }
        let blocked = dir.path().join("file-not-dir");
        std::fs::write(&blocked, b"").unwrap();
        let e = UploadTarget::Directory(blocked)
            .upload(&src, "a/b.avro")
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("check that the target exists"),
            "{e}"
        );
        let e = target
            .upload(&dir.path().join("missing.avro"), "m.avro")
            .await
            .unwrap_err();
        assert!(matches!(e, UploadError::Source { .. }), "{e}");
    }

    #[test]
    fn the_environment_names_the_directory() {
        let t = UploadTarget::from_vars(
            |k| (k == UPLOAD_DIR_VAR).then(|| "/uploads".to_owned()),
            |p| Path::new("/host").join(p.strip_prefix("/").unwrap()),
        );
        assert!(
            matches!(t, Some(UploadTarget::Directory(ref d)) if d == Path::new("/host/uploads")),
            "{t:?}"
        );
        assert!(UploadTarget::from_vars(|_| None, |p| p.to_path_buf()).is_none());
    }

    const KEY: &str = "c2VjcmV0LWtleS1ieXRlcy0wMTIzNDU2Nzg5YWJjZGVm";
    const SAS: &str =
        "https://acct.blob.core.windows.net/avro?sv=2017-04-17&sr=c&sp=cw&sig=c2lnbmF0dXJl";

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn a_sas_url_comes_before_a_connection_string_and_neither_leaks_its_secret() {
        let cs = format!("DefaultEndpointsProtocol=http;BlobEndpoint=http://azureblobstorageoniotedge:11002/local1;AccountName=local1;AccountKey={KEY}");
        let both = vars(&[
            (CONTAINER_SAS_VAR, SAS),
            (STORAGE_CONNECTION_STRING_VAR, &cs),
        ]);
        let t = UploadTarget::storage_from_vars(both, "").unwrap();
        assert!(matches!(t, Some(UploadTarget::Container(..))), "{t:?}");
        let d = t.map(|t| t.describe()).unwrap_or_default();
        assert_eq!(d, "blob container https://acct.blob.core.windows.net/avro");

        let account = vars(&[(STORAGE_CONNECTION_STRING_VAR, &cs)]);
        let t = UploadTarget::storage_from_vars(account, "").unwrap();
        let Some(UploadTarget::Account(u, _)) = &t else {
            panic!("{t:?}")
        };
        assert_eq!(u.container(), DEFAULT_CONTAINER);
        let d = t.as_ref().map(|t| t.describe()).unwrap_or_default();
        assert_eq!(
            d,
            "blob container http://azureblobstorageoniotedge:11002/local1/avrofiles of storage account local1"
        );
        assert!(!format!("{d}{t:?}").contains(KEY), "{d} {t:?}");

        let named = vars(&[
            (STORAGE_CONNECTION_STRING_VAR, &cs),
            (CONTAINER_VAR, " engines "),
        ]);
        let t = UploadTarget::storage_from_vars(named, "").unwrap();
        assert!(
            matches!(t, Some(UploadTarget::Account(ref u, _)) if u.container() == "engines"),
            "{t:?}"
        );
        assert!(UploadTarget::storage_from_vars(vars(&[]), "")
            .unwrap()
            .is_none());
    }

    #[test]
    fn the_blobstorage_manifest_gives_the_on_device_blob_module_target() {
        // deployment.blobstorage.template.json's writer environment, with the values .env
        // gives it, as the module reads it on the device.
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deployment.blobstorage.template.json"
        );
        let text = std::fs::read_to_string(path).expect("the template");
        let text = text
            .replace("${LOCAL_STORAGE_ACCOUNT_NAME}", "turbofanedge")
            .replace("${LOCAL_STORAGE_ACCOUNT_KEY}", KEY);
        let doc: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        let env = &doc["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]
            ["avroFileWriter"]["env"];
        let mut pairs: Vec<(String, String)> = env
            .as_object()
            .expect("the writer's env")
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v["value"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        pairs.push(("IOTEDGE_DEVICEID".into(), "edge-7".into()));
        let get = move |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        match UploadTarget::storage_from_vars(get, "").unwrap() {
            Some(UploadTarget::Account(u, prefix)) => {
                assert_eq!(
                    u.container_url(),
                    "http://azureblobstorageoniotedge:11002/turbofanedge/avrofiles"
                );
                assert_eq!(prefix, "edge-7/");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn blob_store_targets_name_blobs_under_the_device_id() {
        let cs = format!("AccountName=a1;AccountKey={KEY}");
        for v in [
            (CONTAINER_SAS_VAR, SAS),
            (STORAGE_CONNECTION_STRING_VAR, cs.as_str()),
        ] {
            let t = UploadTarget::storage_from_vars(vars(&[v, ("IOTEDGE_DEVICEID", "edge-7")]), "");
            match t.unwrap() {
                Some(UploadTarget::Container(_, p)) | Some(UploadTarget::Account(_, p)) => {
                    assert_eq!(p, "edge-7/")
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(device_prefix(&vars(&[("IOTEDGE_DEVICEID", " ")])), "");
    }

    #[test]
    fn an_unusable_storage_configuration_names_its_variable() {
        let no_key = vars(&[(STORAGE_CONNECTION_STRING_VAR, "AccountName=a1;AccountKey=")]);
        let e = UploadTarget::storage_from_vars(no_key, "").unwrap_err();
        assert!(
            e.starts_with(STORAGE_CONNECTION_STRING_VAR) && e.contains("AccountKey"),
            "{e}"
        );
        let cs = format!("AccountName=a1;AccountKey={KEY}");
        let bad_container = vars(&[
            (STORAGE_CONNECTION_STRING_VAR, &cs),
            (CONTAINER_VAR, "Avro_Files"),
        ]);
        let e = UploadTarget::storage_from_vars(bad_container, "").unwrap_err();
        assert!(e.contains(CONTAINER_VAR) && e.contains("Avro_Files"), "{e}");
        assert!(!e.contains(KEY), "{e}");
        let http_cloud = format!("DefaultEndpointsProtocol=http;AccountName=a1;AccountKey={KEY}");
        let e = UploadTarget::storage_from_vars(
            vars(&[(STORAGE_CONNECTION_STRING_VAR, &http_cloud)]),
            "",
        )
        .unwrap_err();
        assert!(e.contains("BlobEndpoint"), "{e}");
        let e =
            UploadTarget::storage_from_vars(vars(&[(CONTAINER_SAS_VAR, "http://h/c?sv=x")]), "")
                .unwrap_err();
        assert!(e.starts_with(CONTAINER_SAS_VAR), "{e}");
    }
}
