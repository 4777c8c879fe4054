//! Reading what a run left: the sent log, IoT Hub's upstream store and file-upload
//! notifications, the runtime's status and the Avro writer's twin, and the C-MAPSS truth.

use crate::analysis::Truth;
use crate::error::ReportError;
use hub_records::Reader;
use leaf_simulator::SentRecord;
use runtime_state::control::{self, Status};
use runtime_state::layout;
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The module that archives records as Avro files.
pub const AVRO_WRITER: &str = turbofan_domain::ports::writer::MODULE;

/// Where a run's traces are.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The runtime's state folder.
    pub state_dir: PathBuf,
    /// The simulator's sent log.
    pub sent_log: PathBuf,
    /// The replayed C-MAPSS test file.
    pub data_file: PathBuf,
    /// Its RUL file (true RUL at each engine's last cycle).
    pub rul_file: PathBuf,
}

impl Sources {
    /// The traces of a run through the runtime of `state_dir` that replayed `data_file`; the
    /// sent log in its default place and the RUL file beside the data file (see
    /// [`rul_file_for`]).
    pub fn new(state_dir: &Path, data_file: &Path) -> Sources {
        Sources {
            state_dir: state_dir.to_path_buf(),
            sent_log: leaf_simulator::sent_log::default_path(state_dir),
            data_file: data_file.to_path_buf(),
            rul_file: rul_file_for(data_file),
        }
    }

    /// IoT Hub's upstream store.
    pub fn upstream(&self) -> PathBuf {
        runtime_state::layout::upstream_store(&self.state_dir)
    }

    /// IoT Hub's file-upload notifications.
    pub fn notifications(&self) -> PathBuf {
        layout::file_notifications(&self.state_dir)
    }
}

/// The RUL file of a test file: `test_FD003.txt` → `RUL_FD003.txt`, in the same folder.
pub fn rul_file_for(data_file: &Path) -> PathBuf {
    let name = data_file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let rul = match name.strip_prefix("test_") {
        Some(rest) => format!("RUL_{rest}"),
        None => format!("RUL_{name}"),
    };
    data_file.with_file_name(rul)
}

/// Reads the sent log.
pub fn read_sent(path: &Path) -> Result<Vec<SentRecord>, ReportError> {
    match leaf_simulator::sent_log::read(path) {
        Ok((records, _torn)) => Ok(records),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(ReportError::NoSentLog(path.to_path_buf()))
        }
        Err(e) => Err(ReportError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

/// Reads the C-MAPSS truth of a test file.
pub fn read_truth(sources: &Sources) -> Result<Truth, ReportError> {
    let rows = turbofan_domain::cmapss::read_rows(&sources.data_file)?;
    let rul = turbofan_domain::cmapss::read_rul(&sources.rul_file)?;
    Ok(Truth::new(&rows, &rul))
}

/// One file upload IoT Hub was notified of.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Upload {
    /// When the notification arrived.
    pub time: String,
    /// The uploading device.
    pub device_id: String,
    /// Blob name (`{device}/{path}`).
    pub blob_name: String,
    /// Where the blob is.
    pub url: String,
    /// Whether the device reported success.
    pub is_success: bool,
}

/// Reads the file-upload notifications (none when the file does not exist).
pub fn read_uploads(path: &Path) -> Result<Vec<Upload>, ReportError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ReportError::io(path)(e)),
    };
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| Upload {
            time: s(&v, "time"),
            device_id: s(&v, "deviceId"),
            blob_name: s(&v, "blobName"),
            url: s(&v, "url"),
            is_success: v.get("isSuccess").and_then(Value::as_bool) == Some(true),
        })
        .collect())
}

/// The Avro writer's counters and settings, from its reported properties.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AvroStats {
    /// Records synced into Avro files.
    pub records_written: u64,
    /// Bad records set aside.
    pub records_quarantined: u64,
    /// Files uploaded (and removed).
    pub files_uploaded: u64,
    /// Upload attempts that failed.
    pub upload_failures: u64,
    /// How long a file must be left alone before it is uploaded, seconds.
    pub quiet_period_secs: Option<f64>,
    /// Where files go.
    pub upload_target: Option<String>,
    /// Whether the writer has somewhere to upload to: it reports `UploadTarget` when it has
    /// (a `null` it reports removes the property, as reported patches are merge patches).
    pub uploads_configured: bool,
}

impl AvroStats {
    /// From the writer's reported properties; `None` when it has not reported counters.
    pub fn from_reported(reported: &Value) -> Option<AvroStats> {
        let n = |k: &str| reported.get(k).and_then(Value::as_u64);
        Some(AvroStats {
            records_written: n("RecordsWritten")?,
            records_quarantined: n("RecordsQuarantined").unwrap_or(0),
            files_uploaded: n("FilesUploaded").unwrap_or(0),
            upload_failures: n("UploadFailures").unwrap_or(0),
            quiet_period_secs: reported.get("QuietPeriodSecs").and_then(Value::as_f64),
            upload_target: reported
                .get("UploadTarget")
                .and_then(Value::as_str)
                .map(str::to_owned),
            uploads_configured: reported.get("UploadTarget").is_some_and(|t| !t.is_null()),
        })
    }
}

/// A module's queue in edgeHub, from the runtime's status.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModuleStatus {
    /// Module name.
    pub module: String,
    /// Connected and subscribed to its inputs.
    pub connected: bool,
    /// Messages waiting for it.
    pub queued: u64,
    /// Messages it acknowledged.
    pub delivered: u64,
}

