//! The writer: group commit of records into Avro blocks.
//!
//! One thread owns the open files. Records (already encoded by the input handlers) are
//! gathered into a group; a group becomes one Avro block, written in one `write` and handed
//! to a second thread that `fdatasync`s it while the next group fills. A record's
//! [`Writer::append`] returns only after its block is synced, so a message is acknowledged
//! only once its record is on disk.
//!
//! A group is closed when it holds [`SyncPolicy::records`] records, when its first record has
//! waited [`SyncPolicy::interval`], or when no record has arrived for [`SyncPolicy::idle`] —
//! edgeHub has only a window of messages in flight per module and sends more only after
//! acknowledgements, so waiting out the interval with a full window would only add latency.
//!
//! Quarantined records travel the same way into the day's `quarantine/<Y>-<M>-<D>.jsonl`.

use crate::bucket::{Bucket, Clock};
use crate::budget::DiskBudget;
use crate::container::{self, FileError, Repaired, SyncMarker};
use crate::record::RecordSchema;
use crate::stats::Stats;
use crate::tree::{self, TreeLock, QUARANTINE_DIR};
use chrono::{Datelike, NaiveDate};
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

/// When groups of records are synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncPolicy {
    /// Longest a record waits for its sync while records keep arriving (`SyncIntervalMs`).
    pub interval: Duration,
    /// Records (and quarantined records) that close a group at once (`SyncRecords`).
    pub records: usize,
    /// A group is also closed when no record arrived for this long (`SyncIdleMs`).
    pub idle: Duration,
    /// The open file is closed when no record arrived for this long (the upload quiet
    /// period), so that it can be uploaded; later records of its bucket go to a new file.
    pub close_idle: Duration,
}

impl Default for SyncPolicy {
    fn default() -> Self {
        SyncPolicy {
            interval: Duration::from_millis(200),
            records: 1000,
            idle: Duration::from_millis(2),
            close_idle: Duration::from_secs(600),
        }
    }
}

/// Why a record was not written; the message is then left unacknowledged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// Writing or syncing failed.
    #[error("{0} (check free space and the health of the disk holding the archive)")]
    Io(String),
    /// The writer has stopped (the module is shutting down).
    #[error("the writer has stopped")]
    Stopped,
}

type Done = oneshot::Sender<Result<(), WriteError>>;

enum Job {
    Record(Vec<u8>, Done),
    Quarantine(Vec<u8>, Done),
    Shutdown,
}

/// Where the writer writes.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// The archive root (`/avrofiles` resolved through the runtime's binds).
    pub root: PathBuf,
    /// Decides the bucket of each record.
    pub clock: Clock,
    /// The record schema, parsed once.
    pub schema: Arc<RecordSchema>,
    /// Initial sync policy.
    pub policy: SyncPolicy,
}

/// Handle to the writer; cheap to clone, one per handler.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
    policy: Arc<Mutex<SyncPolicy>>,
    budget: Arc<DiskBudget>,
}

/// The writer's threads; [`WriterThreads::close`] syncs and closes everything.
pub struct WriterThreads {
    tx: mpsc::Sender<Job>,
    writer: JoinHandle<()>,
    syncer: JoinHandle<()>,
}

/// Starts the writer's two threads.
pub fn start(
    cfg: WriterConfig,
    budget: Arc<DiskBudget>,
    stats: Arc<Stats>,
    tree: Arc<TreeLock>,
) -> io::Result<(Writer, WriterThreads)> {
    std::fs::create_dir_all(&cfg.root)?;
    let (tx, rx) = mpsc::channel();
    let (sync_tx, sync_rx) = mpsc::channel();
    let policy = Arc::new(Mutex::new(cfg.policy));
    let sync_failed = Arc::new(AtomicBool::new(false));
    let syncer = {
        let (stats, failed) = (stats.clone(), sync_failed.clone());
        std::thread::Builder::new()
            .name("avro-sync".into())
            .spawn(move || run_syncer(sync_rx, stats, failed))?
    };
    let reserve = budget.clone();
    let state = State {
        root: cfg.root,
        clock: cfg.clock,
        schema: cfg.schema,
        policy: policy.clone(),
        budget,
        stats,
        tree,
        sync_tx,
        sync_failed,
        avro: None,
        quarantine: None,
        group: Group::default(),
        out: Vec::new(),
        last_job: Instant::now(),
        bucket_now: cfg.clock.bucket(),
    };
    let writer = std::thread::Builder::new()
        .name("avro-writer".into())
        .spawn(move || state.run(rx))?;
    Ok((
        Writer {
            tx: tx.clone(),
            policy,
            budget: reserve,
        },
        WriterThreads { tx, writer, syncer },
    ))
}

/// Resolves once a submitted record (or line) is synced, or failed.
pub struct Synced(oneshot::Receiver<Result<(), WriteError>>);

