//! edgeHub's message store: every message routed to a module input is written to an
//! append-only journal and synced before its sender is acknowledged; when the module
//! acknowledges it (or it expires) a "done" record follows. After a restart the journal is
//! read again, so what edgeHub acknowledged but had not delivered is delivered then.
//!
//! The journal is a folder of numbered segment files. Records are
//! `[len: u32][crc32: u32][payload]` (little endian), the payload being one of
//!
//! * enqueue: `1, seq: u64, at_ms: u64, module, input, property bag, body`
//! * done:    `2, seq: u64`
//!
//! with strings as `[len: u32][utf-8 bytes]`. One thread writes; everything queued for it is
//! written with one `write` and synced with one `fdatasync` (group commit). Sequence numbers
//! are handed out in the order records are written, so each segment holds one range of
//! them. A new segment is started when the current one is full, and a segment is deleted
//! once it and every older one hold no pending message (so a "done" record never outlives
//! the message it closes). A torn or corrupt record ends the reading of its segment, with a
//! warning.
//!
//! The journal is also where a long queue waits: a module queue keeps a bounded head in
//! memory and reads the rest back with a [`JournalReader`] as the head drains (see
//! [`Endpoint`](super::endpoint::Endpoint)). So is a restarted runtime's backlog: opening
//! the journal reads it twice, streaming (once for the "done" records, once to count what
//! is pending), and keeps one bit per stored message, not the messages.

use crate::edgehub::durable::{self, Appended};
use crate::edgehub::hub_message::HubMessage;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

/// Segment size at which a new segment is started.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

const ENQUEUE: u8 = 1;
const DONE: u8 = 2;

/// Largest record a reader accepts: a message is at most one MQTT packet (256 KiB in IoT
/// Hub, a few MiB at most here), so a larger length is a corrupt one.
const MAX_RECORD: u64 = 64 * 1024 * 1024;

/// How much a reader reads from a segment at once.
const READ_CHUNK: usize = 256 * 1024;

/// A message waiting for a module, as stored.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Journal sequence number (unique across modules and restarts).
    pub seq: u64,
    /// The module input it goes to.
    pub input: Arc<str>,
    /// The message, with the hub's stamps.
    pub message: Arc<HubMessage>,
    /// When edgeHub accepted it, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

impl Pending {
    fn new(seq: u64, input: Arc<str>, message: Arc<HubMessage>, at_ms: u64) -> Pending {
        Pending {
            seq,
            input,
            message,
            at_ms,
        }
    }

    /// The property bag of the delivery to the module (hub stamps included).
    pub fn bag(&self) -> &str {
        self.message.bag()
    }
}

/// A place in the journal: a segment and a byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    segment: u64,
    offset: u64,
}

/// How far the writer has got: everything before `at` is written, and every message up to
/// `through_seq` was either written before `at` or its write failed.
#[derive(Debug, Clone, Copy)]
struct Written {
    at: Position,
    through_seq: u64,
}

/// What the journal held for one module at start, to be read back with `reader`.
#[derive(Debug)]
pub struct Restored {
    /// How many of its messages were pending.
    pub count: u64,
    /// The sequence number of the last of them.
    pub last_seq: u64,
    /// Reads them back, oldest first.
    pub reader: JournalReader,
}

/// What the journal held at start: the pending messages of each module that has some.
pub type Replayed = BTreeMap<String, Restored>;

enum Op {
    Enqueue {
        module: Arc<str>,
        pending: Pending,
        stored: oneshot::Sender<Result<(), String>>,
    },
    Done {
        seq: u64,
    },
    Flush {
        synced: oneshot::Sender<Result<(), String>>,
    },
}

/// Handle of the journal; cheap to clone.
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::UnboundedSender<Op>,
    /// The next sequence number; held while an enqueue is handed to the writer, so records
    /// are written in sequence order.
    next_seq: Arc<Mutex<u64>>,
    written: Arc<Mutex<Written>>,
    dir: Arc<Path>,
    wake: Arc<Wake>,
}

/// A reader that found the journal not yet written as far as it needs, waiting to be told
/// when the writer has written more.
#[derive(Debug, Default)]
struct Wake {
    wanted: std::sync::atomic::AtomicBool,
    written: tokio::sync::Notify,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.dir)
            .field("written", &*lock(&self.written))
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The journal's folder under a state folder.
pub fn journal_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("queues")
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:012}.log"))
}

