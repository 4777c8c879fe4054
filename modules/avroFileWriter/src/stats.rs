//! What the module has done: reported in the module twin, and served as Prometheus metrics
//! (`avro_*`). Records written and quarantined and files uploaded count since the archive
//! began (at start they are read off the archive: its files, its quarantine and its ledger
//! of uploads), so a restart or a crash does not set them back; the others count since the
//! module started.

use edge_client::observe::Exporter;
use edge_client::prometheus_client::metrics::counter::Counter;
use edge_client::prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use serde_json::{json, Value};

/// What the module has done (see the module's doc for since when).
#[derive(Debug)]
pub struct Stats {
    /// Records synced into Avro files.
    pub records_written: Counter,
    /// Bytes of Avro blocks synced.
    pub bytes_written: Counter,
    /// Bad records synced into the quarantine file.
    pub records_quarantined: Counter,
    /// Files uploaded and removed from the tree.
    pub files_uploaded: Counter,
    /// Upload attempts that failed (each is retried later).
    pub upload_failures: Counter,
    /// Files whose torn end was cut off at start-up or on reopening.
    pub files_repaired: Counter,
    /// Files that failed the check before upload (a block that does not read back whole):
    /// set aside as `*.avro.damaged`, never uploaded nor deleted.
    pub files_damaged: Counter,
    /// Seconds per group sync (`fdatasync` of the files a group touched).
    pub sync_seconds: Histogram,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            records_written: Counter::default(),
            bytes_written: Counter::default(),
            records_quarantined: Counter::default(),
            files_uploaded: Counter::default(),
            upload_failures: Counter::default(),
            files_repaired: Counter::default(),
            files_damaged: Counter::default(),
            sync_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 14)),
        }
    }
}

impl Stats {
    /// Adds `n` to a counter.
    pub fn add(counter: &Counter, n: u64) {
        counter.inc_by(n);
    }

    /// The counters as reported properties.
    pub fn reported(&self) -> Value {
        json!({
            "RecordsWritten": self.records_written.get(),
            "RecordsQuarantined": self.records_quarantined.get(),
            "FilesUploaded": self.files_uploaded.get(),
            "UploadFailures": self.upload_failures.get(),
            "FilesRepaired": self.files_repaired.get(),
            "FilesDamaged": self.files_damaged.get(),
        })
    }

    /// Registers the metrics as `avro_*`.
    pub fn register(&self, exporter: &Exporter) {
        let counters = [
            (
                "avro_records_written",
                "Records synced into Avro files.",
                &self.records_written,
            ),
            (
                "avro_bytes_written",
                "Bytes of Avro blocks synced.",
                &self.bytes_written,
            ),
            (
                "avro_records_quarantined",
                "Bad records synced into the quarantine file.",
                &self.records_quarantined,
            ),
            (
                "avro_files_uploaded",
                "Files uploaded and removed from the archive.",
                &self.files_uploaded,
            ),
            (
                "avro_upload_failures",
                "Upload attempts that failed (each is retried).",
                &self.upload_failures,
            ),
            (
                "avro_files_repaired",
                "Files whose torn end was cut off.",
                &self.files_repaired,
            ),
            (
                "avro_files_damaged",
                "Files set aside as damaged by the check before upload.",
                &self.files_damaged,
            ),
        ];
        for (name, help, c) in counters {
            exporter.register(name, help, c.clone());
        }
        exporter.register(
            "avro_sync_seconds",
            "Time of one group sync (fdatasync of the files the group touched).",
            self.sync_seconds.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_reported_and_served_alike() {
        let s = Stats::default();
        Stats::add(&s.records_written, 5);
        Stats::add(&s.upload_failures, 1);
        assert_eq!(s.reported()["RecordsWritten"], 5);
        let exporter = Exporter::new();
        s.register(&exporter);
        let text = exporter.encode();
        assert!(text.contains("avro_records_written_total 5"), "{text}");
        assert!(text.contains("avro_upload_failures_total 1"), "{text}");
    }
}
