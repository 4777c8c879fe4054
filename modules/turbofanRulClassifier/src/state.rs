//! The history state on disk: the classifier's per-device histories, kept in the module's
//! bind-mounted volume (`/state` in the manifest) as a snapshot plus a change log, so a
//! restart, even `kill -9`, finds every row the module had acknowledged.
//!
//! - **Change log** (`<file>.log.<n>`): each batch's [`Change`]s are appended before its
//!   messages are acknowledged (written to the operating system, not synced: they survive a
//!   crash of the process, and a power cut up to the last snapshot).
//! - **Snapshot** (`<file>`): every `HistorySnapshotSeconds` the store is written whole. Under
//!   the store's lock the log moves on to `<n + 1>`; the snapshot, whose first line names log
//!   `n + 1` as the first one it does not hold, goes to `<file>.tmp`, is synced and renamed
//!   over the file; then the older logs are deleted. A crash at any step leaves a snapshot
//!   and exactly the logs written after it.
//! - **Start**: the snapshot is read, the logs it names and later are replayed in order (a
//!   record torn by a crash ends its log), a new snapshot is written and the next log opened.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use turbofan_domain::history::{Change, HistoryStore};

/// The container path of the state file (a bind of the manifest maps it to the host).
pub const CONTAINER_PATH: &str = "/state/history.cbor";

/// The first line of a snapshot, before the number of the first log it does not hold.
const HEADER: &str = "turbofan-history-state v2 log ";

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The log that takes each batch's changes until the next snapshot.
pub struct ChangeLog {
    path: PathBuf,
    number: u64,
    file: File,
    /// Bytes of whole records in the file.
    len: u64,
    buf: Vec<u8>,
}

impl ChangeLog {
    fn create(path: &Path, number: u64) -> std::io::Result<ChangeLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path(path, number))?;
        let len = file.metadata()?.len();
        Ok(ChangeLog {
            path: path.to_path_buf(),
            number,
            file,
            len,
            buf: Vec::with_capacity(8 << 10),
        })
    }

    /// Writes `changes` in one write: each record is whole or, after a crash mid-write,
    /// torn at the end of the log, where replay stops. A write that fails is cut off (or,
    /// if even that fails, the log moves on to the next number), so nothing written later
    /// sits behind a torn record.
    pub fn append(&mut self, changes: &[Change]) -> std::io::Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        self.buf.clear();
        for c in changes {
            c.encode(&mut self.buf);
        }
        match self.file.write_all(&self.buf) {
            Ok(()) => {
                self.len += self.buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                if self.file.set_len(self.len).is_err() {
                    if let Some(next) = self.number.checked_add(1) {
                        if let Ok(moved) = ChangeLog::create(&self.path, next) {
                            *self = moved;
                        }
                    }
                }
                Err(e)
            }
        }
    }
}

/// The histories at start-up and the log for what follows.
pub struct Opened {
    /// The store as last acknowledged: the snapshot with its later logs replayed.
    pub store: HistoryStore,
    /// Where the changes go from now on.
    pub log: ChangeLog,
    /// Changes replayed from the logs.
    pub replayed: usize,
}

/// Reads the histories saved at `path` (snapshot and logs), writes them as a new snapshot
/// and opens the next log. A snapshot that cannot be read is set aside (logged) and the
/// histories start empty; an error means the state cannot be written at all.
pub fn open(path: &Path, max_devices: usize, idle_secs: u64) -> std::io::Result<Opened> {
    // A snapshot of an earlier version holds everything: no log applies.
    let (mut store, first_log) = match read_snapshot(path, max_devices, idle_secs) {
        Some((store, first_log)) => (store, first_log),
        None => (HistoryStore::new(max_devices, idle_secs), Some(0)),
    };
    let logs = log_numbers(path)?;
    let mut replayed = 0;
    if let Some(first) = first_log {
        for &n in logs.iter().filter(|&&n| n >= first) {
            replayed += replay(&log_path(path, n), &mut store)?;
        }
    }
    let first_log = first_log.unwrap_or(0);
    let next = match logs.last() {
        Some(n) => n.checked_add(1).ok_or_else(exhausted)?.max(first_log),
        None => first_log,
    };
    let log = ChangeLog::create(path, next)?;
    write_snapshot(&store, path, next)?;
    remove_logs_before(path, next);
    Ok(Opened {
        store,
        log,
        replayed,
    })
}

