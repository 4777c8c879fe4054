//! `avroFileWriter`, the IoT Edge module that archives the router's records:
//!
//! | input | what happens |
//! |---|---|
//! | `avroModuleInput` (`EngineRecord` JSON) | appended to `/avrofiles/Y/M/D/H/mm.avro`, acknowledged once synced |
//! | a bad record | appended to `/avrofiles/quarantine/Y-M-D.jsonl` with the reason, then acknowledged |
//!
//! Quiet files are uploaded and then removed. The first target the environment configures wins
//! (see [`avro_file_writer::upload`]):
//!
//! | environment | target |
//! |---|---|
//! | `AVRO_UPLOAD_DIR` | a folder (container path) |
//! | `AVRO_UPLOAD_CONTAINER_SAS_URL` | a blob container, through its SAS URL |
//! | `AVRO_UPLOAD_STORAGE_CONNECTION_STRING` (+ `AVRO_UPLOAD_CONTAINER`, default `avrofiles`) | a storage account's container, signed with its key: Blob Storage on IoT Edge or a cloud account; no IoT Hub identity needed |
//! | none of these | IoT Hub file upload with the device identity from the bind-mounted IoT Edge config (manual provisioning only) |
//!
//! Settings: see [`avro_file_writer::config`] (environment, then desired properties through
//! [`edge_client::desired`]; `null` puts back the environment's value); also `LoggingLevel`.
//! Reported: the settings, counters, `DiskFull`, `AvroTreeMB`, `UploadTarget` (where files go,
//! without keys or tokens).
#![allow(non_snake_case)] // the binary is named after the module, as the manifest names it

use anyhow::{bail, Context};
use avro_file_writer::archive::{self, Archive};
use avro_file_writer::bucket::Clock;
use avro_file_writer::budget::{DiskBudget, MIB};
use avro_file_writer::config::Config;
use avro_file_writer::record::RecordSchema;
use avro_file_writer::scanner::Scanner;
use avro_file_writer::stats::Stats;
use avro_file_writer::tree::{self, TreeLock};
use avro_file_writer::upload::{UploadTarget, Uploader};
use avro_file_writer::writer::{self, WriterConfig};
use edge_client::desired;
use edge_client::ModuleClient;
use serde_json::{json, Value};
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tracing::{error, info, warn};

/// The archive's path in the container (the manifest binds it).
const ROOT: &str = "/avrofiles";
/// Shifts the writer's clock (tests only).
const CLOCK_OFFSET_VAR: &str = "AVRO_CLOCK_OFFSET_SECS";
/// Messages taken but not yet acknowledged, at most: a whole group waits on one sync.
const MAX_IN_FLIGHT: usize = 2048;

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

/// What the settings drive, changed when desired properties change them.
struct Live {
    writer: writer::Writer,
    budget: Arc<DiskBudget>,
    scan: Arc<Mutex<avro_file_writer::scanner::ScanPolicy>>,
    /// Wakes the scanner when its settings change, so a new check interval applies now.
    scan_changed: Arc<Notify>,
    /// Wakes the reporter: `DiskFull` may have changed with `MaxDiskMB`.
    changed: Notify,
}

impl Live {
    fn apply(&self, c: &Config) {
        self.writer.set_policy(c.sync_policy());
        self.budget.set_max(c.max_disk_bytes());
        *self.scan.lock().unwrap_or_else(|p| p.into_inner()) = c.scan;
        info!(settings = ?c, "settings");
        self.scan_changed.notify_one();
        self.changed.notify_one();
    }

    /// The counters and the archive's state (the settings are reported by
    /// [`desired::follow`]).
    fn reported(&self, stats: &Stats, upload: &Option<UploadTarget>) -> Value {
        let mut r = stats.reported();
        r["DiskFull"] = json!(self.budget.is_full());
        r["AvroTreeMB"] = json!((self.budget.used() as f64 / MIB * 1000.0).round() / 1000.0);
        r["UploadTarget"] = json!(upload.as_ref().map(|u| u.describe()));
        r
    }
}

