//! IoT Hub's storage endpoints: the messages routing sent to an endpoint, written as blobs
//! of a container in Azurite or the folder store.
//!
//! Each endpoint follows the `$upstream` store, where every record says which endpoints
//! routing sent it to, so the hub's ingestion path does no more than route. Messages are
//! batched per partition (a device always lands in the same one) and written as one blob
//! per partition when the batch frequency has passed since the batch began, when its
//! messages reach the chunk size, or when the runtime stops. After the blobs are written the
//! endpoint records them in its blob log and notes how far into the store it got, so after
//! a crash it resumes there: a message is written at least once, as IoT Hub promises.

use crate::iothub::files::BlobStore;
use crate::iothub::routing::{blob_name, partition_of, StorageEndpoint};
use cloud_upload::blob::{AccountUploader, StorageAccount};
use hub_records::routed::{encode, BlobWritten, RoutedMessage};
use hub_records::Tail;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{info, warn};

/// How often an endpoint looks for new records in the store.
const POLL: Duration = Duration::from_millis(200);
/// The most of the store an endpoint reads at one look (its memory stays bounded while it
/// catches up on a backlog).
const POLL_BYTES: u64 = 8 * 1024 * 1024;
/// How long after a failed blob write the endpoint tries again.
const RETRY: Duration = Duration::from_secs(2);

/// Where an endpoint has got to in the `$upstream` store.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
struct Checkpoint {
    /// Bytes of the store whose messages are written (or were not for this endpoint).
    offset: u64,
    /// The last sequence number written (for the reader of the checkpoint).
    seq: u64,
}

/// One storage endpoint's writer.
pub struct EndpointWriter {
    /// The endpoint.
    pub endpoint: StorageEndpoint,
    /// `{iothub}` in blob names.
    pub hub: String,
    /// Partitions of the hub.
    pub partitions: u32,
    /// Where blobs go.
    pub store: BlobStore,
    /// The CA that signed Azurite's certificate.
    pub ca_pem: String,
    /// The runtime's state folder.
    pub state: PathBuf,
}

/// Messages waiting for their blob.
#[derive(Default)]
struct Batch {
    partitions: BTreeMap<u32, Vec<RoutedMessage>>,
    bytes: u64,
    began: Option<(Instant, chrono::DateTime<chrono::Utc>)>,
    first_seq: BTreeMap<u32, u64>,
    last_seq: BTreeMap<u32, u64>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.partitions.is_empty()
    }

    fn add(&mut self, partition: u32, seq: u64, m: RoutedMessage) {
        self.bytes += m.body.as_ref().map_or(0, |b| b.len() as u64) + 160;
        self.began
            .get_or_insert_with(|| (Instant::now(), chrono::Utc::now()));
        self.first_seq.entry(partition).or_insert(seq);
        self.last_seq.insert(partition, seq);
        self.partitions.entry(partition).or_default().push(m);
    }
}

/// Whether a store line's routing sent it to `endpoint`, read without parsing the line:
/// `endpoints` is the line's last field.
fn line_reaches(line: &[u8], quoted_endpoint: &[u8]) -> bool {
    const FIELD: &[u8] = b"\"endpoints\":[";
    let Some(at) = memchr::memmem::rfind(line, FIELD) else {
        return false;
    };
    line[at + FIELD.len()..]
        .windows(quoted_endpoint.len())
        .any(|w| w == quoted_endpoint)
}

impl EndpointWriter {
    fn dir(&self) -> PathBuf {
        runtime_state::layout::endpoint_dir(&self.state, &self.endpoint.name)
    }

    fn read_checkpoint(&self) -> Checkpoint {
        std::fs::read(self.dir().join("checkpoint.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn write_checkpoint(&self, c: Checkpoint) -> std::io::Result<()> {
        let path = self.dir().join("checkpoint.json");
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&c)?)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(tmp, path)
    }

