//! edgeHub refuses what a real one refuses: bad keys, expired tokens, a module reaching for
//! another module's input or identity, and anything that is not TLS; and it closes a
//! client that falls silent for one and a half keep-alive periods, as MQTT requires. Raw
//! MQTT clients also check what edgeHub does with packets that arrive together.

use edge_protocol::sas;
use iotedge_local::testing::{manifest, start, tls_client_config, TestRuntime};
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS,
    SubscribeReasonCode, TlsConfiguration, Transport,
};
use runtime_state::layout;
use runtime_state::KeyStore;
use serde_json::json;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const HUB: &str = "local-hub.azure-devices.net";
const ROUTES: &[(&str, &str)] = &[(
    "leaf",
    "FROM /messages/* WHERE NOT IS_DEFINED($connectionModuleId) INTO BrokeredEndpoint(\"/modules/receiver/inputs/leaf\")",
)];

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn tls(ca_pem: &str) -> Transport {
    Transport::Tls(TlsConfiguration::Rustls(tls_client_config(ca_pem)))
}

/// Connects a raw MQTT client; returns it once CONNACK arrived, or the refusal.
async fn raw(
    t: &TestRuntime,
    client_id: &str,
    password: String,
    transport: Transport,
) -> Result<(AsyncClient, EventLoop), ConnectionError> {
    let mut o = MqttOptions::new(client_id, "localhost", t.rt.mqtt_port);
    o.set_transport(transport)
        .set_credentials(
            format!("{HUB}/{client_id}/?api-version=2019-10-01"),
            password,
        )
        .set_keep_alive(Duration::from_secs(30));
    let (c, mut ev) = AsyncClient::new(o, 16);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ev.poll())
            .await
            .expect("an answer within 10 s")
        {
            Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok((c, ev)),
            Ok(_) => {}
            Err(e) => return Err(e),
        }
    }
}

fn module_key(t: &TestRuntime, module: &str) -> String {
    KeyStore::new(layout::module_keys(t.rt.state_dir()))
        .key(module)
        .expect("module key")
}

fn module_token(module: &str, key: &str, expiry: u64) -> String {
    sas::make_token(
        &sas::resource_uri(HUB, "edge-device", Some(module)),
        key,
        expiry,
    )
    .unwrap()
}

