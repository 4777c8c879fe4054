//! `kill -9` of the runtime itself while ten leaf devices send, then the runtime started
//! again on the same state (the reproduction of the issue that found two copies of every
//! module after such a crash, and two writers losing records in one Avro file).
//!
//! The runtime runs as its own process (`iotedge-local run`), as an operator runs it. After
//! the crash its modules must be gone (they die with it), the restarted runtime runs one copy
//! of each, and every message edgeHub acknowledged must have its RUL message upstream and its
//! Avro record in an archive file that reads back whole (every block decoded).

use e2e::pipeline::{self, wait_for};
use e2e::{Tally, MODULES};
use leaf_simulator::{sent_log, simulate, Progress, SimConfig};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn start_runtime(bin: &Path, state: &Path, manifest: &Path, port: u16) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(state.with_extension("log"))
        .unwrap();
    Command::new(bin.join("iotedge-local"))
        .arg("--state")
        .arg(state)
        .args(["run", "--metrics", "off", "--mqtt-port", &port.to_string()])
        .arg("--manifest")
        .arg(manifest)
        .arg("--bin-dir")
        .arg(bin)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("iotedge-local starts")
}

async fn ready(state: &Path, runtime: &Child) {
    let pid = runtime.id();
    wait_for("the runtime's ready file", Duration::from_secs(60), || {
        Ok(runtime_state::running_runtime(state)
            .filter(|r| r.pid == pid)
            .map(|_| ()))
    })
    .await
    .unwrap();
}

/// The pids of the module processes the runtime recorded, once each is running.
async fn module_pids(state: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    for m in MODULES {
        let file = state.join("modules").join(m).join("pid");
        let pid = wait_for(&format!("{m} running"), Duration::from_secs(60), || {
            Ok(std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| t.split_whitespace().next()?.parse::<u32>().ok())
                .filter(|p| !pipeline::exited(*p)))
        })
        .await
        .unwrap();
        pids.push(pid);
    }
    pids
}

fn archive_files(root: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            archive_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "avro") {
            out.push(p);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_killed_mid_stream_loses_no_acknowledged_message() {
    let bin = pipeline::module_bin_dir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let manifest = dir.path().join("deployment.json");
    std::fs::write(
        &manifest,
        pipeline::deployment_manifest(&[]).unwrap().to_string(),
    )
    .unwrap();
    let port = free_port();

    let mut first = start_runtime(&bin, &state, &manifest, port);
    ready(&state, &first).await;
    let before = module_pids(&state).await;

    let log = dir.path().join("sent.jsonl");
    let mut cfg = SimConfig::new(&state, pipeline::data_file("test_FD003.txt"));
    cfg.devices = Some(10);
    cfg.max_messages = Some(40);
    cfg.rate = 8.0;
    cfg.sent_log = Some(log.clone());
    let progress = Progress::new();
    let prog = Arc::clone(&progress);
    let run = tokio::spawn(async move { simulate(&cfg, prog).await.expect("the simulator runs") });
    wait_for("half the messages sent", Duration::from_secs(60), || {
        let planned = progress.planned();
        Ok((planned > 0 && progress.sent() * 2 >= planned).then_some(()))
    })
    .await
    .unwrap();

    pipeline::kill(first.id()).unwrap();
    first.wait().unwrap();
    wait_for(
        "the modules to die with their runtime",
        Duration::from_secs(20),
        || Ok(before.iter().all(|p| pipeline::exited(*p)).then_some(())),
    )
    .await
    .unwrap();

    let mut second = start_runtime(&bin, &state, &manifest, port);
    ready(&state, &second).await;
    let after = module_pids(&state).await;
    assert!(after.iter().all(|p| !before.contains(p)), "new processes");

    let summary = run.await.unwrap();
    assert!(summary.is_complete(), "{summary}");
    let (sent, torn) = sent_log::read(&log).unwrap();
    assert_eq!((sent.len() as u64, torn), (summary.planned, 0));
    let cids: Vec<&str> = sent.iter().map(|s| s.correlation_id.as_str()).collect();

    let ruls = wait_for(
        "a RUL message for every acknowledged message",
        Duration::from_secs(60),
        || {
            let o = e2e::upstream::read(&state)?;
            let t = Tally::count(
                cids.iter().copied(),
                o.ruls.iter().map(|r| r.correlation_id.as_str()),
            );
            Ok(t.missing.is_empty().then_some(t))
        },
    )
    .await
    .unwrap();
    let archive = state.join("binds/data/avrofiles");
    let schema = avro_file_writer::record::RecordSchema::tutorial();
    let records = wait_for(
        "an Avro record for every acknowledged message",
        Duration::from_secs(60),
        || {
            let mut files = Vec::new();
            archive_files(&archive, &mut files);
            let mut records = Vec::new();
            for f in &files {
                // Every block of every file must decode: a torn or interleaved block fails.
                if let Err(e) = schema.verify_file(f) {
                    anyhow::bail!("{}: {e}", f.display());
                }
                records.extend(avro_file_writer::record::read_file(f).map_err(anyhow::Error::msg)?);
            }
            let t = Tally::count(
                cids.iter().copied(),
                records.iter().map(|r| r.correlation_id()),
            );
            Ok(t.missing.is_empty().then_some(t))
        },
    )
    .await
    .unwrap();
    println!(
        "runtime kill -9: {} acknowledged; RUL messages {ruls}; Avro records {records}",
        sent.len()
    );
    assert!(ruls.is_complete(), "{ruls}");
    assert!(records.is_complete(), "{records}");

    pipeline::terminate(second.id()).unwrap();
    second.wait().unwrap();
    assert!(
        after.iter().all(|p| pipeline::exited(*p)),
        "stopped with the runtime"
    );

    // Stopped, the archive reads back whole with fastavro too: the same records, file by
    // file, as the writer's own reader found.
    let mut files = Vec::new();
    archive_files(&archive, &mut files);
    let theirs = pipeline::fastavro_correlation_ids(&files).await.unwrap();
    for f in &files {
        let ours: Vec<String> = avro_file_writer::record::read_file(f)
            .unwrap()
            .into_iter()
            .map(|r| r.correlation_id().to_owned())
            .collect();
        assert_eq!(
            theirs.get(f),
            Some(&ours),
            "{}: fastavro and apache-avro disagree",
            f.display()
        );
    }
}