    /// Follows the store and writes blobs until `stop` turns true, then writes what waits.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let name = self.endpoint.name.clone();
        if let Err(e) = std::fs::create_dir_all(self.dir()) {
            warn!(endpoint = %name, error = %e, "storage endpoint cannot keep its state; it writes nothing");
            return;
        }
        let target = match self.target() {
            Ok(t) => t,
            Err(e) => {
                warn!(endpoint = %name, error = %e, "storage endpoint cannot reach its container; it writes nothing");
                return;
            }
        };
        let log = runtime_state::layout::endpoint_blob_log(&self.state, &name);
        let mut used: HashSet<String> = hub_records::routed::read_blob_log(&log)
            .unwrap_or_default()
            .into_iter()
            .map(|b| b.blob)
            .collect();
        let mut done = self.read_checkpoint();
        let upstream = runtime_state::layout::upstream_store(&self.state);
        let mut tail = Tail::from_offset(&upstream, done.offset);
        let quoted = format!("\"{name}\"").into_bytes();
        let frequency = Duration::from_secs(self.endpoint.batch_frequency_in_seconds);
        let mut batch = Batch::default();
        let mut seen = done.seq;
        // A blob must fit one Put Blob, whatever the endpoint's chunk size says.
        let chunk = self
            .endpoint
            .max_chunk_size_in_bytes
            .min(cloud_upload::blob::MAX_PUT_BLOB_BYTES as u64 / 2);
        let mut retrying = false;
        info!(endpoint = %name, container = %self.endpoint.container_name, from = done.offset, "storage endpoint started");
        loop {
            let stopping = wait_or_stop(&mut stop, if retrying { RETRY } else { POLL }).await;
            // While blobs cannot be written, or the batch is full, what follows waits in the
            // store (nothing is lost: the checkpoint stays before it).
            if !retrying && batch.bytes < chunk {
                let polled = tail.poll_lines_up_to(POLL_BYTES, |line| {
                    if !line_reaches(line, &quoted) {
                        return;
                    }
                    let Ok((seq, m)) = RoutedMessage::from_line(line) else {
                        warn!(endpoint = %name, "a store line does not read as a message; skipped");
                        return;
                    };
                    seen = seen.max(seq);
                    let device = m.system_properties.get("connectionDeviceId");
                    let partition =
                        partition_of(device.map_or("", String::as_str), self.partitions);
                    batch.add(partition, seq, m);
                });
                if let Err(e) = polled {
                    warn!(endpoint = %name, error = %e, "cannot read the upstream store");
                }
            }
            let due = batch.began.is_some_and(|(t, _)| t.elapsed() >= frequency)
                || batch.bytes >= chunk
                || retrying;
            if !batch.is_empty() && (due || stopping) {
                match self.flush(&target, &batch, &log, &mut used).await {
                    Ok(()) => {
                        batch = Batch::default();
                        retrying = false;
                    }
                    Err(e) => {
                        warn!(endpoint = %name, error = %e, "writing the endpoint's blobs failed; they are written again later");
                        retrying = true;
                        if stopping {
                            break;
                        }
                        continue;
                    }
                }
            }
            if batch.is_empty() {
                let now = Checkpoint {
                    offset: tail.offset(),
                    seq: seen,
                };
                if now != done {
                    match self.write_checkpoint(now) {
                        Ok(()) => done = now,
                        Err(e) => {
                            warn!(endpoint = %name, error = %e, "cannot save how far the endpoint got")
                        }
                    }
                }
            }
            if stopping {
                break;
            }
        }
        info!(endpoint = %name, "storage endpoint stopped");
    }

    /// Writes one blob per partition, then records them in the blob log.
    async fn flush(
        &self,
        target: &Target,
        batch: &Batch,
        log: &Path,
        used: &mut HashSet<String>,
    ) -> anyhow::Result<()> {
        let began = batch.began.map(|(_, t)| t).unwrap_or_else(chrono::Utc::now);
        let mut written = Vec::new();
        for (partition, messages) in &batch.partitions {
            let base = blob_name(
                &self.endpoint.file_name_format,
                &self.hub,
                *partition,
                began,
            );
            // Two batches in one minute (a short frequency, or a full chunk): the later
            // blob gets a suffix rather than replacing the earlier one.
            let mut blob = base.clone();
            let mut n = 1;
            while used.contains(&blob) {
                blob = format!("{base}_{n}");
                n += 1;
            }
            let bytes = encode(messages, self.endpoint.encoding)?;
            let size = bytes.len() as u64;
            target.put(&blob, bytes).await?;
            used.insert(blob.clone());
            written.push(BlobWritten {
                endpoint: self.endpoint.name.clone(),
                container: self.endpoint.container_name.clone(),
                blob,
                encoding: self.endpoint.encoding,
                messages: messages.len() as u64,
                bytes: size,
                first_seq: batch.first_seq.get(partition).copied().unwrap_or(0),
                last_seq: batch.last_seq.get(partition).copied().unwrap_or(0),
            });
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let mut lines = Vec::new();
        for w in &written {
            serde_json::to_writer(&mut lines, w)?;
            lines.push(b'\n');
        }
        f.write_all(&lines)?;
        f.sync_data()?;
        for w in &written {
            info!(endpoint = %w.endpoint, blob = %w.blob, messages = w.messages, "blob written");
        }
        Ok(())
    }

    /// Where this endpoint's blobs go: a folder of the folder store, or the container in
    /// Azurite through the project's blob client (Shared Key, Azurite's well-known account).
    fn target(&self) -> anyhow::Result<Target> {
        let container = &self.endpoint.container_name;
        Ok(match &self.store {
            BlobStore::Directory(root) => Target::Folder(root.join(container)),
            BlobStore::Azurite { host } => {
                let account = StorageAccount::azurite(&format!("https://{host}"))?;
                Target::Azurite(AccountUploader::new(
                    account,
                    container,
                    Some(&self.ca_pem),
                )?)
            }
        })
    }
}

