//! A corpus of bad telemetry sent by a leaf device through edgeHub into the real pipeline
//! (`deployment.template.json`, the three module processes): each message ends upstream as a
//! dead letter from `turbofanRouter` (`DeadLetter=true`) saying why, with its body unchanged
//! (or, for a message as large as MQTT carries, without it: the router's outputs would be
//! larger still); none gets a RUL message; no module stops; good telemetry sent afterwards
//! is classified.

use e2e::pipeline::{self, wait_for};
use e2e::{Pipeline, MODULES};
use edge_client::Message;
use edge_protocol::mqtt;
use rumqttc::QoS;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// One bad message and what its dead-letter reason must say.
struct Case {
    name: &'static str,
    message: Message,
    reason: String,
    /// Whether the dead letter carries the body (else it is empty).
    body_kept: bool,
}

/// Engine 1's first rows of `test_FD003`, as telemetry objects.
fn rows(n: usize) -> Vec<Map<String, Value>> {
    let rows = turbofan_domain::cmapss::read_rows(&pipeline::data_file("test_FD003.txt"))
        .expect("C-MAPSS test_FD003");
    rows.iter()
        .filter(|r| r.unit == 1)
        .take(n)
        .map(|r| match serde_json::from_str(&r.to_json()) {
            Ok(Value::Object(m)) => m,
            other => panic!("a row is an object: {other:?}"),
        })
        .collect()
}

fn json_text(m: &Map<String, Value>) -> String {
    Value::Object(m.clone()).to_string()
}

/// `body`, padded with spaces at the end (JSON allows them) so that the leaf device's
/// PUBLISH of it, correlation id `bad-NN`, is within 16 bytes of MQTT's packet limit: about
/// the largest message edgeHub takes.
fn at_packet_limit(body: &str) -> Message {
    let mut m = Message::json(body.to_owned());
    m.correlation_id = Some("bad-00".into());
    let topic = edge_protocol::topic::device_events("Client_666", &m);
    let size = mqtt::publish_size(topic.len(), QoS::AtLeastOnce, body.len()).unwrap();
    let pad = mqtt::MAX_PACKET - 16 - size;
    Message::json(format!("{body}{}", " ".repeat(pad)))
}

