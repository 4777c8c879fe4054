//! What the module does with its input: wait for room in the disk budget, check each
//! record and queue it — in arrival order — for the Avro archive, or, if it is bad, for the
//! quarantine; acknowledge the message once that is synced.

use crate::budget::DiskBudget;
use crate::record::{self, GoodRecord, RecordSchema};
use crate::writer::{Synced, WriteError, Writer};
use base64::Engine;
use edge_client::{AckToken, Message, ModuleClient};
use serde_json::{json, Map, Value};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

/// The module's input.
pub use turbofan_domain::ports::writer::INPUT;

/// What became of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Its record is in the Avro archive.
    Archived,
    /// It is in the quarantine file, for this reason.
    Quarantined(String),
}

/// Why a message was left unacknowledged (edgeHub delivers it again).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unhandled {
    /// The module is stopping.
    #[error("the module is stopping; message left for redelivery")]
    Stopping,
}

/// The archive as the input loop sees it. Cheap to clone.
#[derive(Clone)]
pub struct Archive {
    writer: Writer,
    schema: Arc<RecordSchema>,
    budget: Arc<DiskBudget>,
    stopping: watch::Receiver<bool>,
}

/// Longest pause between retries of a failed write.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(10);

/// What one message becomes.
enum Work {
    /// A good record; its body is kept to encode it again should the write fail.
    Record(bytes::Bytes),
    Line {
        line: Vec<u8>,
        reason: String,
    },
}

/// A message queued for the writer; [`Pending::finish`] waits for its sync.
pub struct Pending {
    archive: Archive,
    work: Work,
    synced: Synced,
}

impl Archive {
    /// The archive over `writer`; input waits while `budget` is full and gives up when
    /// `stopping` becomes true.
    pub fn new(
        writer: Writer,
        schema: Arc<RecordSchema>,
        budget: Arc<DiskBudget>,
        stopping: watch::Receiver<bool>,
    ) -> Archive {
        Archive {
            writer,
            schema,
            budget,
            stopping,
        }
    }

    /// Waits until the disk budget has room; `false` if the module is stopping.
    pub async fn admit(&self) -> bool {
        if !self.budget.is_full() && !*self.stopping.borrow() {
            return true;
        }
        self.budget.wait_for_room(&mut self.stopping.clone()).await
    }

    /// Checks a message and queues what it becomes, without waiting: messages submitted one
    /// after the other are written in that order.
    pub fn submit(&self, input: &str, m: &Message) -> Pending {
        let datum = if input == INPUT {
            record::parse(&m.body).and_then(|good| {
                self.encode(&good)
                    .map_err(|e| format!("cannot encode the record: {e}"))
            })
        } else {
            Err(format!("unknown input '{input}' (expected {INPUT})"))
        };
        let (work, synced) = match datum {
            Ok(datum) => (Work::Record(m.body.clone()), self.writer.submit(datum)),
            Err(reason) => {
                let line = quarantine_line(input, m, &reason);
                let synced = self.writer.submit_line(line.clone());
                (Work::Line { line, reason }, synced)
            }
        };
        Pending {
            archive: self.clone(),
            work,
            synced,
        }
    }

    fn encode(&self, good: &GoodRecord<'_>) -> Result<Vec<u8>, String> {
        let mut datum = Vec::with_capacity(192);
        good.encode(&self.schema, &mut datum)?;
        Ok(datum)
    }

    /// Queues `work` again after a failed write.
    fn resend(&self, work: &Work) -> Synced {
        match work {
            Work::Record(body) => match record::parse(body).and_then(|g| self.encode(&g)) {
                Ok(datum) => self.writer.submit(datum),
                Err(e) => Synced::failed(WriteError::Io(format!("cannot encode: {e}"))),
            },
            Work::Line { line, .. } => self.writer.submit_line(line.clone()),
        }
    }

    /// Handles one message: waits for room, queues it, waits for its sync.
    pub async fn handle(&self, input: &str, m: &Message) -> Result<Outcome, Unhandled> {
        if !self.admit().await {
            return Err(Unhandled::Stopping);
        }
        self.submit(input, m).finish().await
    }
}

impl Pending {
    /// Waits until the message's record (or quarantine line) is synced. A failed write is
    /// queued again with backoff, the message staying unacknowledged meanwhile.
    pub async fn finish(mut self) -> Result<Outcome, Unhandled> {
        let mut delay = Duration::from_millis(100);
        let mut stopping = self.archive.stopping.clone();
        loop {
            match (&mut self.synced).await {
                Ok(()) => {
                    return Ok(match self.work {
                        Work::Record(_) => Outcome::Archived,
                        Work::Line { reason, .. } => {
                            warn!(reason = %reason, "bad record quarantined");
                            Outcome::Quarantined(reason)
                        }
                    })
                }
                Err(WriteError::Stopped) => return Err(Unhandled::Stopping),
                Err(e) => {
                    warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "write failed; retrying (the message stays unacknowledged)");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stopping.wait_for(|s| *s) => return Err(Unhandled::Stopping),
                    }
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                    self.synced = self.archive.resend(&self.work);
                }
            }
        }
    }
}

