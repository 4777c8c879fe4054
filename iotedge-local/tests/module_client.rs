//! The project's own module client against the runtime: outputs, inputs, routes, twins,
//! at-least-once redelivery.

use bytes::Bytes;
use edge_client::Message;
use edge_protocol::mqtt;
use iotedge_local::testing::{largest_sendable, manifest, next_input, start};
use serde_json::json;
use std::time::Duration;

const ROUTES: &[(&str, &str)] = &[
    ("toReceiver", "FROM /messages/modules/sender/outputs/out INTO BrokeredEndpoint(\"/modules/receiver/inputs/in\")"),
    ("leafToReceiver", "FROM /messages/* WHERE NOT IS_DEFINED($connectionModuleId) INTO BrokeredEndpoint(\"/modules/receiver/inputs/leaf\")"),
    ("receiverUp", "FROM /messages/modules/Receiver/outputs/* WHERE $body.keep = true INTO $upstream"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_to_input_round_trips_body_and_every_property() {
    let t = start(manifest(&["sender", "receiver"], ROUTES, 7200, json!({}))).await;
    let sender = t.client("sender").await;
    let receiver = t.client("receiver").await;
    let mut inputs = receiver.inputs().unwrap();

    let mut m = Message::json(r#"{"Sensor1": 518.67, "keep": true}"#);
    m.message_id = Some("mid-1".into());
    m.correlation_id = Some("corr/1 & more".into());
    m.properties = vec![
        ("CorrelationId".into(), "corr/1 & more".into()),
        ("weird key=&".into(), "välue%20/x".into()),
        ("empty".into(), "".into()),
    ];
    sender.send_output("out", m.clone()).await.unwrap();

    let got = next_input(&mut inputs).await;
    assert_eq!(got.input, "in");
    let r = &got.message;
    assert_eq!(r.body, m.body);
    assert_eq!(r.message_id, m.message_id);
    assert_eq!(r.correlation_id, m.correlation_id);
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    assert_eq!(r.content_encoding.as_deref(), Some("utf-8"));
    assert_eq!(
        r.properties, m.properties,
        "application properties round-trip exactly, in order"
    );
    assert_eq!(r.connection_device_id.as_deref(), Some("edge-device"));
    assert_eq!(r.connection_module_id.as_deref(), Some("sender"));
    assert!(r.enqueued_time.is_some());
    let forwarded = got.message.clone();
    got.ack();

    // The receiver forwards it; the route's source is matched case-insensitively and its
    // WHERE clause reads the body.
    receiver
        .send_output("result", forwarded.clone())
        .await
        .unwrap();
    let mut dropped = forwarded;
    dropped.body = Bytes::from_static(br#"{"keep": false}"#);
    receiver.send_output("result", dropped).await.unwrap();
    let up = t.wait_upstream(1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let up_after = t.upstream();
    assert_eq!(up.len(), 1);
    assert_eq!(
        up_after.len(),
        1,
        "the message with keep=false matches no route"
    );
    assert_eq!(up[0]["module"], json!("receiver"));
    assert_eq!(up[0]["payload"]["Sensor1"], json!(518.67));
    assert_eq!(
        up[0]["properties"]["system"]["correlationId"],
        json!("corr/1 & more")
    );
    assert_eq!(up[0]["properties"]["system"]["outputName"], json!("result"));
    assert_eq!(
        up[0]["properties"]["application"]["weird key=&"],
        json!("välue%20/x")
    );
    sender.close(Duration::from_secs(2)).await;
    receiver.close(Duration::from_secs(2)).await;
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_mqtt_cannot_carry_fails_at_once_and_the_client_goes_on() {
    let t = start(manifest(&["sender", "receiver"], ROUTES, 7200, json!({}))).await;
    let sender = t.client("sender").await;
    let receiver = t.client("receiver").await;
    let mut inputs = receiver.inputs().unwrap();

    let huge = Message::json(vec![b' '; edge_protocol::mqtt::MAX_PACKET]);
    let err = tokio::time::timeout(Duration::from_secs(5), sender.send_output("out", huge))
        .await
        .expect("refused at once, not left waiting for a PUBACK")
        .unwrap_err();
    assert!(matches!(err, edge_client::Error::TooLarge(_)), "{err}");
    assert!(
        err.to_string().contains("over the MQTT packet limit"),
        "{err}"
    );
    let mut long_name = Message::json("{}");
    long_name.properties = vec![("k".into(), "v".repeat(70_000).into())];
    let err = sender.send_output("out", long_name).await.unwrap_err();
    assert!(err.to_string().contains("topic of"), "{err}");

    // The connection is unharmed: the next message goes through.
    sender
        .send_output("out", Message::json(r#"{"n": 1}"#))
        .await
        .unwrap();
    let got = next_input(&mut inputs).await;
    assert_eq!(&got.message.body[..], br#"{"n": 1}"#);
    got.ack();
    sender.close(Duration::from_secs(2)).await;
    receiver.close(Duration::from_secs(2)).await;
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_body_and_the_longest_property_bag_a_client_sends_are_delivered_whole() {
    let t = start(manifest(&["sender", "receiver"], ROUTES, 7200, json!({}))).await;
    let sender = t.client("sender").await;
    let receiver = t.client("receiver").await;
    let mut inputs = receiver.inputs().unwrap();

    // A body as large as the sender's packet allows: its delivery, under a longer topic
    // with edgeHub's stamps, is a packet over MAX_PACKET, and arrives whole.
    let body = |n: usize| Message::json(vec![b' '; n]);
    let largest = largest_sendable(&sender, "out", (0, mqtt::MAX_PACKET), body);
    assert!(largest > mqtt::MAX_PACKET - 200, "{largest}");
    sender.send_output("out", body(largest)).await.unwrap();
    let got = next_input(&mut inputs).await;
    assert_eq!(got.message.body.len(), largest);
    got.ack();

    // A property bag as long as the sender's topic allows: the client leaves room for
    // edgeHub's delivery topic, so it arrives whole too.
    let with_bag = |n: usize| {
        let mut m = Message::json("{}");
        m.correlation_id = Some("long-bag".into());
        m.properties = vec![("k".into(), "v".repeat(n).into())];
        m
    };
    let longest = largest_sendable(&sender, "out", (0, 70_000), with_bag);
    assert!(longest > 64_000, "{longest}");
    sender.send_output("out", with_bag(longest)).await.unwrap();
    let got = next_input(&mut inputs).await;
    assert_eq!(got.message.property("k").map(str::len), Some(longest));
    got.ack();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let stats = t.rt.hub.endpoint_stats()["receiver"];
        if stats.queued == 0 && stats.in_flight == 0 {
            assert_eq!((stats.delivered, stats.undeliverable), (2, 0), "{stats:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a message is stuck: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sender.close(Duration::from_secs(2)).await;
    receiver.close(Duration::from_secs(2)).await;
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_inputs_are_redelivered_to_the_next_connection() {
    let t = start(manifest(&["sender", "receiver"], ROUTES, 7200, json!({}))).await;
    let sender = t.client("sender").await;
    for i in 0..3 {
        sender
            .send_output("out", Message::json(format!("{{\"i\":{i}}}")))
            .await
            .unwrap();
    }
    let first = t.client("receiver").await;
    let mut inputs = first.inputs().unwrap();
    let a = next_input(&mut inputs).await;
    let b = next_input(&mut inputs).await;
    let c = next_input(&mut inputs).await;
    a.ack();
    drop(b); // abandoned: never acknowledged
    c.ack();
    tokio::time::sleep(Duration::from_millis(200)).await;
    first.close(Duration::from_secs(2)).await;

    let second = t.client("receiver").await;
    let mut inputs = second.inputs().unwrap();
    let again = next_input(&mut inputs).await;
    assert_eq!(again.message.body, Bytes::from_static(br#"{"i":1}"#));
    again.ack();
    let extra = tokio::time::timeout(Duration::from_millis(500), inputs.recv()).await;
    assert!(
        extra.is_err(),
        "acknowledged messages are not delivered again: {:?}",
        extra.ok().flatten().map(|m| m.message.body)
    );
    second.close(Duration::from_secs(2)).await;
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twin_reads_reports_and_receives_desired_patches() {
    let desired = json!({"receiver": {"RulThreshold": 80, "LoggingLevel": "info"}});
    let t = start(manifest(&["sender", "receiver"], ROUTES, 7200, desired)).await;
    let c = t.client("receiver").await;
    let mut patches = c.desired_updates().unwrap();
    let twin = c.twin().await.unwrap();
    assert_eq!(twin["desired"]["RulThreshold"], json!(80));
    assert_eq!(twin["desired"]["$version"], json!(1));
    c.update_reported(&json!({"model": {"name": "rul", "version": "1"}}))
        .await
        .unwrap();
    let twin = c.twin().await.unwrap();
    assert_eq!(twin["reported"]["model"]["name"], json!("rul"));

    let patch = json!({"RulThreshold": 50, "LoggingLevel": null});
    let v =
        t.rt.hub
            .patch_desired("receiver", patch.as_object().unwrap())
            .expect("the twin is saved");
    assert_eq!(v, 2);
    let got = tokio::time::timeout(Duration::from_secs(10), patches.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        got,
        json!({"RulThreshold": 50, "LoggingLevel": null, "$version": 2})
    );
    let twin = c.twin().await.unwrap();
    assert_eq!(twin["desired"], json!({"RulThreshold": 50, "$version": 2}));
    c.close(Duration::from_secs(2)).await;
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_wait_for_a_module_that_connects_late_and_expire_after_the_ttl() {
    // Store-and-forward: the receiver is not connected while the sender sends.
    let t = start(manifest(&["sender", "receiver"], ROUTES, 7200, json!({}))).await;
    let sender = t.client("sender").await;
    for i in 0..50 {
        sender
            .send_output("out", Message::json(format!("{{\"i\":{i}}}")))
            .await
            .unwrap();
    }
    let late = t.client("receiver").await;
    let mut inputs = late.inputs().unwrap();
    for i in 0..50 {
        let m = next_input(&mut inputs).await;
        assert_eq!(
            m.message.body,
            Bytes::from(format!("{{\"i\":{i}}}")),
            "in order"
        );
        m.ack();
    }
    late.close(Duration::from_secs(2)).await;
    t.rt.shutdown().await;

    // Time-to-live of 1 s: older messages are dropped and counted.
    let t = start(manifest(&["sender", "receiver"], ROUTES, 1, json!({}))).await;
    let sender = t.client("sender").await;
    for i in 0..5 {
        sender
            .send_output("out", Message::json(format!("{{\"old\":{i}}}")))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    sender
        .send_output("out", Message::json(r#"{"fresh":true}"#))
        .await
        .unwrap();
    let late = t.client("receiver").await;
    let mut inputs = late.inputs().unwrap();
    let m = next_input(&mut inputs).await;
    assert_eq!(m.message.body, Bytes::from_static(br#"{"fresh":true}"#));
    m.ack();
    assert_eq!(t.rt.hub.endpoint_stats()["receiver"].expired, 5);
    late.close(Duration::from_secs(2)).await;
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaf_device_connects_through_the_gateway_with_its_connection_string() {
    let t = start(manifest(&["sender", "receiver"], ROUTES, 7200, json!({}))).await;
    let key = runtime_state::KeyStore::new(runtime_state::layout::registry(t.rt.state_dir()))
        .ensure("Client_007")
        .unwrap();
    let cs = format!("HostName=local-hub.azure-devices.net;DeviceId=Client_007;SharedAccessKey={key};GatewayHostName=localhost");
    let mut settings = edge_client::Settings::from_device_connection_string(&cs).unwrap();
    settings.port = t.rt.mqtt_port;
    settings.trust = edge_client::settings::TrustSource::Pem(t.rt.ca_pem.clone());
    let leaf = edge_client::ModuleClient::connect(settings).await.unwrap();
    let receiver = t.client("receiver").await;
    let mut inputs = receiver.inputs().unwrap();
    let mut m = Message::json(r#"{"CycleTime": 1, "Sensor1": 518.67}"#);
    m.correlation_id = Some("leaf-1".into());
    leaf.send_event(m).await.unwrap();
    let got = next_input(&mut inputs).await;
    assert_eq!(got.input, "leaf");
    assert_eq!(
        got.message.connection_device_id.as_deref(),
        Some("Client_007")
    );
    assert_eq!(got.message.connection_module_id, None);
    assert_eq!(got.message.correlation_id.as_deref(), Some("leaf-1"));
    got.ack();
    leaf.close(Duration::from_secs(2)).await;
    receiver.close(Duration::from_secs(2)).await;
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_methods_reach_the_module_and_its_answer_comes_back() {
    use iotedge_local::edgehub::hub::MethodError;
    let t = start(manifest(&["sender", "receiver"], ROUTES, 7200, json!({}))).await;
    let hub = t.rt.hub.clone();
    let timeout = Duration::from_secs(10);

    // Nobody connected as `receiver`: edgeHub says so at once, as IoT Hub does (404).
    let e = hub
        .invoke_method("receiver", "ping", &json!(null), timeout)
        .await
        .unwrap_err();
    assert!(matches!(e, MethodError::NotListening(_)), "{e}");

    let receiver = t.client("receiver").await;
    // Connected, no handler: the client answers 501 itself. (Its subscription to methods
    // follows the connection: until edgeHub has it, the call is refused as above.)
    let mut tries = 0;
    let (status, answer) = loop {
        match hub
            .invoke_method("receiver", "ping", &json!(null), timeout)
            .await
        {
            Err(MethodError::NotListening(_)) if tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => break other.unwrap(),
        }
    };
    assert_eq!(status, 501, "{answer}");

    receiver.on_methods(|method, payload| match method {
        "echo" => (200, json!({"got": payload})),
        other => (404, json!({"message": format!("no {other}")})),
    });
    let (status, answer) = hub
        .invoke_method("receiver", "echo", &json!({"n": 1}), timeout)
        .await
        .unwrap();
    assert_eq!((status, answer), (200, json!({"got": {"n": 1}})));
    let (status, _) = hub
        .invoke_method("receiver", "other", &json!(null), timeout)
        .await
        .unwrap();
    assert_eq!(status, 404);
}
