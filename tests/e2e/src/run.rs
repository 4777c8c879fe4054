//! Running leaf devices against a [`Pipeline`] and accounting for what they sent: every
//! acknowledged message must come out as a RUL message upstream and an Avro record.

use crate::pipeline::{self, wait_for, Pipeline, Uploads};
use crate::Tally;
use leaf_simulator::{sent_log, simulate, Progress, SentRecord, SimConfig, Summary};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// Leaf devices of a run.
pub const DEVICES: usize = 10;

/// The writer's quiet period, shortened as an operator would, through its twin.
pub fn quiet_period() -> serde_json::Value {
    json!({"QuietPeriodSecs": 1, "CheckIntervalSecs": 1})
}

/// Starts leaf devices Client_001… replaying their engines' first `rows` cycles at `rate`
/// messages/s each, logging what edgeHub acknowledged to `log`.
pub fn leaf_run(
    p: &Pipeline,
    log: &std::path::Path,
    rows: u64,
    rate: f64,
) -> (Arc<Progress>, JoinHandle<Summary>) {
    let mut cfg = SimConfig::new(p.state(), pipeline::data_file("test_FD003.txt"));
    cfg.devices = Some(DEVICES);
    cfg.max_messages = Some(rows);
    cfg.rate = rate;
    cfg.sent_log = Some(log.to_path_buf());
    let progress = Progress::new();
    let prog = Arc::clone(&progress);
    let run = tokio::spawn(async move { simulate(&cfg, prog).await.expect("the simulator runs") });
    (progress, run)
}

pub async fn sent_by(run: JoinHandle<Summary>, log: &std::path::Path) -> Vec<SentRecord> {
    let summary = run.await.expect("the simulator task");
    assert!(summary.is_complete(), "{summary}");
    let (sent, torn) = sent_log::read(log).expect("the sent log");
    assert_eq!((sent.len() as u64, torn), (summary.planned, 0), "{summary}");
    sent
}

pub async fn wait_sent(progress: &Progress, fraction: f64) {
    wait_for("messages sent", Duration::from_secs(60), || {
        let planned = progress.planned();
        Ok((planned > 0 && progress.sent() as f64 >= planned as f64 * fraction).then_some(()))
    })
    .await
    .unwrap();
}

/// Waits until every sent message has a RUL message upstream; returns the tally, with the
/// messages that have none printed.
pub async fn rul_messages(p: &Pipeline, sent: &[SentRecord], timeout: Duration) -> Tally {
    let cids: Vec<&str> = sent.iter().map(|s| s.correlation_id.as_str()).collect();
    let tally = || {
        let o = p.upstream()?;
        anyhow::ensure!(
            o.dead.is_empty() && o.other.is_empty(),
            "dead letters or foreign records upstream: {:?} {:?}",
            o.dead,
            o.other
        );
        Ok(Tally::count(
            cids.iter().copied(),
            o.ruls.iter().map(|r| r.correlation_id.as_str()),
        ))
    };
    let _ = wait_for("a RUL message for every sent message", timeout, || {
        Ok(tally()?.missing.is_empty().then_some(()))
    })
    .await;
    let t = tally().unwrap();
    for cid in &t.missing {
        if let Some(s) = sent.iter().find(|s| &s.correlation_id == cid) {
            println!(
                "faults: no RUL message for {} cycle {} sent at {}",
                s.device, s.cycle, s.sent_at
            );
        }
    }
    t
}

/// The Avro records of the sent messages, uploaded (read back into `uploads`) or still in
/// the archive.
pub async fn avro_tally(
    p: &Pipeline,
    uploads: &mut Uploads,
    cids: &[&str],
) -> anyhow::Result<Tally> {
    p.collect_uploads(uploads).await?;
    let archived = p.archived_records()?;
    Ok(Tally::count(
        cids.iter().copied(),
        uploads
            .records()
            .chain(&archived)
            .map(|r| r.correlation_id()),
    ))
}

/// Waits until every sent message has an Avro record (uploaded or in the archive); with
/// `uploaded`, also until the archive is empty. Returns the tally.
pub async fn avro_records(
    p: &Pipeline,
    uploads: &mut Uploads,
    sent: &[SentRecord],
    uploaded: bool,
    timeout: Duration,
) -> Tally {
    let cids: Vec<&str> = sent.iter().map(|s| s.correlation_id.as_str()).collect();
    let deadline = Instant::now() + timeout;
    loop {
        // The writer may be appending a block, or a file may be uploaded and removed between
        // the two reads: a failed or incomplete look is retried.
        let t = avro_tally(p, uploads, &cids).await;
        let empty = !uploaded || p.archive_files().is_ok_and(|f| f.is_empty());
        match t {
            Ok(t) if t.missing.is_empty() && empty => return t,
            Ok(t) if Instant::now() >= deadline => return t,
            Err(e) if Instant::now() >= deadline => panic!("reading the Avro records: {e:#}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Starts `manifest` as [`Pipeline::start_with`] does, shortens the writer's quiet period
/// ([`quiet_period`]) and waits until every module is connected.
pub async fn start_connected(
    manifest: &serde_json::Value,
    azurite: bool,
    adjust: impl FnOnce(&mut iotedge_local::Options),
) -> Pipeline {
    let p = Pipeline::start_with(manifest, azurite, adjust)
        .await
        .expect("the runtime starts the manifest's modules");
    p.patch_desired(crate::WRITER, quiet_period()).unwrap();
    p.wait_connected(Duration::from_secs(60))
        .await
        .expect("modules up");
    p
}

/// Replays `devices` engines of `test_FD003.txt` (their first `rows` cycles) at `rate`
/// messages/s each, to the end; what edgeHub acknowledged, from the sent log.
pub async fn replay(p: &Pipeline, devices: usize, rows: u64, rate: f64) -> Vec<SentRecord> {
    let log = p
        .dir()
        .join(format!("sent-{}.jsonl", uuid::Uuid::new_v4().simple()));
    let mut cfg = SimConfig::new(p.state(), pipeline::data_file("test_FD003.txt"));
    cfg.devices = Some(devices);
    cfg.max_messages = Some(rows);
    cfg.rate = rate;
    cfg.sent_log = Some(log.clone());
    let summary = simulate(&cfg, Progress::new())
        .await
        .expect("the simulator runs");
    assert!(summary.is_complete(), "{summary}");
    let (sent, torn) = sent_log::read(&log).expect("the sent log");
    assert_eq!((sent.len() as u64, torn), (summary.planned, 0), "{summary}");
    sent
}
