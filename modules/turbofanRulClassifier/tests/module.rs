//! The `turbofanRulClassifier` binary, started by the local runtime's edgeAgent, scoring real
//! C-MAPSS rows in ONNX Runtime through edgeHub, with a probe module on the other side.

use edge_client::Message;
use iotedge_local::testing::{largest_sendable, next_input, start_with, TestRuntime};
use serde_json::{json, Value};
use sha2::Digest;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;
use turbofan_domain::cmapss;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn manifest(model: &Path, http: Option<&str>, restart: &str, mode: &str) -> Value {
    let mut env = json!({"MODEL_PATH": {"value": model.display().to_string()}});
    if let Some(addr) = http {
        env["SCORING_HTTP_ADDR"] = json!({"value": addr});
    }
    json!({"modulesContent": {
        "$edgeAgent": {"properties.desired": {"modules": {
            "turbofanRulClassifier": {"status": "running", "restartPolicy": restart, "env": env,
                "settings": {"image": "${MODULES.turbofanRulClassifier}",
                    "createOptions": {"HostConfig": {"Binds": ["/data/turbofanRulClassifier:/state"]}}}},
            "probe": {"settings": {"image": "local/probe"}}}}},
        "$edgeHub": {"properties.desired": {"routes": {
            "ask": "FROM /messages/modules/probe/outputs/aml INTO BrokeredEndpoint(\"/modules/turbofanRulClassifier/inputs/amlInput\")",
            "answer": "FROM /messages/modules/turbofanRulClassifier/outputs/amlOutput INTO BrokeredEndpoint(\"/modules/probe/inputs/answers\")"}}},
        "turbofanRulClassifier": {"properties.desired": {"MaxBatchSize": 16, "MaxBatchWaitMs": 2,
            "ScoringMode": mode, "HistorySnapshotSeconds": 1}}
    }})
}

async fn start(model: &Path, http: Option<&str>, restart: &str) -> TestRuntime {
    start_in(model, http, restart, "row").await
}

async fn start_in(model: &Path, http: Option<&str>, restart: &str, mode: &str) -> TestRuntime {
    start_manifest(manifest(model, http, restart, mode)).await
}

async fn start_manifest(manifest: Value) -> TestRuntime {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_turbofanRulClassifier"))
        .parent()
        .unwrap()
        .to_path_buf();
    start_with(manifest, |o| {
        o.start_modules = true;
        o.bin_dir = Some(bin_dir);
        o.skip = vec!["probe".into()];
    })
    .await
}