fn refused(r: Result<(AsyncClient, EventLoop), ConnectionError>) -> ConnectReturnCode {
    match r {
        Err(ConnectionError::ConnectionRefused(code)) => code,
        Err(e) => panic!("expected a CONNACK refusal, got {e}"),
        Ok(_) => panic!("connection was accepted"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_wrong_keys_expired_tokens_and_borrowed_identities() {
    let t = start(manifest(&["sender", "receiver"], ROUTES, 7200, json!({}))).await;
    let key = module_key(&t, "sender");
    let transport = || tls(&t.rt.ca_pem);

    // The right key works.
    let ok = raw(
        &t,
        "edge-device/sender",
        module_token("sender", &key, now() + 600),
        transport(),
    )
    .await;
    assert!(ok.is_ok(), "valid token accepted");

    let wrong = runtime_state::new_key();
    let ghost = sas::make_token(&sas::resource_uri(HUB, "ghost", None), &key, now() + 600).unwrap();
    let cases = [
        (
            "wrong key",
            "edge-device/sender",
            module_token("sender", &wrong, now() + 600),
            ConnectReturnCode::NotAuthorized,
        ),
        (
            "expired token",
            "edge-device/sender",
            module_token("sender", &key, now() - 1),
            ConnectReturnCode::NotAuthorized,
        ),
        (
            "another module's token",
            "edge-device/receiver",
            module_token("sender", &key, now() + 600),
            ConnectReturnCode::NotAuthorized,
        ),
        (
            "not a SAS token",
            "edge-device/sender",
            "hunter2".to_owned(),
            ConnectReturnCode::BadUserNamePassword,
        ),
        (
            "unregistered leaf device",
            "ghost",
            ghost,
            ConnectReturnCode::NotAuthorized,
        ),
    ];
    for (what, client_id, password, expected) in cases {
        let code = refused(raw(&t, client_id, password, transport()).await);
        assert_eq!(code, expected, "{what}");
    }
    assert!(
        t.rt.hub
            .metrics
            .auth_failures
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 5
    );
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_tcp_gets_no_mqtt_session() {
    let t = start(manifest(&["sender"], ROUTES, 7200, json!({}))).await;
    let key = module_key(&t, "sender");
    let r = raw(
        &t,
        "edge-device/sender",
        module_token("sender", &key, now() + 600),
        Transport::Tcp,
    )
    .await;
    match r {
        Ok(_) => panic!("plain TCP must not get a CONNACK"),
        Err(ConnectionError::ConnectionRefused(c)) => {
            panic!("plain TCP must not get a CONNACK at all (got {c:?})")
        }
        Err(_) => {}
    }
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_cannot_subscribe_to_or_publish_as_another_module() {
    let t = start(manifest(&["sender", "receiver"], ROUTES, 7200, json!({}))).await;
    let key = module_key(&t, "sender");
    let (c, mut ev) = raw(
        &t,
        "edge-device/sender",
        module_token("sender", &key, now() + 600),
        tls(&t.rt.ca_pem),
    )
    .await
    .unwrap();
    c.subscribe(
        "devices/edge-device/modules/receiver/inputs/#",
        QoS::AtLeastOnce,
    )
    .await
    .unwrap();
    c.subscribe(
        "devices/edge-device/modules/sender/inputs/#",
        QoS::AtLeastOnce,
    )
    .await
    .unwrap();
    c.subscribe("#", QoS::AtLeastOnce).await.unwrap();
    let mut codes = Vec::new();
    while codes.len() < 3 {
        if let Event::Incoming(Packet::SubAck(s)) = ev.poll().await.unwrap() {
            codes.extend(s.return_codes);
        }
    }
    assert_eq!(
        codes,
        vec![
            SubscribeReasonCode::Failure,
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::Failure
        ]
    );

    // Publishing as 'receiver' closes the connection, and nothing is routed.
    c.publish(
        "devices/edge-device/modules/receiver/messages/events/$.on=out",
        QoS::AtLeastOnce,
        false,
        "x",
    )
    .await
    .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ev.poll().await {
                Err(_) => return true,
                Ok(Event::Incoming(Packet::PubAck(_))) => return false,
                Ok(_) => {}
            }
        }
    })
    .await
    .unwrap();
    assert!(closed, "the forged publish was acknowledged");
    assert_eq!(
        t.rt.hub
            .metrics
            .received
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_leaf_device_sends_telemetry_through_the_routes() {
    let t = start(manifest(&["receiver"], ROUTES, 7200, json!({}))).await;
    let key = KeyStore::new(layout::registry(t.rt.state_dir()))
        .ensure("Client_001")
        .unwrap();
    let token = sas::make_token(
        &sas::resource_uri(HUB, "Client_001", None),
        &key,
        now() + 600,
    )
    .unwrap();
    let (c, mut ev) = raw(&t, "Client_001", token, tls(&t.rt.ca_pem))
        .await
        .unwrap();
    tokio::spawn(async move { while ev.poll().await.is_ok() {} });
    c.publish(
        "devices/Client_001/messages/events/%24.ct=application%2Fjson&%24.ce=utf-8&%24.cid=c1",
        QoS::AtLeastOnce,
        false,
        r#"{"CycleTime": 1}"#,
    )
    .await
    .unwrap();
    let receiver = t.client("receiver").await;
    let mut inputs = receiver.inputs().unwrap();
    let m = iotedge_local::testing::next_input(&mut inputs).await;
    assert_eq!(m.input, "leaf");
    assert_eq!(
        m.message.connection_device_id.as_deref(),
        Some("Client_001")
    );
    assert_eq!(m.message.connection_module_id, None);
    assert_eq!(m.message.correlation_id.as_deref(), Some("c1"));
    m.ack();
    receiver.close(Duration::from_secs(2)).await;
    t.rt.shutdown().await;
}

async fn until_connected(ev: &mut EventLoop) {
    loop {
        if let Event::Incoming(Packet::ConnAck(_)) = ev.poll().await.expect("connects") {
            return;
        }
    }
}

/// Polls until the connection fails; the error.
async fn until_closed(ev: &mut EventLoop) -> ConnectionError {
    loop {
        if let Err(e) = ev.poll().await {
            return e;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_silent_for_one_and_a_half_keep_alives_is_disconnected() {
    let t = start(manifest(&["sender"], ROUTES, 7200, json!({}))).await;
    let key = module_key(&t, "sender");
    let connect = |keep_alive: u64| {
        let mut o = MqttOptions::new("edge-device/sender", "localhost", t.rt.mqtt_port);
        o.set_transport(tls(&t.rt.ca_pem))
            .set_credentials(
                format!("{HUB}/edge-device/sender/?api-version=2019-10-01"),
                module_token("sender", &key, now() + 600),
            )
            .set_keep_alive(Duration::from_secs(keep_alive));
        AsyncClient::new(o, 16)
    };

    // A client that pings (rumqttc does, at its keep-alive) stays connected.
    let (_c, mut ev) = connect(1);
    until_connected(&mut ev).await;
    let talking = tokio::time::timeout(Duration::from_secs(4), until_closed(&mut ev)).await;
    assert!(
        talking.is_err(),
        "a pinging client was disconnected: {talking:?}"
    );
    drop(ev);

    // A client that says nothing after CONNECT is closed after 1.5 s (keep-alive 1 s).
    let (_c, mut ev) = connect(1);
    until_connected(&mut ev).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let closed = tokio::time::timeout(Duration::from_secs(5), until_closed(&mut ev)).await;
    assert!(closed.is_ok(), "edgeHub kept a silent client connected");
    t.rt.shutdown().await;
}

/// A raw MQTT/TLS connection as module `module`, past CONNACK.
async fn raw_module(
    t: &TestRuntime,
    module: &str,
) -> (
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    bytes::BytesMut,
) {
    use tokio::io::AsyncWriteExt;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", t.rt.mqtt_port))
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(tls_client_config(&t.rt.ca_pem))
        .connect(name, tcp)
        .await
        .unwrap();
    let client_id = format!("edge-device/{module}");
    let mut connect = rumqttc::Connect::new(&client_id);
    connect.clean_session = false;
    connect.keep_alive = 30;
    connect.login = Some(rumqttc::Login::new(
        format!("{HUB}/{client_id}/?api-version=2019-10-01"),
        module_token(module, &module_key(t, module), now() + 600),
    ));
    let mut out = bytes::BytesMut::new();
    Packet::Connect(connect).write(&mut out, 1 << 20).unwrap();
    tls.write_all(&out).await.unwrap();
    let mut buf = bytes::BytesMut::new();
    let ack = next_raw(&mut tls, &mut buf).await;
    assert!(matches!(ack, Packet::ConnAck(a) if a.code == ConnectReturnCode::Success));
    (tls, buf)
}

async fn next_raw(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    buf: &mut bytes::BytesMut,
) -> Packet {
    tokio::time::timeout(
        Duration::from_secs(10),
        edge_protocol::mqtt::read_packet(tls, buf),
    )
    .await
    .expect("a packet within 10 s")
    .unwrap()
    .expect("the connection is open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_puback_counts_even_when_an_unsubscribe_follows_it_in_the_same_write() {
    use tokio::io::AsyncWriteExt;
    const TO_RECEIVER: &[(&str, &str)] = &[(
        "toReceiver",
        "FROM /messages/modules/sender/outputs/out INTO BrokeredEndpoint(\"/modules/receiver/inputs/in\")",
    )];
    let t = start(manifest(
        &["sender", "receiver"],
        TO_RECEIVER,
        7200,
        json!({}),
    ))
    .await;
    let sender = t.client("sender").await;
    sender
        .send_output("out", edge_client::Message::json("{}"))
        .await
        .unwrap();

    let (mut rx, mut buf) = raw_module(&t, "receiver").await;
    let filter = "devices/edge-device/modules/receiver/inputs/#";
    let subscribe = |pkid| {
        let mut s = rumqttc::Subscribe::new(filter, QoS::AtLeastOnce);
        s.pkid = pkid;
        Packet::Subscribe(s)
    };
    let mut out = bytes::BytesMut::new();
    subscribe(1).write(&mut out, 1 << 20).unwrap();
    rx.write_all(&out).await.unwrap();
    let mut delivered = None;
    while delivered.is_none() {
        if let Packet::Publish(p) = next_raw(&mut rx, &mut buf).await {
            delivered = Some(p.pkid);
        }
    }
    // PUBACK, then UNSUBSCRIBE, in one write: edgeHub reads them together.
    out.clear();
    Packet::PubAck(rumqttc::PubAck::new(delivered.unwrap()))
        .write(&mut out, 1 << 20)
        .unwrap();
    let mut unsubscribe = rumqttc::Unsubscribe::new(filter);
    unsubscribe.pkid = 2;
    Packet::Unsubscribe(unsubscribe)
        .write(&mut out, 1 << 20)
        .unwrap();
    rx.write_all(&out).await.unwrap();
    while !matches!(next_raw(&mut rx, &mut buf).await, Packet::UnsubAck(_)) {}

    let stats = &t.rt.hub.endpoint_stats()["receiver"];
    assert_eq!(
        (stats.delivered, stats.queued, stats.in_flight),
        (1, 0, 0),
        "the acknowledged message is done, not queued again"
    );
    // Subscribed again, nothing is delivered a second time.
    out.clear();
    subscribe(3).write(&mut out, 1 << 20).unwrap();
    rx.write_all(&out).await.unwrap();
    let again = tokio::time::timeout(Duration::from_millis(700), async {
        loop {
            if let Packet::Publish(p) = next_raw(&mut rx, &mut buf).await {
                return p;
            }
        }
    })
    .await;
    assert!(again.is_err(), "redelivered: {again:?}");
    sender.close(Duration::from_secs(2)).await;
    t.rt.shutdown().await;
}

/// A token whose expiry is u64::MAX used to overflow edgeHub's timer and panic the
/// connection task; it is a valid (if unwise) token: the connection works, and a second
/// client still gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_never_expires_does_not_break_the_connection() {
    let t = start(manifest(&["sender", "receiver"], ROUTES, 7200, json!({}))).await;
    let key = module_key(&t, "sender");
    let (c, mut ev) = raw(
        &t,
        "edge-device/sender",
        module_token("sender", &key, u64::MAX),
        tls(&t.rt.ca_pem),
    )
    .await
    .expect("accepted");
    c.publish(
        "devices/edge-device/modules/sender/messages/events/",
        QoS::AtLeastOnce,
        false,
        "x",
    )
    .await
    .unwrap();
    let acked = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => return true,
                Ok(_) => {}
                Err(e) => panic!("the connection broke: {e}"),
            }
        }
    })
    .await
    .expect("a PUBACK within 10 s");
    assert!(acked);
    let key = module_key(&t, "receiver");
    let other = raw(
        &t,
        "edge-device/receiver",
        module_token("receiver", &key, now() + 600),
        tls(&t.rt.ca_pem),
    )
    .await;
    assert!(other.is_ok(), "edgeHub still serves");
}

/// A message whose delivery topic would be over MQTT's 65,535 bytes (a client that does not
/// leave edgeHub room, as this project's client does) is refused before its PUBACK: the
/// connection closes unacknowledged, the receiver's queue never holds it, and the refusal
/// is counted. Nothing acknowledged is dropped later for its size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_could_never_be_delivered_is_refused_not_acknowledged_and_dropped() {
    use tokio::io::AsyncWriteExt;
    const TO_RECEIVER: &[(&str, &str)] = &[(
        "toReceiver",
        "FROM /messages/modules/sender/outputs/out INTO BrokeredEndpoint(\"/modules/receiver/inputs/in\")",
    )];
    let t = start(manifest(
        &["sender", "receiver"],
        TO_RECEIVER,
        7200,
        json!({}),
    ))
    .await;
    let (mut tx, mut buf) = raw_module(&t, "sender").await;
    let prefix = "devices/edge-device/modules/sender/messages/events/";
    let bag_head = "$.on=out&k=";
    let long = format!(
        "{prefix}{bag_head}{}",
        "v".repeat(65_535 - prefix.len() - bag_head.len())
    );
    assert_eq!(long.len(), 65_535, "as long as MQTT allows");
    let mut out = bytes::BytesMut::new();
    let mut p = rumqttc::Publish::new(long, QoS::AtLeastOnce, "{}");
    p.pkid = 1;
    Packet::Publish(p).write(&mut out, 1 << 20).unwrap();
    tx.write_all(&out).await.unwrap();
    // No PUBACK: the connection ends.
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match edge_protocol::mqtt::read_packet(&mut tx, &mut buf).await {
                Ok(Some(Packet::PubAck(a))) => return Err(a),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return Ok(()),
            }
        }
    })
    .await
    .expect("the connection closes");
    assert!(end.is_ok(), "acknowledged: {end:?}");
    let stats = t.rt.hub.endpoint_stats()["receiver"];
    assert_eq!((stats.queued, stats.undeliverable), (0, 0), "{stats:?}");
    assert_eq!(
        t.rt.hub.prometheus.refused_count("undeliverable", "sender"),
        1
    );

    // The sender, connected again, is served.
    let sender = t.client("sender").await;
    let receiver = t.client("receiver").await;
    let mut inputs = receiver.inputs().unwrap();
    sender
        .send_output("out", edge_client::Message::json("{}"))
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), inputs.recv())
        .await
        .unwrap()
        .unwrap();
    got.ack();
    sender.close(Duration::from_secs(2)).await;
    receiver.close(Duration::from_secs(2)).await;
    t.rt.shutdown().await;
}
