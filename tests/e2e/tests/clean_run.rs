//! The whole pipeline on a subset of the tutorial's data, with nothing going wrong:
//! `deployment.template.json` on the local runtime (edgeAgent starts the three real modules),
//! Azurite as the blob store, ten C-MAPSS engines of `test_FD003` replayed as leaf devices.
//!
//! The Avro writer's quiet period is shortened through its twin, as an operator would: once
//! the devices stop, its file goes quiet and is uploaded through IoT Hub file upload to
//! Azurite, where the test reads it back.

use e2e::metrics::sum;
use e2e::pipeline::{self, body_index, wait_for};
use e2e::upstream::RulMessage;
use e2e::{Pipeline, Tally, Uploads, CLASSIFIER, MODULES, ROUTER, WRITER};
use leaf_simulator::{sent_log, simulate, Progress, SimConfig};
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const DEVICES: usize = 10;
const ROWS: u64 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_yields_one_rul_message_and_one_avro_record_uploaded_to_azurite() {
    let started = Instant::now();
    let manifest = pipeline::deployment_manifest(&[]).expect("the deployment manifest");
    let p = Pipeline::start(&manifest, true)
        .await
        .expect("the runtime starts the manifest's modules and Azurite");
    p.patch_desired(
        WRITER,
        json!({"QuietPeriodSecs": 1, "CheckIntervalSecs": 1}),
    )
    .unwrap();
    p.wait_connected(Duration::from_secs(60))
        .await
        .expect("modules up");

    // Ten engines, their first 20 cycles each, as leaf devices Client_001…Client_010.
    let log = p.dir().join("sent.jsonl");
    let mut cfg = SimConfig::new(p.state(), pipeline::data_file("test_FD003.txt"));
    cfg.devices = Some(DEVICES);
    cfg.max_messages = Some(ROWS);
    cfg.rate = 50.0;
    cfg.sent_log = Some(log.clone());
    let summary = simulate(&cfg, Progress::new())
        .await
        .expect("the simulator runs");
    assert!(summary.is_complete(), "{summary}");
    let (sent, torn) = sent_log::read(&log).expect("the sent log");
    assert_eq!(
        (sent.len(), torn),
        (DEVICES * ROWS as usize, 0),
        "{summary}"
    );
    let sent_cids: Vec<&str> = sent.iter().map(|s| s.correlation_id.as_str()).collect();

    // Upstream: exactly one RUL message per sent message, from turbofanRouter, nothing else.
    // On a timeout, the checks below say what is missing.
    let _ = wait_for(
        "a RUL message for every sent message",
        Duration::from_secs(60),
        || {
            let o = p.upstream()?;
            Ok((o.ruls.len() + o.dead.len() + o.other.len() >= sent.len()).then_some(()))
        },
    )
    .await;
    // A duplicate would arrive right behind the rest.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let upstream = p.upstream().unwrap();
    assert!(
        upstream.dead.is_empty(),
        "dead letters in a clean run: {:?}",
        upstream.dead
    );
    assert!(
        upstream.other.is_empty(),
        "unexpected upstream records: {:?}",
        upstream.other
    );
    let rul_tally = Tally::count(
        sent_cids.iter().copied(),
        upstream.ruls.iter().map(|r| r.correlation_id.as_str()),
    );
    assert!(rul_tally.is_exact(), "RUL messages: {rul_tally}");
    let by_cid: HashMap<&str, &RulMessage> = upstream
        .ruls
        .iter()
        .map(|r| (r.correlation_id.as_str(), r))
        .collect();
    for s in &sent {
        let r = by_cid[s.correlation_id.as_str()];
        assert_eq!(r.device, s.device, "{r:?}");
        assert_eq!(r.cycle, s.cycle, "{r:?}");
        assert_eq!(
            r.system_correlation_id.as_deref(),
            Some(s.correlation_id.as_str())
        );
        assert!(
            r.predicted_rul.is_finite() && r.predicted_rul >= 0.0,
            "{r:?}"
        );
    }

    // The archive goes quiet: every file is uploaded to Azurite and leaves the archive.
    wait_for(
        "every record acknowledged by the Avro writer",
        Duration::from_secs(30),
        || Ok((p.delivered(WRITER) >= sent.len() as u64).then_some(())),
    )
    .await
    .unwrap();
    wait_for(
        "the Avro files uploaded and removed from the archive",
        Duration::from_secs(60),
        || {
            let uploaded = !p.uploaded_blobs()?.is_empty();
            Ok((uploaded && p.archive_files()?.is_empty()).then_some(()))
        },
    )
    .await
    .unwrap();
    check_metrics(&p, sent.len() as f64).await;
    let notes = p.notifications().unwrap();
    assert!(
        notes.iter().all(|n| n["isSuccess"] == true
            && n["url"]
                .as_str()
                .is_some_and(|u| u.starts_with("https://127.0.0.1:"))),
        "every upload succeeded, into Azurite: {notes:?}"
    );
    assert_eq!(p.writer_counter("UploadFailures"), 0);

    // The blobs, read back from Azurite with the tutorial's schema, hold one record per RUL
    // message, with the same device, cycle and prediction.
    let mut uploads = Uploads::default();
    p.collect_uploads(&mut uploads)
        .await
        .expect("blobs read back");
    let avro_tally = Tally::count(
        sent_cids.iter().copied(),
        uploads.records().map(|r| r.correlation_id()),
    );
    assert!(avro_tally.is_exact(), "Avro records: {avro_tally}");
    let (rul_i, cycle_i) = (
        body_index("PredictedRul").unwrap(),
        body_index("CycleTime").unwrap(),
    );
    for rec in uploads.records() {
        let r = by_cid[rec.correlation_id()];
        assert_eq!(rec.string("ConnectionDeviceId"), Some(r.device.as_str()));
        assert_eq!(rec.body[rul_i], r.predicted_rul as f32, "{rec:?}");
        assert_eq!(rec.body[cycle_i], r.cycle as f32, "{rec:?}");
        assert!(rec.strings.iter().all(|s| !s.is_empty()), "{rec:?}");
    }
    println!(
        "clean run: {} messages; RUL messages {rul_tally}; Avro records {avro_tally} in {} blob(s), {} uploaded again; {:.1} s",
        sent.len(),
        uploads.blobs(),
        uploads.reuploads(),
        started.elapsed().as_secs_f64()
    );
    p.shutdown().await;
}

