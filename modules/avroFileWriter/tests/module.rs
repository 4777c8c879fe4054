//! The `avroFileWriter` binary, started by the local runtime's edgeAgent as the manifest
//! says, fed through an edgeHub route by a probe module playing the router.
//!
//! The module's clock is shifted (`AVRO_CLOCK_OFFSET_SECS`) so that its current bucket ends
//! about 25 s into the test: the file it writes then stops being current, goes quiet, and is
//! uploaded to `AVRO_UPLOAD_DIR` and removed from the archive.

use avro_file_writer::bucket::Bucket;
use avro_file_writer::container;
use avro_file_writer::record::{self, read_file, ArchivedRecord, RecordSchema};
use avro_file_writer::stats::Stats;
use avro_file_writer::tree;
use avro_file_writer::writer::open_container;
use chrono::Utc;
use edge_client::Message;
use iotedge_local::testing::{start_with, TestRuntime};
use serde_json::{json, Value};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};
use turbofan_domain::record::BODY_FIELDS;

const MODULE: &str = "avroFileWriter";
/// Seconds from the test's start to the end of the module's current bucket.
const BUCKET_ENDS_AFTER: i64 = 25;

fn manifest(upload_dir: &Path, clock_offset: i64) -> Value {
    let env = |v: &str| json!({ "value": v });
    json!({"modulesContent": {
        "$edgeAgent": {"properties.desired": {"modules": {
            MODULE: {"status": "running", "restartPolicy": "always",
                "env": {
                    "AVRO_UPLOAD_DIR": env(upload_dir.to_str().unwrap()),
                    "QuietPeriodSecs": env("6"),
                    "CheckIntervalSecs": env("0.5"),
                    "AVRO_CLOCK_OFFSET_SECS": env(&clock_offset.to_string()),
                },
                "settings": {"image": "${MODULES.avroFileWriter}",
                    "createOptions": {"HostConfig": {"Binds": ["/data/avrofiles:/avrofiles"]}}}},
            "probe": {"settings": {"image": "local/probe"}}}}},
        "$edgeHub": {"properties.desired": {
            "routes": {"probeToAvro": "FROM /messages/modules/probe/outputs/avro INTO BrokeredEndpoint(\"/modules/avroFileWriter/inputs/avroModuleInput\")"},
            "storeAndForwardConfiguration": {"timeToLiveSecs": 7200}}},
        // Starts with a budget of zero: the archive is "full" until the test raises it.
        MODULE: {"properties.desired": {"LoggingLevel": "debug", "MaxDiskMB": 0}}
    }})
}

/// A router-shaped record.
fn record_json(i: u32) -> Value {
    let mut body = serde_json::Map::new();
    for (k, f) in BODY_FIELDS.iter().enumerate() {
        body.insert(
            f.to_string(),
            json!(500.0 + f64::from(i) * 0.37 + k as f64 / 7.0),
        );
    }
    json!({
        "CorrelationId": format!("rec-{i}"),
        "ConnectionDeviceId": "Client_001",
        "CreationTimeUtc": "2026-11-21T05:15:00.000Z",
        "EnqueuedTimeUtc": "2026-11-21T05:15:00.010Z",
        "Body": body,
    })
}