impl Synced {
    /// A future that fails at once.
    pub fn failed(e: WriteError) -> Synced {
        let (done, rx) = oneshot::channel();
        let _ = done.send(Err(e));
        Synced(rx)
    }
}

impl Future for Synced {
    type Output = Result<(), WriteError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(WriteError::Stopped)))
    }
}

impl Writer {
    /// Queues one encoded record, in call order, without waiting; the returned future
    /// resolves once it is synced to disk.
    pub fn submit(&self, datum: Vec<u8>) -> Synced {
        let (done, rx) = oneshot::channel();
        // Counted against the disk budget until its block is written.
        let bytes = datum.len() as u64;
        self.budget.reserve(bytes);
        // If the writer is gone the job (and `done`) is dropped: the future says Stopped.
        if self.tx.send(Job::Record(datum, done)).is_err() {
            self.budget.release(bytes);
        }
        Synced(rx)
    }

    /// Queues one line (ending in `\n`) for the day's quarantine file; the returned future
    /// resolves once it is synced.
    pub fn submit_line(&self, line: Vec<u8>) -> Synced {
        let (done, rx) = oneshot::channel();
        let _ = self.tx.send(Job::Quarantine(line, done));
        Synced(rx)
    }

    /// Appends one encoded record; returns once it is synced to disk.
    pub async fn append(&self, datum: Vec<u8>) -> Result<(), WriteError> {
        self.submit(datum).await
    }

    /// Appends one line to the day's quarantine file; returns once it is synced.
    pub async fn quarantine(&self, line: Vec<u8>) -> Result<(), WriteError> {
        self.submit_line(line).await
    }