/// A storage endpoint's container.
enum Target {
    Folder(PathBuf),
    Azurite(AccountUploader),
}

impl Target {
    async fn put(&self, blob: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
        match self {
            Target::Folder(dir) => {
                let path = dir.join(blob);
                tokio::task::spawn_blocking(move || {
                    crate::iothub::files::write_blob(&path, &[&bytes[..]])
                })
                .await??;
            }
            Target::Azurite(container) => {
                container.upload(blob, bytes.into()).await?;
            }
        }
        Ok(())
    }
}

/// Waits `d`, or until `stop` turns true; returns whether it did.
async fn wait_or_stop(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        r = stop.changed() => r.is_err() || *stop.borrow(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_reaches_the_endpoints_its_routing_names() {
        let line = br#"{"seq":1,"payload":{"endpoints":["ruldata"]},"routes":["r"],"endpoints":["events","devicedata"]}"#;
        assert!(line_reaches(line, b"\"devicedata\""));
        assert!(line_reaches(line, b"\"events\""));
        assert!(
            !line_reaches(line, b"\"ruldata\""),
            "a body's look-alike does not count"
        );
        assert!(!line_reaches(br#"{"seq":1}"#, b"\"events\""));
    }
}

#[cfg(test)]
mod endpoint_tests {
    use super::*;
    use crate::iothub::routing::{HubConfig, HubRouting, MessageRef};
    use crate::iothub::upstream::write_record;
    use edge_protocol::Message;
    use hub_records::routed::{decode, read_blob_log};

    fn routing() -> HubRouting {
        let config: HubConfig =
            serde_json::from_value(serde_json::json!({"name": "hub", "routing": {
                "endpoints": {"storageContainers": [{"name": "ruldata", "containerName": "ruldata",
                    "batchFrequencyInSeconds": 3600}]},
                "routes": [{"name": "rul", "endpointNames": ["ruldata"],
                    "condition": "IS_DEFINED($body.PredictedRul)"}]
            }}))
            .unwrap();
        HubRouting::new(config).unwrap()
    }

    /// Appends messages to the store as the upstream writer does: half RUL messages.
    fn append(state: &Path, routing: &HubRouting, from: u64, n: u64) {
        let path = runtime_state::layout::upstream_store(state);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        for seq in from..from + n {
            let body = if seq % 2 == 0 {
                format!(r#"{{"PredictedRul":{seq},"CorrelationId":"c{seq}"}}"#)
            } else {
                format!(r#"{{"Sensor1":{seq}}}"#)
            };
            let mut m = Message::json(body);
            m.connection_device_id = Some(format!("Client_{:03}", seq % 5).into());
            m.enqueued_time = Some("2026-12-07T21:00:00.000Z".into());
            let routed = routing.route(&MessageRef::new(&m));
            write_record(&mut out, seq, &m, routing, &routed).unwrap();
        }
    }

    fn writer(state: &Path, routing: &HubRouting) -> EndpointWriter {
        EndpointWriter {
            endpoint: routing.storage_endpoints()[0].clone(),
            hub: "hub".into(),
            partitions: 4,
            store: BlobStore::Directory(state.join("blobs")),
            ca_pem: String::new(),
            state: state.to_path_buf(),
        }
    }

    /// Runs an endpoint writer until it has seen the store, then stops it (it writes what
    /// waits as it stops).
    async fn run_once(state: &Path, routing: &HubRouting) {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(writer(state, routing).run(stopped));
        tokio::time::sleep(POLL * 3).await;
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    /// Every RUL message's correlation id in the endpoint's blobs, in blob-log order.
    fn written(state: &Path) -> Vec<String> {
        let log = runtime_state::layout::endpoint_blob_log(state, "ruldata");
        let mut ids = Vec::new();
        for b in read_blob_log(&log).unwrap() {
            let bytes =
                std::fs::read(state.join("blobs").join(&b.container).join(&b.blob)).unwrap();
            let messages = decode(&bytes, b.encoding).unwrap();
            assert_eq!(messages.len() as u64, b.messages);
            for m in messages {
                ids.push(
                    m.body_json().unwrap()["CorrelationId"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                );
            }
        }
        ids
    }

    #[tokio::test]
    async fn an_endpoint_writes_its_messages_once_and_resumes_where_it_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let routing = routing();
        append(dir.path(), &routing, 0, 40);
        run_once(dir.path(), &routing).await;
        let first = written(dir.path());
        assert_eq!(first.len(), 20, "the RUL half of 40 messages");
        // More messages after a restart: only they are written, into new blobs (same minute,
        // same partitions: suffixed names, nothing replaced).
        append(dir.path(), &routing, 40, 40);
        run_once(dir.path(), &routing).await;
        let mut all = written(dir.path());
        assert_eq!(all.len(), 40);
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 40, "no message written twice");
    }

    #[tokio::test]
    async fn while_the_container_cannot_be_written_nothing_is_lost_and_it_all_comes_later() {
        let dir = tempfile::tempdir().unwrap();
        let routing = routing();
        append(dir.path(), &routing, 0, 20);
        // The storage is cut: a file stands where the blobs' first folder must go.
        let container = dir.path().join("blobs").join("ruldata");
        std::fs::create_dir_all(&container).unwrap();
        std::fs::write(container.join("hub"), b"not a folder").unwrap();
        run_once(dir.path(), &routing).await;
        assert!(written(dir.path()).is_empty(), "no blob, and none logged");
        // More messages arrive while it is cut; then the storage comes back.
        append(dir.path(), &routing, 20, 20);
        run_once(dir.path(), &routing).await;
        assert!(written(dir.path()).is_empty());
        std::fs::remove_file(container.join("hub")).unwrap();
        run_once(dir.path(), &routing).await;
        let mut ids = written(dir.path());
        assert_eq!(ids.len(), 20, "the RUL half of 40 messages");
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 20, "each once");
    }

    #[tokio::test]
    async fn blobs_written_but_not_checkpointed_are_written_again_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let routing = routing();
        append(dir.path(), &routing, 0, 10);
        run_once(dir.path(), &routing).await;
        // A crash after the blobs, before the checkpoint: the checkpoint is behind.
        let checkpoint =
            runtime_state::layout::endpoint_dir(dir.path(), "ruldata").join("checkpoint.json");
        std::fs::remove_file(&checkpoint).unwrap();
        run_once(dir.path(), &routing).await;
        let ids = written(dir.path());
        assert_eq!(ids.len(), 10, "each of 5 RUL messages twice: at least once");
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 5);
    }
}
