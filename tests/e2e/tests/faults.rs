//! The whole pipeline through faults: `kill -9` of each module in turn while ten leaf devices
//! send (edgeAgent restarts it), a restart of the whole runtime on the same state folder and
//! port, and Azurite stopped while an Avro file becomes due for upload, then started again.
//!
//! Afterwards every sent message must be accounted for: at least one RUL message upstream and
//! at least one Avro record in the blob store. Duplicates are allowed only as at-least-once
//! redelivery after a `kill -9` (sent shortly before one), and are counted in the output.
//!
//! The runtime is restarted twice: between two runs of the devices, and while they send
//! ([`a_runtime_restart_under_load_loses_no_acknowledged_message`]: edgeHub's journaled
//! module queues and the clients' resends account for every message).
//!
//! [`a_full_disk_budget_held_past_the_ttl_loses_nothing_unaccounted`] keeps the upload
//! target away longer than the deployment's time-to-live with a small `MaxDiskMB`: each
//! message then has its Avro record or is counted by edgeHub as expired.

use e2e::pipeline::{self, wait_for};
use e2e::run::{
    avro_records, avro_tally, leaf_run, quiet_period, rul_messages, sent_by, wait_sent,
};
use e2e::{Pipeline, Tally, Uploads, CLASSIFIER, MODULES, ROUTER, WRITER};
use leaf_simulator::SentRecord;
use serde_json::json;
use std::time::{Duration, Instant};

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Duplicates are allowed only as redelivery after a crash: each duplicated message must
/// have been sent shortly before (or just after) one of the `kills`.
fn assert_redeliveries(what: &str, t: &Tally, sent: &[SentRecord], kills: &[String]) {
    let time = |s: &str| {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap_or_else(|e| panic!("time {s}: {e}"))
            .timestamp_millis()
    };
    let kills: Vec<i64> = kills.iter().map(|k| time(k)).collect();
    for cid in &t.duplicated_ids {
        let s = sent
            .iter()
            .find(|s| &s.correlation_id == cid)
            .expect("a duplicated message was sent");
        let at = time(&s.sent_at);
        assert!(
            kills.iter().any(|k| at > k - 10_000 && at < k + 3_000),
            "{what}: {} cycle {} (sent {}) came out more than once, far from any kill -9 ({kills:?})",
            s.device,
            s.cycle,
            s.sent_at
        );
    }
}

/// Stops Azurite (SIGTERM) and waits for it to exit.
async fn stop_azurite(p: &Pipeline) {
    let azurite = p.rt.azurite_pid().expect("Azurite runs");
    pipeline::terminate(azurite).unwrap();
    wait_for("Azurite to exit", Duration::from_secs(15), || {
        Ok(pipeline::exited(azurite).then_some(()))
    })
    .await
    .unwrap();
}

async fn start(azurite: bool) -> Pipeline {
    let manifest = pipeline::deployment_manifest(&[]).expect("the deployment manifest");
    let p = Pipeline::start(&manifest, azurite)
        .await
        .expect("the runtime starts the manifest's modules");
    ready(&p).await;
    p
}