    /// The sync policy in force.
    pub fn policy(&self) -> SyncPolicy {
        *self.policy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the sync policy (takes effect at the writer's next step).
    pub fn set_policy(&self, p: SyncPolicy) {
        *self.policy.lock().unwrap_or_else(|p| p.into_inner()) = p;
    }
}

impl WriterThreads {
    /// Whether a thread has ended (it should only end through [`WriterThreads::close`]).
    pub fn is_finished(&self) -> bool {
        self.writer.is_finished() || self.syncer.is_finished()
    }

    /// Writes and syncs what is pending, closes the files and ends the threads. Blocking.
    pub fn close(self) {
        let _ = self.tx.send(Job::Shutdown);
        drop(self.tx);
        let _ = self.writer.join();
        let _ = self.syncer.join();
    }
}

/// A file being written, shared with the syncer.
struct Target {
    file: File,
    path: PathBuf,
}

struct OpenAvro {
    bucket: Bucket,
    target: Arc<Target>,
    marker: SyncMarker,
    len: u64,
}

struct OpenQuarantine {
    day: NaiveDate,
    target: Arc<Target>,
    len: u64,
}

#[derive(Default)]
struct Group {
    data: Vec<u8>,
    count: u64,
    waiters: Vec<Done>,
    lines: Vec<u8>,
    line_count: u64,
    line_waiters: Vec<Done>,
    first_at: Option<Instant>,
}

impl Group {
    fn len(&self) -> usize {
        self.waiters.len() + self.line_waiters.len()
    }
}

struct SyncJob {
    targets: Vec<Arc<Target>>,
    waiters: Vec<Done>,
    records: u64,
    /// Bytes of Avro blocks in the job.
    bytes: u64,
    quarantined: u64,
}

struct State {
    root: PathBuf,
    clock: Clock,
    schema: Arc<RecordSchema>,
    policy: Arc<Mutex<SyncPolicy>>,
    budget: Arc<DiskBudget>,
    stats: Arc<Stats>,
    tree: Arc<TreeLock>,
    sync_tx: mpsc::Sender<SyncJob>,
    sync_failed: Arc<AtomicBool>,
    avro: Option<OpenAvro>,
    quarantine: Option<OpenQuarantine>,
    group: Group,
    out: Vec<u8>,
    last_job: Instant,
    /// The current bucket, read once per batch of jobs.
    bucket_now: Bucket,
}

fn fail_all(waiters: Vec<Done>, e: &WriteError) {
    for w in waiters {
        let _ = w.send(Err(e.clone()));
    }
}

impl State {
    fn run(mut self, rx: mpsc::Receiver<Job>) {
        let mut backlog = false;
        'run: loop {
            if self.sync_failed.swap(false, Ordering::SeqCst) {
                warn!("a sync failed: reopening the files (records since the last good sync will be written again)");
                self.close_avro();
                self.quarantine = None;
            }
            let policy = *self.policy.lock().unwrap_or_else(|p| p.into_inner());
            if self.group.len() == 0 {
                // Nothing pending: sleep until a job comes (or the open file is due to close).
                match rx.recv_timeout(self.until_close(&policy)) {
                    Ok(job) => {
                        self.bucket_now = self.clock.bucket();
                        self.last_job = Instant::now();
                        if !self.take(job, &policy) {
                            break 'run;
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        self.close_if_bucket_ended();
                        self.close_if_idle(&policy);
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break 'run,
                }
            } else if !backlog {
                // A group is open: look for more jobs every quantum instead of being woken
                // for each one.
                let wait = self.group_wait(&policy);
                if !wait.is_zero() {
                    std::thread::sleep(wait);
                }
            }
            self.bucket_now = self.clock.bucket();
            let mut drained = false;
            // Bounded, so that a producer faster than the writer still lets it look at the
            // clock and at sync failures between groups.
            backlog = true;
            for _ in 0..policy.records.max(1).saturating_mul(4) {
                match rx.try_recv() {
                    Ok(job) => {
                        drained = true;
                        if !self.take(job, &policy) {
                            break 'run;
                        }
                    }
                    Err(mpsc::TryRecvError::Empty) => {
                        backlog = false;
                        break;
                    }
                    Err(mpsc::TryRecvError::Disconnected) => break 'run,
                }
            }
            if drained {
                self.last_job = Instant::now();
            }
            self.flush_if_due(&policy, !drained);
        }
        self.flush();
        self.close_avro();
        self.quarantine = None;
        debug!("writer stopped; the syncer finishes what is queued");
    }

    /// Adds a job to the group (closing the group when it is full); `false` on shutdown.
    fn take(&mut self, job: Job, policy: &SyncPolicy) -> bool {
        match job {
            Job::Record(datum, done) => self.add_record(&datum, done),
            Job::Quarantine(line, done) => self.add_line(&line, done),
            Job::Shutdown => return false,
        }
        if self.group.len() >= policy.records.max(1) {
            self.flush();
        }
        true
    }

    /// How long to wait for a job while nothing is pending: until the open bucket ends or the
    /// open file has been idle for `close_idle`.
    fn until_close(&self, p: &SyncPolicy) -> Duration {
        let mut wake = Duration::from_secs(1);
        if let Some(a) = &self.avro {
            let left = (a.bucket.end() - self.clock.now())
                .to_std()
                .unwrap_or(Duration::ZERO);
            let idle_left =
                (self.last_job + p.close_idle).saturating_duration_since(Instant::now());
            wake = wake
                .min(left + Duration::from_millis(1))
                .min(idle_left + Duration::from_millis(1));
        }
        wake
    }

    fn close_if_idle(&mut self, p: &SyncPolicy) {
        if self.avro.is_some() && self.group.len() == 0 && self.last_job.elapsed() >= p.close_idle {
            debug!("no record for the quiet period: closing the file so it can be uploaded");
            self.close_avro();
        }
    }

    /// How long to sleep before looking for jobs again while a group is open.
    fn group_wait(&self, p: &SyncPolicy) -> Duration {
        let now = Instant::now();
        let quantum = (p.idle / 2).clamp(Duration::from_micros(50), Duration::from_millis(1));
        let mut wait = if p.idle.is_zero() {
            Duration::ZERO
        } else {
            quantum
        };
        if let Some(first) = self.group.first_at {
            wait = wait.min((first + p.interval).saturating_duration_since(now));
        }
        wait
    }

    fn flush_if_due(&mut self, p: &SyncPolicy, quiet: bool) {
        let Some(first) = self.group.first_at else {
            return;
        };
        let now = Instant::now();
        if self.group.len() >= p.records.max(1)
            || now >= first + p.interval
            || (quiet && now >= self.last_job + p.idle)
        {
            self.flush();
        }
    }

    fn add_record(&mut self, datum: &[u8], done: Done) {
        let bucket = self.bucket_now;
        if self.avro.as_ref().map(|a| a.bucket) != Some(bucket) {
            self.flush();
            self.close_avro();
            match self.open_avro(bucket) {
                Ok(a) => self.avro = Some(a),
                Err(e) => {
                    warn!("{e}");
                    self.budget.release(datum.len() as u64);
                    let _ = done.send(Err(WriteError::Io(e.to_string())));
                    return;
                }
            }
        }
        self.group.first_at.get_or_insert_with(Instant::now);
        self.group.data.extend_from_slice(datum);
        self.group.count += 1;
        self.group.waiters.push(done);
    }

    fn add_line(&mut self, line: &[u8], done: Done) {
        let now = self.clock.now();
        let day = now.date_naive();
        if self.quarantine.as_ref().map(|q| q.day) != Some(day) {
            self.flush();
            self.quarantine = None;
            match open_quarantine(&self.root, day) {
                Ok(q) => self.quarantine = Some(q),
                Err(e) => {
                    warn!("{e}");
                    let _ = done.send(Err(WriteError::Io(e.to_string())));
                    return;
                }
            }
        }
        self.group.first_at.get_or_insert_with(Instant::now);
        self.group.lines.extend_from_slice(line);
        self.group.line_count += 1;
        self.group.line_waiters.push(done);
    }

    /// Writes the group (one block, and the quarantine lines) and hands it to the syncer.
    fn flush(&mut self) {
        if self.group.len() == 0 {
            return;
        }
        let mut job = SyncJob {
            targets: Vec::with_capacity(2),
            waiters: Vec::new(),
            records: 0,
            bytes: 0,
            quarantined: 0,
        };
        let mut written = 0;
        if self.group.count > 0 {
            let waiters = std::mem::take(&mut self.group.waiters);
            match self.avro.as_mut() {
                Some(a) => {
                    self.out.clear();
                    container::encode_block(
                        &mut self.out,
                        self.group.count,
                        &self.group.data,
                        &a.marker,
                    );
                    match a.target.file.write_all_at(&self.out, a.len) {
                        Ok(()) => {
                            a.len += self.out.len() as u64;
                            written = self.out.len() as u64;
                            job.targets.push(a.target.clone());
                            job.waiters.extend(waiters);
                            job.records = self.group.count;
                            job.bytes = self.out.len() as u64;
                        }
                        Err(e) => {
                            let err = WriteError::Io(format!(
                                "writing a block to {}: {e}",
                                a.target.path.display()
                            ));
                            warn!("{err}");
                            fail_all(waiters, &err);
                            // Cut the partial block off; if even that fails, reopen (and
                            // repair) the file on the next record.
                            if a.target.file.set_len(a.len).is_err() {
                                self.close_avro();
                            }
                        }
                    }
                }
                None => fail_all(waiters, &WriteError::Io("no open Avro file".into())),
            }
        }
        if self.group.line_count > 0 {
            let waiters = std::mem::take(&mut self.group.line_waiters);
            match self.quarantine.as_mut() {
                Some(q) => match q.target.file.write_all_at(&self.group.lines, q.len) {
                    Ok(()) => {
                        q.len += self.group.lines.len() as u64;
                        job.targets.push(q.target.clone());
                        job.waiters.extend(waiters);
                        job.quarantined = self.group.line_count;
                    }
                    Err(e) => {
                        let err =
                            WriteError::Io(format!("writing to {}: {e}", q.target.path.display()));
                        warn!("{err}");
                        fail_all(waiters, &err);
                        if q.target.file.set_len(q.len).is_err() {
                            self.quarantine = None;
                        }
                    }
                },
                None => fail_all(waiters, &WriteError::Io("no open quarantine file".into())),
            }
        }
        self.budget.commit(self.group.data.len() as u64, written);
        self.group.data.clear();
        self.group.count = 0;
        self.group.lines.clear();
        self.group.line_count = 0;
        self.group.first_at = None;
        if !job.waiters.is_empty() {
            if let Err(mpsc::SendError(job)) = self.sync_tx.send(job) {
                fail_all(job.waiters, &WriteError::Stopped);
            }
        }
    }

    fn close_if_bucket_ended(&mut self) {
        if self
            .avro
            .as_ref()
            .is_some_and(|a| a.bucket != self.clock.bucket())
        {
            self.close_avro();
        }
    }

    /// Stops writing the open Avro file (the syncer still holds it until its last sync).
    fn close_avro(&mut self) {
        if let Some(a) = self.avro.take() {
            debug!(file = %a.target.path.display(), bytes = a.len, "closed");
            *self.tree.lock() = None;
        }
    }

    fn open_avro(&mut self, bucket: Bucket) -> Result<OpenAvro, FileError> {
        let mut open = self.tree.lock();
        let path = self.tree.file_for(&bucket.path(&self.root));
        let (file, marker, len, created) = open_container(&path, &self.schema, &self.stats)?;
        *open = Some(path.clone());
        drop(open);
        if created > 0 {
            self.budget.add(created);
        }
        debug!(file = %path.display(), bytes = len, "open");
        Ok(OpenAvro {
            bucket,
            target: Arc::new(Target { file, path }),
            marker,
            len,
        })
    }
}

/// Opens `path` for appending — repairing a torn end and keeping its sync marker — or
/// creates it with a fresh header (synced, with its folder entries). Returns the file, its
/// marker, its length and the bytes created.
pub fn open_container(
    path: &Path,
    schema: &RecordSchema,
    stats: &Stats,
) -> Result<(File, SyncMarker, u64, u64), FileError> {
    let io = |e| FileError::io(path, e);
    if let Some(parent) = path.parent() {
        container::create_dirs_synced(parent).map_err(io)?;
    }
    if path.exists() {
        let header = match container::repair(path) {
            Ok(Repaired::Intact(h)) => Some(h),
            Ok(Repaired::Truncated { header, from, to }) => {
                warn!(file = %path.display(), from, to, "cut a torn last block off (written, never acknowledged)");
                Stats::add(&stats.files_repaired, 1);
                Some(header)
            }
            Ok(Repaired::TornHeader) => {
                info!(file = %path.display(), "rewriting a file whose header was torn (it held no record)");
                None
            }
            Err(FileError::NotAvro { reason, .. }) => {
                let aside = tree::set_aside(path, "corrupt").map_err(io)?;
                warn!(file = %path.display(), moved_to = %aside.display(), "{reason}; moved aside, starting a new file");
                None
            }
            Err(e) => return Err(e),
        };
        if let Some(h) = header {
            let codec_ok = matches!(h.codec.as_deref(), None | Some("null"));
            if codec_ok && schema.same_as(&h.schema) {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)
                    .map_err(io)?;
                let len = file.metadata().map_err(io)?.len();
                return Ok((file, h.marker, len, 0));
            }
            let aside = set_aside_avro(path).map_err(io)?;
            warn!(file = %path.display(), moved_to = %aside.display(), "the file has another schema or codec: kept under a new name (it is uploaded as it is), starting a new file");
        }
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io)?;
    let marker = container::new_marker();
    let header = container::encode_header(schema.json(), &marker);
    file.write_all_at(&header, 0).map_err(io)?;
    file.sync_all().map_err(io)?;
    if let Some(parent) = path.parent() {
        container::sync_dir(parent).map_err(io)?;
    }
    let len = header.len() as u64;
    Ok((file, marker, len, len))
}

/// `15.avro` → `15-1.avro` (the first free number).
fn set_aside_avro(path: &Path) -> io::Result<PathBuf> {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    for n in 1.. {
        let target = path.with_file_name(format!("{stem}-{n}.avro"));
        if !target.exists() {
            std::fs::rename(path, &target)?;
            if let Some(p) = path.parent() {
                container::sync_dir(p)?;
            }
            return Ok(target);
        }
    }
    unreachable!("an unbounded range ends only by returning")
}

/// The quarantine file of `day`: `<root>/quarantine/<Y>-<M>-<D>.jsonl`.
pub fn quarantine_path(root: &Path, day: NaiveDate) -> PathBuf {
    root.join(QUARANTINE_DIR).join(format!(
        "{}-{}-{}.jsonl",
        day.year(),
        day.month(),
        day.day()
    ))
}

fn open_quarantine(root: &Path, day: NaiveDate) -> Result<OpenQuarantine, FileError> {
    let path = quarantine_path(root, day);
    let io = |e| FileError::io(&path, e);
    let dir = root.join(QUARANTINE_DIR);
    container::create_dirs_synced(&dir).map_err(io)?;
    let existed = path.exists();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    let len = cut_torn_line(&file).map_err(io)?;
    if !existed {
        container::sync_dir(&dir).map_err(io)?;
    }
    Ok(OpenQuarantine {
        day,
        target: Arc::new(Target { file, path }),
        len,
    })
}

/// Cuts a JSON-lines file back to its last complete line (a torn line was never
/// acknowledged); returns the length.
fn cut_torn_line(file: &File) -> io::Result<u64> {
    let len = file.metadata()?.len();
    let mut end = len;
    let mut buf = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            let keep = start + i as u64 + 1;
            if keep != len {
                file.set_len(keep)?;
                file.sync_all()?;
            }
            return Ok(keep);
        }
        end = start;
    }
    if len > 0 {
        file.set_len(0)?;
        file.sync_all()?;
    }
    Ok(0)
}

