//! The sent log: one JSON line per message edgeHub acknowledged,
//! `{"device", "unit", "cycle", "correlationId", "sentAt"}`.

use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// One acknowledged message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SentRecord {
    /// Leaf device id.
    pub device: String,
    /// Engine unit.
    pub unit: u32,
    /// Engine cycle (the body's `CycleTime`).
    pub cycle: u32,
    /// The message's correlation id.
    pub correlation_id: String,
    /// When it was published (RFC 3339, UTC).
    pub sent_at: String,
}

/// Where the simulator writes its sent log when not told otherwise: in the runtime's state
/// folder, next to what the runtime records.
pub fn default_path(state_dir: &Path) -> PathBuf {
    state_dir.join("leaf-simulator").join("sent.jsonl")
}

/// A sent log being written; shared by the device tasks.
#[derive(Debug)]
pub struct SentLog {
    path: PathBuf,
    out: Mutex<std::io::BufWriter<std::fs::File>>,
}

impl SentLog {
    /// Creates (or truncates) the log at `path`, creating its folder.
    pub fn create(path: &Path) -> std::io::Result<SentLog> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::File::create(path)?;
        Ok(SentLog {
            path: path.to_path_buf(),
            out: Mutex::new(std::io::BufWriter::new(file)),
        })
    }

    /// The log's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record.
    pub fn append(&self, r: &SentRecord) -> std::io::Result<()> {
        let line = serde_json::to_string(r)?;
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        writeln!(out, "{line}")
    }

    /// Writes everything buffered to disk.
    pub fn flush(&self) -> std::io::Result<()> {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        out.flush()?;
        out.get_ref().sync_data()
    }
}

/// Reads a sent log; lines that are not records (e.g. a torn last line) are skipped and
/// counted.
pub fn read(path: &Path) -> std::io::Result<(Vec<SentRecord>, usize)> {
    let f = std::fs::File::open(path)?;
    let mut records = Vec::new();
    let mut skipped = 0;
    for line in std::io::BufReader::new(f).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(&line) {
            Ok(r) => records.push(r),
            Err(_) => skipped += 1,
        }
    }
    Ok((records, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_as_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("sent.jsonl");
        let log = SentLog::create(&path).unwrap();
        let r = SentRecord {
            device: "Client_001".into(),
            unit: 1,
            cycle: 3,
            correlation_id: "c".into(),
            sent_at: "2026-11-21T05:00:00.000Z".into(),
        };
        log.append(&r).unwrap();
        log.flush().unwrap();
        let mut text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(r#""correlationId":"c""#), "{text}");
        assert!(text.contains(r#""sentAt":"#), "{text}");
        text.push_str("{\"device\": \"torn");
        std::fs::write(&path, text).unwrap();
        assert_eq!(read(&path).unwrap(), (vec![r], 1));
    }
}
