//! The quiet-file scanner: every check interval it measures the Avro tree (for the disk
//! budget), picks the files not modified for the quiet period that are not the file the
//! writer has open (the writer closes its file after the same quiet time), uploads each, and
//! deletes it — and folders left empty — only after the uploader said `Ok`; the uploaded name
//! is recorded so that the writer never writes a file of that name again. A failed upload is retried with capped
//! exponential backoff; its file is never deleted.
//!
//! Before a file leaves the device every block of it is read back and every record decoded
//! ([`container::verify`]); a file that fails is set aside as `*.avro.damaged` (kept, never
//! uploaded nor deleted) and the error names the block.

use crate::budget::DiskBudget;
use crate::container;
use crate::record::RecordSchema;
use crate::stats::Stats;
use crate::tree::{self, AvroFile, TreeLock};
use crate::upload::Uploader;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

/// When the scanner looks and what counts as quiet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanPolicy {
    /// Time between scans (`CheckIntervalSecs`).
    pub check_interval: Duration,
    /// A file not modified for this long may be uploaded (`QuietPeriodSecs`).
    pub quiet_period: Duration,
}

impl Default for ScanPolicy {
    fn default() -> Self {
        ScanPolicy {
            check_interval: Duration::from_secs(60),
            quiet_period: Duration::from_secs(600),
        }
    }
}

/// Retry delays after failed uploads: `base`, doubling per failure, at most `cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay after the first failure.
    pub base: Duration,
    /// Longest delay.
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(5),
            cap: Duration::from_secs(600),
        }
    }
}

impl Backoff {
    /// The delay after `failures` consecutive failures (at least 1).
    pub fn delay(&self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(30);
        self.base.saturating_mul(1u32 << shift).min(self.cap)
    }
}

/// The files of `files` that may be uploaded now: quiet for `quiet` by `now` (file times are
/// the system's) and not the writer's open file (the writer closes a file once no record came
/// for the quiet period; a bucket written to again after its upload gets a new file name).
pub fn select<'a>(
    files: &'a [AvroFile],
    now: SystemTime,
    quiet: Duration,
    open: Option<&Path>,
) -> Vec<&'a AvroFile> {
    files
        .iter()
        .filter(|f| {
            now.duration_since(f.modified).is_ok_and(|age| age >= quiet)
                && open != Some(f.path.as_path())
        })
        .collect()
}

/// What one scan did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScanReport {
    /// Blob names uploaded and deleted.
    pub uploaded: Vec<String>,
    /// Blob names whose upload failed.
    pub failed: Vec<String>,
}

struct Failure {
    count: u32,
    next_try: Instant,
}

/// The scanner and its retry state.
pub struct Scanner<U: Uploader> {
    root: PathBuf,
    uploader: Option<U>,
    tree: Arc<TreeLock>,
    budget: Arc<DiskBudget>,
    stats: Arc<Stats>,
    policy: Arc<Mutex<ScanPolicy>>,
    backoff: Backoff,
    failures: HashMap<PathBuf, Failure>,
    schema: Arc<RecordSchema>,
    wake: Arc<tokio::sync::Notify>,
}

impl<U: Uploader> Scanner<U> {
    /// A scanner of `root`; without an uploader it only measures the tree.
    pub fn new(
        root: PathBuf,
        uploader: Option<U>,
        tree: Arc<TreeLock>,
        budget: Arc<DiskBudget>,
        stats: Arc<Stats>,
        policy: Arc<Mutex<ScanPolicy>>,
    ) -> Self {
        Scanner {
            root,
            uploader,
            tree,
            budget,
            stats,
            policy,
            backoff: Backoff::default(),
            failures: HashMap::new(),
            schema: Arc::new(RecordSchema::tutorial()),
            wake: Arc::default(),
        }
    }

    /// Replaces the retry delays.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Scans again at once, and waits by the current settings from then on, whenever
    /// `wake` is notified (the settings changed).
    pub fn woken_by(mut self, wake: Arc<tokio::sync::Notify>) -> Self {
        self.wake = wake;
        self
    }

