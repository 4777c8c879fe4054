//! Floods and slow clients against the runtime's servers: each server holds only its own
//! cap of connections, closes those that say nothing, and legitimate clients are served
//! throughout (issue #26, items 13 and 14). Other attacks have their tests next to what
//! they attack (auth.rs: keys, tokens, identities, refused publishes; files.rs: uploads).

use iotedge_local::testing::{manifest, start_with};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ROUTES: &[(&str, &str)] = &[(
    "toReceiver",
    "FROM /messages/modules/sender/outputs/out INTO BrokeredEndpoint(\"/modules/receiver/inputs/in\")",
)];

/// Whether the server closed `s` within `within`.
async fn closed_within(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

async fn get_metrics(addr: std::net::SocketAddr) -> std::io::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http_connections_cannot_lock_out_mqtt_clients_or_hold_the_metrics_endpoint() {
    let t = start_with(
        manifest(&["sender", "receiver"], ROUTES, 7200, json!({})),
        |o| {
            o.metrics = Some("127.0.0.1:0".parse().unwrap());
        },
    )
    .await;
    let metrics = t.rt.metrics["edgeHub"];
    assert!(get_metrics(metrics).await.unwrap().contains("edgehub_"));

    // 300 connections that never send a byte: the endpoint keeps 64 and closes the rest.
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(tokio::net::TcpStream::connect(metrics).await.unwrap());
    }
    let mut closed_at_once = 0;
    for s in &mut idle {
        if closed_within(s, Duration::from_millis(50)).await {
            closed_at_once += 1;
        }
    }
    assert_eq!(
        closed_at_once,
        300 - edge_process::observe::METRICS_CONNECTIONS
    );

    // Meanwhile MQTT clients connect and messages flow.
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

    // The silent ones get the header deadline (10 s), then the endpoint answers again.
    let started = Instant::now();
    for s in &mut idle {
        assert!(
            closed_within(s, Duration::from_secs(15)).await,
            "a silent connection was kept"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(12));
    assert!(get_metrics(metrics)
        .await
        .unwrap()
        .contains("edgehub_messages_received"));
    sender.close(Duration::from_secs(2)).await;
    receiver.close(Duration::from_secs(2)).await;
    t.rt.shutdown().await;
}

#[test]
fn the_mqtt_budget_leaves_room_for_every_http_server_and_the_stores() {
    use iotedge_local::runtime::mqtt_connection_budget;
    // A 1,024-descriptor process with three modules: MQTT gets what the others cannot take.
    let mqtt = mqtt_connection_budget(1024, 3);
    assert!((64..1024 - 256 - 256).contains(&mqtt), "{mqtt}");
    assert_eq!(mqtt_connection_budget(20_000, 3), mqtt + (20_000 - 1024));
    assert_eq!(mqtt_connection_budget(100, 3), 64, "never below 64");
}

/// A client that sends twin requests and never reads the answers: past 8 MiB left unread
/// its connection is closed (socket and all), and counted; others are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_replies_is_disconnected() {
    let t = start_with(
        manifest(&["sender", "receiver"], ROUTES, 7200, json!({})),
        |_| {},
    )
    .await;
    // A reported section near IoT Hub's 32 KB, so each twin answer is large.
    let sender = t.client("sender").await;
    sender
        .update_reported(&json!({"pad": "x".repeat(30_000)}))
        .await
        .unwrap();
    sender.close(Duration::from_secs(2)).await;

    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", t.rt.mqtt_port))
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls =
        tokio_rustls::TlsConnector::from(iotedge_local::testing::tls_client_config(&t.rt.ca_pem))
            .connect(name, tcp)
            .await
            .unwrap();
    let key = runtime_state::KeyStore::new(runtime_state::layout::module_keys(t.rt.state_dir()))
        .key("sender")
        .unwrap();
    let hub = "local-hub.azure-devices.net";
    let expiry = u64::try_from(chrono::Utc::now().timestamp()).unwrap() + 600;
    let token = edge_protocol::sas::make_token(
        &edge_protocol::sas::resource_uri(hub, "edge-device", Some("sender")),
        &key,
        expiry,
    )
    .unwrap();
    let mut connect = rumqttc::Connect::new("edge-device/sender");
    connect.keep_alive = 300;
    connect.login = Some(rumqttc::Login::new(
        format!("{hub}/edge-device/sender/?api-version=2019-10-01"),
        token,
    ));
    let mut out = bytes::BytesMut::new();
    rumqttc::Packet::Connect(connect)
        .write(&mut out, 1 << 20)
        .unwrap();
    for rid in 0..2_000 {
        let p = rumqttc::Publish::new(
            format!("$iothub/twin/GET/?$rid={rid}"),
            rumqttc::QoS::AtMostOnce,
            "",
        );
        rumqttc::Packet::Publish(p)
            .write(&mut out, 1 << 20)
            .unwrap();
    }
    tls.write_all(&out).await.unwrap();
    // 2,000 answers of ~30 KB: far past what the socket buffers and the 8 MiB take.
    let deadline = Instant::now() + Duration::from_secs(20);
    while t
        .rt
        .hub
        .prometheus
        .refused_count("slow_client", "edge-device/sender")
        == 0
    {
        assert!(Instant::now() < deadline, "never counted as a slow client");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The connection is gone: reading what was already on its way ends in EOF.
    let mut buf = vec![0u8; 1 << 20];
    let mut read = 0usize;
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => read += n,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "still open after {read} bytes");
    assert!(
        read < 2_000 * 30_000,
        "not every answer was sent: {read} bytes"
    );
    // Others are served.
    let receiver = t.client("receiver").await;
    receiver.close(Duration::from_secs(2)).await;
    t.rt.shutdown().await;
}

