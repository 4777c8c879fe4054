//! The archive tree on disk: listing its Avro files, repairing them at start-up, pruning
//! empty folders, and the lock the writer and the upload scanner share.

use crate::container::{self, FileError, Repaired};
use crate::stats::Stats;
use std::collections::HashSet;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;
use tracing::{error, info, warn};

/// The quarantine folder's name, directly under the root (not part of the Avro tree).
pub const QUARANTINE_DIR: &str = "quarantine";

/// Serialises opening a file (writer) against checking-and-deleting one (scanner), says
/// which file the writer has open, and remembers which file names were uploaded, so that a
/// bucket written to again after its file was uploaded gets a new name (`15-1.avro`) rather
/// than overwriting the uploaded blob.
#[derive(Debug, Default)]
pub struct TreeLock {
    open: Mutex<Option<PathBuf>>,
    uploaded: Mutex<HashSet<PathBuf>>,
    uploading: Mutex<Option<PathBuf>>,
    ledger: Option<PathBuf>,
    /// Files and records the ledger says were uploaded, when it was read.
    ledger_totals: (u64, u64),
}

/// Name of the ledger of uploaded files, in the archive root.
pub const LEDGER: &str = ".uploaded";

/// Name of the lock file in the archive root: one writer per archive.
pub const LOCK_FILE: &str = ".lock";

/// The writer's exclusive hold on an archive folder (an advisory `flock` on
/// `<root>/.lock`, released when the process ends however it ends). Two writers appending
/// to the same files interleave their blocks and lose records: the second one refuses to
/// start instead.
#[derive(Debug)]
pub struct ArchiveLock {
    _file: std::fs::File,
}

/// Why the archive could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error(
        "another avroFileWriter ({holder}) is writing to the archive {root}: stop it first \
         (two writers on one archive lose records); the lock is {root}/{LOCK_FILE}"
    )]
    Held {
        /// The archive root.
        root: String,
        /// What the lock file says of its holder.
        holder: String,
    },
    /// The lock file cannot be opened or locked.
    #[error("cannot lock the archive {root}: {source}; check the folder's permissions")]
    Io {
        /// The archive root.
        root: String,
        /// The error.
        source: io::Error,
    },
}

impl ArchiveLock {
    /// Takes the archive at `root` for this process, or says who holds it.
    pub fn acquire(root: &Path) -> Result<ArchiveLock, LockError> {
        let path = root.join(LOCK_FILE);
        let io = |source| LockError::Io {
            root: root.display().to_string(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = holder.trim();
                return Err(LockError::Held {
                    root: root.display().to_string(),
                    holder: if holder.is_empty() {
                        "pid unknown".into()
                    } else {
                        holder.to_owned()
                    },
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        writeln!(file, "pid {}", std::process::id()).map_err(io)?;
        Ok(ArchiveLock { _file: file })
    }
}

impl TreeLock {
    /// A lock whose uploaded names persist in `<root>/.uploaded` (one line per file: its
    /// path, a tab and its record count; earlier versions wrote the path only), read back
    /// here so a restart keeps them.
    pub fn with_ledger(root: &Path) -> TreeLock {
        let ledger = root.join(LEDGER);
        let text = std::fs::read_to_string(&ledger).unwrap_or_default();
        let mut uploaded = HashSet::new();
        let mut records = 0u64;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let (rel, count) = line.split_once('\t').unwrap_or((line, ""));
            uploaded.insert(root.join(rel.trim()));
            records += count.trim().parse::<u64>().unwrap_or(0);
        }
        TreeLock {
            ledger_totals: (uploaded.len() as u64, records),
            uploaded: Mutex::new(uploaded),
            ledger: Some(ledger),
            ..TreeLock::default()
        }
    }

    /// Files and records uploaded from this archive before the module started, by its
    /// ledger.
    pub fn uploaded_before(&self) -> (u64, u64) {
        self.ledger_totals
    }

    /// Takes the lock; the value is the file the writer has open, if any.
    pub fn lock(&self) -> MutexGuard<'_, Option<PathBuf>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks `path` as being uploaded unless the writer has it open; `false` when it is open.
    /// While marked, the writer does not append to it (see [`TreeLock::file_for`]).
    pub fn begin_upload(&self, path: &Path) -> bool {
        let open = self.lock();
        if open.as_deref() == Some(path) {
            return false;
        }
        *self.uploading.lock().unwrap_or_else(|p| p.into_inner()) = Some(path.to_path_buf());
        true
    }

    /// The upload started by [`TreeLock::begin_upload`] is over.
    pub fn end_upload(&self) {
        let _open = self.lock();
        *self.uploading.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Records that `path` (relative name `rel`, holding `records`) was uploaded and removed.
    /// Call with the lock held.
    pub fn mark_uploaded(&self, path: &Path, rel: &Path, records: u64) {
        self.uploaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.to_path_buf());
        if let Some(ledger) = &self.ledger {
            let line = format!("{}\t{records}\n", rel.display());
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(ledger)
                .and_then(|mut f| f.write_all(line.as_bytes()).and_then(|_| f.sync_data()));
            if let Err(e) = written {
                warn!(ledger = %ledger.display(), error = %e, "cannot record an uploaded file name");
            }
        }
    }

    /// The file to write `bucket_path`'s records to: the bucket's own name, or when a file of
    /// that name was already uploaded or is being uploaded, the first of `15-1.avro`,
    /// `15-2.avro`, … that is neither. Call with the lock held.
    pub fn file_for(&self, bucket_path: &Path) -> PathBuf {
        let uploaded = self.uploaded.lock().unwrap_or_else(|p| p.into_inner());
        let uploading = self.uploading.lock().unwrap_or_else(|p| p.into_inner());
        let taken = |p: &Path| uploaded.contains(p) || uploading.as_deref() == Some(p);
        if !taken(bucket_path) {
            return bucket_path.to_path_buf();
        }
        let stem = bucket_path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        (1..)
            .map(|n| bucket_path.with_file_name(format!("{stem}-{n}.avro")))
            .find(|p| !taken(p))
            .unwrap_or_else(|| bucket_path.to_path_buf())
    }
}

/// An Avro file of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvroFile {
    /// Full path.
    pub path: PathBuf,
    /// Path relative to the root (`2026/11/21/5/15.avro`), the blob name.
    pub rel: PathBuf,
    /// Size, bytes.
    pub len: u64,
    /// Last modification.
    pub modified: SystemTime,
}

/// Every `.avro` file under `root` (the quarantine folder excluded), oldest path first.
pub fn list_avro_files(root: &Path) -> io::Result<Vec<AvroFile>> {
    let mut out = Vec::new();
    if root.is_dir() {
        walk(root, root, &mut out)?;
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<AvroFile>) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            if dir == root && entry.file_name() == QUARANTINE_DIR {
                continue;
            }
            walk(root, &path, out)?;
        } else if kind.is_file() && path.extension().is_some_and(|e| e == "avro") {
            let Ok(meta) = entry.metadata() else {
                continue; // removed meanwhile
            };
            let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
            out.push(AvroFile {
                path,
                rel,
                len: meta.len(),
                modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            });
        }
    }
    Ok(())
}