fn segments(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name
            .strip_suffix(".log")
            .and_then(|n| n.parse::<u64>().ok())
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A set of sequence numbers, one bit each from the smallest inserted on.
#[derive(Debug, Default)]
pub struct SeqSet {
    base: u64,
    words: Vec<u64>,
}

impl SeqSet {
    /// At most this many words (512 MiB): a journal never spans more sequence numbers.
    const MAX_WORDS: u64 = 1 << 26;

    /// Adds `seq`; returns false if it is too far from the others to be kept.
    fn insert(&mut self, seq: u64) -> bool {
        let word = seq / 64;
        if self.words.is_empty() {
            self.base = word;
        }
        if word < self.base {
            let grow = self.base - word;
            if grow + self.words.len() as u64 > Self::MAX_WORDS {
                return false;
            }
            self.words
                .splice(0..0, std::iter::repeat_n(0, grow as usize));
            self.base = word;
        }
        let i = word - self.base;
        if i >= Self::MAX_WORDS {
            return false;
        }
        let i = i as usize;
        if i >= self.words.len() {
            self.words.resize(i + 1, 0);
        }
        self.words[i] |= 1 << (seq % 64);
        true
    }

    /// Whether `seq` is in the set.
    pub fn contains(&self, seq: u64) -> bool {
        let word = seq / 64;
        word >= self.base
            && self
                .words
                .get((word - self.base) as usize)
                .is_some_and(|w| w & (1 << (seq % 64)) != 0)
    }
}

/// A record's payload, read without copying the message. A payload that does not decode
/// whole (every field, nothing left over) is no record: reading its segment stops there,
/// at start-up and when a queue reads it back alike.
struct Head<'a> {
    kind: u8,
    seq: u64,
    /// For an enqueue: what it stores.
    enqueue: Option<Stored<'a>>,
}

/// What an enqueue record stores.
struct Stored<'a> {
    at_ms: u64,
    module: &'a str,
    input: &'a str,
    bag: &'a str,
    body: &'a [u8],
}

fn head(payload: &[u8]) -> Option<Head<'_>> {
    let mut r = ByteReader(payload);
    let kind = r.u8()?;
    let seq = r.u64()?;
    let enqueue = match kind {
        ENQUEUE => Some(Stored {
            at_ms: r.u64()?,
            module: r.str()?,
            input: r.str()?,
            bag: r.str()?,
            body: r.bytes()?,
        }),
        DONE => None,
        _ => return None,
    };
    if !r.0.is_empty() {
        return None;
    }
    Some(Head { kind, seq, enqueue })
}

/// An enqueue record's message, as pending.
fn pending_from(seq: u64, e: &Stored<'_>) -> Pending {
    let message = Arc::new(HubMessage::new(
        e.bag.to_owned(),
        Bytes::copy_from_slice(e.body),
    ));
    Pending::new(seq, Arc::from(e.input), message, e.at_ms)
}

/// A segment file read through a buffer.
struct SegmentFile {
    file: File,
    /// The file's length when last looked up.
    len: u64,
    buf: Vec<u8>,
    /// The file offset of `buf[0]`.
    buf_at: u64,
}

/// One step of reading a segment.
enum Frame<'a> {
    /// A whole, intact record's payload, and the offset after it.
    Record(&'a [u8], u64),
    /// No bytes left before the limit.
    End,
    /// A torn or corrupt record.
    Bad,
}

impl SegmentFile {
    fn new(file: File) -> SegmentFile {
        SegmentFile {
            file,
            len: 0,
            buf: Vec::new(),
            buf_at: 0,
        }
    }

    /// Bytes `at..at + n` of the file, if it has them and they end at or before `limit`
    /// (and the file's length, so a corrupt length never makes a large read).
    fn get(&mut self, at: u64, n: u64, limit: u64) -> std::io::Result<Option<&[u8]>> {
        let limit = match limit {
            u64::MAX => {
                // The file is no longer written: its length, looked up again only at its
                // end (it may have grown since it was opened, when it was the current one).
                if at.saturating_add(n) > self.len {
                    self.len = self.file.metadata()?.len();
                }
                self.len
            }
            l => l,
        };
        if at.saturating_add(n) > limit {
            return Ok(None);
        }
        let end = self.buf_at + self.buf.len() as u64;
        if at < self.buf_at || at + n > end {
            let want = (n as usize)
                .max(READ_CHUNK)
                .min(usize::try_from(limit - at).unwrap_or(usize::MAX));
            self.buf.clear();
            if self.buf.capacity() > 4 * READ_CHUNK && want <= READ_CHUNK {
                self.buf.shrink_to(READ_CHUNK);
            }
            self.buf.resize(want, 0);
            let mut got = 0;
            while got < want {
                let r = self.file.read_at(&mut self.buf[got..], at + got as u64)?;
                if r == 0 {
                    break;
                }
                got += r;
            }
            self.buf.truncate(got);
            self.buf_at = at;
            if (got as u64) < n {
                return Ok(None);
            }
        }
        let start = (at - self.buf_at) as usize;
        Ok(Some(&self.buf[start..start + n as usize]))
    }