/// Starts the task that completes queued messages in queue order: it waits for each
/// message's sync and calls `done` with the message's companion (`T`, e.g. its
/// acknowledgement) and the outcome. Returns the queue (at most `capacity` messages) and the
/// task, which ends once the queue's senders are gone and it is empty.
///
/// Records are synced in queue order, so a whole group completes with one wake-up.
pub fn in_order<T: Send + 'static>(
    capacity: usize,
    mut done: impl FnMut(T, Result<Outcome, Unhandled>) + Send + 'static,
) -> (mpsc::Sender<(Pending, T)>, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<(Pending, T)>(capacity.max(1));
    let task = tokio::spawn(async move {
        while let Some((pending, companion)) = rx.recv().await {
            let outcome = pending.finish().await;
            done(companion, outcome);
        }
    });
    (tx, task)
}

/// The input loop: takes messages in arrival order while the budget has room, queues each
/// for the writer, and acknowledges each once synced (acknowledgements go out in arrival
/// order anyway), with up to `max_in_flight` messages taken and not yet acknowledged —
/// many of them waiting on one sync. Runs until `stop` resolves; then what was queued
/// finishes and the client is closed. Messages not taken are left unacknowledged: edgeHub
/// delivers them again.
pub async fn serve(
    client: &ModuleClient,
    archive: Archive,
    max_in_flight: usize,
    stop: impl Future<Output = ()>,
) -> Result<(), edge_client::Error> {
    let mut inputs = client.inputs()?;
    let (queue, acker) = in_order(max_in_flight, |token: AckToken, outcome| match outcome {
        Ok(_) => token.ack(),
        Err(e) => debug!("{e}"),
    });
    tokio::pin!(stop);
    loop {
        let admitted = tokio::select! {
            _ = &mut stop => break,
            ok = archive.admit() => ok,
        };
        if !admitted {
            break;
        }
        let m = tokio::select! {
            _ = &mut stop => break,
            m = inputs.recv() => match m { Some(m) => m, None => break },
        };
        let (input, message, token) = m.into_parts();
        let pending = archive.submit(&input, &message);
        tokio::select! {
            _ = &mut stop => break,
            sent = queue.send((pending, token)) => if sent.is_err() { break },
        }
    }
    drop(inputs);
    drop(queue);
    let _ = acker.await;
    client.close(Duration::from_secs(10)).await;
    Ok(())
}

