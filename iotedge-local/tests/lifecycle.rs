//! Runtime and client over time: bad routes, token renewal, runtime restarts, graceful stop.

use bytes::Bytes;
use edge_client::{Message, ModuleClient};
use iotedge_local::testing::{manifest, next_input, start};
use iotedge_local::{Options, Runtime};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const HOP: (&str, &str) = (
    "hop",
    "FROM /messages/modules/sender/outputs/out INTO BrokeredEndpoint(\"/modules/receiver/inputs/in\")",
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_that_does_not_parse_is_reported_and_the_others_keep_working() {
    let routes = [
        (
            "broken",
            "FROM /messages/* WHERE IS_DEFINED($body.x INTO $upstream",
        ),
        HOP,
    ];
    let t = start(manifest(&["sender", "receiver"], &routes, 7200, json!({}))).await;
    assert_eq!(t.rt.route_errors.len(), 1);
    let e = t.rt.route_errors[0].to_string();
    assert!(
        e.contains("route 'broken'") && e.contains("line 1, column"),
        "{e}"
    );
    let ready: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.rt.state_dir().join("runtime.json")).unwrap())
            .unwrap();
    assert_eq!(ready["routeErrors"].as_array().map(Vec::len), Some(1));

    let sender = t.client("sender").await;
    let receiver = t.client("receiver").await;
    let mut inputs = receiver.inputs().unwrap();
    sender
        .send_output("out", Message::json("{}"))
        .await
        .unwrap();
    next_input(&mut inputs).await.ack();
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_renews_its_token_before_edge_hub_closes_the_connection() {
    let t = start(manifest(&["sender", "receiver"], &[HOP], 7200, json!({}))).await;
    let mut settings = t.settings("sender");
    settings.token_ttl_secs = 5; // renewed when 1 s is left; edgeHub closes at expiry
    let sender = ModuleClient::connect(settings).await.unwrap();
    let receiver = t.client("receiver").await;
    let mut inputs = receiver.inputs().unwrap();
    tokio::time::sleep(Duration::from_secs(9)).await;
    sender
        .send_output("out", Message::json(r#"{"after":"renewals"}"#))
        .await
        .unwrap();
    let m = next_input(&mut inputs).await;
    assert_eq!(
        m.message.body,
        Bytes::from_static(br#"{"after":"renewals"}"#)
    );
    m.ack();
    let metrics = &t.rt.hub.metrics;
    assert!(
        metrics.connections.load(Ordering::Relaxed) >= 4,
        "sender should have reconnected with fresh tokens at least twice"
    );
    assert_eq!(
        metrics.auth_failures.load(Ordering::Relaxed),
        0,
        "no connection attempt with an expired token"
    );
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_reconnect_when_the_runtime_comes_back() {
    let t = start(manifest(&["sender", "receiver"], &[HOP], 7200, json!({}))).await;
    let sender = t.client("sender").await;
    let receiver = t.client("receiver").await;
    let mut inputs = receiver.inputs().unwrap();
    sender
        .send_output("out", Message::json(r#"{"n":1}"#))
        .await
        .unwrap();
    next_input(&mut inputs).await.ack();
    // Once edgeHub has the acknowledgement, the message is not delivered again.
    wait_delivered(&t.rt, "receiver", 1).await;

    let t = t.restart(Duration::from_millis(500)).await;

    tokio::time::timeout(
        Duration::from_secs(30),
        sender.send_output("out", Message::json(r#"{"n":2}"#)),
    )
    .await
    .expect("the send completes once the sender has reconnected")
    .unwrap();
    let m = next_input(&mut inputs).await;
    assert_eq!(m.message.body, Bytes::from_static(br#"{"n":2}"#));
    m.ack();
    t.rt.shutdown().await;
}

async fn wait_delivered(rt: &Runtime, module: &str, n: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while rt.hub.endpoint_stats()[module].delivered < n {
        assert!(
            std::time::Instant::now() < deadline,
            "edgeHub never saw {module} acknowledge {n} message(s)"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_edge_hub_acknowledged_are_delivered_after_a_runtime_restart() {
    let t = start(manifest(&["sender", "receiver"], &[HOP], 7200, json!({}))).await;
    let sender = t.client("sender").await;
    for n in 0..5 {
        // Returns once edgeHub acknowledged it: from then on edgeHub answers for it.
        sender
            .send_output("out", Message::json(format!(r#"{{"n":{n}}}"#)))
            .await
            .unwrap();
    }
    let receiver = t.client("receiver").await;
    let mut inputs = receiver.inputs().unwrap();
    for n in 0..2 {
        let m = next_input(&mut inputs).await;
        assert_eq!(m.message.body, Bytes::from(format!(r#"{{"n":{n}}}"#)));
        m.ack();
    }
    wait_delivered(&t.rt, "receiver", 2).await;
    drop(receiver);
    drop(sender);

    let t = t.restart(Duration::ZERO).await;
    assert_eq!(t.rt.hub.endpoint_stats()["receiver"].queued, 3);
    let receiver = t.client("receiver").await;
    let mut inputs = receiver.inputs().unwrap();
    for n in 2..5 {
        let m = next_input(&mut inputs).await;
        assert_eq!(m.message.body, Bytes::from(format!(r#"{{"n":{n}}}"#)));
        assert_eq!(m.message.connection_module_id.as_deref(), Some("sender"));
        assert_eq!(m.message.input_name.as_deref(), Some("in"));
        m.ack();
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(500), inputs.recv())
            .await
            .is_err(),
        "nothing else is delivered"
    );
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_finishes_messages_in_flight_and_leaves_the_rest_to_edge_hub() {
    let routes = [
        HOP,
        (
            "done",
            "FROM /messages/modules/receiver/outputs/done INTO $upstream",
        ),
    ];
    let t = start(manifest(&["sender", "receiver"], &routes, 7200, json!({}))).await;
    let sender = t.client("sender").await;
    for i in 0..5 {
        sender
            .send_output("out", Message::json(format!("{{\"i\":{i}}}")))
            .await
            .unwrap();
    }
    let receiver = t.client("receiver").await;
    let started = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let handler_client = receiver.clone();
    let counter = started.clone();
    let run = tokio::spawn(async move {
        edge_client::run_inputs(
            &receiver,
            2,
            async {
                let _ = stop_rx.await;
            },
            move |_input, m: Message| {
                let c = handler_client.clone();
                counter.fetch_add(1, Ordering::SeqCst);
                async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    c.send_output("done", m).await
                }
            },
        )
        .await
    });
    while started.load(Ordering::SeqCst) < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop_tx.send(()).unwrap();
    run.await.unwrap().unwrap();
    let finished = started.load(Ordering::SeqCst);
    assert_eq!(finished, 2, "nothing new starts after stop");
    let done = t.wait_upstream(finished).await;
    assert_eq!(
        done.len(),
        finished,
        "every started message finished its work"
    );

    // What was not started is still in edgeHub, and only that.
    let next = t.client("receiver").await;
    let mut inputs = next.inputs().unwrap();
    let mut rest = Vec::new();
    for _ in 0..(5 - finished) {
        let m = next_input(&mut inputs).await;
        rest.push(m.message.body.clone());
        m.ack();
    }
    let extra = tokio::time::timeout(Duration::from_millis(500), inputs.recv()).await;
    assert!(
        extra.is_err(),
        "delivered again: {:?} (finished: {done:?}, rest: {rest:?})",
        extra.ok().flatten().map(|m| m.message.body)
    );
    let mut all: Vec<Bytes> = done
        .iter()
        .map(|r| Bytes::from(r["payload"].to_string()))
        .collect();
    all.extend(rest);
    all.sort();
    let want: Vec<Bytes> = (0..5)
        .map(|i| Bytes::from(format!("{{\"i\":{i}}}")))
        .collect();
    assert_eq!(all, want, "each message handled exactly once");
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modules_get_a_device_environment_with_binds_and_no_keys() {
    let dir = tempfile::tempdir().unwrap();
    let template =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deployment.template.json");
    let mut opts = Options::new(template, dir.path().join("state"));
    opts.mqtt_port = 0;
    opts.start_modules = false;
    let rt = Runtime::start(opts).await.unwrap();
    let env = rt.module_env("avroFileWriter").unwrap();
    use edge_protocol::env as vars;
    for k in [
        vars::IOTHUB_HOSTNAME,
        vars::GATEWAY_HOSTNAME,
        vars::DEVICE_ID,
        vars::MODULE_ID,
        vars::GENERATION_ID,
        vars::WORKLOAD_URI,
        vars::API_VERSION,
        vars::AUTH_SCHEME,
    ] {
        assert!(env.contains_key(k), "{k} missing");
    }
    let read = vars::ModuleEnv::from_vars(|k| env.get(k).cloned())
        .unwrap()
        .expect("a runtime's environment");
    assert_eq!(read.module_id, "avroFileWriter");
    let host = rt.state_dir().join("binds/data/avrofiles");
    assert!(
        read.binds
            .contains(&("/avrofiles".to_owned(), host.display().to_string())),
        "{:?}",
        read.binds
    );
    assert!(host.is_dir());
    let key = runtime_state::KeyStore::new(runtime_state::layout::module_keys(rt.state_dir()))
        .key("avroFileWriter")
        .unwrap();
    assert!(
        env.values().all(|v| !v.contains(&key)),
        "the module key must not be in the environment"
    );
    let settings = edge_client::Settings::from_vars(&env).unwrap();
    assert_eq!(
        settings.container_path(std::path::Path::new("/avrofiles/2026/11/21/5/15.avro")),
        host.join("2026/11/21/5/15.avro")
    );
    // The edge device's key is in its IoT Edge config files: its owner's alone, as on a
    // device (a local user `nobody` connected as the edge device with it when it was 0644).
    for config in [
        "binds/etc/aziot/config.toml",
        "binds/etc/iotedge/config.yaml",
    ] {
        use std::os::unix::fs::PermissionsExt;
        let path = rt.state_dir().join(config);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{config} is {mode:o}");
    }
    rt.shutdown().await;
}