    /// The record at `at`, read no further than `limit`.
    fn frame(&mut self, at: u64, limit: u64) -> std::io::Result<Frame<'_>> {
        if self.get(at, 1, limit)?.is_none() {
            return Ok(Frame::End);
        }
        let Some(h) = self.get(at, 8, limit)? else {
            return Ok(Frame::Bad);
        };
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as u64;
        let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        if len > MAX_RECORD {
            return Ok(Frame::Bad);
        }
        match self.get(at + 8, len, limit)? {
            Some(payload) if crc32fast::hash(payload) == crc => {
                Ok(Frame::Record(payload, at + 8 + len))
            }
            _ => Ok(Frame::Bad),
        }
    }
}

/// Calls `f` with the head of each intact record of segment `n`, in order; stops at the
/// first torn or corrupt one (warning of it if `warn_torn`).
fn scan_segment(
    dir: &Path,
    n: u64,
    warn_torn: bool,
    mut f: impl FnMut(Head<'_>),
) -> std::io::Result<()> {
    let path = segment_path(dir, n);
    let mut file = SegmentFile::new(File::open(&path)?);
    let mut at = 0;
    loop {
        match file.frame(at, u64::MAX)? {
            Frame::End => return Ok(()),
            Frame::Bad => {
                if warn_torn {
                    warn!(segment = %path.display(), offset = at,
                        "message store: torn or corrupt record; the rest of this segment is ignored");
                }
                return Ok(());
            }
            Frame::Record(payload, next) => {
                match head(payload) {
                    Some(h) => f(h),
                    None => {
                        if warn_torn {
                            warn!(segment = %path.display(), offset = at,
                                "message store: undecodable record; the rest of this segment is ignored");
                        }
                        return Ok(());
                    }
                }
                at = next;
            }
        }
    }
}

impl Journal {
    /// Opens (or creates) the journal in `dir`, finds what it holds pending and starts its
    /// writer thread.
    pub fn open(dir: &Path, segment_bytes: u64) -> std::io::Result<(Journal, Replayed)> {
        std::fs::create_dir_all(dir)?;
        let existing = segments(dir)?;
        // First pass: which messages are done, and where each segment's numbers start.
        let mut done = SeqSet::default();
        let mut max_seq = 0u64;
        let mut first_seq_of = BTreeMap::new();
        for &n in &existing {
            scan_segment(dir, n, true, |h| {
                max_seq = max_seq.max(h.seq);
                if h.kind == DONE {
                    done.insert(h.seq);
                } else {
                    let first = first_seq_of.entry(n).or_insert(h.seq);
                    *first = (*first).min(h.seq);
                }
            })?;
        }
        // Second pass: what is pending, per segment and per module.
        let mut live = BTreeMap::new();
        let mut modules: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for &n in &existing {
            let live = live.entry(n).or_insert(0u64);
            scan_segment(dir, n, false, |h| {
                if let Some(Stored { module, .. }) = h.enqueue {
                    if !done.contains(h.seq) {
                        *live += 1;
                        let (count, last) = match modules.get_mut(module) {
                            Some(m) => m,
                            None => modules.entry(module.to_owned()).or_default(),
                        };
                        *count += 1;
                        *last = (*last).max(h.seq);
                    }
                }
            })?;
        }
        let current = existing.last().map_or(1, |n| n + 1);
        let written = Arc::new(Mutex::new(Written {
            at: Position {
                segment: current,
                offset: 0,
            },
            through_seq: max_seq,
        }));
        let dir: Arc<Path> = Arc::from(dir);
        let done = Arc::new(done);
        let start = Position {
            segment: existing.first().copied().unwrap_or(current),
            offset: 0,
        };
        let replayed: Replayed = modules
            .into_iter()
            .map(|(module, (count, last_seq))| {
                let reader = JournalReader {
                    dir: dir.clone(),
                    written: written.clone(),
                    module: Arc::from(module.as_str()),
                    min_seq: 0,
                    skip: Some(done.clone()),
                    at: start,
                    file: None,
                };
                let restored = Restored {
                    count,
                    last_seq,
                    reader,
                };
                (module, restored)
            })
            .collect();
        let waiting: u64 = replayed.values().map(|r| r.count).sum();
        if waiting > 0 {
            info!(
                messages = waiting,
                modules = replayed.len(),
                "message store: pending messages found; they are read back as their modules take them"
            );
        }
        let wake = Arc::new(Wake::default());
        let mut state = WriterState {
            dir: dir.to_path_buf(),
            segment_bytes: segment_bytes.max(1),
            live,
            first_seq: first_seq_of.iter().map(|(&seg, &seq)| (seq, seg)).collect(),
            current,
            file: None,
            size: 0,
            written: written.clone(),
            through_seq: max_seq,
            wake: wake.clone(),
            failed: rustc_hash::FxHashSet::default(),
        };
        state.open(current)?;
        state.remove_finished();
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("message-store".into())
            .spawn(move || state.run(rx))?;
        let journal = Journal {
            tx,
            next_seq: Arc::new(Mutex::new(max_seq + 1)),
            written,
            dir,
            wake,
        };
        Ok((journal, replayed))
    }

    /// Stores a message for `module`'s `input`; returns it as queued (with its sequence
    /// number) and a receiver that resolves once the record is on disk.
    pub fn enqueue(
        &self,
        module: &Arc<str>,
        input: Arc<str>,
        message: Arc<HubMessage>,
        at_ms: u64,
    ) -> (Pending, Appended) {
        let (stored, rx) = oneshot::channel();
        let mut next_seq = lock(&self.next_seq);
        let seq = *next_seq;
        *next_seq += 1;
        let pending = Pending::new(seq, input, message, at_ms);
        let op = Op::Enqueue {
            module: module.clone(),
            pending: pending.clone(),
            stored,
        };
        if let Err(mpsc::error::SendError(Op::Enqueue { stored, .. })) = self.tx.send(op) {
            let _ = stored.send(Err("the message store is closed".into()));
        }
        drop(next_seq);
        (pending, rx)
    }

    /// Where the next record will be written, or before it: a reader started here reads
    /// every message enqueued from now on.
    pub fn position(&self) -> Position {
        lock(&self.written).at
    }

    /// Reads `module`'s messages numbered `min_seq` or more, from `from` on.
    pub fn reader(&self, module: &Arc<str>, from: Position, min_seq: u64) -> JournalReader {
        JournalReader {
            dir: self.dir.clone(),
            written: self.written.clone(),
            module: module.clone(),
            min_seq,
            skip: None,
            at: from,
            file: None,
        }
    }

    /// Asks for [`Journal::written`] to resolve after the writer's next write, or at once
    /// if it wrote past `seen_through_seq` (what a reader's [`Next::End`] said) meanwhile.
    pub fn wake_when_written(&self, seen_through_seq: u64) {
        self.wake
            .wanted
            .store(true, std::sync::atomic::Ordering::Release);
        if lock(&self.written).through_seq > seen_through_seq {
            self.wake.written.notify_one();
        }
    }

    /// Resolves after a write that [`Journal::wake_when_written`] asked to hear of.
    pub async fn written(&self) {
        self.wake.written.notified().await;
    }

    /// Message `seq` was delivered (or dropped): it is not read back after a restart.
    pub fn done(&self, seq: u64) {
        let _ = self.tx.send(Op::Done { seq });
    }

    /// Resolves once everything sent to the journal before is written and synced.
    pub fn flush(&self) -> Appended {
        let (synced, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(Op::Flush { synced })) =
            self.tx.send(Op::Flush { synced })
        {
            let _ = synced.send(Err("the message store is closed".into()));
        }
        rx
    }
}

/// What a [`JournalReader`] found next.
#[derive(Debug)]
pub enum Next {
    /// The next of the module's messages.
    Message(Pending),
    /// Nothing more is written yet. Every message numbered up to `through_seq` was read
    /// (or its write failed).
    End {
        /// See above.
        through_seq: u64,
    },
}

/// Reads one module's messages back from the journal, in order, no further than the
/// writer has written.
pub struct JournalReader {
    dir: Arc<Path>,
    written: Arc<Mutex<Written>>,
    module: Arc<str>,
    min_seq: u64,
    /// Messages already done when the journal was opened.
    skip: Option<Arc<SeqSet>>,
    at: Position,
    file: Option<SegmentFile>,
}

impl std::fmt::Debug for JournalReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalReader")
            .field("module", &self.module)
            .field("at", &self.at)
            .field("min_seq", &self.min_seq)
            .finish()
    }
}

