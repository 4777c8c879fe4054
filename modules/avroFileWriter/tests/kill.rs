//! `kill -9` at arbitrary moments while records stream in: every file stays readable up to
//! its last sync, every acknowledged record is in a file, and after the restarts (edgeAgent,
//! `restartPolicy: always`) every record sent is archived at least once.

use avro_file_writer::container;
use avro_file_writer::record::read_file;
use avro_file_writer::tree;
use edge_client::Message;
use iotedge_local::testing::{start_with, TestRuntime};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use turbofan_domain::record::BODY_FIELDS;

const MODULE: &str = "avroFileWriter";
const RECORDS: u32 = 6000;
/// Kill when this many records have been acknowledged.
const KILL_AT: [u64; 3] = [800, 2500, 4200];
/// edgeHub's window of unacknowledged messages per module (the runtime's default).
const WINDOW: usize = 256;

fn manifest() -> Value {
    json!({"modulesContent": {
        "$edgeAgent": {"properties.desired": {"modules": {
            MODULE: {"status": "running", "restartPolicy": "always",
                "env": {"QuietPeriodSecs": {"value": "3600"}},
                "settings": {"image": "${MODULES.avroFileWriter}",
                    "createOptions": {"HostConfig": {"Binds": ["/data/avrofiles:/avrofiles"]}}}},
            "probe": {"settings": {"image": "local/probe"}}}}},
        "$edgeHub": {"properties.desired": {
            "routes": {"probeToAvro": "FROM /messages/modules/probe/outputs/avro INTO BrokeredEndpoint(\"/modules/avroFileWriter/inputs/avroModuleInput\")"},
            "storeAndForwardConfiguration": {"timeToLiveSecs": 7200}}}
    }})
}

fn record(i: u32) -> String {
    let body: serde_json::Map<String, Value> = BODY_FIELDS
        .iter()
        .enumerate()
        .map(|(k, f)| (f.to_string(), json!(f64::from(i) + k as f64 * 0.25)))
        .collect();
    json!({
        "CorrelationId": id(i),
        "ConnectionDeviceId": "Client_001",
        "CreationTimeUtc": "2026-11-21T05:15:00.000Z",
        "EnqueuedTimeUtc": "2026-11-21T05:15:00.010Z",
        "Body": body,
    })
    .to_string()
}

fn id(i: u32) -> String {
    format!("k-{i:05}")
}

fn delivered(t: &TestRuntime) -> u64 {
    t.rt.hub
        .endpoint_stats()
        .get(MODULE)
        .map_or(0, |s| s.delivered)
}

/// The records of every file as a crash left it: each file walked up to its last complete
/// block, then a repaired copy read with apache-avro's reader.
fn records_after_crash(root: &Path, scratch: &Path) -> Vec<String> {
    let mut ids = Vec::new();
    for (n, f) in tree::list_avro_files(root).unwrap().into_iter().enumerate() {
        let Ok(bytes) = std::fs::read(&f.path) else {
            continue;
        };
        let copy = scratch.join(format!("{n}.avro"));
        std::fs::write(&copy, &bytes).unwrap();
        match container::repair(&copy).unwrap() {
            container::Repaired::TornHeader => continue, // held nothing acknowledged
            container::Repaired::Intact(_) | container::Repaired::Truncated { .. } => {}
        }
        let recs = read_file(&copy)
            .unwrap_or_else(|e| panic!("{} unreadable after repair: {e}", f.path.display()));
        ids.extend(recs.iter().map(|r| r.correlation_id().to_owned()));
    }
    ids
}

/// Appends the start of a block that never finished (count 1, 100 bytes announced, 40 there)
/// to the most recently modified file.
fn tear_newest_file(root: &Path) {
    let newest = tree::list_avro_files(root)
        .unwrap()
        .into_iter()
        .max_by_key(|f| f.modified)
        .expect("a file was written");
    let mut torn = vec![0x02, 0xc8, 0x01];
    torn.extend((0..40u8).map(|b| b.wrapping_mul(37)));
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&newest.path)
        .unwrap();
    std::io::Write::write_all(&mut f, &torn).unwrap();
}

