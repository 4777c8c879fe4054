//! Appending records with the default durability settings: every record goes the module's
//! way — JSON body checked, encoded, queued in arrival order, written in groups, each group
//! `fdatasync`ed before its records count as done — with up to 2,048 records in flight, as
//! the module's input loop allows. Prints records/s per run and the median.
//!
//! ```sh
//! cargo bench -p avroFileWriter --bench append -- [--records N] [--runs R] [--export DIR]
//! ```
//!
//! `--export DIR` also writes the records (`records.jsonl`, one message body a line) and the
//! schema (`schema.avsc`) there, for `bench/tutorial_write.py` to write the same records the
//! tutorial's way (`bench/run.sh` runs both). Records come from C-MAPSS `test_FD001.txt`
//! (`CMAPSS_DIR`, default `../shared/data/cmapss`), shaped as the router's `avroOutput`.

use avro_file_writer::archive::{in_order, Archive, Outcome, INPUT};
use avro_file_writer::bucket::Clock;
use avro_file_writer::budget::DiskBudget;
use avro_file_writer::container;
use avro_file_writer::record::RecordSchema;
use avro_file_writer::stats::Stats;
use avro_file_writer::tree::{self, TreeLock};
use avro_file_writer::writer::{self, SyncPolicy, WriterConfig};
use edge_client::Message;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use turbofan_domain::record::schema;

const IN_FLIGHT: usize = 2048;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn cmapss_rows() -> Option<Vec<Vec<f64>>> {
    let dir = std::env::var("CMAPSS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/cmapss")
        });
    let text = std::fs::read_to_string(dir.join("test_FD001.txt")).ok()?;
    let rows: Vec<Vec<f64>> = text
        .lines()
        .map(|l| {
            l.split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect()
        })
        .filter(|r: &Vec<f64>| r.len() == 26)
        .collect();
    (!rows.is_empty()).then_some(rows)
}

/// Router-shaped `avroOutput` bodies, `n` of them.
fn records(n: usize) -> Vec<String> {
    let rows = cmapss_rows().unwrap_or_else(|| {
        eprintln!("C-MAPSS not found (set CMAPSS_DIR): using synthetic rows");
        (0..1000)
            .map(|i| (0..26).map(|k| 500.0 + (i * 26 + k) as f64 / 7.0).collect())
            .collect()
    });
    (0..n)
        .map(|i| {
            let r = &rows[i % rows.len()];
            let mut body = format!("{{\"CycleTime\":{}", r[1]);
            for k in 1..=3 {
                body.push_str(&format!(",\"OperationalSetting{k}\":{}", r[1 + k]));
            }
            for k in 1..=21 {
                body.push_str(&format!(",\"Sensor{k}\":{}", r[4 + k]));
            }
            body.push_str(&format!(",\"PredictedRul\":{}}}", 120.0 - r[1] * 0.5));
            format!(
                "{{\"CorrelationId\":\"bench-{i:08}\",\"ConnectionDeviceId\":\"Client_{:03}\",\"CreationTimeUtc\":\"2026-11-21T05:15:00.000Z\",\"EnqueuedTimeUtc\":\"2026-11-21T05:15:00.010Z\",\"Body\":{body}}}",
                r[0]
            )
        })
        .collect()
}

/// One run: all `messages` through the archive into `root`; returns records/s.
async fn run(messages: &[Message], root: &Path) -> f64 {
    let schema = Arc::new(RecordSchema::tutorial());
    let budget = Arc::new(DiskBudget::new(u64::MAX, 0));
    let (w, threads) = writer::start(
        WriterConfig {
            root: root.to_path_buf(),
            clock: Clock::default(),
            schema: schema.clone(),
            policy: SyncPolicy::default(),
        },
        budget.clone(),
        Arc::new(Stats::default()),
        Arc::new(TreeLock::default()),
    )
    .expect("writer starts");
    let (_stop, stopping) = tokio::sync::watch::channel(false);
    let archive = Archive::new(w, schema, budget, stopping);
    // As the module's input loop: queue in arrival order, complete in order.
    let (queue, acker) = in_order(IN_FLIGHT, |(), outcome| {
        assert_eq!(outcome, Ok(Outcome::Archived));
    });
    let t = Instant::now();
    for m in messages {
        if !archive.admit().await {
            panic!("stopped");
        }
        let pending = archive.submit(INPUT, m);
        if queue.send((pending, ())).await.is_err() {
            panic!("the completion task ended");
        }
    }
    drop(queue);
    acker.await.expect("all records completed");
    let secs = t.elapsed().as_secs_f64();
    tokio::task::spawn_blocking(move || threads.close())
        .await
        .expect("close");
    // Outside the timing: every record is in a complete block.
    let mut total = 0;
    for f in tree::list_avro_files(root).expect("list") {
        let file = std::fs::File::open(&f.path).expect("open");
        let s = container::scan(file, f.len).expect("scan").expect("header");
        assert!(s.is_intact());
        total += s.records;
    }
    assert_eq!(total as usize, messages.len());
    messages.len() as f64 / secs
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = arg("--records")
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let runs: usize = arg("--runs").and_then(|v| v.parse().ok()).unwrap_or(3);
    let bodies = records(n);
    if let Some(dir) = arg("--export") {
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).expect("export folder");
        std::fs::write(dir.join("records.jsonl"), bodies.join("\n") + "\n").expect("records");
        std::fs::write(dir.join("schema.avsc"), schema()).expect("schema");
    }
    let messages: Vec<Message> = bodies.into_iter().map(Message::json).collect();
    let mut rates = Vec::new();
    for i in 0..runs {
        let dir = tempfile::tempdir().expect("temp folder");
        let rate = run(&messages, dir.path()).await;
        println!("rust run {}: {:.0} records/s", i + 1, rate);
        rates.push(rate);
    }
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    println!(
        "rust (group sync, defaults): median {median:.0} records/s over {runs} runs of {n} records"
    );
    println!("RESULT rust {median:.0}");
}