    fn policy(&self) -> ScanPolicy {
        *self.policy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Scans until `stopping` becomes true.
    pub async fn run(mut self, mut stopping: watch::Receiver<bool>) {
        match &self.uploader {
            Some(u) => info!(target = %u.describe(), "uploading quiet Avro files"),
            None => warn!(
                "no upload target configured (set {}): Avro files stay in the archive until one is",
                crate::upload::UPLOAD_DIR_VAR
            ),
        }
        loop {
            if *stopping.borrow_and_update() {
                return;
            }
            self.scan_once().await;
            let mut wait = self.policy().check_interval;
            let now = Instant::now();
            if let Some(next) = self.failures.values().map(|f| f.next_try).min() {
                wait = wait.min(next.saturating_duration_since(now));
            }
            tokio::select! {
                _ = tokio::time::sleep(wait.max(Duration::from_millis(100))) => {}
                () = self.wake.notified() => {}
                _ = stopping.changed() => return,
            }
        }
    }

    /// One pass: measure, select, upload, delete.
    pub async fn scan_once(&mut self) -> ScanReport {
        let mut report = ScanReport::default();
        let files = match tree::list_avro_files(&self.root) {
            Ok(f) => f,
            Err(e) => {
                warn!(root = %self.root.display(), error = %e, "cannot list the archive; retrying at the next check");
                return report;
            }
        };
        self.budget.set_used(files.iter().map(|f| f.len).sum());
        let Some(uploader) = &self.uploader else {
            return report;
        };
        let policy = self.policy();
        let open = self.tree.lock().clone();
        let now = Instant::now();
        let candidates: Vec<AvroFile> = select(
            &files,
            SystemTime::now(),
            policy.quiet_period,
            open.as_deref(),
        )
        .into_iter()
        .filter(|f| self.failures.get(&f.path).is_none_or(|x| x.next_try <= now))
        .cloned()
        .collect();
        // Forget failures of files that are gone.
        self.failures
            .retain(|p, _| files.iter().any(|f| &f.path == p));
        for f in candidates {
            let Some(blob) = f.rel.to_str().map(|s| s.replace('\\', "/")) else {
                warn!(file = %f.path.display(), "file name is not UTF-8; not uploaded");
                continue;
            };
            if !self.tree.begin_upload(&f.path) {
                continue; // the writer opened it meanwhile: not quiet after all
            }
            let Some(verified) = self.verify(&f).await else {
                self.tree.end_upload();
                continue;
            };
            let uploaded = uploader.upload(&f.path, &blob).await;
            self.tree.end_upload();
            match uploaded {
                Ok(()) => {
                    if self.delete_uploaded(&f, verified.records) {
                        info!(blob = %blob, bytes = f.len, "uploaded; removed from the archive");
                        Stats::add(&self.stats.files_uploaded, 1);
                        self.failures.remove(&f.path);
                        report.uploaded.push(blob);
                    }
                }
                Err(e) => {
                    let failure = self.failures.entry(f.path.clone()).or_insert(Failure {
                        count: 0,
                        next_try: now,
                    });
                    failure.count += 1;
                    let delay = self.backoff.delay(failure.count);
                    failure.next_try = Instant::now() + delay;
                    Stats::add(&self.stats.upload_failures, 1);
                    warn!(blob = %blob, error = %e, failures = failure.count, retry_in_s = delay.as_secs_f64(), "upload failed; the file stays and is retried");
                    report.failed.push(blob);
                }
            }
        }
        report
    }

    /// Reads `f` back whole before it is uploaded; a damaged file is set aside (and `false`).
    async fn verify(&self, f: &AvroFile) -> Option<container::Verified> {
        let (path, schema) = (f.path.clone(), self.schema.clone());
        let checked = tokio::task::spawn_blocking(move || schema.verify_file(&path)).await;
        match checked {
            Ok(Ok(v)) => {
                debug!(file = %f.path.display(), blocks = v.blocks, records = v.records, "read back whole");
                Some(v)
            }
            Ok(Err(container::FileError::NotAvro { reason, .. })) => {
                Stats::add(&self.stats.files_damaged, 1);
                match tree::set_aside(&f.path, "damaged") {
                    Ok(aside) => {
                        error!(file = %f.path.display(), moved_to = %aside.display(), "{reason}; set aside, not uploaded: inspect it by hand")
                    }
                    Err(e) => {
                        error!(file = %f.path.display(), error = %e, "{reason}; cannot set it aside, not uploaded")
                    }
                }
                None
            }
            Ok(Err(e)) => {
                warn!(error = %e, "cannot read the file back; it stays and is tried again");
                None
            }
            Err(e) => {
                warn!(file = %f.path.display(), error = %e, "the check before upload failed; tried again");
                None
            }
        }
    }

    /// Deletes an uploaded file unless the writer reopened or changed it meanwhile.
    fn delete_uploaded(&self, f: &AvroFile, records: u64) -> bool {
        let open = self.tree.lock();
        if open.as_deref() == Some(f.path.as_path()) {
            debug!(file = %f.path.display(), "reopened by the writer while uploading; kept");
            return false;
        }
        let unchanged = std::fs::metadata(&f.path)
            .is_ok_and(|m| m.len() == f.len && m.modified().ok() == Some(f.modified));
        if !unchanged {
            warn!(file = %f.path.display(), "changed while uploading; kept, uploaded again later");
            return false;
        }
        if let Err(e) = std::fs::remove_file(&f.path) {
            warn!(file = %f.path.display(), error = %e, "uploaded but cannot be removed; check the archive folder's permissions");
            return false;
        }
        self.tree.mark_uploaded(&f.path, &f.rel, records);
        if let Some(dir) = f.path.parent() {
            let _ = container::sync_dir(dir);
            tree::prune_empty_dirs(&self.root, dir);
        }
        self.budget
            .set_used(self.budget.used().saturating_sub(f.len));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::Clock;
    use crate::upload::UploadError;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn file(rel: &str, age_s: u64, now: SystemTime) -> AvroFile {
        AvroFile {
            path: Path::new("/r").join(rel),
            rel: rel.into(),
            len: 10,
            modified: now - Duration::from_secs(age_s),
        }
    }

    #[test]
    fn selects_quiet_files_except_the_open_one() {
        let now = SystemTime::now();
        let files = vec![
            file("2026/1/1/0/0.avro", 700, now),
            file("2026/1/1/0/5.avro", 599, now),
            file("2026/1/1/0/10.avro", 900, now),
            file("2026/1/1/0/15.avro", 900, now),
        ];
        let picked: Vec<&str> = select(
            &files,
            now,
            Duration::from_secs(600),
            Some(Path::new("/r/2026/1/1/0/10.avro")),
        )
        .iter()
        .map(|f| f.rel.to_str().unwrap())
        .collect();
        assert_eq!(picked, vec!["2026/1/1/0/0.avro", "2026/1/1/0/15.avro"]);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let b = Backoff {
            base: Duration::from_secs(5),
            cap: Duration::from_secs(60),
        };
        let d: Vec<u64> = (1..=6).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(d, vec![5, 10, 20, 40, 60, 60]);
        assert_eq!(b.delay(1000), Duration::from_secs(60));
    }

    /// Fails the first `fail` uploads, then copies into `dir`.
    struct Flaky {
        fail: u32,
        calls: Arc<AtomicU32>,
        dir: PathBuf,
    }

    impl Uploader for Flaky {
        async fn upload(&self, path: &Path, blob: &str) -> Result<(), UploadError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if n < self.fail {
                return Err(UploadError::Refused {
                    blob: blob.into(),
                    source: cloud_upload::Error::Unavailable {
                        step: "writing the blob",
                        reason: "503 try later".into(),
                    },
                });
            }
            let dest = self.dir.join(blob);
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(path, dest).unwrap();
            Ok(())
        }
        fn describe(&self) -> String {
            "flaky".into()
        }
    }

    /// An Avro file with the tutorial's schema and no record.
    fn empty_avro() -> Vec<u8> {
        container::encode_header(RecordSchema::tutorial().json(), &[3u8; 16])
    }

    fn old_file(root: &Path, rel: &str) -> PathBuf {
        old_file_with(root, rel, &empty_avro())
    }

    fn old_file_with(root: &Path, rel: &str, bytes: &[u8]) -> PathBuf {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        let old = SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(old)
            .unwrap();
        p
    }

    #[tokio::test]
    async fn failed_uploads_keep_the_file_back_off_then_succeed_and_free_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("avro");
        let up = dir.path().join("up");
        let f = old_file(&root, "2020/1/2/3/5.avro");
        let quarantine = old_file(&root, "quarantine/2020-1-2.jsonl");
        let calls = Arc::new(AtomicU32::new(0));
        let len = empty_avro().len() as u64;
        let budget = Arc::new(DiskBudget::new(len, 0));
        let stats = Arc::new(Stats::default());
        let mut s = Scanner::new(
            root.clone(),
            Some(Flaky {
                fail: 2,
                calls: calls.clone(),
                dir: up.clone(),
            }),
            Arc::new(TreeLock::default()),
            budget.clone(),
            stats.clone(),
            Arc::new(Mutex::new(ScanPolicy {
                check_interval: Duration::from_millis(10),
                quiet_period: Duration::from_secs(1),
            })),
        )
        .with_backoff(Backoff {
            base: Duration::from_millis(50),
            cap: Duration::from_millis(80),
        });

        let r = s.scan_once().await;
        assert_eq!(r.failed, vec!["2020/1/2/3/5.avro"]);
        assert!(f.exists(), "never deleted after a failure");
        assert!(budget.is_full(), "a file as large as the budget");
        let r = s.scan_once().await;
        assert!(r.failed.is_empty() && r.uploaded.is_empty(), "backing off");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(s.scan_once().await.failed.len(), 1);
        tokio::time::sleep(Duration::from_millis(90)).await;
        let r = s.scan_once().await;
        assert_eq!(r.uploaded, vec!["2020/1/2/3/5.avro"]);
        assert_eq!(
            std::fs::read(up.join("2020/1/2/3/5.avro")).unwrap(),
            empty_avro()
        );
        assert!(!f.exists());
        assert!(!root.join("2020").exists(), "empty folders removed");
        assert!(quarantine.exists(), "the quarantine is not uploaded");
        assert!(!budget.is_full());
        assert_eq!(budget.used(), 0);
        let reported = stats.reported();
        assert_eq!(reported["FilesUploaded"], 1);
        assert_eq!(reported["UploadFailures"], 2);
    }