async fn wait_for<T>(what: &str, secs: u64, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn reported(t: &TestRuntime) -> Value {
    t.rt.hub.twins.get(&format!("edge-device/{MODULE}"))["reported"].clone()
}

/// An old, valid archive file, as a previous run would have left it.
fn seed_old_file(root: &Path, rel: &str, records: &[Value]) -> Vec<u8> {
    let schema = RecordSchema::tutorial();
    let staging = root.join("staging.tmp");
    let (file, marker, len, _) = open_container(&staging, &schema, &Stats::default()).unwrap();
    let mut data = Vec::new();
    for r in records {
        record::parse(r.to_string().as_bytes())
            .unwrap()
            .encode(&schema, &mut data)
            .unwrap();
    }
    let mut block = Vec::new();
    container::encode_block(&mut block, records.len() as u64, &data, &marker);
    file.write_all_at(&block, len).unwrap();
    file.set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    drop(file);
    let bytes = std::fs::read(&staging).unwrap();
    let dest = root.join(rel);
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::rename(&staging, &dest).unwrap();
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archives_quarantines_holds_input_while_full_and_uploads_quiet_files() {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_avroFileWriter"))
        .parent()
        .unwrap()
        .to_path_buf();
    let uploads = tempfile::tempdir().unwrap();
    let now = Utc::now();
    let offset = (Bucket::of(now).end() - now).num_seconds() - BUCKET_ENDS_AFTER;
    let real_start = Instant::now();
    let t = start_with(manifest(uploads.path(), offset), |o| {
        o.start_modules = true;
        o.bin_dir = Some(bin_dir);
        o.skip = vec!["probe".into()];
    })
    .await;
    let root: PathBuf = t.rt.state_dir().join("binds/data/avrofiles");
    let probe = t.client("probe").await;

    // MaxDiskMB 0: the module reports DiskFull and takes nothing.
    wait_for("DiskFull: true", 30, || {
        (reported(&t)["DiskFull"] == json!(true)).then_some(())
    })
    .await;
    let good: Vec<Value> = (0..20).map(record_json).collect();
    for r in &good {
        let mut m = Message::json(r.to_string());
        m.correlation_id = r["CorrelationId"].as_str().map(Into::into);
        probe.send_output("avro", m).await.unwrap();
    }
    let mut missing = record_json(100);
    missing["Body"].as_object_mut().unwrap().remove("Sensor7");
    let mut mistyped = record_json(101);
    mistyped["Body"]["Sensor2"] = json!("hot");
    let bad = [
        "not json at all".to_owned(),
        missing.to_string(),
        mistyped.to_string(),
    ];
    for b in &bad {
        let mut m = Message::json(b.clone());
        m.set_property("Origin", "probe");
        probe.send_output("avro", m).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let stats = t.rt.hub.endpoint_stats()[MODULE];
    assert_eq!(
        stats.delivered, 0,
        "nothing acknowledged while full: {stats:?}"
    );
    assert!(
        tree::list_avro_files(&root).unwrap().is_empty(),
        "nothing written while full"
    );

    // Room again: everything is written, synced and acknowledged.
    t.rt.hub
        .patch_desired(MODULE, json!({"MaxDiskMB": 64}).as_object().unwrap())
        .expect("the twin is saved");
    wait_for("all 23 acknowledged", 30, || {
        let s = t.rt.hub.endpoint_stats()[MODULE];
        (s.delivered == 23).then_some(())
    })
    .await;
    let files = tree::list_avro_files(&root).unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    let live = files[0].clone();
    let bucket = Bucket::from_relative_path(&live.rel).expect("a bucket path");
    let want: Vec<ArchivedRecord> = good
        .iter()
        .map(|r| ArchivedRecord::from_good(&record::parse(r.to_string().as_bytes()).unwrap()))
        .collect();
    assert_eq!(
        read_file(&live.path).unwrap(),
        want,
        "every record, in order"
    );
    assert_eq!(
        want[3].body[0],
        (500.0 + 3.0 * 0.37f64) as f32,
        "values are the JSON numbers as float"
    );
    let until_end = (bucket.end() - Utc::now()).num_seconds() - offset;
    assert!(
        until_end < 60,
        "the module's bucket ends in {until_end} s: it started too slowly for this test"
    );

    // Bad records: quarantined with their reason, properties and body.
    let qdir = root.join("quarantine");
    let qfile = std::fs::read_dir(&qdir)
        .unwrap()
        .next()
        .expect("a quarantine file")
        .unwrap()
        .path();
    let lines: Vec<Value> = std::fs::read_to_string(&qfile)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0]["Reason"].as_str().unwrap().contains("not JSON"));
    assert_eq!(lines[1]["Reason"], "Body has no field 'Sensor7'");
    assert_eq!(
        lines[2]["Reason"],
        "Body field 'Sensor2' is a string, not a number"
    );
    assert_eq!(lines[0]["Body"], "not json at all");
    assert_eq!(lines[2]["Properties"]["Origin"], "probe");
    assert_eq!(lines[1]["ConnectionModuleId"], "probe");

    // A file left by an earlier run is uploaded at once (it is quiet and not current) and
    // leaves the archive with its folders.
    let old: Vec<Value> = (200..203).map(record_json).collect();
    let seeded = seed_old_file(&root, "2020/1/2/3/5.avro", &old);
    let uploaded_old = uploads.path().join("2020/1/2/3/5.avro");
    wait_for("the old file uploaded", 30, || {
        uploaded_old.exists().then_some(())
    })
    .await;
    assert_eq!(std::fs::read(&uploaded_old).unwrap(), seeded);
    wait_for("the old file's folders removed", 10, || {
        (!root.join("2020").exists()).then_some(())
    })
    .await;
    assert!(
        live.path.exists(),
        "the live file stays while its input is recent"
    );

    // Once no record came for the quiet period, the writer closes its file and it is
    // uploaded too, without waiting for its bucket to end (as the tutorial's quiet period).
    let uploaded_live = uploads.path().join(&live.rel);
    wait_for("the live file uploaded", 30, || {
        uploaded_live.exists().then_some(())
    })
    .await;
    assert!(
        real_start.elapsed() < Duration::from_secs(BUCKET_ENDS_AFTER as u64),
        "uploaded once quiet, before its bucket ended"
    );
    assert_eq!(read_file(&uploaded_live).unwrap(), want);
    wait_for("the live file removed", 10, || {
        (!live.path.exists()).then_some(())
    })
    .await;
    // The folders go after the file (and a sync of its folder): waited for, not read at once.
    let bucket = live.path.parent().unwrap().to_path_buf();
    wait_for("the live file's empty bucket folders removed", 10, || {
        (!bucket.exists()).then_some(())
    })
    .await;
    assert!(qfile.exists(), "the quarantine stays");

    let r = wait_for("final counters reported", 15, || {
        let r = reported(&t);
        (r["FilesUploaded"] == json!(2)).then_some(r)
    })
    .await;
    assert_eq!(r["RecordsWritten"], json!(20));
    assert_eq!(r["RecordsQuarantined"], json!(3));
    assert_eq!(r["DiskFull"], json!(false));
    assert_eq!(r["MaxDiskMB"], json!(64.0));
    assert_eq!(r["QuietPeriodSecs"], json!(6.0));
    assert_eq!(r["LoggingLevel"], json!("debug"));

    probe.close(Duration::from_secs(2)).await;
    let log = t.rt.state_dir().join(format!("logs/{MODULE}.log"));
    t.rt.shutdown().await;
    let log = std::fs::read_to_string(log).unwrap();
    assert!(log.contains("reached MaxDiskMB"), "{log}");
    assert!(log.contains("avroFileWriter stopped cleanly"), "{log}");
}

/// With no upload setting at all, the writer finds the edge device's identity in the IoT Edge
/// config file it bind-mounts (as the tutorial's writer does) and uploads quiet files through
/// IoT Hub file upload: SAS URI from the hub, blob PUT, notification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_through_iot_hub_with_the_device_identity_of_the_config_file() {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_avroFileWriter"))
        .parent()
        .unwrap()
        .to_path_buf();
    let env = |v: &str| json!({ "value": v });
    let manifest = json!({"modulesContent": {
        "$edgeAgent": {"properties.desired": {"modules": {
            MODULE: {"status": "running", "restartPolicy": "always",
                "env": {"QuietPeriodSecs": env("1"), "CheckIntervalSecs": env("0.5")},
                "settings": {"image": "${MODULES.avroFileWriter}",
                    "createOptions": {"HostConfig": {"Binds": [
                        "/data/avrofiles:/avrofiles", "/etc/aziot/config.toml:/etc/aziot/config.toml:ro"]}}}}}}},
        "$edgeHub": {"properties.desired": {"routes": {}}}
    }});
    let t = start_with(manifest, |o| {
        o.start_modules = true;
        o.bin_dir = Some(bin_dir);
    })
    .await;
    let root = t.rt.state_dir().join("binds/data/avrofiles");
    let seeded = seed_old_file(
        &root,
        "2020/1/2/3/5.avro",
        &[record_json(1), record_json(2)],
    );
    let blob =
        t.rt.state_dir()
            .join("blobs/avrofiles/edge-device/2020/1/2/3/5.avro");
    wait_for("the blob in IoT Hub's storage", 30, || {
        blob.exists().then_some(())
    })
    .await;
    assert_eq!(
        std::fs::read(&blob).unwrap(),
        seeded,
        "uploaded byte for byte"
    );
    wait_for("the archived file to be removed", 10, || {
        (!root.join("2020/1/2/3/5.avro").exists()).then_some(())
    })
    .await;
    let notes =
        std::fs::read_to_string(t.rt.state_dir().join("files/notifications.jsonl")).unwrap();
    assert!(
        notes.contains("\"isSuccess\":true") && notes.contains("edge-device/2020/1/2/3/5.avro"),
        "{notes}"
    );
    let target = wait_for("the reported upload target", 10, || {
        reported(&t)["UploadTarget"].as_str().map(str::to_owned)
    })
    .await;
    assert!(
        target.starts_with("IoT Hub file upload as device edge-device"),
        "{target}"
    );
    t.rt.shutdown().await;
}