fn pid(t: &TestRuntime) -> Option<u32> {
    t.rt.process_status().get(MODULE).and_then(|s| s.pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_record_and_leaves_readable_files() {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_avroFileWriter"))
        .parent()
        .unwrap()
        .to_path_buf();
    let t = start_with(manifest(), |o| {
        o.start_modules = true;
        o.bin_dir = Some(bin_dir);
        o.skip = vec!["probe".into()];
    })
    .await;
    let root: PathBuf = t.rt.state_dir().join("binds/data/avrofiles");
    let scratch = tempfile::tempdir().unwrap();
    let probe = t.client("probe").await;

    // The probe sends every record in order, each accepted by edgeHub before the next.
    let sender = {
        let probe = probe.clone();
        tokio::spawn(async move {
            for i in 0..RECORDS {
                let mut m = Message::json(record(i));
                m.correlation_id = Some(id(i).into());
                probe.send_output("avro", m).await.unwrap();
                if i % 50 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    };

    for (round, at) in KILL_AT.into_iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(60);
        let victim = loop {
            if let (true, Some(p)) = (delivered(&t) >= at, pid(&t)) {
                break p;
            }
            assert!(Instant::now() < deadline, "round {round}: stalled");
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
        while pid(&t) == Some(victim) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        // kill -9 cannot tear a write (the page cache keeps what was written); a power cut
        // can. Leave what one would: half a block after the last one, in the newest file.
        tear_newest_file(&root);
        // edgeHub counts a message delivered when the module acknowledged it; acks are
        // released in arrival order and edgeHub delivers in send order, so the first
        // `acked` records are exactly the acknowledged ones.
        let acked = delivered(&t);
        let on_disk: HashSet<String> = records_after_crash(&root, scratch.path())
            .into_iter()
            .collect();
        let lost: Vec<String> = (0..acked as u32)
            .map(id)
            .filter(|i| !on_disk.contains(i))
            .collect();
        assert!(
            lost.is_empty(),
            "round {round}: {} acknowledged records missing after kill -9, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        );
        eprintln!(
            "kill {round}: {acked} acknowledged, {} records on disk",
            on_disk.len()
        );
    }

    sender.await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = t.rt.hub.endpoint_stats()[MODULE];
        if s.queued == 0 && s.in_flight == 0 && s.delivered >= u64::from(RECORDS) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not everything delivered after the restarts: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The running module's files are complete: read them as they are.
    let mut count: HashMap<String, u32> = HashMap::new();
    for f in tree::list_avro_files(&root).unwrap() {
        for r in read_file(&f.path).unwrap() {
            *count.entry(r.correlation_id().to_owned()).or_default() += 1;
        }
    }
    let missing: Vec<String> = (0..RECORDS)
        .map(id)
        .filter(|i| !count.contains_key(i))
        .collect();
    assert!(
        missing.is_empty(),
        "{} records never archived, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let duplicates: u32 = count.values().map(|n| n - 1).sum();
    eprintln!(
        "{} records archived, {duplicates} duplicates after {} kills",
        RECORDS,
        KILL_AT.len()
    );
    assert!(
        duplicates as usize <= KILL_AT.len() * WINDOW,
        "at most one window of redeliveries per kill: {duplicates}"
    );
    assert_eq!(t.rt.process_status()[MODULE].restarts, KILL_AT.len() as u32);
    probe.close(Duration::from_secs(2)).await;
    let log = t.rt.state_dir().join(format!("logs/{MODULE}.log"));
    t.rt.shutdown().await;
    let log = std::fs::read_to_string(log).unwrap();
    assert_eq!(
        log.matches("cut a torn last block off").count(),
        KILL_AT.len(),
        "each restart repairs the torn file: {log}"
    );
}