impl JournalReader {
    fn next_segment(&mut self) {
        self.at = Position {
            segment: self.at.segment + 1,
            offset: 0,
        };
        self.file = None;
    }

    /// Leaves a torn, corrupt or undecodable record: as at start-up, the rest of its segment
    /// is not read. In the segment being written the reader moves to what is written, and
    /// `true` says it is at the end.
    fn leave_bad_record(&mut self, current: bool, limit: u64) -> bool {
        warn!(module = %self.module, segment = self.at.segment, offset = self.at.offset,
            "message store: torn, corrupt or undecodable record; reading on from the next segment");
        if current {
            self.at.offset = limit;
            return true;
        }
        self.next_segment();
        false
    }

    /// The next of the module's messages, or where the written journal ends.
    pub fn read_next(&mut self) -> std::io::Result<Next> {
        let written = *lock(&self.written);
        let end = Next::End {
            through_seq: written.through_seq,
        };
        loop {
            if self.at.segment > written.at.segment {
                return Ok(end);
            }
            let current = self.at.segment == written.at.segment;
            // The writer's segment is read as far as it has written; older ones to their end.
            let limit = if current { written.at.offset } else { u64::MAX };
            let file = match &mut self.file {
                Some(f) => f,
                None => match File::open(segment_path(&self.dir, self.at.segment)) {
                    Ok(f) => self.file.insert(SegmentFile::new(f)),
                    // Deleted: it held nothing pending.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && !current => {
                        self.next_segment();
                        continue;
                    }
                    Err(e) => return Err(e),
                },
            };
            match file.frame(self.at.offset, limit)? {
                Frame::End if current => return Ok(end),
                Frame::End => self.next_segment(),
                Frame::Bad => {
                    if self.leave_bad_record(current, limit) {
                        return Ok(end);
                    }
                }
                Frame::Record(payload, next) => {
                    let Some(h) = head(payload) else {
                        if self.leave_bad_record(current, limit) {
                            return Ok(end);
                        }
                        continue;
                    };
                    let found = h.enqueue.as_ref().and_then(|e| {
                        let wanted = e.module == &*self.module
                            && h.seq >= self.min_seq
                            && !self.skip.as_ref().is_some_and(|s| s.contains(h.seq));
                        wanted.then(|| pending_from(h.seq, e))
                    });
                    self.at.offset = next;
                    if let Some(p) = found {
                        return Ok(Next::Message(p));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
impl Restored {
    /// Every restored message (tests).
    pub fn read_all(mut self) -> Vec<Pending> {
        let mut out = Vec::new();
        while let Next::Message(p) = self.reader.read_next().unwrap() {
            out.push(p);
        }
        assert_eq!(out.len() as u64, self.count, "as many as counted");
        out
    }
}

#[derive(Clone, Copy)]
struct ByteReader<'a>(&'a [u8]);

impl<'a> ByteReader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(u64::from_le_bytes(a))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?).ok()
    }
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s);
}

/// Appends one framed record whose payload `fill` writes.
fn frame(out: &mut Vec<u8>, fill: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0u8; 8]);
    fill(out);
    let payload = &out[start + 8..];
    let len = (payload.len() as u32).to_le_bytes();
    let crc = crc32fast::hash(payload).to_le_bytes();
    out[start..start + 4].copy_from_slice(&len);
    out[start + 4..start + 8].copy_from_slice(&crc);
}

