//! The router's pure transform, bytes in → messages out (issue #4 target: ≥ 500,000 messages/s
//! on one core): `deviceInput` on a C-MAPSS-sized telemetry body, and `rulInput` on the
//! classifier's answer for it.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use edge_protocol::Message;
use std::hint::black_box;
use turbofan_domain::router;

fn telemetry() -> String {
    let mut s = String::from("{\"CycleTime\": 31, \"OperationalSetting1\": -0.0006, \"OperationalSetting2\": 0.0004, \"OperationalSetting3\": 100.0");
    let values = [
        518.67, 642.58, 1581.22, 1398.91, 14.62, 21.61, 554.42, 2388.08, 9056.4, 1.3, 47.23,
        521.79, 2388.06, 8130.11, 8.4024, 0.03, 393.0, 2388.0, 100.0, 38.81, 23.3552,
    ];
    for (i, v) in values.iter().enumerate() {
        s.push_str(&format!(", \"Sensor{}\": {v}", i + 1));
    }
    s.push('}');
    s
}

fn leaf() -> Message {
    let mut m = Message::json(telemetry());
    m.connection_device_id = Some("Client_001".into());
    m.correlation_id = Some("0f8fad5b-d9cb-469f-a165-70867728950e".into());
    m.enqueued_time = Some("2026-11-21T05:00:00.000Z".into());
    m
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("router");
    g.throughput(Throughput::Elements(1));
    let input = leaf();
    g.bench_function("deviceInput", |b| {
        b.iter_batched(
            || input.clone(),
            |m| {
                router::device_input(
                    black_box(m),
                    || "2026-11-21T05:00:00.000Z".into(),
                    || unreachable!(),
                )
            },
            BatchSize::SmallInput,
        )
    });
    let mut classified = router::device_input(leaf(), || "now".into(), || unreachable!())
        .remove(0)
        .1;
    let t = telemetry();
    classified.body = format!("[{},\"PredictedRul\":112.5}}]", &t[..t.len() - 1]).into();
    g.bench_function("rulInput", |b| {
        b.iter_batched(
            || classified.clone(),
            |m| router::rul_input(black_box(m), None),
            BatchSize::SmallInput,
        )
    });
    let body = classified.body.clone();
    g.bench_function("parse classified body", |b| {
        b.iter(|| turbofan_domain::numeric::parse_objects(black_box(&body)).map(|v| v.len()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
