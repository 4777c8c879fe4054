//! Where quiet files go: the seam between the upload scanner and an upload target.
//!
//! The scanner ([`crate::scanner`]) calls [`Uploader::upload`] once per quiet file with the
//! file's path and its blob name (the path relative to the archive root, e.g.
//! `2026/11/21/5/15.avro`), and deletes the file only after `upload` returned `Ok`. An
//! uploader must therefore return `Ok` only once the file is stored for good at the target;
//! on `Err` the file stays and is offered again after a backoff.
//!
//! [`UploadTarget`] is the uploader the module is configured with. Its one target today is a
//! local directory ([`UploadTarget::Directory`], env `AVRO_UPLOAD_DIR`). IoT Hub file upload
//! (DESIGN §3: ask the hub for a blob SAS URI, `PUT` the blob, notify the hub of the outcome;
//! `edge-client`'s `FileUploader` speaks it) plugs in at this seam as a further variant of
//! [`UploadTarget`], chosen from the environment in [`UploadTarget::from_vars`] and
//! dispatched in its [`Uploader::upload`], honouring the same contract: `Ok` once the hub
//! confirmed the blob, [`UploadError::Refused`] for what the hub or the blob store answered.
//! The scanner, its backoff and its deletes stay as they are.

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
    #[error("the upload service refused blob {blob}: {reason}")]
    Refused {
        /// The blob name.
        blob: String,
        /// What the service said.
        reason: String,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadTarget {
    /// Copy each file to `<dir>/<blob name>`, atomically (temporary file, `fsync`, rename).
    Directory(PathBuf),
}

/// Environment variable naming the directory target.
pub const UPLOAD_DIR_VAR: &str = "AVRO_UPLOAD_DIR";

impl UploadTarget {
    /// The target configured by the environment, if any. `resolve` maps a container path to
    /// this machine (the runtime's binds).
    pub fn from_vars(
        get: impl Fn(&str) -> Option<String>,
        resolve: impl Fn(&Path) -> PathBuf,
    ) -> Option<UploadTarget> {
        get(UPLOAD_DIR_VAR)
            .filter(|d| !d.trim().is_empty())
            .map(|d| UploadTarget::Directory(resolve(Path::new(d.trim()))))
    }
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
        }
    }

    fn describe(&self) -> String {
        match self {
            UploadTarget::Directory(d) => format!("directory {}", d.display()),
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
        assert_eq!(t, Some(UploadTarget::Directory("/host/uploads".into())));
        assert_eq!(UploadTarget::from_vars(|_| None, |p| p.to_path_buf()), None);
    }
}