async fn reported(t: &TestRuntime, key: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let twin = t.rt.hub.twins.get("edge-device/turbofanRulClassifier");
        if !twin["reported"][key].is_null() {
            return twin["reported"].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key} never reported: {twin}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn reference_fd003() -> Vec<f32> {
    std::fs::read_to_string(repo().join("models/reference/test_FD003.pred"))
        .expect("reference predictions")
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect()
}

fn http(addr: &str, request: &str) -> (u16, Value) {
    let mut s = std::net::TcpStream::connect(addr).expect("HTTP endpoint up");
    s.write_all(request.as_bytes()).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn post(addr: &str, body: &str) -> (u16, Value) {
    http(
        addr,
        &format!("POST /score HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scores_real_rows_like_the_reference_and_returns_bad_input_marked() {
    let model = repo().join("models/rul.onnx");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let t = start(&model, Some(&addr), "always").await;
    let probe = t.client("probe").await;
    let mut answers = probe.inputs().unwrap();

    // The model's identity is reported.
    let r = reported(&t, "Model").await;
    let sha = sha2::Sha256::digest(std::fs::read(&model).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    assert_eq!(r["Model"]["Sha256"], json!(sha));
    assert_eq!(r["ModelStatus"], json!("loaded"));
    assert!(r["Model"]["Input"].as_str().unwrap().contains("21]"), "{r}");
    assert_eq!(r["MaxBatchSize"], json!(16));
    assert_eq!(
        r["ExecutionProvider"],
        json!({"Requested": "cpu", "Used": "cpu"}),
        "no Fallback (a null property is absent from a twin)"
    );
    assert_eq!(
        r["Model"]["ExecutionProvider"],
        json!("CPUExecutionProvider")
    );

    // Real rows, one per message, and one message holding three rows.
    let rows = cmapss::read_rows(&cmapss::data_dir().join("test_FD003.txt")).unwrap();
    let reference = reference_fd003();
    for (i, row) in rows.iter().take(20).enumerate() {
        let mut m = Message::json(row.to_json());
        m.correlation_id = Some(format!("row-{i}").into());
        m.set_property("CorrelationId", format!("row-{i}"));
        probe.send_output("aml", m).await.unwrap();
    }
    let three = format!(
        "[{},{},{}]",
        rows[20].to_json(),
        rows[21].to_json(),
        rows[22].to_json()
    );
    let mut m = Message::json(three);
    m.correlation_id = Some("rows-20-22".into());
    probe.send_output("aml", m).await.unwrap();

    // Bad input: each comes back unchanged with the reason.
    let bad: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not-json", b"not json".to_vec(), "not valid JSON"),
        ("empty", b"[]".to_vec(), "empty array"),
        (
            "missing",
            br#"{"Sensor1": 518.67}"#.to_vec(),
            "feature 'Sensor2' is missing",
        ),
        (
            "string",
            rows[0]
                .to_json()
                .replace("\"Sensor3\":", "\"Sensor3\":\"x\",\"y\":")
                .into_bytes(),
            "'Sensor3' is a string",
        ),
        (
            "nan",
            rows[0]
                .to_json()
                .replace("\"Sensor4\":", "\"Sensor4\":NaN,\"z\":")
                .into_bytes(),
            "not valid JSON",
        ),
        ("huge", vec![b' '; 300 * 1024], "exceeds the limit"),
    ];
    for (cid, body, _) in &bad {
        let mut m = Message::json(body.clone());
        m.correlation_id = Some((*cid).into());
        probe.send_output("aml", m).await.unwrap();
    }

    let mut got = std::collections::HashMap::new();
    for _ in 0..(21 + bad.len()) {
        let a = next_input(&mut answers).await;
        got.insert(a.message.correlation_id.clone().unwrap(), a.message.clone());
        a.ack();
    }
    for i in 0..20 {
        let m = &got[format!("row-{i}").as_str()];
        assert_eq!(
            m.property("CorrelationId"),
            Some(format!("row-{i}").as_str()),
            "properties preserved"
        );
        let v: Value = serde_json::from_slice(&m.body).unwrap();
        let p = v[0]["PredictedRul"].as_f64().unwrap() as f32;
        assert!(
            (p - reference[i]).abs() <= 1e-4,
            "row {i}: {p} vs reference {}",
            reference[i]
        );
        assert_eq!(
            v[0]["Sensor21"].as_f64(),
            Some(rows[i].sensors[20]),
            "input echoed"
        );
    }
    let v: Value = serde_json::from_slice(&got["rows-20-22"].body).unwrap();
    for k in 0..3 {
        let p = v[k]["PredictedRul"].as_f64().unwrap() as f32;
        assert!((p - reference[20 + k]).abs() <= 1e-4);
    }
    for (cid, body, reason) in &bad {
        let m = &got[*cid];
        assert_eq!(m.body.as_ref(), body.as_slice(), "{cid}: body unchanged");
        let e = m
            .property("ClassifierError")
            .unwrap_or_else(|| panic!("{cid}: no ClassifierError"));
        assert!(e.contains(reason), "{cid}: {e:?} should contain {reason:?}");
    }

    // The debug endpoint answers like the module does.
    let (status, health) = http(
        &addr,
        "GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    );
    assert_eq!((status, health["status"].clone()), (200, json!("healthy")));
    let (status, body) = post(&addr, &rows[0].to_json());
    assert_eq!(status, 200);
    assert!((body[0]["PredictedRul"].as_f64().unwrap() as f32 - reference[0]).abs() <= 1e-4);
    let (status, body) = post(&addr, r#"{"Sensor1": 1}"#);
    assert_eq!(
        (status, body),
        (400, json!({"error": "row 0: feature 'Sensor2' is missing"}))
    );
    let (status, _) = post(&addr, &" ".repeat(300 * 1024));
    assert_eq!(status, 413);

    probe.close(Duration::from_secs(2)).await;
    let log = t.rt.state_dir().join("logs/turbofanRulClassifier.log");
    t.rt.shutdown().await;
    assert!(std::fs::read_to_string(log)
        .unwrap()
        .contains("stopped cleanly"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_too_large_for_mqtt_comes_back_without_its_body_and_the_module_goes_on() {
    let t = start(&repo().join("models/rul.onnx"), None, "always").await;
    let probe = t.client("probe").await;
    let mut answers = probe.inputs().unwrap();
    reported(&t, "Model").await;
    // Bodies up to 1 MiB may be scored: as many rows as one publish carries.
    let patch = json!({"MaxBodyBytes": 1 << 20});
    t.rt.hub
        .patch_desired("turbofanRulClassifier", patch.as_object().unwrap())
        .expect("the twin is saved");
    // Every property is reported from the start: wait for the new value.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while reported(&t, "MaxBodyBytes").await["MaxBodyBytes"] != json!(1 << 20) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "MaxBodyBytes not applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let rows = cmapss::read_rows(&cmapss::data_dir().join("test_FD003.txt")).unwrap();
    let array = |n: usize| {
        let objects: Vec<String> = rows.iter().cycle().take(n).map(|r| r.to_json()).collect();
        let mut m = Message::json(format!("[{}]", objects.join(",")));
        m.correlation_id = Some("full".into());
        m
    };
    // The most rows the probe can send in one message; the answer adds `PredictedRul` to
    // each, which MQTT cannot carry.
    let ok = largest_sendable(&probe, "aml", (1, 2000), array);
    assert!(ok > 500, "{ok} rows");
    probe.send_output("aml", array(ok)).await.unwrap();
    let got = next_input(&mut answers).await;
    assert_eq!(got.message.correlation_id.as_deref(), Some("full"));
    assert!(got.message.body.is_empty(), "the body was dropped");
    let error = got.message.property("ClassifierError").unwrap_or("");
    assert!(
        error.starts_with("the answer is too large to send (a publish of")
            && error.contains("over the MQTT packet limit of 524288): its body of")
            && error.ends_with("bytes was dropped"),
        "{error}"
    );
    got.ack();

    // The module goes on: the next message is scored.
    let mut m = Message::json(rows[0].to_json());
    m.correlation_id = Some("next".into());
    probe.send_output("aml", m).await.unwrap();
    let got = next_input(&mut answers).await;
    assert_eq!(got.message.correlation_id.as_deref(), Some("next"));
    let answer: Value = serde_json::from_slice(&got.message.body).unwrap();
    assert!(answer[0]["PredictedRul"].is_number(), "{answer}");
    got.ack();
    probe.close(Duration::from_secs(2)).await;
    t.rt.shutdown().await;
}

/// The manifest of [`manifest`] (row mode) with `ORT_EXECUTION_PROVIDER` set.
fn with_provider(provider: &str) -> Value {
    let mut m = manifest(&repo().join("models/rul.onnx"), None, "never", "row");
    m["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["turbofanRulClassifier"]
        ["env"]["ORT_EXECUTION_PROVIDER"] = json!({"value": provider});
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asked_for_cuda_without_it_the_module_scores_on_the_cpu_and_reports_why() {
    // The tests' ONNX Runtime is the CPU build, as in the CPU image: CUDA is absent.
    let t = start_manifest(with_provider("cuda")).await;
    let probe = t.client("probe").await;
    let mut answers = probe.inputs().unwrap();
    let r = reported(&t, "ExecutionProvider").await;
    assert_eq!(r["ModelStatus"], json!("loaded"));
    let p = &r["ExecutionProvider"];
    assert_eq!(
        (&p["Requested"], &p["Used"]),
        (&json!("cuda"), &json!("cpu")),
        "{p}"
    );
    let why = p["Fallback"].as_str().unwrap_or_default();
    assert!(
        why.contains("no CUDA execution provider") && why.contains("onnxruntime-gpu"),
        "{why}"
    );
    assert_eq!(
        r["Model"]["ExecutionProvider"],
        json!("CPUExecutionProvider")
    );

    // And it scores, as on the CPU.
    let rows = cmapss::read_rows(&cmapss::data_dir().join("test_FD003.txt")).unwrap();
    let mut m = Message::json(rows[0].to_json());
    m.correlation_id = Some("row-0".into());
    probe.send_output("aml", m).await.unwrap();
    let a = next_input(&mut answers).await;
    let v: Value = serde_json::from_slice(&a.message.body).unwrap();
    let got = v[0]["PredictedRul"].as_f64().unwrap() as f32;
    assert!((got - reference_fd003()[0]).abs() <= 1e-3, "{got}");
    a.ack();
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_execution_provider_stops_the_module_with_the_reason_in_its_twin() {
    let t = start_manifest(with_provider("tpu")).await;
    let r = reported(&t, "ModelError").await;
    assert_eq!(r["ModelStatus"], json!("error"));
    let e = r["ModelError"].as_str().unwrap();
    assert!(
        e.contains("ORT_EXECUTION_PROVIDER=\"tpu\"")
            && e.contains("use cpu, cuda or cuda:<device id>"),
        "{e}"
    );
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_model_stops_the_module_with_the_reason_in_its_twin() {
    let t = start(Path::new("/nonexistent/rul.onnx"), None, "never").await;
    let r = reported(&t, "ModelError").await;
    assert_eq!(r["ModelStatus"], json!("error"));
    let e = r["ModelError"].as_str().unwrap();
    assert!(
        e.contains("/nonexistent/rul.onnx") && e.contains("MODEL_PATH"),
        "{e}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let st =
            t.rt.process_status()
                .get("turbofanRulClassifier")
                .cloned()
                .unwrap_or_default();
        if let (None, Some(exit)) = (st.pid, &st.last_exit) {
            assert!(exit.contains("exit status: 2"), "exit code 2, got {exit}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "module did not stop"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t.rt.shutdown().await;
}

fn history_reference_fd003() -> Vec<[f32; 3]> {
    std::fs::read_to_string(repo().join("models/reference/history_test_FD003.pred"))
        .expect("history reference predictions")
        .lines()
        .map(|l| {
            let v: Vec<f32> = l.split_whitespace().map(|t| t.parse().unwrap()).collect();
            [v[0], v[1], v[2]]
        })
        .collect()
}

async fn ask(probe: &edge_client::ModuleClient, device: &str, row: &cmapss::Row) -> String {
    let cid = format!("{device}/{}", row.cycle);
    let mut m = Message::json(row.to_json());
    m.correlation_id = Some(cid.clone().into());
    m.set_property("ConnectionDeviceId", device);
    probe.send_output("aml", m).await.unwrap();
    cid
}

async fn answer(
    answers: &mut tokio::sync::mpsc::UnboundedReceiver<edge_client::InputMessage>,
    cid: &str,
) -> (Value, edge_client::Message) {
    let a = next_input(answers).await;
    let m = a.message.clone();
    a.ack();
    assert_eq!(m.correlation_id.as_deref(), Some(cid), "answers in order");
    assert!(
        m.property("ClassifierError").is_none(),
        "{cid}: {:?}",
        m.property("ClassifierError")
    );
    let v: Value = serde_json::from_slice(&m.body).unwrap();
    (v[0].clone(), m)
}

fn assert_reference(v: &Value, want: [f32; 3], cycles: u32, what: &str) {
    let got = [
        v["PredictedRul"].as_f64().unwrap() as f32,
        v["PredictedRulLow"].as_f64().unwrap() as f32,
        v["PredictedRulHigh"].as_f64().unwrap() as f32,
    ];
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - w).abs() <= 1e-4,
            "{what}: {got:?} vs reference {want:?}"
        );
    }
    assert_eq!(v["HistoryCycles"], json!(cycles), "{what}");
}

/// History mode end to end through edgeHub: two engines' rows interleaved, each scored over
/// its own history as the reference; a redelivery answered as the first time; `kill -9`
/// with no snapshot since the start (an hour's interval) and the restart by edgeAgent, after
/// which the histories go on whole from the change log (the reference, `MissingCycles` 0,
/// a redelivery answered as before the crash); then `ScoringMode` switched to `row` at run
/// time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_mode_scores_each_engine_over_its_history_and_survives_kill_9() {
    let mut m = manifest(&repo().join("models/rul.onnx"), None, "always", "history");
    m["modulesContent"]["turbofanRulClassifier"]["properties.desired"]["HistorySnapshotSeconds"] =
        json!(3600);
    let t = start_manifest(m).await;
    let probe = t.client("probe").await;
    let mut answers = probe.inputs().unwrap();
    let r = reported(&t, "ScoringMode").await;
    assert_eq!(r["ScoringMode"], json!("history"), "{r}");
    assert_eq!(r["Model"]["Name"], json!("rul-history-hgb"), "{r}");
    assert!(r["Model"]["Input"].as_str().unwrap().contains("64]"), "{r}");
    assert!(
        r["Models"]["row"]["Input"]
            .as_str()
            .unwrap()
            .contains("21]"),
        "{r}"
    );

    let rows = cmapss::read_rows(&cmapss::data_dir().join("test_FD003.txt")).unwrap();
    let reference = history_reference_fd003();
    let engine = |unit: u32| -> Vec<(usize, &cmapss::Row)> {
        rows.iter()
            .enumerate()
            .filter(|(_, r)| r.unit == unit)
            .collect()
    };
    let (e1, e2) = (engine(1), engine(2));
    for k in 0..40 {
        for (device, e) in [("engine-1", &e1), ("engine-2", &e2)] {
            let (i, row) = e[k];
            let cid = ask(&probe, device, row).await;
            let (v, m) = answer(&mut answers, &cid).await;
            assert_reference(&v, reference[i], row.cycle, &cid);
            assert_eq!(m.property("ModelName"), Some("rul-history-hgb"));
        }
    }
    // A redelivery of cycle 35: the same answer, the history not moved.
    let (i, row) = e1[34];
    let cid = ask(&probe, "engine-1", row).await;
    let (v, _) = answer(&mut answers, &cid).await;
    assert_reference(&v, reference[i], 35, "redelivered cycle 35");
    let (_, row) = e2[39];
    let cid = ask(&probe, "engine-2", row).await;
    let (before_crash, _) = answer(&mut answers, &cid).await;

    // kill -9 long before the next snapshot, once the module has acknowledged its input (an
    // input not yet acknowledged would be redelivered, and answered twice: at-least-once);
    // edgeAgent restarts the module.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while t.rt.hub.endpoint_stats()["turbofanRulClassifier"].in_flight > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "input never acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pid = t.rt.process_status()["turbofanRulClassifier"]
        .pid
        .expect("running");
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = t.rt.process_status()["turbofanRulClassifier"].pid;
        if now.is_some_and(|p| p != pid) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not restarted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for &(i, row) in &e1[40..60] {
        let cid = ask(&probe, "engine-1", row).await;
        let (v, _) = answer(&mut answers, &cid).await;
        assert_reference(&v, reference[i], row.cycle, &format!("{cid} after kill -9"));
        assert_eq!(v["MissingCycles"], json!(0), "{cid}: no history lost");
    }
    let (_, row) = e2[39];
    let cid = ask(&probe, "engine-2", row).await;
    let (again, _) = answer(&mut answers, &cid).await;
    assert_eq!(
        again, before_crash,
        "redelivered after the crash: the same answer"
    );
    // A row after lost ones joins its history and says how many are missing.
    let (_, row) = e2[45];
    let cid = ask(&probe, "engine-2", row).await;
    let (v, _) = answer(&mut answers, &cid).await;
    assert_eq!(
        (v["MissingCycles"].clone(), v["HistoryCycles"].clone()),
        (json!(5), json!(41)),
        "{cid}"
    );

    // Per-row mode, switched at run time.
    let patch = json!({"ScoringMode": "row"});
    t.rt.hub
        .patch_desired("turbofanRulClassifier", patch.as_object().unwrap())
        .expect("the twin is saved");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while reported(&t, "ScoringMode").await["ScoringMode"] != json!("row") {
        assert!(tokio::time::Instant::now() < deadline, "mode not switched");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (i, row) = e2[40];
    let cid = ask(&probe, "engine-2", row).await;
    let (v, m) = answer(&mut answers, &cid).await;
    let p = v["PredictedRul"].as_f64().unwrap() as f32;
    assert!((p - reference_fd003()[i]).abs() <= 1e-4, "row mode: {p}");
    assert!(
        v.get("PredictedRulLow").is_none() && v.get("HistoryCycles").is_none(),
        "{v}"
    );
    assert_eq!(m.property("ModelName"), Some("rul.onnx"));
    probe.close(Duration::from_secs(2)).await;
    t.rt.shutdown().await;
}
