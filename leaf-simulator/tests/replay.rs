//! The simulator against an in-process runtime: leaf devices registered in its registry,
//! connected through its edgeHub with its CA, their telemetry routed to `$upstream`.

use iotedge_local::testing::{manifest, start_with};
use leaf_simulator::{sent_log, simulate, Progress, SimConfig, SimError};
use runtime_state::layout;
use runtime_state::KeyStore;
use serde_json::{json, Value};
use std::collections::HashMap;

const LEAF_TO_UPSTREAM: (&str, &str) = (
    "leafToHub",
    "FROM /messages/* WHERE NOT IS_DEFINED($connectionModuleId) INTO $upstream",
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_engines_arrive_upstream_once_each_from_their_own_device() {
    let t = start_with(manifest(&[], &[LEAF_TO_UPSTREAM], 7200, json!({})), |_| {}).await;
    let state = t.rt.state_dir().to_path_buf();
    let data = turbofan_domain::cmapss::data_dir().join("test_FD003.txt");
    let mut cfg = SimConfig::new(&state, data);
    cfg.devices = Some(3);
    cfg.max_messages = Some(5);
    cfg.rate = 50.0;
    cfg.sent_log = Some(t.dir.path().join("sent.jsonl"));

    let progress = Progress::new();
    let summary = simulate(&cfg, progress.clone())
        .await
        .expect("simulation runs");
    assert!(summary.is_complete(), "{summary}");
    assert_eq!(
        (summary.devices, summary.devices_connected, summary.sent),
        (3, 3, 15)
    );
    assert_eq!((progress.sent(), progress.failed()), (15, 0));

    let registry = KeyStore::new(layout::registry(&state));
    for d in ["Client_001", "Client_002", "Client_003"] {
        assert!(registry.key(d).is_some(), "{d} registered");
    }

    let (sent, torn) = sent_log::read(&t.dir.path().join("sent.jsonl")).unwrap();
    assert_eq!((sent.len(), torn), (15, 0));
    let upstream = t.wait_upstream(15).await;
    let mut by_cid: HashMap<&str, Vec<&Value>> = HashMap::new();
    for r in &upstream {
        if let Some(cid) = r["properties"]["system"]["correlationId"].as_str() {
            by_cid.entry(cid).or_default().push(r);
        }
    }
    for s in &sent {
        let got = by_cid.get(s.correlation_id.as_str()).map_or(&[][..], |v| v);
        assert_eq!(got.len(), 1, "{} arrives exactly once", s.correlation_id);
        let r = got[0];
        assert_eq!(r["origin"], json!(s.device));
        assert_eq!(r["module"], Value::Null, "from a device, not a module");
        assert_eq!(r["payload"]["CycleTime"], json!(s.cycle));
        assert_eq!(
            r["properties"]["system"]["messageId"],
            json!(format!("{}-{}", s.device, s.cycle))
        );
        assert_eq!(
            r["properties"]["system"]["contentType"],
            json!("application/json")
        );
        assert_eq!(s.unit, s.device[7..].parse::<u32>().unwrap());
    }
    assert_eq!(upstream.len(), 15, "nothing else arrived");
    for d in ["Client_001", "Client_002", "Client_003"] {
        let cycles: Vec<u64> = upstream
            .iter()
            .filter(|r| r["origin"] == json!(d))
            .filter_map(|r| r["payload"]["CycleTime"].as_u64())
            .collect();
        assert_eq!(cycles, [1, 2, 3, 4, 5], "{d} sends in cycle order");
    }

    // Missing data is a clear error, before anything is sent.
    cfg.data_file = t.dir.path().join("test_FD009.txt");
    let e = simulate(&cfg, Progress::new()).await.unwrap_err();
    assert!(matches!(e, SimError::Data(_)), "{e}");
    assert!(e.to_string().contains("test_FD009.txt"), "{e}");
    t.rt.shutdown().await;
}
