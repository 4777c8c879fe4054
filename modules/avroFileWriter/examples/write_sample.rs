//! Writes sample archive files with this crate's writer, for the reference-reader checks in
//! `tests/avro` (Apache Avro's Python package and fastavro):
//!
//! ```sh
//! cargo run -p avroFileWriter --example write_sample -- OUT_DIR
//! ```
//!
//! `OUT_DIR` gets `schema.avsc` (the tutorial's schema), `tree/…` (files written by the
//! writer through the module's own path — JSON body, checks, group commit — in two runs, the
//! second appending to the first's file), `multi_block.avro`, `repaired.avro` (a copy cut
//! inside its last block, then repaired) and `expected.json`: the JSON records each file must
//! hold, in order.

use avro_file_writer::archive::{Archive, Outcome, INPUT};
use avro_file_writer::bucket::{Bucket, Clock};
use avro_file_writer::budget::DiskBudget;
use avro_file_writer::container::{self, Repaired};
use avro_file_writer::record::{self, RecordSchema};
use avro_file_writer::stats::Stats;
use avro_file_writer::tree::{self, TreeLock};
use avro_file_writer::writer::{self, open_container, SyncPolicy, WriterConfig};
use edge_client::Message;
use serde_json::{json, Value};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use turbofan_domain::record::{schema, BODY_FIELDS};

/// Values that exercise `float`: rounding, sign of zero, subnormals, the extremes.
const TRICKY: [f64; 12] = [
    518.67,
    -0.0008,
    0.1,
    -0.0,
    1e-45,
    1e-40,
    3.402_823_4e38,
    -123_456.789,
    42.0,
    2388.04,
    8.4052,
    100.0,
];

fn record_json(i: usize) -> Value {
    let body: serde_json::Map<String, Value> = BODY_FIELDS
        .iter()
        .enumerate()
        .map(|(k, f)| (f.to_string(), json!(TRICKY[(i + k) % TRICKY.len()])))
        .collect();
    json!({
        "CorrelationId": format!("corr-ü-日本-{i}"),
        "ConnectionDeviceId": if i % 5 == 4 { String::new() } else { format!("Client_{:03}", i % 3) },
        "CreationTimeUtc": format!("2026-11-21T05:15:{:02}.000Z", i % 60),
        "EnqueuedTimeUtc": format!("2026-11-21T05:15:{:02}.010Z", i % 60),
        "Body": body,
    })
}

fn fail(msg: String) -> ! {
    eprintln!("write_sample: {msg}");
    std::process::exit(1)
}

fn io(what: &str, e: std::io::Error) -> ! {
    fail(format!("{what}: {e}"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Some(out) = std::env::args().nth(1) else {
        fail("usage: write_sample OUT_DIR".into())
    };
    let out = Path::new(&out);
    std::fs::create_dir_all(out).unwrap_or_else(|e| io("creating OUT_DIR", e));
    std::fs::write(out.join("schema.avsc"), schema()).unwrap_or_else(|e| io("schema.avsc", e));
    let schema = Arc::new(RecordSchema::tutorial());
    let inputs: Vec<Value> = (0..40).map(record_json).collect();
    let mut expected = serde_json::Map::new();

    // 1. The writer, as the module drives it, in two runs on the same bucket.
    let root = out.join("tree");
    let now = chrono::Utc::now();
    let mid = Bucket::of(now).start() + chrono::Duration::seconds(150);
    let clock = Clock::with_offset_secs((mid - now).num_seconds());
    for run in [0..15, 15..30] {
        let (w, threads) = writer::start(
            WriterConfig {
                root: root.clone(),
                clock,
                schema: schema.clone(),
                policy: SyncPolicy {
                    records: 4,
                    ..SyncPolicy::default()
                },
            },
            Arc::new(DiskBudget::new(u64::MAX, 0)),
            Arc::new(Stats::default()),
            Arc::new(TreeLock::default()),
        )
        .unwrap_or_else(|e| io("starting the writer", e));
        let (_stop, stopping) = tokio::sync::watch::channel(false);
        let archive = Archive::new(
            w,
            schema.clone(),
            Arc::new(DiskBudget::new(u64::MAX, 0)),
            stopping,
        );
        // Submitted in order, awaited together: several groups, several blocks.
        let pending: Vec<_> = inputs[run]
            .iter()
            .map(|r| archive.submit(INPUT, &Message::json(r.to_string())))
            .collect();
        for p in pending {
            if p.finish().await != Ok(Outcome::Archived) {
                fail("a sample record was not archived".into());
            }
        }
        threads.close();
    }
    let files = tree::list_avro_files(&root).unwrap_or_else(|e| io("listing", e));
    if files.len() != 1 {
        fail(format!("expected one bucket file, found {files:?}"));
    }
    let rel = Path::new("tree").join(&files[0].rel);
    expected.insert(
        rel.display().to_string(),
        json!((0..30).collect::<Vec<_>>()),
    );

    // 2. Blocks of 1, 2, 3 and 4 records, written directly.
    let multi = out.join("multi_block.avro");
    let _ = std::fs::remove_file(&multi);
    let (file, marker, mut len, _) =
        open_container(&multi, &schema, &Stats::default()).unwrap_or_else(|e| fail(e.to_string()));
    let mut next = 30;
    let mut last_block_start = len;
    for n in 1..=4usize {
        let mut data = Vec::new();
        for r in &inputs[next..next + n] {
            record::parse(r.to_string().as_bytes())
                .and_then(|g| g.encode(&schema, &mut data))
                .unwrap_or_else(|e| fail(e));
        }
        next += n;
        let mut block = Vec::new();
        container::encode_block(&mut block, n as u64, &data, &marker);
        last_block_start = len;
        file.write_all_at(&block, len)
            .unwrap_or_else(|e| io("multi_block.avro", e));
        len += block.len() as u64;
    }
    drop(file);
    expected.insert(
        "multi_block.avro".into(),
        json!((30..40).collect::<Vec<_>>()),
    );

    // 3. The same file torn inside its last block, then repaired.
    let repaired = out.join("repaired.avro");
    let bytes = std::fs::read(&multi).unwrap_or_else(|e| io("multi_block.avro", e));
    let cut = (last_block_start + (len - last_block_start) / 2) as usize;
    std::fs::write(&repaired, &bytes[..cut]).unwrap_or_else(|e| io("repaired.avro", e));
    match container::repair(&repaired) {
        Ok(Repaired::Truncated { to, .. }) if to == last_block_start => {}
        other => fail(format!("unexpected repair of the torn copy: {other:?}")),
    }
    expected.insert("repaired.avro".into(), json!((30..36).collect::<Vec<_>>()));

    let doc = json!({"inputs": inputs, "files": expected});
    std::fs::write(out.join("expected.json"), doc.to_string())
        .unwrap_or_else(|e| io("expected.json", e));
    println!("{}", out.display());
}