/// Removes `dir` and its parents while they are empty, stopping at `root` (kept).
pub fn prune_empty_dirs(root: &Path, dir: &Path) {
    let mut d = dir.to_path_buf();
    while d != root && d.starts_with(root) {
        // remove_dir fails on a non-empty folder: that is where pruning stops.
        if std::fs::remove_dir(&d).is_err() {
            break;
        }
        match d.parent() {
            Some(p) => {
                let _ = container::sync_dir(p);
                d = p.to_path_buf();
            }
            None => break,
        }
    }
}

/// Makes every Avro file of the tree readable to its end, after a crash: torn last blocks
/// are cut off, files with a torn header (which hold nothing acknowledged) are removed, and
/// files that are not Avro are renamed `*.avro.corrupt` so they are not uploaded. Returns the
/// bytes of Avro files left.
pub fn repair_tree(root: &Path, stats: &Stats) -> io::Result<u64> {
    let mut bytes = 0;
    for f in list_avro_files(root)? {
        match container::repair(&f.path) {
            Ok(Repaired::Intact(_)) => bytes += f.len,
            Ok(Repaired::Truncated { from, to, .. }) => {
                warn!(file = %f.path.display(), from, to, "cut a torn last block off (written, never acknowledged)");
                Stats::add(&stats.files_repaired, 1);
                bytes += to;
            }
            Ok(Repaired::TornHeader) => {
                info!(file = %f.path.display(), "removed a file whose header was torn (it held no record)");
                std::fs::remove_file(&f.path)?;
                if let Some(p) = f.path.parent() {
                    container::sync_dir(p)?;
                }
                Stats::add(&stats.files_repaired, 1);
            }
            Err(FileError::NotAvro { path, reason }) => {
                let aside = set_aside(&path, "corrupt")?;
                error!(file = %path.display(), moved_to = %aside.display(), "{reason}; moved aside and not uploaded: inspect it by hand");
            }
            Err(e @ FileError::Io { .. }) => return Err(io::Error::other(e.to_string())),
        }
    }
    Ok(bytes)
}