struct WriterState {
    dir: PathBuf,
    segment_bytes: u64,
    /// Pending messages per segment.
    live: BTreeMap<u64, u64>,
    /// The segment that starts at each sequence number (records are in sequence order).
    first_seq: BTreeMap<u64, u64>,
    current: u64,
    file: Option<File>,
    size: u64,
    written: Arc<Mutex<Written>>,
    through_seq: u64,
    wake: Arc<Wake>,
    /// Messages whose records could not be written (until their "done" comes, if ever).
    failed: rustc_hash::FxHashSet<u64>,
}

impl WriterState {
    /// Makes segment `n` the one written to.
    fn open(&mut self, n: u64) -> std::io::Result<()> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment_path(&self.dir, n))?;
        sync_dir(&self.dir)?;
        self.size = file.metadata()?.len();
        self.file = Some(file);
        self.current = n;
        self.live.entry(n).or_insert(0);
        Ok(())
    }

    /// Lets readers read what is written.
    fn publish(&self) {
        *lock(&self.written) = Written {
            at: Position {
                segment: self.current,
                offset: self.size,
            },
            through_seq: self.through_seq,
        };
        if self
            .wake
            .wanted
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            self.wake.written.notify_one();
        }
    }

    /// Deletes the oldest segments while they hold nothing pending.
    fn remove_finished(&mut self) {
        let mut removed = false;
        while let Some((&n, &live)) = self.live.first_key_value() {
            if n == self.current || live > 0 {
                break;
            }
            match std::fs::remove_file(segment_path(&self.dir, n)) {
                Ok(()) => removed = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(segment = n, error = %e, "message store: segment not removed");
                    break;
                }
            }
            self.live.remove(&n);
            self.first_seq.retain(|_, seg| *seg != n);
        }
        if removed {
            let _ = sync_dir(&self.dir);
        }
    }

    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Op>) {
        let mut buf = Vec::with_capacity(256 * 1024);
        let mut waiting = Vec::new();
        let mut batch_enqueued: Vec<(u64, u64)> = Vec::new();
        let mut batch_done: Vec<u64> = Vec::new();
        let mut last_sync = std::time::Instant::now();
        while let Some(first) = rx.blocking_recv() {
            durable::pace(last_sync);
            let mut next = Some(first);
            while let Some(op) = next.take() {
                match op {
                    Op::Enqueue {
                        module,
                        pending: p,
                        stored,
                    } => {
                        let seq = p.seq;
                        frame(&mut buf, |out| {
                            out.push(ENQUEUE);
                            out.extend_from_slice(&seq.to_le_bytes());
                            out.extend_from_slice(&p.at_ms.to_le_bytes());
                            put_str(out, module.as_bytes());
                            put_str(out, p.input.as_bytes());
                            put_str(out, p.bag().as_bytes());
                            put_str(out, p.message.body());
                        });
                        if self
                            .first_seq
                            .last_key_value()
                            .is_none_or(|(_, &seg)| seg != self.current)
                        {
                            self.first_seq.insert(seq, self.current);
                        }
                        *self.live.entry(self.current).or_default() += 1;
                        self.through_seq = self.through_seq.max(seq);
                        batch_enqueued.push((seq, self.current));
                        waiting.push(stored);
                    }
                    Op::Done { seq } => {
                        frame(&mut buf, |out| {
                            out.push(DONE);
                            out.extend_from_slice(&seq.to_le_bytes());
                        });
                        batch_done.push(seq);
                        // A message whose record could not be written counts in no segment.
                        if self.failed.remove(&seq) {
                            continue;
                        }
                        if let Some((_, seg)) = self.first_seq.range(..=seq).next_back() {
                            if let Some(l) = self.live.get_mut(seg) {
                                *l = l.saturating_sub(1);
                            }
                        }
                    }
                    Op::Flush { synced } => waiting.push(synced),
                }
                if buf.len() < 4 * 1024 * 1024 && waiting.len() < 8192 {
                    next = rx.try_recv().ok();
                }
            }
            let sync = !waiting.is_empty();
            let result = self.write(&buf, sync);
            if sync {
                last_sync = std::time::Instant::now();
            }
            buf.clear();
            if let Err(e) = &result {
                tracing::error!(error = %e, "message store write failed; senders are not acknowledged");
                // The batch's messages are in no segment: they count in none, and their
                // "done" records (the messages may still be delivered from memory) are
                // not counted against another's.
                let done: rustc_hash::FxHashSet<u64> = batch_done.iter().copied().collect();
                for &(seq, seg) in &batch_enqueued {
                    if let Some(l) = self.live.get_mut(&seg) {
                        *l = l.saturating_sub(1);
                    }
                    if !done.contains(&seq) {
                        self.failed.insert(seq);
                    }
                }
            }
            batch_enqueued.clear();
            batch_done.clear();
            if self.size >= self.segment_bytes {
                if let Err(e) = self.open(self.current + 1) {
                    tracing::error!(error = %e, "message store: cannot start a new segment; writing on in the old one");
                }
            }
            self.publish();
            self.remove_finished();
            for w in waiting.drain(..) {
                let _ = w.send(result.clone());
            }
        }
        if let Some(f) = &self.file {
            let _ = f.sync_data();
        }
    }

    /// Writes a batch; syncs it when someone waits for it. "Done" records alone are not
    /// synced: losing one only means a redelivery after a crash.
    fn write(&mut self, buf: &[u8], sync: bool) -> Result<(), String> {
        if self.file.is_none() {
            self.open(self.current + 1)
                .map_err(|e| format!("the message store cannot start a new segment: {e}"))?;
        }
        let Some(file) = self.file.as_mut() else {
            return Err("the message store has no open segment".into());
        };
        let r = file
            .write_all(buf)
            .and_then(|_| if sync { file.sync_data() } else { Ok(()) });
        match r {
            Ok(()) => {
                self.size += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Whatever part of the batch reached the file is cut off, so that no record
                // is ever written after a torn one (reading a segment stops at the first).
                // If it cannot be, the segment is written no more: the next batch starts a
                // new one.
                if file
                    .set_len(self.size)
                    .and_then(|()| file.sync_data())
                    .is_err()
                {
                    tracing::error!("message store: a failed write could not be cut off; starting a new segment");
                    self.file = None;
                }
                Err(format!("writing the message store: {e}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_protocol::properties::{self, Direction};
    use edge_protocol::Message;

    fn msg(n: u32) -> Arc<HubMessage> {
        Arc::new(message(n).into())
    }

    fn message(n: u32) -> Message {
        let mut m = Message::json(format!("{{\"n\":{n}}}"));
        m.correlation_id = Some(format!("c{n}").into());
        m.connection_device_id = Some("Client_001".into());
        m.enqueued_time = Some("2026-11-21T08:00:00.000Z".into());
        m.set_property("Kind=odd&", "a b/ü");
        m
    }

    async fn store(j: &Journal, module: &str, n: u32) -> u64 {
        let (queued, rx) = j.enqueue(&Arc::from(module), Arc::from("in"), msg(n), 1000 + n as u64);
        rx.await.unwrap().unwrap();
        queued.seq
    }

    fn body(p: &Pending) -> String {
        String::from_utf8_lossy(p.message.body()).into_owned()
    }

    /// What opening the journal in `dir` restores, per module, read back whole.
    fn reopen(dir: &Path, segment_bytes: u64) -> (Journal, BTreeMap<String, Vec<Pending>>) {
        let (j, replayed) = Journal::open(dir, segment_bytes).unwrap();
        let all = replayed
            .into_iter()
            .map(|(m, r)| (m, r.read_all()))
            .collect();
        (j, all)
    }

    #[tokio::test]
    async fn pending_messages_survive_a_restart_with_their_properties_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (j, replayed) = Journal::open(dir.path(), SEGMENT_BYTES).unwrap();
        assert!(replayed.is_empty());
        let a = store(&j, "router", 0).await;
        let b = store(&j, "router", 1).await;
        let c = store(&j, "writer", 2).await;
        j.done(a);
        j.flush().await.unwrap().unwrap();
        drop(j);
        let (j2, replayed) = reopen(dir.path(), SEGMENT_BYTES);
        let router: Vec<u64> = replayed["router"].iter().map(|p| p.seq).collect();
        assert_eq!(router, vec![b]);
        let w = &replayed["writer"][0];
        assert_eq!(w.seq, c);
        assert_eq!(w.at_ms, 1002);
        assert_eq!(&*w.input, "in");
        assert_eq!(w.message.body(), &Bytes::from("{\"n\":2}"));
        // The stored bag is the one delivered, as it was before the restart.
        assert_eq!(w.bag(), properties::encode(&message(2), Direction::FromHub));
        assert_eq!(w.message.message(), &message(2));
        // Numbering continues after the restart.
        let d = store(&j2, "router", 3).await;
        assert!(d > c);
    }

    #[tokio::test]
    async fn finished_segments_are_deleted_and_only_the_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path(), 100).unwrap();
        let first = store(&j, "m", 0).await; // segment 1, then a new one (over 100 bytes)
        let mut later = Vec::new();
        for n in 1..4 {
            later.push(store(&j, "m", n).await);
        }
        for s in &later {
            j.done(*s);
        }
        // The first message is still pending: nothing may be deleted.
        let _ = store(&j, "m", 9).await;
        assert!(segment_path(dir.path(), 1).exists());
        j.done(first);
        let _ = store(&j, "m", 10).await;
        let left = segments(dir.path()).unwrap();
        assert!(
            left[0] > 4,
            "segments 1 to 4 hold nothing pending: {left:?}"
        );
        j.flush().await.unwrap().unwrap();
        drop(j);
        let (_, replayed) = reopen(dir.path(), 100);
        let left: Vec<String> = replayed["m"].iter().map(body).collect();
        assert_eq!(left, vec!["{\"n\":9}", "{\"n\":10}"]);
    }

    /// The heads of the records of a segment file holding `bytes`, and whether it was read
    /// to its end.
    fn scan_bytes(bytes: &[u8]) -> (usize, bool) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(segment_path(dir.path(), 1), bytes).unwrap();
        let mut n = 0;
        let mut file = SegmentFile::new(File::open(segment_path(dir.path(), 1)).unwrap());
        let mut at = 0;
        loop {
            match file.frame(at, u64::MAX).unwrap() {
                Frame::End => return (n, true),
                Frame::Bad => return (n, false),
                Frame::Record(payload, next) => {
                    assert!(head(payload).is_some());
                    n += 1;
                    at = next;
                }
            }
        }
    }

    #[tokio::test]
    async fn a_torn_tail_is_ignored_at_every_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path(), SEGMENT_BYTES).unwrap();
        store(&j, "m", 0).await;
        store(&j, "m", 1).await;
        drop(j);
        let whole = std::fs::read(segment_path(dir.path(), 1)).unwrap();
        assert_eq!(scan_bytes(&whole), (2, true));
        let first_len = 8 + u32::from_le_bytes(whole[0..4].try_into().unwrap()) as usize;
        for cut in 0..whole.len() {
            let (records, whole_read) = scan_bytes(&whole[..cut]);
            let expect = if cut >= first_len { 1 } else { 0 };
            assert_eq!(records, expect, "cut at {cut}");
            assert_eq!(whole_read, cut == 0 || cut == first_len, "cut at {cut}");
        }
        // A flipped byte is caught by the checksum.
        let mut bad = whole.clone();
        bad[first_len + 12] ^= 0x40;
        assert_eq!(scan_bytes(&bad), (1, false));
        // And a torn tail is not a lost message: a reopened journal restores the first.
        std::fs::write(segment_path(dir.path(), 1), &whole[..whole.len() - 3]).unwrap();
        let (_, replayed) = reopen(dir.path(), SEGMENT_BYTES);
        assert_eq!(replayed["m"].len(), 1);
    }

    #[tokio::test]
    async fn a_reader_reads_its_module_from_a_position_as_far_as_is_written() {
        let dir = tempfile::tempdir().unwrap();
        // Small segments, so the reader crosses many (and some are deleted under it).
        let (j, _) = Journal::open(dir.path(), 300).unwrap();
        let m: Arc<str> = Arc::from("m");
        store(&j, "m", 0).await;
        let from = j.position();
        let mut seqs = Vec::new();
        for n in 1..40 {
            let module = if n % 3 == 0 { "other" } else { "m" };
            let seq = store(&j, module, n).await;
            if module == "other" {
                j.done(seq); // its segments may go
            } else {
                seqs.push(seq);
            }
        }
        let mut reader = j.reader(&m, from, seqs[0]);
        let mut got = Vec::new();
        loop {
            match reader.read_next().unwrap() {
                Next::Message(p) => got.push(p.seq),
                Next::End { through_seq } => {
                    assert!(through_seq >= *seqs.last().unwrap());
                    break;
                }
            }
        }
        assert_eq!(got, seqs, "every message of m after the position, in order");
        // What is written later is read on the next call.
        let later = store(&j, "m", 99).await;
        match reader.read_next().unwrap() {
            Next::Message(p) => assert_eq!((p.seq, body(&p)), (later, "{\"n\":99}".into())),
            other => panic!("{other:?}"),
        }
        assert!(matches!(reader.read_next().unwrap(), Next::End { .. }));
    }

    #[tokio::test]
    async fn a_restart_restores_a_large_backlog_without_the_done_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path(), 64 * 1024).unwrap();
        let module: Arc<str> = Arc::from("m");
        let mut pending = Vec::new();
        let mut last = None;
        for n in 0..5_000u32 {
            let (q, rx) = j.enqueue(&module, Arc::from("in"), msg(n), 0);
            if n % 4 == 0 {
                j.done(q.seq);
            } else {
                pending.push(q.seq);
            }
            last = Some(rx);
        }
        last.unwrap().await.unwrap().unwrap();
        j.flush().await.unwrap().unwrap();
        drop(j);
        let (j, replayed) = Journal::open(dir.path(), 64 * 1024).unwrap();
        let restored = replayed.into_values().next().unwrap();
        assert_eq!(restored.count, pending.len() as u64);
        assert_eq!(restored.last_seq, *pending.last().unwrap());
        let got: Vec<u64> = restored.read_all().iter().map(|p| p.seq).collect();
        assert_eq!(got, pending);
        // New messages are numbered after every restored one.
        assert!(store(&j, "m", 1).await > *pending.last().unwrap());
    }

    #[test]
    fn a_seq_set_holds_what_was_inserted_whatever_the_order() {
        let mut s = SeqSet::default();
        for seq in [1000, 5, 64, 63, 1_000_000, 0] {
            assert!(s.insert(seq));
        }
        for seq in [1000, 5, 64, 63, 1_000_000, 0] {
            assert!(s.contains(seq), "{seq}");
        }
        for seq in [1, 62, 65, 999, 1001, 2_000_000] {
            assert!(!s.contains(seq), "{seq}");
        }
        assert!(
            !s.insert(u64::MAX),
            "too far to keep: not kept, and no allocation"
        );
    }

    #[tokio::test]
    async fn after_a_failed_write_nothing_is_written_behind_a_torn_record() {
        let dir = tempfile::tempdir().unwrap();
        // A writer whose segment cannot be written (opened read-only): the write fails, the
        // segment cannot be cut back either, so the next batch goes to a new segment.
        let path = segment_path(dir.path(), 9);
        std::fs::write(&path, b"").unwrap();
        let mut w = WriterState {
            dir: dir.path().to_owned(),
            segment_bytes: SEGMENT_BYTES,
            live: BTreeMap::new(),
            first_seq: BTreeMap::new(),
            current: 9,
            file: Some(File::open(&path).unwrap()),
            size: 0,
            written: Arc::new(Mutex::new(Written {
                at: Position {
                    segment: 9,
                    offset: 0,
                },
                through_seq: 0,
            })),
            through_seq: 0,
            wake: Arc::default(),
            failed: Default::default(),
        };
        let mut record = Vec::new();
        frame(&mut record, |out| {
            out.push(DONE);
            out.extend_from_slice(&7u64.to_le_bytes());
        });
        assert!(w.write(&record, true).is_err());
        assert!(w.file.is_none(), "not written to again");
        w.write(&record, true).unwrap();
        assert_eq!(w.current, 10);
        assert_eq!(std::fs::read(segment_path(dir.path(), 10)).unwrap(), record);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"",
            "nothing behind the failure"
        );
    }

    #[tokio::test]
    async fn a_record_that_does_not_decode_ends_its_segment_for_readers_as_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path(), SEGMENT_BYTES).unwrap();
        store(&j, "m", 0).await;
        drop(j);
        // A record whose checksum is right but whose payload is no record (an empty one,
        // as zeroed bytes read), then a good record after it.
        let path = segment_path(dir.path(), 1);
        let mut bytes = std::fs::read(&path).unwrap();
        let good = bytes.clone();
        bytes.extend_from_slice(&[0u8; 8]);
        bytes.extend_from_slice(&good);
        std::fs::write(&path, &bytes).unwrap();
        let (_, mut replayed) = Journal::open(dir.path(), SEGMENT_BYTES).unwrap();
        let restored = replayed.remove("m").unwrap();
        assert_eq!(restored.count, 1, "counted up to the bad record");
        assert_eq!(restored.read_all().len(), 1, "and read back up to it");
    }
}