fn corpus(row: &Map<String, Value>) -> Vec<Case> {
    let case = |name, message, reason: &str| Case {
        name,
        message,
        reason: reason.to_owned(),
        body_kept: true,
    };
    let with = |k: &str, v: Value| {
        let mut m = row.clone();
        m.insert(k.into(), v);
        m
    };
    let without = |k: &str| {
        let mut m = row.clone();
        m.remove(k);
        m
    };
    // NaN and Infinity are not JSON; a leaf's serializer may still write them.
    let literal = |k: &str, lit: &str| json_text(&with(k, json!("@@"))).replace("\"@@\"", lit);
    let mut huge = row.clone();
    for i in 0..15_000 {
        huge.insert(format!("Extra{i:05}"), json!(0.123456));
    }
    let huge = json_text(&huge);
    assert!(
        huge.len() > 300_000 && huge.len() < 500_000,
        "{}",
        huge.len()
    );
    let mut wrong_type = Message::json(json_text(row));
    wrong_type.content_type = Some("text/plain".into());
    let mut wrong_encoding = Message::json(json_text(row));
    wrong_encoding.content_encoding = Some("utf-16".into());
    vec![
        case(
            "truncated JSON",
            Message::json(r#"{"CycleTime": 1, "Sensor1": "#),
            "body is not valid JSON",
        ),
        case(
            "plain text",
            Message::json("engine 7 is on fire"),
            "body is not valid JSON",
        ),
        case("empty body", Message::json(""), "body is not valid JSON"),
        case(
            "not UTF-8",
            Message::json(vec![0xff, 0xfe, 0x7b, 0x00]),
            "body is not valid JSON",
        ),
        case(
            "a sensor as a string",
            Message::json(json_text(&with("Sensor1", json!("518.67")))),
            "field 'Sensor1' is a string, not a number",
        ),
        case(
            "a sensor null",
            Message::json(json_text(&with("Sensor4", Value::Null))),
            "field 'Sensor4' is null, not a number",
        ),
        case(
            "NaN",
            Message::json(literal("Sensor3", "NaN")),
            "body is not valid JSON",
        ),
        case(
            "Infinity",
            Message::json(literal("Sensor9", "Infinity")),
            "body is not valid JSON",
        ),
        case(
            "a number",
            Message::json("42"),
            "body must be a JSON object of numbers (or an array of them), found a number",
        ),
        case("an empty array", Message::json("[]"), "empty array"),
        case(
            "two rows in one message",
            Message::json(format!("[{0},{0}]", json_text(row))),
            "found 2 objects",
        ),
        case(
            "a missing sensor",
            Message::json(json_text(&without("Sensor7"))),
            "the classifier could not score it: row 0: feature 'Sensor7' is missing",
        ),
        case(
            "no sensors at all",
            Message::json(r#"{"CycleTime": 5}"#),
            "the classifier could not score it: row 0: feature 'Sensor1' is missing",
        ),
        case(
            "a huge body",
            Message::json(huge.clone()),
            &format!(
                "the classifier could not score it: body of {} bytes exceeds the limit of 262144 bytes",
                huge.len()
            ),
        ),
        case(
            "wrong content type",
            wrong_type,
            "content type 'text/plain' is not application/json",
        ),
        case(
            "wrong content encoding",
            wrong_encoding,
            "content encoding 'utf-16' is not utf-8",
        ),
        case(
            "already classified",
            Message::json(json_text(&with("PredictedRul", json!(42.5)))),
            "already classified: the body has PredictedRul",
        ),
        Case {
            body_kept: false,
            ..case(
                "telemetry as large as MQTT carries",
                at_packet_limit(&json_text(row)),
                "too large to send to classOutput (a publish of",
            )
        },
        Case {
            body_kept: false,
            ..case(
                "not JSON, as large as MQTT carries",
                at_packet_limit("engine 7 is on fire"),
                "; the dead letter could not be sent either (a publish of",
            )
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_telemetry_ends_as_dead_letters_with_reasons_and_the_pipeline_keeps_classifying() {
    let started = Instant::now();
    let manifest = pipeline::deployment_manifest(&[]).expect("the deployment manifest");
    let p = Pipeline::start(&manifest, false)
        .await
        .expect("the runtime starts the manifest's modules");
    p.wait_connected(Duration::from_secs(60))
        .await
        .expect("modules up");
    let pids: Vec<Option<u32>> = MODULES.iter().map(|m| p.pid(m)).collect();
    let device = p
        .leaf_device("Client_666")
        .await
        .expect("the leaf device connects");

    let good_rows = rows(5);
    let cases = corpus(&good_rows[0]);
    let mut bodies = HashMap::new();
    for (i, c) in cases.into_iter().enumerate() {
        let cid = format!("bad-{i:02}");
        let mut m = c.message;
        m.correlation_id = Some(cid.as_str().into());
        bodies.insert(cid.clone(), (c.name, c.reason, c.body_kept, m.body.clone()));
        device
            .send_event(m)
            .await
            .unwrap_or_else(|e| panic!("{}: edgeHub takes it: {e}", c.name));
    }
    let good: Vec<String> = (0..good_rows.len()).map(|i| format!("good-{i}")).collect();
    for (cid, row) in good.iter().zip(&good_rows) {
        let mut m = Message::json(json_text(row));
        m.correlation_id = Some(cid.as_str().into());
        device.send_event(m).await.expect("edgeHub takes it");
    }

    let expected = bodies.len() + good.len();
    // On a timeout, the checks below say what is missing.
    let _ = wait_for(
        "an outcome for every message",
        Duration::from_secs(60),
        || {
            let o = p.upstream()?;
            Ok((o.ruls.len() + o.dead.len() + o.other.len() >= expected).then_some(()))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = p.upstream().unwrap();
    assert!(out.other.is_empty(), "unexpected records: {:?}", out.other);

    for (cid, (name, reason, body_kept, body)) in &bodies {
        let dead: Vec<_> = out
            .dead
            .iter()
            .filter(|d| d.correlation_id.as_deref() == Some(cid.as_str()))
            .collect();
        assert_eq!(dead.len(), 1, "{name}: one dead letter");
        let d = dead[0];
        assert!(
            d.reason.contains(reason.as_str()),
            "{name}: the reason {:?} should say {reason:?}",
            d.reason
        );
        match d.payload_encoding.as_str() {
            _ if !body_kept => assert_eq!(
                d.payload.as_str(),
                Some(""),
                "{name}: the body was dropped ({})",
                d.payload_encoding
            ),
            "json" => assert_eq!(
                Some(&d.payload),
                serde_json::from_slice::<Value>(body).ok().as_ref(),
                "{name}: body unchanged"
            ),
            "utf-8" => assert_eq!(
                d.payload.as_str().map(str::as_bytes),
                Some(&body[..]),
                "{name}: body unchanged"
            ),
            _ => assert_eq!(d.payload_encoding, "base64", "{name}"),
        }
        assert!(
            !out.ruls.iter().any(|r| &r.correlation_id == cid),
            "{name}: no RUL message for a bad message"
        );
    }
    for cid in &good {
        let n = out.ruls.iter().filter(|r| &r.correlation_id == cid).count();
        assert_eq!(n, 1, "{cid}: classified once after the bad messages");
        assert!(!out
            .dead
            .iter()
            .any(|d| d.correlation_id.as_deref() == Some(cid.as_str())));
    }
    assert_eq!(
        out.dead.len(),
        bodies.len(),
        "nothing else was dead-lettered"
    );
    let now: Vec<Option<u32>> = MODULES.iter().map(|m| p.pid(m)).collect();
    assert_eq!(now, pids, "no module stopped or restarted");
    assert!(MODULES.iter().all(|m| p.restarts(m) == 0));
    println!(
        "bad input: {} bad messages dead-lettered with their reasons, {} good ones classified; {:.1} s",
        bodies.len(),
        good.len(),
        started.elapsed().as_secs_f64()
    );
    device.close(Duration::from_secs(2)).await;
    p.shutdown().await;
}