/// Reports properties when they changed: every 2 s at most, at once when `DiskFull` flips or
/// settings change.
async fn report_loop(
    client: ModuleClient,
    live: Arc<Live>,
    stats: Arc<Stats>,
    upload: Option<UploadTarget>,
    mut stopping: watch::Receiver<bool>,
) {
    let mut full = live.budget.subscribe();
    let mut last = Value::Null;
    loop {
        let now = live.reported(&stats, &upload);
        if now != last {
            match client.update_reported(&now).await {
                Ok(()) => last = now,
                Err(e) => warn!("could not report properties: {e}"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = full.changed() => {}
            _ = live.changed.notified() => {}
            _ = stopping.changed() => return,
        }
    }
}

#[global_allocator]
static ALLOC: edge_client::Allocator = edge_client::Allocator;

fn main() -> ExitCode {
    edge_client::exit_code(run())
}

#[tokio::main(flavor = "current_thread")]
async fn run() -> anyhow::Result<()> {
    let edge_client::ModuleProcess {
        client,
        log,
        metrics,
    } = edge_client::start_module()
        .await
        .context("cannot connect to edgeHub")?;
    let root = client.settings().container_path(Path::new(ROOT));
    let (base, problems) = Config::from_vars(env);
    for p in problems {
        warn!("{p}");
    }
    let clock = match env(CLOCK_OFFSET_VAR).map(|v| v.trim().parse::<i64>()) {
        None => Clock::default(),
        Some(Ok(s)) => {
            warn!(
                offset_secs = s,
                "{CLOCK_OFFSET_VAR} shifts the bucket clock (tests only)"
            );
            Clock::with_offset_secs(s)
        }
        Some(Err(_)) => bail!("{CLOCK_OFFSET_VAR} must be a whole number of seconds"),
    };
    let upload = UploadTarget::from_env(env, client.settings(), client.trust_bundle())
        .map_err(|e| anyhow::anyhow!("upload configuration: {e}"))?;
    if let Some(t) = &upload {
        info!(target = %t.describe(), "quiet files are uploaded");
    }

    // Repair what a crash may have left before writing or uploading anything.
    std::fs::create_dir_all(&root).with_context(|| {
        format!(
            "cannot create the archive folder {}; check the module's bind of {ROOT}",
            root.display()
        )
    })?;
    // One writer per archive, before anything is repaired or written: two would interleave
    // their blocks in the same files.
    let _archive_lock = tree::ArchiveLock::acquire(&root)?;
    let stats = Arc::new(Stats::default());
    let used = tree::repair_tree(&root, &stats).with_context(|| {
        format!(
            "cannot check the archive {}; check the disk and the folder's permissions",
            root.display()
        )
    })?;

    let tree_lock = Arc::new(TreeLock::with_ledger(&root));
    // The counters go on from what the archive holds and its ledger says was uploaded, so a
    // crash does not set them back to 0.
    match tree::count_on_disk(&root) {
        Ok((records, quarantined)) => {
            let (files, uploaded) = tree_lock.uploaded_before();
            Stats::add(&stats.records_written, records + uploaded);
            Stats::add(&stats.records_quarantined, quarantined);
            Stats::add(&stats.files_uploaded, files);
        }
        Err(e) => warn!("cannot count the archive's records ({e}): the counters start at 0"),
    }

    let schema = Arc::new(RecordSchema::tutorial());
    let budget = Arc::new(DiskBudget::new(base.max_disk_bytes(), used));
    stats.register(&metrics);
    let disk_used = edge_client::prometheus_client::metrics::gauge::Gauge::<i64>::default();
    metrics.register(
        "avro_disk_used_bytes",
        "Bytes the archive (Avro files and quarantine) takes on disk, of MaxDiskMB.",
        disk_used.clone(),
    );
    let b = budget.clone();
    metrics.on_scrape(move || {
        disk_used.set(i64::try_from(b.used()).unwrap_or(i64::MAX));
    });
    let (writer, threads) = writer::start(
        WriterConfig {
            root: root.clone(),
            clock,
            schema: schema.clone(),
            policy: base.sync_policy(),
        },
        budget.clone(),
        stats.clone(),
        tree_lock.clone(),
    )
    .context("cannot start the writer")?;
    let live = Arc::new(Live {
        writer: writer.clone(),
        budget: budget.clone(),
        scan: Arc::new(Mutex::new(base.scan)),
        scan_changed: Arc::new(Notify::new()),
        changed: Notify::new(),
    });
    // The settings are reported here; the module's own reporter sends the counters.
    let (settings, _) = watch::channel(base);
    let l = live.clone();
    desired::follow(&client, log, settings, json!({}), move |c| {
        l.apply(c);
        Value::Null
    })
    .await;

    let (stop_tx, stopping) = watch::channel(false);
    let scanner = tokio::spawn(
        Scanner::new(
            root.clone(),
            upload.clone(),
            tree_lock,
            budget.clone(),
            stats.clone(),
            live.scan.clone(),
        )
        .woken_by(live.scan_changed.clone())
        .run(stopping.clone()),
    );
    let reporter = tokio::spawn(report_loop(
        client.clone(),
        live.clone(),
        stats.clone(),
        upload,
        stopping.clone(),
    ));

    info!(root = %root.display(), "avroFileWriter running");
    let archive = Archive::new(writer, schema, budget, stopping);
    let stop = async move {
        edge_client::shutdown_signal().await;
        let _ = stop_tx.send(true);
    };
    let writer_died = async {
        while !threads.is_finished() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let result = tokio::select! {
        r = archive::serve(&client, archive, MAX_IN_FLIGHT, stop) => r,
        // Nothing to finish or close without it: exits so the runtime restarts the module.
        _ = writer_died => bail!("the writer thread ended unexpectedly; exiting so the runtime restarts the module"),
    };
    // Every handler has returned: sync and close the open files.
    if tokio::task::spawn_blocking(move || threads.close())
        .await
        .is_err()
    {
        error!("the writer did not close cleanly");
    }
    let _ = scanner.await;
    let _ = reporter.await;
    result?;
    info!("avroFileWriter stopped cleanly");
    Ok(())
}
