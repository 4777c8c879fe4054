//! The `turbofanRouter` binary, started by the local runtime's edgeAgent exactly as the
//! manifest says, driven through edgeHub routes by a probe module that plays the leaf device's
//! and the classifier's side of the conversation.

use edge_client::Message;
use iotedge_local::testing::{next_input, start_with};
use serde_json::{json, Value};
use std::time::Duration;
use turbofan_domain::record::{EngineRecord, BODY_FIELDS};

fn manifest() -> Value {
    let routes = json!({
        "probeToRouter": "FROM /messages/modules/probe/outputs/leaf INTO BrokeredEndpoint(\"/modules/turbofanRouter/inputs/deviceInput\")",
        "routerToProbe": "FROM /messages/modules/turbofanRouter/outputs/classOutput INTO BrokeredEndpoint(\"/modules/probe/inputs/class\")",
        "probeAnswers": "FROM /messages/modules/probe/outputs/aml INTO BrokeredEndpoint(\"/modules/turbofanRouter/inputs/rulInput\")",
        "routerToIoTHub": "FROM /messages/modules/turboFanRouter/outputs/hubOutput INTO $upstream",
        "routerToAvro": "FROM /messages/modules/turbofanRouter/outputs/avroOutput INTO BrokeredEndpoint(\"/modules/probe/inputs/avro\")",
        "deadLetter": "FROM /messages/modules/turboFanRouter/outputs/deadMessages INTO $upstream"
    });
    json!({"modulesContent": {
        "$edgeAgent": {"properties.desired": {"modules": {
            "turbofanRouter": {"status": "running", "restartPolicy": "always",
                "settings": {"image": "${MODULES.turbofanRouter}"}},
            "probe": {"settings": {"image": "local/probe"}}}}},
        "$edgeHub": {"properties.desired": {"routes": routes, "storeAndForwardConfiguration": {"timeToLiveSecs": 7200}}},
        "turbofanRouter": {"properties.desired": {"LoggingLevel": "debug"}}
    }})
}

fn telemetry(cycle: u32) -> String {
    let mut m = serde_json::Map::new();
    m.insert("CycleTime".into(), json!(cycle));
    for i in 1..=3 {
        m.insert(format!("OperationalSetting{i}"), json!(0.001 * i as f64));
    }
    for i in 1..=21 {
        m.insert(format!("Sensor{i}"), json!(500.0 + i as f64 / 8.0));
    }
    Value::Object(m).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_classifies_archives_dead_letters_and_obeys_the_threshold() {
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_turbofanRouter"))
        .parent()
        .unwrap()
        .to_path_buf();
    let t = start_with(manifest(), |o| {
        o.start_modules = true;
        o.bin_dir = Some(bin_dir);
        o.skip = vec!["probe".into()];
    })
    .await;
    let probe = t.client("probe").await;
    let mut inputs = probe.inputs().unwrap();

    // Leaf telemetry → classOutput, body unchanged, the tutorial's properties added.
    let mut leaf = Message::json(telemetry(42));
    leaf.correlation_id = Some("corr-42".into());
    // A forged identity: the router takes the one edgeHub authenticated (the probe's device).
    leaf.set_property("ConnectionDeviceId", "Client_001");
    probe.send_output("leaf", leaf.clone()).await.unwrap();
    let to_classifier = next_input(&mut inputs).await;
    assert_eq!(to_classifier.input, "class");
    let m = to_classifier.message.clone();
    to_classifier.ack();
    assert_eq!(m.body, leaf.body);
    assert_eq!(m.correlation_id.as_deref(), Some("corr-42"));
    assert_eq!(m.property("CorrelationId"), Some("corr-42"));
    assert_eq!(m.property("ConnectionDeviceId"), Some("edge-device"));
    assert!(m.property("CreationTimeUtc").is_some() && m.property("EnqueuedTimeUtc").is_some());
    assert!(m.is_json_utf8());

    // The classifier's answer → hubOutput (upstream) and avroOutput.
    let answer = |rul: f64| {
        let mut a = m.clone();
        let mut row: Value = serde_json::from_slice(&m.body).unwrap();
        row["PredictedRul"] = json!(rul);
        a.body = json!([row]).to_string().into();
        a
    };
    probe.send_output("aml", answer(87.5)).await.unwrap();
    let avro = next_input(&mut inputs).await;
    assert_eq!(avro.input, "avro");
    let record: EngineRecord = serde_json::from_slice(&avro.message.body).unwrap();
    avro.ack();
    assert_eq!(record.correlation_id, "corr-42");
    assert_eq!(record.connection_device_id, "edge-device");
    assert_eq!(record.body["PredictedRul"], 87.5);
    let cycle = BODY_FIELDS.iter().position(|f| *f == "CycleTime").unwrap();
    assert_eq!(record.body_in_schema_order().unwrap()[cycle], 42.0);
    let up = t.wait_upstream(1).await;
    assert_eq!(up.len(), 1);
    assert_eq!(
        up[0]["payload"],
        json!({"ConnectionDeviceId": "edge-device", "CorrelationId": "corr-42", "PredictedRul": 87.5, "CycleTime": 42.0})
    );
    assert_eq!(up[0]["module"], json!("turbofanRouter"));
    assert_eq!(
        up[0]["properties"]["system"]["correlationId"],
        json!("corr-42")
    );

    // A bad message is a dead letter upstream with its reason; the router keeps going.
    probe
        .send_output("leaf", Message::json("{\"Sensor1\": \"hot\"}"))
        .await
        .unwrap();
    let up = t.wait_upstream(2).await;
    assert_eq!(
        up[1]["properties"]["application"]["DeadLetter"],
        json!("true")
    );
    let reason = up[1]["properties"]["application"]["DeadLetterReason"]
        .as_str()
        .unwrap();
    assert!(reason.contains("'Sensor1' is a string"), "{reason}");
    assert_eq!(up[1]["payload"], json!({"Sensor1": "hot"}));

    // RulThreshold: predictions at or above it are archived but not sent to IoT Hub.
    t.rt.hub
        .patch_desired(
            "turbofanRouter",
            json!({"RulThreshold": 50}).as_object().unwrap(),
        )
        .expect("the twin is saved");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let twin = t.rt.hub.twins.get("edge-device/turbofanRouter");
        if twin["reported"]["RulThreshold"] == json!(50.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "threshold not reported: {twin}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    probe.send_output("aml", answer(87.5)).await.unwrap();
    probe.send_output("aml", answer(12.0)).await.unwrap();
    for _ in 0..2 {
        next_input(&mut inputs).await.ack();
    }
    let up = t.wait_upstream(3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let up_after = t.upstream();
    assert_eq!(
        up_after.len(),
        3,
        "only the prediction below 50 reaches IoT Hub: {up_after:#?}"
    );
    assert_eq!(up[2]["payload"]["PredictedRul"], json!(12.0));

    probe.close(Duration::from_secs(2)).await;
    let log = t.rt.state_dir().join("logs/turbofanRouter.log");
    t.rt.shutdown().await;
    let log = std::fs::read_to_string(log).unwrap();
    assert!(log.contains("turbofanRouter stopped cleanly"), "{log}");
}
