//! Memory of the classifier in history mode with many leaf devices: the release module,
//! started by the local runtime's edgeAgent, gets one message (two rows, cycles 1 and 2 of a
//! C-MAPSS engine) from each of `--devices` devices (default 10,000) through edgeHub; its
//! resident memory before and after, per device, the history state file it writes, and how
//! long writing that snapshot takes (in this process, on the same store).
//!
//! ```sh
//! cargo bench -p turbofanRulClassifier --bench history_memory -- [--devices 10000]
//! ```
//! A device's history has a fixed size (arrays for the 30-cycle window), so two rows cost what
//! three hundred do.

use edge_client::Message;
use iotedge_local::testing::bench::arg;
use iotedge_local::testing::{next_input, start_with};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};
use turbofan_domain::cmapss;
use turbofan_domain::history::{self, HistoryStore};

fn status_kb(pid: u32, key: &str) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(f64::NAN)
}

fn mb(kb: f64) -> f64 {
    kb / 1024.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let devices = arg("--devices", 10_000) as usize;
    let bin = Path::new(env!("CARGO_BIN_EXE_turbofanRulClassifier"));
    let manifest = json!({"modulesContent": {
        "$edgeAgent": {"properties.desired": {"modules": {
            "turbofanRulClassifier": {"status": "running", "restartPolicy": "never",
                "settings": {"image": "${MODULES.turbofanRulClassifier}",
                    "createOptions": {"HostConfig": {"Binds": ["/data/turbofanRulClassifier:/state"]}}}},
            "probe": {"settings": {"image": "local/probe"}}}}},
        "$edgeHub": {"properties.desired": {"routes": {
            "ask": "FROM /messages/modules/probe/outputs/aml INTO BrokeredEndpoint(\"/modules/turbofanRulClassifier/inputs/amlInput\")",
            "answer": "FROM /messages/modules/turbofanRulClassifier/outputs/amlOutput INTO BrokeredEndpoint(\"/modules/probe/inputs/answers\")"}}},
        "turbofanRulClassifier": {"properties.desired": {"ScoringMode": "history",
            "HistoryMaxDevices": devices, "HistorySnapshotSeconds": 1}}
    }});
    let t = start_with(manifest, |o| {
        o.start_modules = true;
        o.bin_dir = bin.parent().map(Path::to_path_buf);
        o.skip = vec!["probe".into()];
    })
    .await;
    let probe = t.client("probe").await;
    let mut answers = probe.inputs().expect("probe inputs");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let twin = t.rt.hub.twins.get("edge-device/turbofanRulClassifier");
        if twin["reported"]["ScoringMode"] == "history" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "classifier not in history mode: {twin}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = t.rt.process_status()["turbofanRulClassifier"]
        .pid
        .expect("classifier running");
    let rows = cmapss::read_rows(&cmapss::data_dir().join("test_FD003.txt")).expect("test_FD003");
    let first_two = |unit: u32| -> String {
        let r: Vec<String> = rows
            .iter()
            .filter(|r| r.unit == unit && r.cycle <= 2)
            .map(|r| r.to_json())
            .collect();
        format!("[{}]", r.join(","))
    };
    let bodies: Vec<String> = (1..=100).map(first_two).collect();

    // One warm-up device, so the baseline has the models run once.
    let send = |d: usize| {
        let mut m = Message::json(bodies[d % bodies.len()].clone());
        m.set_property("ConnectionDeviceId", format!("device-{d:05}"));
        m
    };
    probe.send_output("aml", send(devices)).await.expect("send");
    next_input(&mut answers).await.ack();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss0, hwm0) = (status_kb(pid, "VmRSS:"), status_kb(pid, "VmHWM:"));

    let started = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let reader = tokio::spawn(async move {
        let mut errors = 0usize;
        for _ in 0..devices {
            let a = next_input(&mut answers).await;
            let v: Value = serde_json::from_slice(&a.message.body).unwrap_or(Value::Null);
            if v[1]["HistoryCycles"] != json!(2) {
                errors += 1;
            }
            a.ack();
        }
        let _ = tx.send(());
        errors
    });
    for d in 0..devices {
        probe.send_output("aml", send(d)).await.expect("send");
    }
    let _ = rx.recv().await;
    let wrong = reader.await.expect("reader");
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(2500)).await; // a snapshot interval and more
    let (rss1, hwm1) = (status_kb(pid, "VmRSS:"), status_kb(pid, "VmHWM:"));
    let state =
        t.rt.state_dir()
            .join("binds/data/turbofanRulClassifier/history.cbor");
    let file_bytes = std::fs::metadata(&state).map(|m| m.len()).unwrap_or(0);

    // The same store in this process: how long one snapshot holds the lock.
    let mut store = HistoryStore::new(devices, u64::MAX);
    for d in 0..devices {
        for r in rows
            .iter()
            .filter(|r| r.unit == (d % 100) as u32 + 1 && r.cycle <= 2)
        {
            store.observe(
                &format!("device-{d:05}"),
                r.cycle,
                &history::model_sensors(&r.features()),
                0,
            );
        }
    }
    let mut times = Vec::new();
    for _ in 0..5 {
        let dir = std::env::temp_dir().join(format!("history-snapshot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("history.cbor");
        let t0 = Instant::now();
        let f = std::io::BufWriter::with_capacity(
            1 << 16,
            std::fs::File::create(&path).expect("create"),
        );
        store.save(f).expect("save");
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        let _ = std::fs::remove_dir_all(&dir);
    }
    times.sort_by(f64::total_cmp);

    println!("classifier in history mode, {devices} devices ({:.1} s to score them, {wrong} answers without HistoryCycles 2)", took.as_secs_f64());
    println!(
        "  VmRSS before {:.1} MB, after {:.1} MB: {:.0} bytes per device",
        mb(rss0),
        mb(rss1),
        (rss1 - rss0) * 1024.0 / devices as f64
    );
    println!(
        "  VmHWM before {:.1} MB, after {:.1} MB (target <= 60 MB)",
        mb(hwm0),
        mb(hwm1)
    );
    println!(
        "  state file {} bytes ({:.0} per device); one snapshot of the store: median {:.1} ms",
        file_bytes,
        file_bytes as f64 / devices as f64,
        times[2]
    );
    probe.close(Duration::from_secs(2)).await;
    t.rt.shutdown().await;
}