/// Connects leaf device `id` (registered on the way) with rumqttc; the client and its
/// event loop, polled by a task that counts PUBACKs.
async fn leaf(
    t: &iotedge_local::testing::TestRuntime,
    id: &str,
) -> (rumqttc::AsyncClient, tokio::sync::watch::Receiver<usize>) {
    let hub = "local-hub.azure-devices.net";
    let key = runtime_state::KeyStore::new(runtime_state::layout::registry(t.rt.state_dir()))
        .ensure(id)
        .unwrap();
    let expiry = u64::try_from(chrono::Utc::now().timestamp()).unwrap() + 600;
    let token = edge_protocol::sas::make_token(
        &edge_protocol::sas::resource_uri(hub, id, None),
        &key,
        expiry,
    )
    .unwrap();
    let mut o = rumqttc::MqttOptions::new(id, "localhost", t.rt.mqtt_port);
    o.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(
        iotedge_local::testing::tls_client_config(&t.rt.ca_pem),
    )))
    .set_credentials(format!("{hub}/{id}/?api-version=2019-10-01"), token)
    .set_keep_alive(Duration::from_secs(60))
    .set_max_packet_size(1 << 20, 1 << 20)
    .set_inflight(100);
    let (c, mut ev) = rumqttc::AsyncClient::new(o, 200);
    let (acks_tx, acks) = tokio::sync::watch::channel(0usize);
    tokio::spawn(async move {
        loop {
            match ev.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                    acks_tx.send_modify(|n| *n += 1)
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    (c, acks)
}

async fn acked(acks: &mut tokio::sync::watch::Receiver<usize>, n: usize, within: Duration) {
    let done = tokio::time::timeout(within, acks.wait_for(|&k| k >= n))
        .await
        .is_ok();
    assert!(
        done,
        "{n} PUBACKs within {within:?}: got {}",
        *acks.borrow()
    );
}

/// A leaf device sending far past its rate is taken at its rate (traffic shaping, as IoT
/// Hub does: later PUBACKs, nothing refused or lost), and another device is served at once
/// meanwhile (issue #26 item 13: 400 × 500 KB from one device grew the store 207 MB/s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaf_device_flooding_edgehub_is_taken_at_its_rate_and_others_are_not_slowed() {
    const UNITS: u32 = 1024; // 4 MiB/s, with a burst of 8 MiB
    let t = start_with(
        manifest(&["sender", "receiver"], ROUTES, 7200, json!({})),
        |o| o.device_units_per_sec = UNITS,
    )
    .await;
    let (flood, mut flood_acks) = leaf(&t, "flooder").await;
    let (calm, mut calm_acks) = leaf(&t, "calm").await;
    let body = vec![b'x'; 256 * 1024];
    let n = 96; // 24 MiB: 8 MiB of burst, then 16 MiB at 4 MiB/s
    let started = Instant::now();
    let sender = tokio::spawn(async move {
        for i in 0..n {
            flood
                .publish(
                    format!("devices/flooder/messages/events/n={i}"),
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    body.clone(),
                )
                .await
                .unwrap();
        }
        flood
    });
    // While the flood is shaped, the calm device's message is taken at once.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let asked = Instant::now();
    calm.publish(
        "devices/calm/messages/events/",
        rumqttc::QoS::AtLeastOnce,
        false,
        r#"{"CycleTime": 1}"#,
    )
    .await
    .unwrap();
    acked(&mut calm_acks, 1, Duration::from_secs(5)).await;
    let calm_took = asked.elapsed();
    assert!(
        *flood_acks.borrow() < n,
        "the flood was still being shaped when the calm device sent"
    );
    acked(&mut flood_acks, n, Duration::from_secs(30)).await;
    let took = started.elapsed();
    let _flood = sender.await.unwrap();
    let metrics = &t.rt.hub.prometheus;
    println!(
        "shaping: 24 MiB from one device taken in {:.2} s; the other device's PUBACK in {:.1} ms; {} publishes waited",
        took.as_secs_f64(),
        calm_took.as_secs_f64() * 1e3,
        metrics.throttled_count("flooder")
    );
    // (24 − 8) MiB at 4 MiB/s: at least 4 s (less 5 % for timer granularity).
    assert!(took >= Duration::from_millis(3_800), "{took:?}: not shaped");
    assert!(calm_took < Duration::from_millis(500), "{calm_took:?}");
    assert!(metrics.throttled_count("flooder") > 0);
    assert_eq!(metrics.throttled_count("calm"), 0);
    t.rt.shutdown().await;
}