fn run_syncer(rx: mpsc::Receiver<SyncJob>, stats: Arc<Stats>, failed: Arc<AtomicBool>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while let Ok(j) = rx.try_recv() {
            jobs.push(j);
        }
        let mut targets: Vec<Arc<Target>> = Vec::new();
        for t in jobs.iter().flat_map(|j| &j.targets) {
            if !targets.iter().any(|x| Arc::ptr_eq(x, t)) {
                targets.push(t.clone());
            }
        }
        let mut result = Ok(());
        let started = std::time::Instant::now();
        for t in &targets {
            if let Err(e) = t.file.sync_data() {
                result = Err(WriteError::Io(format!("syncing {}: {e}", t.path.display())));
                break;
            }
        }
        drop(targets);
        match result {
            Ok(()) => {
                stats.sync_seconds.observe(started.elapsed().as_secs_f64());
                for j in jobs {
                    Stats::add(&stats.records_written, j.records);
                    Stats::add(&stats.bytes_written, j.bytes);
                    Stats::add(&stats.records_quarantined, j.quarantined);
                    for w in j.waiters {
                        let _ = w.send(Ok(()));
                    }
                }
            }
            Err(e) => {
                warn!("{e}");
                failed.store(true, Ordering::SeqCst);
                for j in jobs {
                    fail_all(j.waiters, &e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{self, read_file, tests::sample_json, ArchivedRecord, GoodRecord};
    use chrono::Utc;

    /// A clock 150 s into a bucket, so a test never crosses a bucket boundary.
    fn mid_bucket_clock() -> Clock {
        let now = Utc::now();
        let mid = Bucket::of(now).start() + chrono::Duration::seconds(150);
        Clock::with_offset_secs((mid - now).num_seconds())
    }

    fn good(seed: u32) -> GoodRecord<'static> {
        let text: &'static str = Box::leak(sample_json(seed).to_string().into_boxed_str());
        record::parse(text.as_bytes()).unwrap()
    }

    struct Harness {
        dir: tempfile::TempDir,
        schema: Arc<RecordSchema>,
        stats: Arc<Stats>,
        tree: Arc<TreeLock>,
        budget: Arc<DiskBudget>,
    }

    impl Harness {
        fn new() -> Harness {
            Harness {
                dir: tempfile::tempdir().unwrap(),
                schema: Arc::new(RecordSchema::tutorial()),
                stats: Arc::new(Stats::default()),
                tree: Arc::new(TreeLock::default()),
                budget: Arc::new(DiskBudget::new(u64::MAX, 0)),
            }
        }

        fn root(&self) -> PathBuf {
            self.dir.path().join("avrofiles")
        }

        fn start(&self, clock: Clock, policy: SyncPolicy) -> (Writer, WriterThreads) {
            start(
                WriterConfig {
                    root: self.root(),
                    clock,
                    schema: self.schema.clone(),
                    policy,
                },
                self.budget.clone(),
                self.stats.clone(),
                self.tree.clone(),
            )
            .unwrap()
        }

        fn encode(&self, g: &GoodRecord<'_>) -> Vec<u8> {
            let mut d = Vec::new();
            g.encode(&self.schema, &mut d).unwrap();
            d
        }

        fn files(&self) -> Vec<PathBuf> {
            tree::list_avro_files(&self.root())
                .unwrap()
                .into_iter()
                .map(|f| f.path)
                .collect()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_are_grouped_into_blocks_and_read_back_exactly() {
        let h = Harness::new();
        let clock = mid_bucket_clock();
        let policy = SyncPolicy {
            records: 100,
            ..SyncPolicy::default()
        };
        let (w, threads) = h.start(clock, policy);
        let mut tasks = tokio::task::JoinSet::new();
        let mut want = Vec::new();
        for i in 0..1000 {
            let g = good(i);
            want.push(ArchivedRecord::from_good(&g));
            let (w, d) = (w.clone(), h.encode(&g));
            tasks.spawn(async move { w.append(d).await });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap().unwrap();
        }
        assert_eq!(
            h.stats.records_written.get(),
            1000,
            "every append returned after its sync"
        );
        let files = h.files();
        assert_eq!(files.len(), 1);
        assert_eq!(
            files[0],
            clock.bucket().path(&h.root()),
            "the current bucket's file"
        );
        let mut got = read_file(&files[0]).unwrap();
        got.sort_by(|a, b| a.correlation_id().cmp(b.correlation_id()));
        want.sort_by(|a, b| a.correlation_id().cmp(b.correlation_id()));
        assert_eq!(got, want);
        let len = std::fs::metadata(&files[0]).unwrap().len();
        let s = container::scan(File::open(&files[0]).unwrap(), len)
            .unwrap()
            .unwrap();
        assert!(s.is_intact());
        assert_eq!(s.records, 1000);
        assert!(
            s.blocks >= 10,
            "groups of at most 100 records: {} blocks",
            s.blocks
        );
        assert_eq!(*h.tree.lock(), Some(files[0].clone()), "kept open");
        threads.close();
        assert_eq!(*h.tree.lock(), None, "closed on shutdown");
        assert_eq!(h.budget.used(), len, "every byte counted");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reopening_the_current_bucket_appends_with_the_same_marker() {
        let h = Harness::new();
        let clock = mid_bucket_clock();
        let mut want = Vec::new();
        let mut markers = Vec::new();
        for run in 0..2u32 {
            let (w, threads) = h.start(clock, SyncPolicy::default());
            for i in 0..5 {
                let g = good(run * 100 + i);
                want.push(ArchivedRecord::from_good(&g));
                w.append(h.encode(&g)).await.unwrap();
            }
            threads.close();
            let path = clock.bucket().path(&h.root());
            let len = std::fs::metadata(&path).unwrap().len();
            let s = container::scan(File::open(&path).unwrap(), len)
                .unwrap()
                .unwrap();
            markers.push(s.header.marker);
        }
        assert_eq!(
            markers[0], markers[1],
            "the file was appended to, not replaced"
        );
        assert_eq!(h.files().len(), 1);
        assert_eq!(read_file(&h.files()[0]).unwrap(), want, "in append order");
    }

    /// A file of three blocks (1, 2 and 3 records); returns it, the records of each block and
    /// where each block ends.
    fn three_blocks(h: &Harness, path: &Path) -> (Vec<u8>, Vec<Vec<ArchivedRecord>>, Vec<u64>) {
        let (file, marker, mut len, _) = open_container(path, &h.schema, &h.stats).unwrap();
        let (mut blocks, mut ends) = (Vec::new(), Vec::new());
        let mut seed = 0;
        for n in 1..=3u32 {
            let mut data = Vec::new();
            let mut recs = Vec::new();
            for _ in 0..n {
                let g = good(seed);
                seed += 1;
                g.encode(&h.schema, &mut data).unwrap();
                recs.push(ArchivedRecord::from_good(&g));
            }
            let mut block = Vec::new();
            container::encode_block(&mut block, u64::from(n), &data, &marker);
            file.write_all_at(&block, len).unwrap();
            len += block.len() as u64;
            blocks.push(recs);
            ends.push(len);
        }
        (std::fs::read(path).unwrap(), blocks, ends)
    }

    #[test]
    fn a_file_cut_at_any_byte_is_repaired_to_its_complete_blocks_and_appended_to() {
        let h = Harness::new();
        // Thousands of cuts, each synced: on a memory file system when there is one.
        let shm = Path::new("/dev/shm");
        let scratch = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .unwrap();
        let dir = scratch.path();
        let (bytes, blocks, ends) = three_blocks(&h, &dir.join("whole.avro"));
        let header_len = container::encode_header(h.schema.json(), &[0; 16]).len() as u64;
        let extra = good(999);
        let mut extra_block = Vec::new();
        extra.encode(&h.schema, &mut extra_block).unwrap();
        let path = dir.join("cut.avro");
        for cut in 0..=bytes.len() as u64 {
            std::fs::write(&path, &bytes[..cut as usize]).unwrap();
            let repaired = container::repair(&path).unwrap();
            if cut < header_len {
                assert_eq!(repaired, Repaired::TornHeader, "cut at {cut}");
                continue;
            }
            let complete = ends.iter().filter(|&&e| e <= cut).count();
            let valid_len = if complete == 0 {
                header_len
            } else {
                ends[complete - 1]
            };
            match &repaired {
                Repaired::Intact(_) => assert_eq!(cut, valid_len, "cut at {cut}"),
                Repaired::Truncated { from, to, .. } => {
                    assert_eq!((*from, *to), (cut, valid_len), "cut at {cut}")
                }
                Repaired::TornHeader => panic!("cut at {cut}: header was complete"),
            }
            assert_eq!(std::fs::metadata(&path).unwrap().len(), valid_len);
            let want: Vec<ArchivedRecord> = blocks[..complete].concat();
            assert_eq!(read_file(&path).unwrap(), want, "cut at {cut}");

            // Reopening appends after the last complete block, with the same marker
            // (checked around every block boundary and at a spread of other cuts).
            let near_boundary = ends.iter().any(|&e| cut.abs_diff(e) <= 2);
            if !near_boundary && cut % 17 != 0 {
                continue;
            }
            let (file, marker, len, created) = open_container(&path, &h.schema, &h.stats).unwrap();
            assert_eq!((len, created), (valid_len, 0));
            let mut block = Vec::new();
            container::encode_block(&mut block, 1, &extra_block, &marker);
            file.write_all_at(&block, len).unwrap();
            let mut want = want;
            want.push(ArchivedRecord::from_good(&extra));
            assert_eq!(read_file(&path).unwrap(), want, "append after cut at {cut}");
        }
    }

    #[test]
    fn a_torn_header_is_rewritten_and_a_foreign_file_set_aside() {
        let h = Harness::new();
        let path = h.dir.path().join("2026/1/1/0/0.avro");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"Obj\x01\x04").unwrap();
        let (_, _, len, created) = open_container(&path, &h.schema, &h.stats).unwrap();
        assert_eq!(len, created);
        assert_eq!(read_file(&path).unwrap(), vec![]);

        std::fs::write(&path, b"hello, not avro").unwrap();
        open_container(&path, &h.schema, &h.stats).unwrap();
        assert_eq!(
            std::fs::read(path.with_extension("avro.corrupt")).unwrap(),
            b"hello, not avro"
        );

        let other = RecordSchema::parse(r#"{"type":"record","name":"X","fields":[]}"#).unwrap();
        std::fs::remove_file(&path).unwrap();
        open_container(&path, &other, &h.stats).unwrap();
        open_container(&path, &h.schema, &h.stats).unwrap();
        assert!(
            path.with_file_name("0-1.avro").exists(),
            "another schema's file is kept under a new name"
        );
        assert_eq!(read_file(&path).unwrap(), vec![]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_file_is_closed_and_its_bucket_continues_in_a_new_file_once_uploaded() {
        let h = Harness::new();
        let policy = SyncPolicy {
            close_idle: Duration::from_millis(200),
            ..SyncPolicy::default()
        };
        let (w, threads) = h.start(mid_bucket_clock(), policy);
        w.append(h.encode(&good(1))).await.unwrap();
        let first = h.tree.lock().clone().expect("open after a record");
        let deadline = Instant::now() + Duration::from_secs(5);
        while h.tree.lock().is_some() {
            assert!(Instant::now() < deadline, "not closed after the quiet time");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Not uploaded yet: the bucket's file is simply reopened and appended to.
        w.append(h.encode(&good(2))).await.unwrap();
        assert_eq!(h.tree.lock().clone(), Some(first.clone()));
        while h.tree.lock().is_some() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(read_file(&first).unwrap().len(), 2);
        // Uploaded and removed (as the scanner does): the bucket goes on in a new file.
        {
            let _held = h.tree.lock();
            std::fs::remove_file(&first).unwrap();
            h.tree.mark_uploaded(&first, Path::new("x"), 0);
        }
        w.append(h.encode(&good(3))).await.unwrap();
        let next = h.tree.lock().clone().expect("open again");
        assert_eq!(
            next,
            first.with_file_name(format!(
                "{}-1.avro",
                first.file_stem().unwrap().to_string_lossy()
            ))
        );
        assert_eq!(read_file(&next).unwrap().len(), 1);
        threads.close();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_open_file_is_closed_when_its_bucket_ends() {
        let h = Harness::new();
        let now = Utc::now();
        // Bucket ends 1.5 s from now by this clock.
        let end = Bucket::of(now).end();
        let offset_ms = (end - now).num_milliseconds() - 1500;
        let clock = Clock::with_offset_secs(offset_ms.div_euclid(1000));
        let (w, threads) = h.start(clock, SyncPolicy::default());
        w.append(h.encode(&good(1))).await.unwrap();
        let first = h.tree.lock().clone().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while h.tree.lock().is_some() {
            assert!(Instant::now() < deadline, "not closed at the bucket's end");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        w.append(h.encode(&good(2))).await.unwrap();
        let second = h.tree.lock().clone().unwrap();
        assert_ne!(first, second, "the next record starts the next bucket");
        threads.close();
        assert_eq!(h.files().len(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quarantine_lines_are_synced_per_day_and_a_torn_line_is_cut() {
        let h = Harness::new();
        let clock = mid_bucket_clock();
        let (w, threads) = h.start(clock, SyncPolicy::default());
        w.quarantine(b"{\"n\":1}\n".to_vec()).await.unwrap();
        w.quarantine(b"{\"n\":2}\n".to_vec()).await.unwrap();
        threads.close();
        let path = quarantine_path(&h.root(), clock.now().date_naive());
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"n\":1}\n{\"n\":2}\n");
        assert_eq!(h.stats.records_quarantined.get(), 2);
        // A crash in the middle of a line; the next writer cuts it off.
        let mut torn = std::fs::read(&path).unwrap();
        torn.extend_from_slice(b"{\"n\":3, \"bo");
        std::fs::write(&path, torn).unwrap();
        let (w, threads) = h.start(clock, SyncPolicy::default());
        w.quarantine(b"{\"n\":4}\n".to_vec()).await.unwrap();
        threads.close();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"{\"n\":1}\n{\"n\":2}\n{\"n\":4}\n"
        );
        assert!(h.files().is_empty(), "no Avro file for quarantined records");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_waits_for_its_interval_unless_input_pauses() {
        let h = Harness::new();
        let clock = mid_bucket_clock();
        // Idle sync off: a lone record waits out the interval.
        let (w, threads) = h.start(
            clock,
            SyncPolicy {
                interval: Duration::from_millis(300),
                records: 1000,
                idle: Duration::from_secs(60),
                ..SyncPolicy::default()
            },
        );
        let t = Instant::now();
        w.append(h.encode(&good(1))).await.unwrap();
        let waited = t.elapsed();
        assert!(waited >= Duration::from_millis(290), "{waited:?}");
        // With the idle trigger a lone record is synced once input has paused for `idle`
        // (counted from its arrival), well before the interval.
        w.set_policy(SyncPolicy {
            interval: Duration::from_millis(300),
            records: 1000,
            idle: Duration::from_millis(50),
            ..SyncPolicy::default()
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = Instant::now();
        w.append(h.encode(&good(2))).await.unwrap();
        let waited = t.elapsed();
        assert!(
            waited >= Duration::from_millis(45) && waited < Duration::from_millis(250),
            "{waited:?}"
        );
        threads.close();
    }
}