fn exhausted() -> std::io::Error {
    std::io::Error::other(
        "history log numbers are exhausted: delete the state folder's *.log.* files",
    )
}

/// The snapshot at `path` and the first log it does not hold (none for a snapshot of an
/// earlier version); `None` (with the reason logged) if there is none or it cannot be read.
fn read_snapshot(
    path: &Path,
    max_devices: usize,
    idle_secs: u64,
) -> Option<(HistoryStore, Option<u64>)> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(path = %path.display(), "no history state file yet: histories start empty");
            return None;
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), "cannot open the history state file ({e}): histories start empty");
            return None;
        }
    };
    let mut r = BufReader::new(file);
    let first_log = match r.fill_buf() {
        Ok(b) if b.starts_with(HEADER.as_bytes()) => {
            let mut line = String::new();
            let n = r
                .read_line(&mut line)
                .ok()
                .and_then(|_| line[HEADER.len()..].trim_end().parse::<u64>().ok());
            match n {
                Some(n) => Some(n),
                None => {
                    let aside = set_aside(path);
                    tracing::warn!(path = %path.display(), aside = %aside.display(), "the history state file's first line is damaged: histories start empty (the file is kept aside)");
                    return None;
                }
            }
        }
        _ => None,
    };
    match HistoryStore::load(&mut r, max_devices, idle_secs, now()) {
        Ok(s) => {
            tracing::info!(path = %path.display(), devices = s.len(), "histories restored");
            Some((s, first_log))
        }
        Err(e) => {
            let aside = set_aside(path);
            tracing::warn!(path = %path.display(), aside = %aside.display(), "{e}: histories start empty (the file is kept aside)");
            None
        }
    }
}

/// Replays the log at `path` into `store`; returns how many changes it held.
fn replay(path: &Path, store: &mut HistoryStore) -> std::io::Result<usize> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let (mut at, mut n, now) = (0, 0, now());
    while let Some((change, len)) = turbofan_domain::history::Change::decode(&bytes[at..]) {
        store.replay(&change, now);
        at += len;
        n += 1;
    }
    if at < bytes.len() {
        tracing::warn!(path = %path.display(), bytes = bytes.len() - at, "the history log ends in a torn record (a crash while writing it): the rest is ignored");
    }
    Ok(n)
}

/// Writes a snapshot of `store` to `path`: under the store's lock the log moves on; the file
/// goes to `<path>.tmp`, is synced and renamed; then the logs it holds are deleted. One save
/// at a time (`saving`): two would share the temporary file, and the later rename could
/// name a log the other already deleted. Returns the devices written.
pub fn save(
    store: &Mutex<HistoryStore>,
    log: &Mutex<ChangeLog>,
    saving: &Mutex<()>,
    path: &Path,
) -> std::io::Result<usize> {
    let _one = saving.lock().unwrap_or_else(|p| p.into_inner());
    let mut bytes = Vec::new();
    let (devices, next) = {
        let s = store.lock().unwrap_or_else(|p| p.into_inner());
        let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
        let next = log.number.checked_add(1).ok_or_else(exhausted)?;
        let moved = ChangeLog::create(&log.path, next)?;
        s.save(&mut bytes).map_err(std::io::Error::other)?;
        *log = moved;
        (s.len(), next)
    };
    write_file(path, next, &bytes)?;
    remove_logs_before(path, next);
    Ok(devices)
}

fn write_snapshot(store: &HistoryStore, path: &Path, next: u64) -> std::io::Result<()> {
    let mut bytes = Vec::new();
    store.save(&mut bytes).map_err(std::io::Error::other)?;
    write_file(path, next, &bytes)
}

