//! edgeHub's memory with a long backlog: a module sends N messages to a module that is not
//! running, the runtime is restarted on the same state, then the module connects and takes
//! them all. Reports the process's resident memory as the backlog grows, after the restart
//! and while it drains, and checks that every message arrives, once.
//!
//! `cargo bench -p iotedge-local --bench backlog -- [--messages N] [--window W]`
//!
//! One process holds edgeHub and the two module clients; the clients' memory does not grow
//! with the backlog, so what grows is edgeHub's.

use edge_client::{Message, ModuleClient, Settings};
use iotedge_local::testing::bench::arg;
use iotedge_local::{Options, Runtime};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

#[global_allocator]
static ALLOC: edge_client::Allocator = edge_client::Allocator;

/// A ~600-byte JSON body numbered `i` (the readings are the same in every message).
fn body(i: u64) -> Vec<u8> {
    let mut b = format!("{{\"i\":{i},\"CycleTime\":{i}");
    for s in 1..=21 {
        b.push_str(&format!(",\"Sensor{s}\":{:.4}", 500.0 + s as f64 * 1.2345));
    }
    b.push_str(",\"pad\":\"");
    while b.len() < 598 {
        b.push('x');
    }
    b.push_str("\"}");
    b.into_bytes()
}

/// Resident and peak resident memory of this process, in MiB.
fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn dir_mib(dir: &Path) -> f64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum::<u64>()
        })
        .unwrap_or(0) as f64
        / (1024.0 * 1024.0)
}

fn options(manifest: &Path, state: &Path) -> Options {
    let mut opts = Options::new(manifest, state);
    opts.mqtt_port = 0;
    opts.start_modules = false;
    opts
}

fn main() {
    let n = arg("--messages", 1_000_000);
    let window = arg("--window", 1000) as usize;
    let report_every = (n / 8).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio");
    rt.block_on(async move {
        let dir = tempfile::tempdir_in(std::env::var_os("BACKLOG_DIR").unwrap_or_else(|| ".".into()))
            .expect("tempdir");
        let manifest = json!({"modulesContent": {
            "$edgeAgent": {"properties.desired": {"modules": {
                "sender": {"settings": {"image": "local/sender"}},
                "receiver": {"settings": {"image": "local/receiver"}}}},
                "schemaVersion": "1.1"},
            "$edgeHub": {"properties.desired": {
                "routes": {"hop": "FROM /messages/modules/sender/outputs/out INTO BrokeredEndpoint(\"/modules/receiver/inputs/in\")"},
                "storeAndForwardConfiguration": {"timeToLiveSecs": 86400}}}
        }});
        let path = dir.path().join("deployment.json");
        std::fs::write(&path, manifest.to_string()).expect("manifest");
        let state = dir.path().join("state");
        let queues = state.join("queues");
        println!("backlog benchmark: {n} messages of ~600 bytes for a module that is not running, QoS 1, TLS, sender window {window}");
        let (rss, _) = rss_mib();
        println!("start: RSS {rss:.0} MiB");

        let runtime = Runtime::start(options(&path, &state)).await.expect("runtime");
        let settings = |rt: &Runtime, m: &str| Settings::from_vars(&rt.module_env(m).expect("env")).expect("settings");
        let sender = ModuleClient::connect(settings(&runtime, "sender")).await.expect("sender");
        let permits = Arc::new(Semaphore::new(window));
        let start = Instant::now();
        for i in 0..n {
            let permit = permits.clone().acquire_owned().await.expect("semaphore");
            let s = sender.clone();
            tokio::spawn(async move {
                s.send_output("out", Message::json(body(i))).await.expect("send accepted");
                drop(permit);
            });
            if (i + 1) % report_every == 0 {
                let (rss, hwm) = rss_mib();
                let q = &runtime.hub.endpoint_stats()["receiver"];
                println!(
                    "queued {:>9} ({:>9} on disk) after {:>6.1} s: RSS {rss:>6.0} MiB (peak {hwm:.0}), store {:>6.0} MiB",
                    q.queued, q.on_disk, start.elapsed().as_secs_f64(), dir_mib(&queues)
                );
            }
        }
        let _ = permits.acquire_many(window as u32).await.expect("all sent");
        let sent_secs = start.elapsed().as_secs_f64();
        println!("sent {n} in {sent_secs:.1} s = {:.0} messages/s", n as f64 / sent_secs);
        sender.close(Duration::from_secs(5)).await;
        runtime.shutdown().await;

        let t = Instant::now();
        let runtime = Runtime::start(options(&path, &state)).await.expect("runtime again");
        let (rss, hwm) = rss_mib();
        let q = runtime.hub.endpoint_stats()["receiver"];
        println!(
            "restarted in {:.1} s: {} queued ({} on disk); RSS {rss:.0} MiB (peak so far {hwm:.0})",
            t.elapsed().as_secs_f64(), q.queued, q.on_disk
        );
        let receiver = ModuleClient::connect(settings(&runtime, "receiver")).await.expect("receiver");
        let mut inputs = receiver.inputs().expect("inputs");
        let t = Instant::now();
        let mut max_rss: f64 = 0.0;
        // The sender's tasks may publish in any order, so each message is checked off once.
        let mut seen = vec![false; n as usize];
        for k in 0..n {
            let m = tokio::time::timeout(Duration::from_secs(60), inputs.recv())
                .await
                .expect("messages keep arriving")
                .expect("input stream open");
            let v: serde_json::Value = serde_json::from_slice(&m.message.body).expect("json");
            let i = v["i"].as_u64().expect("numbered") as usize;
            assert!(!std::mem::replace(&mut seen[i], true), "message {i} arrived twice");
            m.ack();
            if (k + 1) % report_every == 0 {
                let (rss, _) = rss_mib();
                max_rss = max_rss.max(rss);
            }
        }
        let secs = t.elapsed().as_secs_f64();
        let (_, hwm) = rss_mib();
        println!(
            "drained {n}, each once, in {secs:.1} s = {:.0} messages/s; RSS while draining at most {max_rss:.0} MiB; peak of the whole run {hwm:.0} MiB",
            n as f64 / secs
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        receiver.close(Duration::from_secs(5)).await;
        runtime.hub.flush().await.ok();
        runtime.shutdown().await;
        println!("store left: {:.0} MiB", dir_mib(&queues));
    });
}
