//! Scoring speed on one core (ONNX Runtime with one intra-op thread):
//! - `single message`: the classifier's whole path for one telemetry message — bytes → JSON →
//!   features → ONNX Runtime → JSON answer (issue #3 target: ≥ 77,000 messages/s);
//! - `batch of 1024`: model throughput on batched rows (target: ≥ 500,000 rows/s).
//!
//! Rows are the first rows of C-MAPSS `test_FD003` (set `CMAPSS_DIR`); the tutorial's Python
//! path runs on the same rows in `modules/turbofanRulClassifier/bench/run.sh`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rul_model::RulModel;
use std::hint::black_box;
use std::path::Path;
use turbofan_domain::{cmapss, scoring::Request};

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
}

criterion_group!(benches, bench);
criterion_main!(benches);