fn write_file(path: &Path, first_log: u64, cbor: &[u8]) -> std::io::Result<()> {
    let tmp = tmp_path(path);
    let mut file = File::create(&tmp)?;
    file.write_all(format!("{HEADER}{first_log}\n").as_bytes())?;
    file.write_all(cbor)?;
    file.sync_data()?;
    drop(file);
    std::fs::rename(&tmp, path)
}

fn log_path(path: &Path, n: u64) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(format!(".log.{n}"));
    PathBuf::from(p)
}

/// The numbers of the logs beside `path`, in order.
fn log_numbers(path: &Path) -> std::io::Result<Vec<u64>> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{name}.log.");
    let mut out: Vec<u64> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_prefix(&prefix)?.parse().ok())
        .collect();
    out.sort_unstable();
    Ok(out)
}

fn remove_logs_before(path: &Path, next: u64) {
    for n in log_numbers(path).unwrap_or_default() {
        if n < next {
            if let Err(e) = std::fs::remove_file(log_path(path, n)) {
                tracing::warn!(
                    log = n,
                    "cannot delete a history log the snapshot holds: {e}"
                );
            }
        }
    }
}

/// Renames an unreadable snapshot to `<file>.unreadable` (replacing an earlier one), so the
/// next snapshot does not overwrite it; returns the name.
fn set_aside(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".unreadable");
    let aside = PathBuf::from(p);
    if let Err(e) = std::fs::rename(path, &aside) {
        tracing::warn!(path = %path.display(), "cannot keep the unreadable state file aside: {e}");
    }
    aside
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".tmp");
    PathBuf::from(p)
}

/// Makes sure the state file's folder exists (created if `create`) and can be written.
pub fn check_writable(path: &Path, create: bool) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        if create {
            std::fs::create_dir_all(dir)?;
        } else if !dir.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "{} is not mounted (bind a volume there, or set HISTORY_STATE_PATH)",
                    dir.display()
                ),
            ));
        }
    }
    let probe = tmp_path(path);
    File::create(&probe)?.write_all(b"")?;
    std::fs::remove_file(probe)
}