async fn ready(p: &Pipeline) {
    p.patch_desired(WRITER, quiet_period()).unwrap();
    p.wait_connected(Duration::from_secs(60))
        .await
        .expect("modules connected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_accounted_for_through_module_kills_a_runtime_restart_and_an_azurite_outage(
) {
    let started = Instant::now();
    let mut p = start(true).await;
    let mut uploads = Uploads::default();

    // Run 1: kill -9 of each module in turn while the devices send.
    let mut kills = Vec::new();
    let log1 = p.dir().join("sent-1.jsonl");
    let (progress, run) = leaf_run(&p, &log1, 40, 8.0);
    for (i, module) in [ROUTER, CLASSIFIER, WRITER].into_iter().enumerate() {
        wait_sent(&progress, (i as f64 + 1.0) / 4.0).await;
        let killed_at = now();
        let pid = p
            .kill_module(module, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{module} after kill -9: {e:#}"));
        println!(
            "faults: killed {module} at {killed_at} ({:.1} s); restarted as pid {pid}",
            started.elapsed().as_secs_f64()
        );
        kills.push(killed_at);
    }
    let mut sent = sent_by(run, &log1).await;
    let t = rul_messages(&p, &sent, Duration::from_secs(60)).await;
    assert!(t.is_complete(), "RUL messages after the module kills: {t}");
    let t = avro_records(&p, &mut uploads, &sent, true, Duration::from_secs(60)).await;
    assert!(t.is_complete(), "Avro records after the module kills: {t}");

    // The whole runtime restarts (modules stopped with SIGTERM, edgeHub and Azurite
    // stopped) on the same state and port; run 2 goes through the restarted runtime.
    let restart_at = now();
    p = p.restart().await.expect("the runtime restarts");
    ready(&p).await;
    println!(
        "faults: runtime restarted from {restart_at} to {} ({:.1} s)",
        now(),
        started.elapsed().as_secs_f64()
    );
    let log2 = p.dir().join("sent-2.jsonl");
    let (_, run) = leaf_run(&p, &log2, 10, 20.0);
    sent.extend(sent_by(run, &log2).await);
    let t = rul_messages(&p, &sent, Duration::from_secs(60)).await;
    assert!(
        t.is_complete(),
        "RUL messages after the runtime restart: {t}"
    );
    let t = avro_records(&p, &mut uploads, &sent, true, Duration::from_secs(60)).await;
    assert!(
        t.is_complete(),
        "Avro records after the runtime restart: {t}"
    );

    // Azurite stops. Run 3's file goes quiet: its upload fails and it stays in the archive.
    // Stopped, not killed: Azurite keeps blob metadata in memory and saves it every 5 s, so
    // SIGKILL can lose a blob it acknowledged a moment before (which Azure Storage never
    // does), and with it run 2's records.
    stop_azurite(&p).await;
    let uploaded_before = p.uploaded_blobs().unwrap().len();
    let failures_before = p.writer_counter("UploadFailures");
    println!(
        "faults: Azurite stopped at {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let log3 = p.dir().join("sent-3.jsonl");
    let (_, run) = leaf_run(&p, &log3, 5, 20.0);
    let run3 = sent_by(run, &log3).await;
    sent.extend(run3.iter().cloned());
    let t = rul_messages(&p, &sent, Duration::from_secs(60)).await;
    assert!(t.is_complete(), "RUL messages while Azurite is down: {t}");
    wait_for(
        "a failed upload while Azurite is down",
        Duration::from_secs(30),
        || Ok((p.writer_counter("UploadFailures") > failures_before).then_some(())),
    )
    .await
    .unwrap();
    let run3_cids: Vec<&str> = run3.iter().map(|s| s.correlation_id.as_str()).collect();
    let kept = wait_for(
        "run 3's records in the archive",
        Duration::from_secs(10),
        || {
            let records = p.archived_records()?;
            let t = Tally::count(
                run3_cids.iter().copied(),
                records.iter().map(|r| r.correlation_id()),
            );
            Ok(t.missing.is_empty().then_some(t))
        },
    )
    .await
    .unwrap();
    assert!(
        kept.is_complete(),
        "run 3's records stay in the archive while Azurite is down: {kept}"
    );
    assert_eq!(
        p.uploaded_blobs().unwrap().len(),
        uploaded_before,
        "nothing uploaded while Azurite is down"
    );
    println!(
        "faults: upload failed at {:.1} s; kept in the archive: {:?}",
        started.elapsed().as_secs_f64(),
        p.archive_files().unwrap()
    );

    // Azurite is back (same port, same data): the files are uploaded and leave the archive.
    p.rt.restart_azurite().await.expect("Azurite starts again");
    let avro_tally = avro_records(&p, &mut uploads, &sent, true, Duration::from_secs(60)).await;
    assert!(
        avro_tally.is_complete() && p.archive_files().unwrap().is_empty(),
        "Avro records uploaded once Azurite is back: {avro_tally}"
    );
    let rul_tally = rul_messages(&p, &sent, Duration::from_secs(1)).await;
    assert_redeliveries("RUL messages", &rul_tally, &sent, &kills);
    assert_redeliveries("Avro records", &avro_tally, &sent, &kills);
    // The writer's counters went on through its kill -9 and the runtime restart (#26 item
    // 8): every record uploaded, redeliveries included, was counted once.
    let uploaded_records = uploads.records().count() as u64;
    wait_for(
        "the writer's RecordsWritten to count every uploaded record",
        Duration::from_secs(20),
        || Ok((p.writer_counter("RecordsWritten") == uploaded_records).then_some(())),
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}: RecordsWritten {} for {uploaded_records} records uploaded",
            p.writer_counter("RecordsWritten")
        )
    });
    let notes = p.notifications().unwrap();
    let failed_uploads = notes.iter().filter(|n| n["isSuccess"] == false).count();
    println!(
        "faults: {} messages; RUL messages {rul_tally}; Avro records {avro_tally} in {} blobs ({} uploaded again under the same name); upload failures {} ({failed_uploads} notified); {:.1} s",
        sent.len(),
        uploads.blobs(),
        uploads.reuploads(),
        p.writer_counter("UploadFailures"),
        started.elapsed().as_secs_f64()
    );
    p.shutdown().await;
}

/// The runtime restarted while leaf devices send: what edgeHub acknowledged must survive
/// (IoT Edge's store-and-forward), and the devices' sends in flight must complete.
///
/// Fails today: the local runtime keeps module queues and MQTT sessions in memory only, so
/// messages it acknowledged but had not yet delivered are lost with the restart, and a
/// client that reconnects gets "no session present", upon which rumqttc drops its
/// unacknowledged publishes and `edge-client`'s send never completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_restart_under_load_loses_no_acknowledged_message() {
    let started = Instant::now();
    let mut p = start(false).await;
    let mut uploads = Uploads::default();
    let log = p.dir().join("sent.jsonl");
    let (progress, run) = leaf_run(&p, &log, 60, 8.0);
    wait_sent(&progress, 0.5).await;
    let restart_at = now();
    p = p.restart().await.expect("the runtime restarts");
    ready(&p).await;
    println!(
        "restart under load: from {restart_at} to {} ({:.1} s)",
        now(),
        started.elapsed().as_secs_f64()
    );
    let sent = sent_by(run, &log).await;
    let rul_tally = rul_messages(&p, &sent, Duration::from_secs(30)).await;
    let avro_tally = avro_records(&p, &mut uploads, &sent, false, Duration::from_secs(10)).await;
    println!(
        "restart under load: RUL messages {rul_tally}; Avro records {avro_tally}; restarts {:?}",
        MODULES.map(|m| p.restarts(m))
    );
    assert!(rul_tally.is_complete(), "RUL messages: {rul_tally}");
    assert!(avro_tally.is_complete(), "Avro records: {avro_tally}");
    let restarts = [restart_at];
    assert_redeliveries("RUL messages", &rul_tally, &sent, &restarts);
    assert_redeliveries("Avro records", &avro_tally, &sent, &restarts);
    p.shutdown().await;
}

