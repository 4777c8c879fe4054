//! History mode through the whole pipeline: `deployment.template.json` on the local runtime
//! (the classifier in its default `ScoringMode` = `history`), ten engines of `test_FD003`
//! replayed in full as leaf devices. Every RUL message in IoT Hub carries its interval,
//! the cycles of history behind it and the model's name; each engine's last-cycle prediction
//! is the training script's reference for that engine (models/reference/history_test_FD003.pred).

use e2e::pipeline::{self, wait_for};
use e2e::Pipeline;
use leaf_simulator::{sent_log, simulate, Progress, SimConfig};
use std::collections::HashMap;
use std::time::Duration;
use turbofan_domain::cmapss;

const DEVICES: usize = 10;

fn reference() -> HashMap<(u32, u32), [f32; 3]> {
    let rows = cmapss::read_rows(&pipeline::data_file("test_FD003.txt")).expect("test_FD003");
    let text = std::fs::read_to_string(
        pipeline::repo_root().join("models/reference/history_test_FD003.pred"),
    )
    .expect("history reference (models/train_history.py)");
    let mut keys: Vec<(u32, u32)> = rows.iter().map(|r| (r.unit, r.cycle)).collect();
    keys.sort_unstable();
    keys.into_iter()
        .zip(text.lines())
        .map(|(k, l)| {
            let v: Vec<f32> = l.split_whitespace().map(|t| t.parse().unwrap()).collect();
            (k, [v[0], v[1], v[2]])
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_engines_in_history_mode_end_with_the_reference_predictions() {
    let manifest = pipeline::deployment_manifest(&[]).expect("the deployment manifest");
    let p = Pipeline::start(&manifest, false)
        .await
        .expect("the runtime starts");
    p.wait_connected(Duration::from_secs(60))
        .await
        .expect("modules up");

    let log = p.dir().join("sent.jsonl");
    let mut cfg = SimConfig::new(p.state(), pipeline::data_file("test_FD003.txt"));
    cfg.devices = Some(DEVICES);
    cfg.rate = 400.0;
    cfg.sent_log = Some(log.clone());
    let summary = simulate(&cfg, Progress::new())
        .await
        .expect("the simulator runs");
    assert!(summary.is_complete(), "{summary}");
    let (sent, _) = sent_log::read(&log).expect("the sent log");
    wait_for(
        "a RUL message for every sent message",
        Duration::from_secs(120),
        || {
            let o = p.upstream()?;
            Ok((o.ruls.len() + o.dead.len() >= sent.len()).then_some(()))
        },
    )
    .await
    .unwrap();
    let up = p.upstream().unwrap();
    assert!(up.dead.is_empty(), "dead letters: {:?}", up.dead);

    let reference = reference();
    let unit_of: HashMap<&str, u32> = sent.iter().map(|s| (s.device.as_str(), s.unit)).collect();
    let mut last: HashMap<&str, &e2e::upstream::RulMessage> = HashMap::new();
    for r in &up.ruls {
        assert_eq!(r.model.as_deref(), Some("rul-history-hgb"), "{r:?}");
        assert_eq!(r.history_cycles, Some(r.cycle), "a clean run: {r:?}");
        let (low, high) = r.interval.expect("an interval");
        assert!(low <= r.predicted_rul && r.predicted_rul <= high, "{r:?}");
        let e = last.entry(r.device.as_str()).or_insert(r);
        if r.cycle > e.cycle {
            *e = r;
        }
    }
    assert_eq!(last.len(), DEVICES);
    for (device, r) in last {
        let unit = unit_of[device];
        let last_cycle = reference
            .keys()
            .filter(|k| k.0 == unit)
            .map(|k| k.1)
            .max()
            .unwrap();
        assert_eq!(
            r.cycle, last_cycle,
            "{device}: its last cycle reached IoT Hub"
        );
        let want = reference[&(unit, last_cycle)];
        let (low, high) = r.interval.unwrap();
        let got = [r.predicted_rul as f32, low as f32, high as f32];
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g - w).abs() <= 1e-4,
                "{device} (unit {unit}): {got:?} vs reference {want:?}"
            );
        }
    }
    p.shutdown().await;
}
