//! Scoring speed on one core (ONNX Runtime with one intra-op thread):
//! - `single message`: the classifier's whole path for one telemetry message — bytes → JSON →
//!   features → ONNX Runtime → JSON answer (issue #3 target: ≥ 77,000 messages/s);
//! - `batch of 1024`: model throughput on batched rows (target: ≥ 500,000 rows/s);
//! - `history/…`: the same in history mode (issue #18 target: ≥ 50,000 messages/s on one
//!   core): bytes → JSON → the device's history (100 devices, each an engine of the file,
//!   rows in cycle order) → 64 features → the history model → JSON answer with the interval,
//!   one message at a time and in batches of 64 messages (the classifier's `MaxBatchSize`).
//!
//! Rows are the first rows of C-MAPSS `test_FD003` (set `CMAPSS_DIR`); the tutorial's Python
//! path runs on the same rows in `modules/turbofanRulClassifier/bench/run.sh`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rul_model::{HistoryModel, RulModel};
use std::hint::black_box;
use std::path::Path;
use turbofan_domain::history::{self, Answer, HistoryStore, Prediction};
use turbofan_domain::{cmapss, scoring::Request, scoring::RowAnswer};

fn bench(c: &mut Criterion) {
    let model_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/rul.onnx");
    let mut model =
        RulModel::load(&model_path, 1).expect("model loads (ORT_DYLIB_PATH, models/rul.onnx)");
    let rows =
        cmapss::read_rows(&cmapss::data_dir().join("test_FD003.txt")).expect("C-MAPSS test_FD003");
    let bodies: Vec<Vec<u8>> = rows
        .iter()
        .take(1024)
        .map(|r| r.to_json().into_bytes())
        .collect();
    let features: Vec<f32> = rows.iter().take(1024).flat_map(|r| r.features()).collect();

    let mut g = c.benchmark_group("classifier");
    g.throughput(Throughput::Elements(1));
    let mut i = 0;
    let mut out = Vec::with_capacity(1024);
    g.bench_function("single message", |b| {
        b.iter(|| {
            let body = &bodies[i % bodies.len()];
            i += 1;
            let req = Request::parse(black_box(body), 256 * 1024).expect("valid row");
            let p = model.predict(&req.features).expect("prediction");
            out.clear();
            req.write_response(&p, &mut out);
            black_box(out.len())
        })
    });
    g.throughput(Throughput::Elements(1024));
    g.bench_function("batch of 1024 rows", |b| {
        b.iter(|| model.predict(black_box(&features)).expect("prediction"))
    });
    g.finish();
    history_bench(c, &rows);
}

/// One message through history scoring, as the classifier does it (modules/turbofanRulClassifier/src/history.rs).
fn score_history(
    bodies: &[(String, u32, Vec<u8>)],
    store: &mut HistoryStore,
    model: &mut HistoryModel,
    features: &mut Vec<f32>,
    out: &mut Vec<u8>,
) -> usize {
    let requests: Vec<Request<'_>> = bodies
        .iter()
        .map(|(_, _, b)| Request::parse(black_box(b), 256 * 1024).expect("valid row"))
        .collect();
    features.clear();
    let mut pending = Vec::with_capacity(bodies.len());
    for ((device, cycle, _), req) in bodies.iter().zip(&requests) {
        let obs = store.observe(device, *cycle, &history::model_sensors(&req.features), 0);
        match obs.answer {
            Answer::Score(f) => {
                features.extend_from_slice(&f[..]);
                pending.push((None, obs.history_cycles, obs.missing_cycles));
            }
            Answer::Again(p) => pending.push((Some(p), obs.history_cycles, obs.missing_cycles)),
        }
    }
    let p = model.predict(features).expect("prediction");
    let mut at = 0;
    let mut written = 0;
    for (((device, cycle, _), req), (known, cycles, missing)) in
        bodies.iter().zip(&requests).zip(pending)
    {
        let got = known.unwrap_or_else(|| {
            let i = p[at];
            at += 1;
            let k = Prediction {
                rul: i.rul,
                low: i.low,
                high: i.high,
            };
            store.record(device, *cycle, k);
            k
        });
        out.clear();
        req.write_answers(
            &[RowAnswer {
                rul: got.rul,
                interval: Some((got.low, got.high)),
                history_cycles: Some(cycles),
                missing_cycles: Some(missing),
            }],
            out,
        );
        written += out.len();
    }
    written
}

fn history_bench(c: &mut Criterion, rows: &[cmapss::Row]) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/rul_history.onnx");
    let mut model = HistoryModel::load(&path, 1, history::N_FEATURES, history::FEATURE_SET)
        .expect("history model loads (models/rul_history.onnx)");
    // Messages in the order engines would send them: cycle by cycle, all engines in turn.
    let mut sorted: Vec<&cmapss::Row> = rows.iter().collect();
    sorted.sort_by_key(|r| (r.cycle, r.unit));
    let messages: Vec<(String, u32, Vec<u8>)> = sorted
        .iter()
        .map(|r| {
            (
                format!("Client_{:03}", r.unit),
                r.cycle,
                r.to_json().into_bytes(),
            )
        })
        .collect();
    let mut g = c.benchmark_group("history");
    let mut features = Vec::new();
    let mut out = Vec::new();
    // The store is filled anew each time the file is used up, so every message is a new
    // cycle of its engine (not a redelivery).
    let mut store = HistoryStore::new(10_000, u64::MAX);
    let mut i = 0;
    g.throughput(Throughput::Elements(1));
    g.bench_function("single message", |b| {
        b.iter(|| {
            if i == messages.len() {
                (i, store) = (0, HistoryStore::new(10_000, u64::MAX));
            }
            i += 1;
            score_history(
                &messages[i - 1..i],
                &mut store,
                &mut model,
                &mut features,
                &mut out,
            )
        })
    });
    let mut store = HistoryStore::new(10_000, u64::MAX);
    let mut i = 0;
    g.throughput(Throughput::Elements(64));
    g.bench_function("batch of 64 messages", |b| {
        b.iter(|| {
            if i + 64 > messages.len() {
                (i, store) = (0, HistoryStore::new(10_000, u64::MAX));
            }
            i += 64;
            score_history(
                &messages[i - 64..i],
                &mut store,
                &mut model,
                &mut features,
                &mut out,
            )
        })
    });
    // The model alone on 1024 rows of features.
    let mut store = HistoryStore::new(10_000, u64::MAX);
    let batch: Vec<f32> = messages
        .iter()
        .take(1024)
        .flat_map(|(d, c, b)| {
            let req = Request::parse(b, 1 << 20).expect("valid row");
            match store
                .observe(d, *c, &history::model_sensors(&req.features), 0)
                .answer
            {
                Answer::Score(f) => f.to_vec(),
                Answer::Again(_) => unreachable!("first deliveries"),
            }
        })
        .collect();
    g.throughput(Throughput::Elements(1024));
    g.bench_function("batch of 1024 rows", |b| {
        b.iter(|| model.predict(black_box(&batch)).expect("prediction"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