/// The upload target down longer than the deployment's time-to-live, with a small disk
/// budget: the writer's archive fills to `MaxDiskMB`, it stops taking input, edgeHub keeps
/// the writer's messages for `timeToLiveSecs` and then drops them. Every acknowledged
/// message must have come out as an Avro record or been counted as expired (in edgeHub's
/// endpoint status and in its metrics), never both; the RUL messages, on a path the outage
/// does not touch, must all arrive; and once the target is back the writer takes input
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_budget_held_past_the_ttl_loses_nothing_unaccounted() {
    const TTL_SECS: u64 = 8;
    let started = Instant::now();
    let mut manifest = pipeline::deployment_manifest(&[]).expect("the deployment manifest");
    manifest["modulesContent"]["$edgeHub"]["properties.desired"]["storeAndForwardConfiguration"]
        ["timeToLiveSecs"] = json!(TTL_SECS);
    // A smaller in-flight window than the default 1,024, so that most of what the writer
    // does not take waits in edgeHub's queue, where the time-to-live applies.
    let mut p = Pipeline::start_with(&manifest, true, |o| o.window = 32)
        .await
        .expect("the runtime starts the manifest's modules");
    ready(&p).await;
    let mut uploads = Uploads::default();
    // About 20 KiB: a few Avro files' worth.
    p.patch_desired(WRITER, json!({"MaxDiskMB": 0.02})).unwrap();

    // The upload target goes away; the devices send 300 messages over about 3 s.
    stop_azurite(&p).await;
    let log1 = p.dir().join("sent-1.jsonl");
    let (_, run) = leaf_run(&p, &log1, 30, 10.0);
    let run1 = sent_by(run, &log1).await;
    let t = rul_messages(&p, &run1, Duration::from_secs(60)).await;
    assert!(t.is_exact(), "RUL messages while the budget is full: {t}");
    wait_for("DiskFull reported", Duration::from_secs(30), || {
        Ok((p.reported(WRITER)["DiskFull"] == json!(true)).then_some(()))
    })
    .await
    .unwrap();
    // The outage outlasts the time-to-live: whatever waits in the writer's queue expires.
    let held = wait_for(
        "the writer's queue to expire",
        Duration::from_secs(30),
        || {
            let s = p.rt.hub.endpoint_stats()[WRITER];
            Ok((s.queued == 0 && s.expired > 0).then_some(s))
        },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(TTL_SECS)).await;
    println!(
        "budget past the TTL: at {:.1} s the writer's endpoint {held:?}; DiskFull; archive {:?}",
        started.elapsed().as_secs_f64(),
        p.archive_files().unwrap()
    );

    // The target is back: the quiet files are uploaded, the budget frees, input resumes.
    p.rt.restart_azurite().await.expect("Azurite starts again");
    wait_for("DiskFull cleared", Duration::from_secs(60), || {
        Ok((p.reported(WRITER)["DiskFull"] == json!(false)).then_some(()))
    })
    .await
    .unwrap();
    let log2 = p.dir().join("sent-2.jsonl");
    let (_, run) = leaf_run(&p, &log2, 2, 10.0);
    let run2 = sent_by(run, &log2).await;
    let mut sent = run1.clone();
    sent.extend(run2.iter().cloned());
    let t = rul_messages(&p, &sent, Duration::from_secs(30)).await;
    assert!(t.is_exact(), "RUL messages: {t}");
    // Waits for run 2's records and an empty archive (run 1's are counted below).
    let t = avro_records(&p, &mut uploads, &run2, true, Duration::from_secs(90)).await;
    assert!(
        t.missing.is_empty() && t.extra_copies == 0,
        "Avro records after the outage: {t}"
    );

    // Every message has one Avro record or was counted as expired.
    let stats = p.rt.hub.endpoint_stats();
    let expired = stats[WRITER].expired;
    let cids: Vec<&str> = sent.iter().map(|s| s.correlation_id.as_str()).collect();
    let t = avro_tally(&p, &mut uploads, &cids).await.unwrap();
    let metrics = p.scrape("edgeHub", "/metrics").await.unwrap();
    let counted = e2e::metrics::sum(
        &metrics,
        "edgehub_messages_dropped_total",
        &[
            ("reason", "ttl_expiry"),
            ("from_route_output", "avroOutput"),
        ],
    );
    println!(
        "budget past the TTL: Avro records {t}; expired {expired} (metric {counted}); {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(expired > 0, "the outage must outlast the time-to-live");
    assert!(
        t.extra_copies == 0 && t.unexpected.is_empty(),
        "Avro records: {t}"
    );
    assert_eq!(
        t.missing.len() as u64,
        expired,
        "each message without an Avro record must have been counted as expired: {t}"
    );
    assert_eq!(counted as u64, expired, "edgeHub's metric counts each one");
    assert_eq!(
        MODULES.map(|m| stats[m].expired),
        [0, 0, expired],
        "only the writer's queue expired"
    );
    p.shutdown().await;
}