/// One line of the quarantine file: when, why, where from, and the message as received.
pub fn quarantine_line(input: &str, m: &Message, reason: &str) -> Vec<u8> {
    let properties: Map<String, Value> = m
        .properties
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    let mut line = json!({
        "QuarantinedAtUtc": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "Reason": reason,
        "Input": input,
        "CorrelationId": m.correlation_id,
        "MessageId": m.message_id,
        "ConnectionDeviceId": m.connection_device_id,
        "ConnectionModuleId": m.connection_module_id,
        "Properties": properties,
        "Body": String::from_utf8_lossy(&m.body),
    });
    if std::str::from_utf8(&m.body).is_err() {
        line["BodyBase64"] = json!(base64::engine::general_purpose::STANDARD.encode(&m.body));
    }
    let mut bytes = line.to_string().into_bytes();
    bytes.push(b'\n');
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::Clock;
    use crate::record::tests::sample_json;
    use crate::stats::Stats;
    use crate::tree::TreeLock;
    use crate::writer::{self, SyncPolicy, WriterConfig, WriterThreads};

    fn start(
        budget: Arc<DiskBudget>,
    ) -> (
        tempfile::TempDir,
        Archive,
        WriterThreads,
        watch::Sender<bool>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(RecordSchema::tutorial());
        let (w, threads) = writer::start(
            WriterConfig {
                root: dir.path().to_path_buf(),
                clock: Clock::default(),
                schema: schema.clone(),
                policy: SyncPolicy::default(),
            },
            budget.clone(),
            Arc::new(Stats::default()),
            Arc::new(TreeLock::default()),
        )
        .unwrap();
        let (stop_tx, stop_rx) = watch::channel(false);
        (
            dir,
            Archive::new(w, schema, budget, stop_rx),
            threads,
            stop_tx,
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn good_records_are_archived_and_bad_ones_quarantined_with_what_was_received() {
        let (dir, a, threads, _stop) = start(Arc::new(DiskBudget::new(u64::MAX, 0)));
        let good = Message::json(sample_json(1).to_string());
        assert_eq!(a.handle(INPUT, &good).await, Ok(Outcome::Archived));

        let mut bad = Message::json(r#"{"CorrelationId": 1}"#);
        bad.correlation_id = Some("c-bad".into());
        bad.set_property("Source", "test");
        let Ok(Outcome::Quarantined(reason)) = a.handle(INPUT, &bad).await else {
            panic!("not quarantined")
        };
        assert!(reason.contains("'CorrelationId' is a number"), "{reason}");
        let binary = Message::new(vec![0xffu8, 0x00]);
        assert!(matches!(
            a.handle(INPUT, &binary).await,
            Ok(Outcome::Quarantined(_))
        ));
        let Ok(Outcome::Quarantined(reason)) = a.handle("elsewhere", &good).await else {
            panic!("unknown input not quarantined")
        };
        assert!(reason.contains("unknown input 'elsewhere'"), "{reason}");
        threads.close();

        let q = std::fs::read_dir(dir.path().join("quarantine"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let lines: Vec<Value> = std::fs::read_to_string(q)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["CorrelationId"], "c-bad");
        assert_eq!(lines[0]["Properties"]["Source"], "test");
        assert_eq!(lines[0]["Body"], r#"{"CorrelationId": 1}"#);
        assert_eq!(lines[0]["Input"], INPUT);
        assert_eq!(lines[1]["BodyBase64"], "/wA=");
        assert_eq!(lines[2]["Input"], "elsewhere");
        let avro = crate::tree::list_avro_files(dir.path()).unwrap();
        assert_eq!(avro.len(), 1);
        assert_eq!(crate::record::read_file(&avro[0].path).unwrap().len(), 1);
    }

    /// Records taken while a group is still being gathered count against the budget: input
    /// stops once written plus in-flight bytes reach it, not a whole group later.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_in_flight_count_so_the_tree_passes_the_budget_by_one_record_at_most() {
        let max = 4_000;
        let budget = Arc::new(DiskBudget::new(max, 0));
        let (dir, a, threads, stop) = start(budget.clone());
        let mut pending = Vec::new();
        let mut datum = 0;
        for i in 0..500 {
            // As the module's input loop: admitted, then submitted, one after the other.
            match tokio::time::timeout(Duration::from_millis(300), a.admit()).await {
                Ok(true) => {}
                _ => break,
            }
            let m = Message::json(sample_json(i).to_string());
            datum = a.encode(&record::parse(&m.body).unwrap()).unwrap().len() as u64;
            pending.push(tokio::spawn(a.clone().submit(INPUT, &m).finish()));
        }
        let taken = pending.len() as u64;
        assert!((10..500).contains(&taken), "{taken} records taken");
        for p in pending {
            assert_eq!(p.await.unwrap(), Ok(Outcome::Archived));
        }
        let files = crate::tree::list_avro_files(dir.path()).unwrap();
        let on_disk: u64 = files.iter().map(|f| f.len).sum();
        assert_eq!(on_disk, budget.used());
        // The file's header (counted when the writer opens the file, which may be after
        // records were taken) and the blocks' framing are the rest.
        let (header, framing): (u64, u64) = files
            .iter()
            .map(|f| {
                let file = std::fs::File::open(&f.path).unwrap();
                let scan = crate::container::scan(file, f.len).unwrap().unwrap();
                // A block's count and size (at most 10 bytes each) and its sync marker.
                (scan.header.len, scan.blocks * 36)
            })
            .fold((0, 0), |(h, b), (x, y)| (h + x, b + y));
        assert!(
            on_disk <= max + datum + header + framing,
            "{on_disk} bytes on disk for a budget of {max} ({datum} a record, {header} of header)"
        );
        stop.send(true).unwrap();
        threads.close();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn input_waits_while_the_disk_budget_is_full() {
        let budget = Arc::new(DiskBudget::new(0, 0));
        let (_dir, a, threads, stop) = start(budget.clone());
        assert!(budget.is_full());
        let waiting = {
            let a = a.clone();
            tokio::spawn(async move {
                a.handle(INPUT, &Message::json(sample_json(2).to_string()))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiting.is_finished(), "a full tree must hold input back");
        budget.set_max(u64::MAX);
        assert_eq!(waiting.await.unwrap(), Ok(Outcome::Archived));

        budget.set_max(0);
        let held = {
            let a = a.clone();
            tokio::spawn(async move {
                a.handle(INPUT, &Message::json(sample_json(3).to_string()))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop.send(true).unwrap();
        assert_eq!(held.await.unwrap(), Err(Unhandled::Stopping));
        threads.close();
    }
}