#[cfg(test)]
mod tests {
    use super::*;
    use turbofan_domain::history::{Answer, Prediction};

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("classifier-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// A state file in a new folder `name`, opened: (folder, path, store, log).
    fn opened(name: &str) -> (PathBuf, PathBuf, Mutex<HistoryStore>, Mutex<ChangeLog>) {
        let dir = dir(name);
        let path = dir.join("history.cbor");
        check_writable(&path, true).unwrap();
        let o = open(&path, 10, 3600).unwrap();
        (dir, path, Mutex::new(o.store), Mutex::new(o.log))
    }

    /// Scores `cycles` of device `d` into `store` and `log` as the module does.
    fn run(
        store: &Mutex<HistoryStore>,
        log: &Mutex<ChangeLog>,
        d: &str,
        cycles: std::ops::RangeInclusive<u32>,
    ) {
        for c in cycles {
            let mut s = store.lock().unwrap();
            let sensors = [c as f32; 9];
            let obs = s.observe(d, c, &sensors, now());
            assert!(matches!(obs.answer, Answer::Score(_)));
            let prediction = Prediction {
                rul: 200.0 - c as f32,
                low: 0.0,
                high: 300.0,
            };
            s.record(d, c, prediction);
            let change = Change {
                device: d.into(),
                cycle: c,
                sensors,
                prediction,
            };
            log.lock().unwrap().append(&[change]).unwrap();
        }
    }

    #[test]
    fn a_restart_after_a_crash_finds_every_logged_change_on_top_of_the_snapshot() {
        let dir = dir("state");
        let path = dir.join("state/history.cbor");
        check_writable(&path, true).unwrap();
        assert!(check_writable(&dir.join("absent/history.cbor"), false).is_err());
        let o = open(&path, 10, 3600).unwrap();
        assert_eq!((o.store.len(), o.replayed, o.log.number), (0, 0, 0));
        let (store, log) = (Mutex::new(o.store), Mutex::new(o.log));
        run(&store, &log, "a", 1..=10);
        assert_eq!(save(&store, &log, &Mutex::new(()), &path).unwrap(), 1);
        assert!(!tmp_path(&path).exists());
        assert_eq!(
            log_numbers(&path).unwrap(),
            vec![1],
            "the held log is deleted"
        );
        run(&store, &log, "a", 11..=20);
        run(&store, &log, "b", 1..=3);
        // A crash: nothing more is written. The restart replays log 1 on the snapshot.
        let again = open(&path, 10, 3600).unwrap();
        assert_eq!(again.replayed, 13);
        assert_eq!(again.store.get("a"), store.lock().unwrap().get("a"));
        assert_eq!(again.store.get("b"), store.lock().unwrap().get("b"));
        assert_eq!(again.store.get("a").unwrap().missing_cycles(), 0);
        assert_eq!(log_numbers(&path).unwrap(), vec![2]);
        // And once more with nothing new: the same histories, nothing replayed twice.
        drop(again);
        let third = open(&path, 10, 3600).unwrap();
        assert_eq!(third.replayed, 0);
        assert_eq!(third.store.get("a"), store.lock().unwrap().get("a"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_crash_between_moving_the_log_and_renaming_the_snapshot_replays_both_logs() {
        let (dir, path, store, log) = opened("state-mid");
        run(&store, &log, "a", 1..=5);
        // The log moves on, then the process dies before the snapshot is renamed.
        {
            let mut l = log.lock().unwrap();
            *l = ChangeLog::create(&path, l.number + 1).unwrap();
        }
        run(&store, &log, "a", 6..=8);
        let again = open(&path, 10, 3600).unwrap();
        assert_eq!(again.replayed, 8);
        assert_eq!(again.store.get("a"), store.lock().unwrap().get("a"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_failed_write_that_cannot_be_cut_back_moves_the_log_on() {
        let (dir, path, store, log) = opened("state-full");
        run(&store, &log, "a", 1..=3);
        // The disk is full: the write fails, and so does cutting the log back (/dev/full
        // cannot be truncated). The log moves on to the next number.
        let number = log.lock().unwrap().number;
        log.lock().unwrap().file = File::options().write(true).open("/dev/full").unwrap();
        let lost = Change {
            device: "a".into(),
            cycle: 4,
            sensors: [4.0; 9],
            prediction: Prediction::NONE,
        };
        assert!(log.lock().unwrap().append(&[lost]).is_err());
        assert_eq!(log.lock().unwrap().number, number + 1);
        // Later batches go to the new log; a restart replays both logs, and nothing of the
        // failed batch.
        run(&store, &log, "b", 1..=2);
        let again = open(&path, 10, 3600).unwrap();
        assert_eq!(again.replayed, 5);
        assert_eq!(again.store.get("a"), store.lock().unwrap().get("a"));
        assert_eq!(again.store.get("b"), store.lock().unwrap().get("b"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_torn_log_a_broken_snapshot_and_an_earlier_format() {
        let (dir, path, store, log) = opened("state-torn");
        run(&store, &log, "a", 1..=4);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(log_path(&path, 0))
            .unwrap();
        f.write_all(&[70, 0, 0, 0, 1, 2]).unwrap();
        let again = open(&path, 10, 3600).unwrap();
        assert_eq!(
            (again.replayed, again.store.get("a").unwrap().cycles()),
            (4, 4)
        );
        // A snapshot written before the change log (no first line) is read, with no logs.
        let mut old = Vec::new();
        again.store.save(&mut old).unwrap();
        drop(again);
        std::fs::write(&path, &old).unwrap();
        let o = open(&path, 10, 3600).unwrap();
        assert_eq!((o.store.len(), o.replayed), (1, 0));
        drop(o);
        std::fs::write(&path, b"garbage").unwrap();
        let o = open(&path, 10, 3600).unwrap();
        assert_eq!(o.store.len(), 0, "an unreadable snapshot starts empty");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