/// Each endpoint, scraped after the run, counted what the run did: `n` leaf messages in,
/// `n` RUL messages out, no drops, `n` records archived, the files uploaded; every module is
/// live and ready.
async fn check_metrics(p: &Pipeline, n: f64) {
    let hub = p.scrape("edgeHub", "/metrics").await.unwrap();
    let leaf = [("route_output", "")];
    assert_eq!(
        sum(&hub, "edgehub_messages_received_total", &leaf),
        n,
        "{hub}"
    );
    for (from, output, to, input) in [
        ("turbofanRouter", "classOutput", CLASSIFIER, "amlInput"),
        (CLASSIFIER, "amlOutput", ROUTER, "rulInput"),
        (ROUTER, "hubOutput", "upstream", ""),
        (ROUTER, "avroOutput", WRITER, "avroModuleInput"),
    ] {
        let labels = [
            ("from", from),
            ("from_route_output", output),
            ("to", to),
            ("to_route_input", input),
        ];
        assert_eq!(
            sum(&hub, "edgehub_messages_sent_total", &labels),
            n,
            "{labels:?} in {hub}"
        );
    }
    assert_eq!(
        sum(&hub, "edgehub_messages_dropped_total", &[]),
        0.0,
        "{hub}"
    );
    assert_eq!(sum(&hub, "edgehub_queue_length", &[]), 0.0, "{hub}");
    assert_eq!(
        sum(
            &hub,
            "edgehub_message_process_duration_seconds_count",
            &[("to", WRITER)]
        ),
        n,
        "{hub}"
    );
    assert!(hub.contains("edge_device=\"edge-device\""), "{hub}");

    let router = p.scrape(ROUTER, "/metrics").await.unwrap();
    for (metric, label, name) in [
        (
            "edge_module_messages_received_total",
            "input",
            "deviceInput",
        ),
        ("edge_module_messages_received_total", "input", "rulInput"),
        ("edge_module_messages_sent_total", "output", "classOutput"),
        ("edge_module_messages_sent_total", "output", "hubOutput"),
        ("edge_module_messages_sent_total", "output", "avroOutput"),
    ] {
        assert_eq!(
            sum(&router, metric, &[(label, name)]),
            n,
            "{metric} {name}: {router}"
        );
    }
    let dead = [("output", "deadMessages")];
    assert_eq!(sum(&router, "edge_module_messages_sent_total", &dead), 0.0);
    assert_eq!(sum(&router, "edge_module_connected", &[]), 1.0, "{router}");

    let classifier = p.scrape(CLASSIFIER, "/metrics").await.unwrap();
    let scored = sum(
        &classifier,
        "turbofan_classifier_messages_scored_total",
        &[],
    );
    assert_eq!(scored, n, "{classifier}");
    assert_eq!(
        sum(
            &classifier,
            "turbofan_classifier_messages_unscored_total",
            &[]
        ),
        0.0
    );
    assert_eq!(
        sum(&classifier, "turbofan_classifier_batch_size_sum", &[]),
        n,
        "{classifier}"
    );
    assert_eq!(
        sum(&classifier, "turbofan_classifier_history_devices", &[]),
        10.0
    );

    let writer = p.scrape(WRITER, "/metrics").await.unwrap();
    assert_eq!(
        sum(&writer, "avro_records_written_total", &[]),
        n,
        "{writer}"
    );
    assert!(
        sum(&writer, "avro_bytes_written_total", &[]) > n * 100.0,
        "{writer}"
    );
    assert!(
        sum(&writer, "avro_files_uploaded_total", &[]) >= 1.0,
        "{writer}"
    );
    assert_eq!(
        sum(&writer, "avro_upload_failures_total", &[]),
        0.0,
        "{writer}"
    );
    assert!(
        sum(&writer, "avro_sync_seconds_count", &[]) >= 1.0,
        "{writer}"
    );

    for m in MODULES {
        assert_eq!(p.scrape(m, "/health/live").await.unwrap(), "live\n");
        assert_eq!(p.scrape(m, "/health/ready").await.unwrap(), "ready\n");
        // The image's HEALTHCHECK: the module's own binary run with --health asks it.
        let health = |addr: String| {
            std::process::Command::new(pipeline::module_bin_dir().unwrap().join(m))
                .arg("--health")
                .env("METRICS_ADDR", addr)
                .output()
                .unwrap()
        };
        let ok = health(p.rt.metrics[m].to_string());
        assert_eq!(ok.status.code(), Some(0), "{m} --health: {ok:?}");
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let nobody = closed.local_addr().unwrap().to_string();
        drop(closed);
        let down = health(nobody);
        assert_eq!(
            down.status.code(),
            Some(1),
            "{m} --health with nothing listening: {down:?}"
        );
        assert!(String::from_utf8_lossy(&down.stderr).contains("not healthy"));
        // Every module answers the operator's direct methods.
        let hub = &p.rt.hub;
        let t = Duration::from_secs(10);
        let (status, pong) = hub.invoke_method(m, "ping", &json!(null), t).await.unwrap();
        assert_eq!((status, &pong["module"]), (200, &json!(m)), "{pong}");
        let (status, s) = hub
            .invoke_method(m, "status", &json!(null), t)
            .await
            .unwrap();
        assert_eq!(
            (status, &s["connected"], &s["ready"]),
            (200, &json!(true), &json!(true)),
            "{s}"
        );
    }
    let hub = &p.rt.hub;
    let (_, s) = hub
        .invoke_method(ROUTER, "status", &json!(null), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(s["messagesReceived"]["deviceInput"], json!(n as u64), "{s}");
    assert_eq!(s["messagesSent"]["hubOutput"], json!(n as u64), "{s}");
}