/// The modules of a runtime status (`iotedge-local status`), by name.
pub fn module_statuses(status: &Status) -> Vec<ModuleStatus> {
    // A BTreeMap: already by name.
    status
        .modules
        .iter()
        .map(|(name, s)| ModuleStatus {
            module: name.clone(),
            connected: s.connected,
            queued: s.queued + s.in_flight,
            delivered: s.delivered,
        })
        .collect()
}

/// What the running runtime says: its status and the Avro writer's reported properties.
/// Both are `None` when the runtime does not answer (not running).
pub async fn runtime_view(state_dir: &Path) -> (Option<Status>, Option<Value>) {
    let socket = layout::control_socket(state_dir);
    let status = control::status(&socket).await.ok();
    let twin = match status {
        Some(_) => control::twin(&socket, AVRO_WRITER)
            .await
            .ok()
            .map(|t| t.reported),
        None => None,
    };
    (status, twin)
}

/// Avro files still in the writer's folders (under the runtime's bind folders): written but
/// not uploaded yet.
pub fn avro_files_left(state_dir: &Path) -> usize {
    fn walk(dir: &Path, n: &mut usize) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => walk(&p, n),
                Ok(t) if t.is_file() && p.extension().is_some_and(|x| x == "avro") => *n += 1,
                _ => {}
            }
        }
    }
    let mut n = 0;
    walk(&state_dir.join("binds"), &mut n);
    n
}

/// Everything read at one moment.
#[derive(Debug)]
pub struct Snapshot {
    /// The sent log.
    pub sent: Vec<SentRecord>,
    /// The upstream store, sorted.
    pub upstream: Reader,
    /// File-upload notifications.
    pub uploads: Vec<Upload>,
    /// The runtime's status, when it runs.
    pub status: Option<Status>,
    /// The Avro writer's reported properties, when the runtime runs.
    pub avro_reported: Option<Value>,
    /// Avro files not uploaded yet.
    pub avro_files_left: usize,
}

impl Snapshot {
    /// Reads the sent log and everything else a first time.
    pub async fn read(sources: &Sources) -> Result<Snapshot, ReportError> {
        let mut s = Snapshot {
            sent: read_sent(&sources.sent_log)?,
            upstream: Reader::new(&sources.upstream()),
            uploads: Vec::new(),
            status: None,
            avro_reported: None,
            avro_files_left: 0,
        };
        s.refresh(sources).await?;
        Ok(s)
    }

    /// Reads what changed (the sent log is read once: the simulator has finished).
    pub async fn refresh(&mut self, sources: &Sources) -> Result<(), ReportError> {
        let path = self.upstream.path().to_path_buf();
        self.upstream.poll().map_err(ReportError::io(&path))?;
        self.uploads = read_uploads(&sources.notifications())?;
        let (status, twin) = runtime_view(&sources.state_dir).await;
        self.status = status;
        self.avro_reported = twin;
        self.avro_files_left = avro_files_left(&sources.state_dir);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_the_rul_file_of_a_test_file() {
        assert_eq!(
            rul_file_for(Path::new("/d/test_FD003.txt")),
            PathBuf::from("/d/RUL_FD003.txt")
        );
    }

    #[test]
    fn reads_counters_statuses_and_notifications() {
        let r = json!({"RecordsWritten": 10, "FilesUploaded": 2, "QuietPeriodSecs": 5.0, "UploadTarget": "iothub"});
        let a = AvroStats::from_reported(&r).unwrap();
        assert_eq!((a.records_written, a.files_uploaded), (10, 2));
        assert_eq!(a.quiet_period_secs, Some(5.0));
        assert!(a.uploads_configured);
        for none in [
            json!({"RecordsWritten": 1, "UploadTarget": null}),
            json!({"RecordsWritten": 1}),
        ] {
            assert!(!AvroStats::from_reported(&none).unwrap().uploads_configured);
        }
        assert_eq!(
            AvroStats::from_reported(&json!({"LoggingLevel": "info"})),
            None
        );

        let status: Status = serde_json::from_value(json!({"received": 0, "unrouted": 0,
            "toModules": 0, "toUpstream": 0, "authFailures": 0, "upstreamStored": 0, "modules": {
            "turbofanRouter": {"queued": 1, "on_disk": 0, "in_flight": 2, "delivered": 9, "expired": 0, "undeliverable": 0, "connected": true},
            "avroFileWriter": {"queued": 0, "on_disk": 0, "in_flight": 0, "delivered": 0, "expired": 0, "undeliverable": 0, "connected": false}}}))
        .unwrap();
        let m = module_statuses(&status);
        assert_eq!(m[0].module, "avroFileWriter");
        assert_eq!((m[1].connected, m[1].queued, m[1].delivered), (true, 3, 9));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.jsonl");
        assert!(read_uploads(&path).unwrap().is_empty());
        std::fs::write(
            &path,
            "{\"time\":\"t\",\"deviceId\":\"edge\",\"blobName\":\"edge/2026/1/1/0/0.avro\",\"url\":\"https://h/c/edge/2026/1/1/0/0.avro\",\"isSuccess\":true}\n",
        )
        .unwrap();
        let u = read_uploads(&path).unwrap();
        assert_eq!(u.len(), 1);
        assert!(u[0].is_success && u[0].url.ends_with("0.avro"));

        std::fs::create_dir_all(dir.path().join("binds/data/avrofiles/2026/1")).unwrap();
        std::fs::write(dir.path().join("binds/data/avrofiles/2026/1/5.avro"), "x").unwrap();
        std::fs::write(dir.path().join("binds/data/avrofiles/2026/1/q.jsonl"), "x").unwrap();
        assert_eq!(avro_files_left(dir.path()), 1);
    }
}
