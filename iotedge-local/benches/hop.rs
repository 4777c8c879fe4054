//! Load benchmark of one module→module route hop through edgeHub: QoS 1 over TLS, with the
//! project's module client on both ends, in one process on this machine.
//!
//! `cargo bench -p iotedge-local --bench hop -- [--messages N] [--rate R] [--window W]`
//!
//! Phase 1 (sustained): N messages as fast as the sender's window allows; reports
//! messages/s from the first send to the last receipt, and hop latency percentiles.
//! Phase 2 (paced): N/4 messages at R messages/s; reports hop latency percentiles.

use edge_client::{Message, ModuleClient, Settings};
use iotedge_local::testing::bench::{arg, percentile};
use iotedge_local::{Options, Runtime};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// A ~600-byte JSON body carrying its send time. The sensor readings are the same in every
/// message, formatted once: the load generator should not spend the CPU it measures.
fn body(t0: Instant, i: u64) -> Vec<u8> {
    static SENSORS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let sensors = SENSORS.get_or_init(|| {
        (1..=21)
            .map(|s| format!(",\"Sensor{s}\":{:.4}", 500.0 + s as f64 * 1.2345))
            .collect()
    });
    let ns = t0.elapsed().as_nanos() as u64;
    let mut b = format!("{{\"t\":{ns},\"i\":{i},\"CycleTime\":{i}{sensors},\"pad\":\"");
    while b.len() < 590 {
        b.push('x');
    }
    b.push_str("\"}");
    b.into_bytes()
}

fn sent_at(body: &[u8]) -> u64 {
    let s = std::str::from_utf8(body).unwrap_or("");
    s.strip_prefix("{\"t\":")
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

struct Phase {
    received: u64,
    elapsed: Duration,
    latencies_ns: Vec<u64>,
}

async fn phase(
    sender: &ModuleClient,
    inputs: &mut tokio::sync::mpsc::UnboundedReceiver<edge_client::InputMessage>,
    n: u64,
    rate: Option<u64>,
    window: usize,
    t0: Instant,
) -> Phase {
    let permits = Arc::new(Semaphore::new(window));
    let s = sender.clone();
    let start = Instant::now();
    let send = tokio::spawn(async move {
        for i in 0..n {
            if let Some(r) = rate {
                let due = start + Duration::from_secs_f64(i as f64 / r as f64);
                tokio::time::sleep_until(due.into()).await;
            }
            let permit = permits.clone().acquire_owned().await.expect("semaphore");
            let s = s.clone();
            let m = Message::json(body(t0, i));
            tokio::spawn(async move {
                s.send_output("out", m).await.expect("send accepted");
                drop(permit);
            });
        }
    });
    let mut latencies = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let m = tokio::time::timeout(Duration::from_secs(30), inputs.recv())
            .await
            .expect("messages keep arriving")
            .expect("input stream open");
        let now = t0.elapsed().as_nanos() as u64;
        latencies.push(now.saturating_sub(sent_at(&m.message.body)));
        m.ack();
    }
    let elapsed = start.elapsed();
    send.await.expect("sender task");
    latencies.sort_unstable();
    Phase {
        received: n,
        elapsed,
        latencies_ns: latencies,
    }
}

#[global_allocator]
static ALLOC: edge_client::Allocator = edge_client::Allocator;

fn main() {
    let n = arg("--messages", 200_000);
    let rate = arg("--rate", 10_000);
    let window = arg("--window", 1000) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio");
    rt.block_on(async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let manifest = json!({"modulesContent": {
            "$edgeAgent": {"properties.desired": {"modules": {
                "sender": {"settings": {"image": "local/sender"}},
                "receiver": {"settings": {"image": "local/receiver"}}}}},
            "$edgeHub": {"properties.desired": {"routes": {
                "hop": "FROM /messages/modules/sender/outputs/out INTO BrokeredEndpoint(\"/modules/receiver/inputs/in\")"}}}
        }});
        let path = dir.path().join("deployment.json");
        std::fs::write(&path, manifest.to_string()).expect("manifest");
        let mut opts = Options::new(&path, dir.path().join("state"));
        opts.mqtt_port = 0;
        opts.start_modules = false;
        opts.window = 1000;
        let runtime = Runtime::start(opts).await.expect("runtime");
        let settings = |m: &str| Settings::from_vars(&runtime.module_env(m).expect("env")).expect("settings");
        let sender = ModuleClient::connect(settings("sender")).await.expect("sender");
        let receiver = ModuleClient::connect(settings("receiver")).await.expect("receiver");
        let mut inputs = receiver.inputs().expect("inputs");
        let t0 = Instant::now();

        phase(&sender, &mut inputs, 5_000, None, window, t0).await; // warm-up
        let sustained = phase(&sender, &mut inputs, n, None, window, t0).await;
        let paced = phase(&sender, &mut inputs, n / 4, Some(rate), window, t0).await;

        let rate_sustained = sustained.received as f64 / sustained.elapsed.as_secs_f64();
        println!("hop benchmark: module -> edgeHub -> module, QoS 1, TLS, ~600-byte JSON bodies, sender window {window}");
        println!(
            "sustained: {} messages in {:.2} s = {:.0} messages/s; hop latency p50 {:.2} ms, p99 {:.2} ms",
            sustained.received,
            sustained.elapsed.as_secs_f64(),
            rate_sustained,
            percentile(&sustained.latencies_ns, 0.50) / 1e6,
            percentile(&sustained.latencies_ns, 0.99) / 1e6
        );
        println!(
            "paced at {rate}/s: {} messages; hop latency p50 {:.2} ms, p99 {:.2} ms",
            paced.received,
            percentile(&paced.latencies_ns, 0.50) / 1e6,
            percentile(&paced.latencies_ns, 0.99) / 1e6
        );
        let stats = runtime.hub.endpoint_stats();
        println!(
            "edgeHub: delivered to receiver {}, still queued {}",
            stats["receiver"].delivered, stats["receiver"].queued
        );
        sender.close(Duration::from_secs(5)).await;
        receiver.close(Duration::from_secs(5)).await;
        runtime.shutdown().await;
    });
}
