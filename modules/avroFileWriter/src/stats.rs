//! Counters reported in the module twin.

use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};

/// What the module has done since it started.
#[derive(Debug, Default)]
pub struct Stats {
    /// Records synced into Avro files.
    pub records_written: AtomicU64,
    /// Bad records synced into the quarantine file.
    pub records_quarantined: AtomicU64,
    /// Files uploaded and removed from the tree.
    pub files_uploaded: AtomicU64,
    /// Upload attempts that failed (each is retried later).
    pub upload_failures: AtomicU64,
    /// Files whose torn end was cut off at start-up or on reopening.
    pub files_repaired: AtomicU64,
}

impl Stats {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters as reported properties.
    pub fn reported(&self) -> Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "RecordsWritten": get(&self.records_written),
            "RecordsQuarantined": get(&self.records_quarantined),
            "FilesUploaded": get(&self.files_uploaded),
            "UploadFailures": get(&self.upload_failures),
            "FilesRepaired": get(&self.files_repaired),
        })
    }
}