    #[tokio::test]
    async fn a_shorter_check_interval_applies_at_once_not_after_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("avro");
        let up = dir.path().join("up");
        let calls = Arc::new(AtomicU32::new(0));
        let policy = Arc::new(Mutex::new(ScanPolicy {
            check_interval: Duration::from_secs(3600),
            quiet_period: Duration::from_millis(1),
        }));
        let wake = Arc::new(tokio::sync::Notify::new());
        let s = Scanner::new(
            root.clone(),
            Some(Flaky {
                fail: 0,
                calls: calls.clone(),
                dir: up.clone(),
            }),
            Arc::new(TreeLock::default()),
            Arc::new(DiskBudget::new(1 << 20, 0)),
            Arc::new(Stats::default()),
            policy.clone(),
        )
        .woken_by(wake.clone());
        let (stop, stopping) = watch::channel(false);
        let task = tokio::spawn(s.run(stopping));
        tokio::time::sleep(Duration::from_millis(200)).await; // first scan done: nothing yet
        let f = old_file(&root, "2020/1/2/3/5.avro");
        // An hour's wait under way; the setting changes to 100 ms.
        policy.lock().unwrap().check_interval = Duration::from_millis(100);
        wake.notify_one();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while f.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "still waiting for the old interval"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn the_open_file_stays_and_a_closed_current_bucket_goes_under_a_name_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let clock = Clock::default();
        let bucket_rel = clock.bucket().relative_path();
        let current = old_file(&root, bucket_rel.to_str().unwrap());
        let open = old_file(&root, "2020/1/1/1/0.avro");
        let tree = Arc::new(TreeLock::with_ledger(&root));
        *tree.lock() = Some(open.clone());
        let mut s = Scanner::new(
            root.clone(),
            Some(Flaky {
                fail: 0,
                calls: Arc::new(AtomicU32::new(0)),
                dir: dir.path().join("up"),
            }),
            tree.clone(),
            Arc::new(DiskBudget::new(1 << 20, 0)),
            Arc::new(Stats::default()),
            Arc::new(Mutex::new(ScanPolicy {
                check_interval: Duration::from_secs(1),
                quiet_period: Duration::ZERO,
            })),
        );
        let report = s.scan_once().await;
        assert_eq!(report.uploaded.len(), 1, "{report:?}");
        assert!(
            !current.exists(),
            "the closed current bucket's quiet file is uploaded"
        );
        assert!(open.exists(), "the writer's open file stays");
        let _held = tree.lock();
        assert_ne!(
            tree.file_for(&current),
            current,
            "its name is not written again"
        );
    }

    #[tokio::test]
    async fn a_file_that_does_not_read_back_whole_is_set_aside_not_uploaded() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("avro");
        let up = dir.path().join("up");
        // A block that announces two records but holds one byte: what two writers
        // appending to one file made (the end of the file is whole, so repair keeps it).
        let marker = [3u8; 16];
        let mut bytes = container::encode_header(RecordSchema::tutorial().json(), &marker);
        container::encode_block(&mut bytes, 2, &[0], &marker);
        let damaged = old_file_with(&root, "2020/1/2/3/5.avro", &bytes);
        let good = old_file(&root, "2020/1/2/3/10.avro");
        let stats = Arc::new(Stats::default());
        let mut s = Scanner::new(
            root.clone(),
            Some(Flaky {
                fail: 0,
                calls: Arc::new(AtomicU32::new(0)),
                dir: up.clone(),
            }),
            Arc::new(TreeLock::default()),
            Arc::new(DiskBudget::new(1 << 20, 0)),
            stats.clone(),
            Arc::new(Mutex::new(ScanPolicy {
                check_interval: Duration::from_millis(10),
                quiet_period: Duration::from_secs(1),
            })),
        );
        let r = s.scan_once().await;
        assert_eq!(r.uploaded, vec!["2020/1/2/3/10.avro"]);
        assert!(!good.exists());
        assert!(!damaged.exists(), "renamed");
        assert_eq!(
            std::fs::read(root.join("2020/1/2/3/5.avro.damaged")).unwrap(),
            bytes,
            "kept as it was, for the operator"
        );
        assert!(!up.join("2020/1/2/3/5.avro").exists(), "never uploaded");
        assert_eq!(stats.reported()["FilesDamaged"], 1);
        assert!(s.scan_once().await.uploaded.is_empty(), "not tried again");
    }
}