/// Records in the archive's Avro files and lines in its quarantine files: what is on disk
/// of the archive's history (with the ledger's uploads, what it has taken since it began).
/// Call after [`repair_tree`].
pub fn count_on_disk(root: &Path) -> io::Result<(u64, u64)> {
    let mut records = 0;
    for f in list_avro_files(root)? {
        let file = std::fs::File::open(&f.path)?;
        let len = file.metadata()?.len();
        if let Ok(scan) = container::scan(file, len)? {
            records += scan.records;
        }
    }
    let mut lines = 0;
    match std::fs::read_dir(root.join(QUARANTINE_DIR)) {
        Ok(dir) => {
            for e in dir
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            {
                let mut r = io::BufReader::new(std::fs::File::open(e.path())?);
                loop {
                    let buf = io::BufRead::fill_buf(&mut r)?;
                    if buf.is_empty() {
                        break;
                    }
                    lines += buf.iter().filter(|&&b| b == b'\n').count() as u64;
                    let n = buf.len();
                    io::BufRead::consume(&mut r, n);
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok((records, lines))
}

/// Renames `path` to `<path>.<suffix>` (or `<path>.<suffix>-<n>` if taken); returns the name.
pub fn set_aside(path: &Path, suffix: &str) -> io::Result<PathBuf> {
    let mut n = 0;
    loop {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{suffix}"));
        if n > 0 {
            name.push(format!("-{n}"));
        }
        let target = PathBuf::from(name);
        if !target.exists() {
            std::fs::rename(path, &target)?;
            if let Some(p) = path.parent() {
                container::sync_dir(p)?;
            }
            return Ok(target);
        }
        n += 1;
    }
}

#[cfg(test)]
mod ledger_tests {
    use super::*;

    #[test]
    fn a_second_writer_cannot_take_a_held_archive() {
        let dir = tempfile::tempdir().unwrap();
        let first = ArchiveLock::acquire(dir.path()).unwrap();
        let e = ArchiveLock::acquire(dir.path()).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, LockError::Held { .. }), "{text}");
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        drop(first);
        ArchiveLock::acquire(dir.path()).expect("free again once the holder is gone");
    }

    #[test]
    fn an_uploaded_bucket_file_is_never_written_again_even_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let bucket = root.join("2026/11/21/5/15.avro");
        let t = TreeLock::with_ledger(root);
        assert_eq!(t.file_for(&bucket), bucket);
        t.mark_uploaded(&bucket, Path::new("2026/11/21/5/15.avro"), 7);
        assert_eq!(t.file_for(&bucket), root.join("2026/11/21/5/15-1.avro"));
        t.mark_uploaded(
            &root.join("2026/11/21/5/15-1.avro"),
            Path::new("2026/11/21/5/15-1.avro"),
            5,
        );
        // A line of an earlier version: the path only.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(root.join(LEDGER))
            .unwrap();
        f.write_all(b"2020/1/1/0/0.avro\n").unwrap();
        let again = TreeLock::with_ledger(root);
        assert_eq!(again.file_for(&bucket), root.join("2026/11/21/5/15-2.avro"));
        assert_eq!(again.uploaded_before(), (3, 12));
    }

    #[test]
    fn a_file_being_uploaded_is_not_appended_to() {
        let root = Path::new("/r");
        let bucket = root.join("2026/11/21/5/15.avro");
        let t = TreeLock::default();
        assert!(t.begin_upload(&bucket));
        assert_eq!(t.file_for(&bucket), root.join("2026/11/21/5/15-1.avro"));
        t.end_upload();
        assert_eq!(t.file_for(&bucket), bucket);
        *t.lock() = Some(bucket.clone());
        assert!(
            !t.begin_upload(&bucket),
            "the writer's open file is not uploaded"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_avro_files_but_not_the_quarantine_and_prunes_empty_folders() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for p in [
            "2026/11/21/5/15.avro",
            "2026/11/21/5/20.avro",
            "2026/11/21/6/0.avro.corrupt",
            "quarantine/2026-11-21.jsonl",
            "quarantine/x.avro",
        ] {
            let p = root.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        }
        let rels: Vec<PathBuf> = list_avro_files(root)
            .unwrap()
            .into_iter()
            .map(|f| f.rel)
            .collect();
        assert_eq!(
            rels,
            vec![
                PathBuf::from("2026/11/21/5/15.avro"),
                PathBuf::from("2026/11/21/5/20.avro")
            ]
        );
        std::fs::remove_file(root.join("2026/11/21/5/15.avro")).unwrap();
        prune_empty_dirs(root, &root.join("2026/11/21/5"));
        assert!(root.join("2026/11/21/5").is_dir(), "not empty yet");
        std::fs::remove_file(root.join("2026/11/21/5/20.avro")).unwrap();
        prune_empty_dirs(root, &root.join("2026/11/21/5"));
        assert!(!root.join("2026/11/21/5").exists());
        assert!(root.join("2026/11/21/6").is_dir(), "a sibling stays");
        std::fs::remove_file(root.join("2026/11/21/6/0.avro.corrupt")).unwrap();
        prune_empty_dirs(root, &root.join("2026/11/21/6"));
        assert!(!root.join("2026").exists());
        assert!(root.is_dir(), "the root stays");
    }
}
