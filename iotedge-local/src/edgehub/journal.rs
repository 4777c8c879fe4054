//! edgeHub's message store: every message routed to a module input is written to an
//! append-only journal and synced before its sender is acknowledged; when the module
//! acknowledges it (or it expires) a "done" record follows. After a restart the journal is
//! replayed, so what edgeHub acknowledged but had not delivered is delivered then.
//!
//! The journal is a folder of numbered segment files. Records are
//! `[len: u32][crc32: u32][payload]` (little endian), the payload being one of
//!
//! * enqueue: `1, seq: u64, at_ms: u64, module, input, property bag, body`
//! * done:    `2, seq: u64`
//!
//! with strings as `[len: u32][utf-8 bytes]`. One thread writes; everything queued for it is
//! written with one `write` and synced with one `fdatasync` (group commit). A new segment is
//! started when the current one is full, and a segment is deleted once it and every older
//! one hold no pending message (so a "done" record never outlives the message it closes).
//! A torn or corrupt record ends the replay of its segment, with a warning.

use crate::edgehub::durable::{self, Appended};
use crate::edgehub::hub_message::HubMessage;
use bytes::Bytes;
use rustc_hash::FxHashMap;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

/// Segment size at which a new segment is started.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

const ENQUEUE: u8 = 1;
const DONE: u8 = 2;

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

/// What the journal held at start: pending messages per module, in sequence order.
pub type Replayed = BTreeMap<String, Vec<Pending>>;

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
    next_seq: Arc<AtomicU64>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("next_seq", &self.next_seq)
            .finish()
    }
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

impl Journal {
    /// Opens (or creates) the journal in `dir`, replays it and starts its writer thread.
    pub fn open(dir: &Path, segment_bytes: u64) -> std::io::Result<(Journal, Replayed)> {
        std::fs::create_dir_all(dir)?;
        let existing = segments(dir)?;
        let mut state = WriterState {
            dir: dir.to_owned(),
            segment_bytes: segment_bytes.max(1),
            live: BTreeMap::new(),
            segment_of: FxHashMap::default(),
            current: 0,
            file: None,
            size: 0,
        };
        let mut pending: BTreeMap<u64, (Arc<str>, Pending)> = BTreeMap::new();
        let mut max_seq = 0u64;
        for &n in &existing {
            state.live.insert(n, 0);
            let path = segment_path(dir, n);
            let mut bytes = Vec::new();
            File::open(&path)?.read_to_end(&mut bytes)?;
            let (records, torn) = parse_segment(&bytes);
            if let Some(at) = torn {
                warn!(segment = %path.display(), offset = at,
                    "message store: torn or corrupt record; the rest of this segment is ignored");
            }
            for r in records {
                match r {
                    Record::Enqueue { module, pending: p } => {
                        max_seq = max_seq.max(p.seq);
                        state.segment_of.insert(p.seq, n);
                        *state.live.entry(n).or_default() += 1;
                        pending.insert(p.seq, (module, p));
                    }
                    Record::Done { seq } => {
                        max_seq = max_seq.max(seq);
                        pending.remove(&seq);
                        if let Some(seg) = state.segment_of.remove(&seq) {
                            if let Some(l) = state.live.get_mut(&seg) {
                                *l = l.saturating_sub(1);
                            }
                        }
                    }
                }
            }
        }
        let mut replayed = Replayed::new();
        for (module, p) in pending.into_values() {
            replayed.entry(module.to_string()).or_default().push(p);
        }
        let waiting: usize = replayed.values().map(Vec::len).sum();
        if waiting > 0 {
            info!(
                messages = waiting,
                modules = replayed.len(),
                "message store: pending messages restored"
            );
        }
        state.current = existing.last().map_or(1, |n| n + 1);
        state.open_current()?;
        state.remove_finished();
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("message-store".into())
            .spawn(move || state.run(rx))?;
        let journal = Journal {
            tx,
            next_seq: Arc::new(AtomicU64::new(max_seq + 1)),
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
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let pending = Pending::new(seq, input, message, at_ms);
        let (stored, rx) = oneshot::channel();
        let op = Op::Enqueue {
            module: module.clone(),
            pending: pending.clone(),
            stored,
        };
        if let Err(mpsc::error::SendError(Op::Enqueue { stored, .. })) = self.tx.send(op) {
            let _ = stored.send(Err("the message store is closed".into()));
        }
        (pending, rx)
    }

    /// Message `seq` was delivered (or dropped): it is not replayed after a restart.
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

enum Record {
    Enqueue { module: Arc<str>, pending: Pending },
    Done { seq: u64 },
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
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

fn decode(payload: &[u8]) -> Option<Record> {
    let mut r = Reader(payload);
    match r.u8()? {
        ENQUEUE => {
            let seq = r.u64()?;
            let at_ms = r.u64()?;
            let module: Arc<str> = Arc::from(r.str()?);
            let input: Arc<str> = Arc::from(r.str()?);
            let bag = r.str()?.to_owned();
            let body = Bytes::copy_from_slice(r.bytes()?);
            let message = Arc::new(HubMessage::new(bag, body));
            let pending = Pending::new(seq, input, message, at_ms);
            Some(Record::Enqueue { module, pending })
        }
        DONE => Some(Record::Done { seq: r.u64()? }),
        _ => None,
    }
}

/// The records of a segment, and the offset of the first bad one, if any.
fn parse_segment(bytes: &[u8]) -> (Vec<Record>, Option<usize>) {
    let mut records = Vec::new();
    let mut r = Reader(bytes);
    loop {
        let offset = bytes.len() - r.0.len();
        if r.0.is_empty() {
            return (records, None);
        }
        let (Some(len), Some(crc)) = (r.u32(), r.u32()) else {
            return (records, Some(offset));
        };
        let Some(payload) = r.take(len as usize) else {
            return (records, Some(offset));
        };
        if crc32fast::hash(payload) != crc {
            return (records, Some(offset));
        }
        match decode(payload) {
            Some(rec) => records.push(rec),
            None => return (records, Some(offset)),
        }
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
    /// Segment of each pending message.
    segment_of: FxHashMap<u64, u64>,
    current: u64,
    file: Option<File>,
    size: u64,
}

impl WriterState {
    fn open_current(&mut self) -> std::io::Result<()> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment_path(&self.dir, self.current))?;
        sync_dir(&self.dir)?;
        self.size = file.metadata()?.len();
        self.file = Some(file);
        self.live.entry(self.current).or_insert(0);
        Ok(())
    }

    /// Deletes the oldest segments while they hold nothing pending.
    fn remove_finished(&mut self) {
        let mut removed = false;
        while let Some((&n, &live)) = self.live.first_key_value() {
            if n == self.current || live > 0 {
                break;
            }
            self.live.remove(&n);
            match std::fs::remove_file(segment_path(&self.dir, n)) {
                Ok(()) => removed = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(segment = n, error = %e, "message store: segment not removed");
                    break;
                }
            }
        }
        if removed {
            let _ = sync_dir(&self.dir);
        }
    }

    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Op>) {
        let mut buf = Vec::with_capacity(256 * 1024);
        let mut waiting = Vec::new();
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
                        self.segment_of.insert(seq, self.current);
                        *self.live.entry(self.current).or_default() += 1;
                        waiting.push(stored);
                    }
                    Op::Done { seq } => {
                        frame(&mut buf, |out| {
                            out.push(DONE);
                            out.extend_from_slice(&seq.to_le_bytes());
                        });
                        if let Some(seg) = self.segment_of.remove(&seq) {
                            if let Some(l) = self.live.get_mut(&seg) {
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
            }
            // After a failed write the segment may end in a torn record, and replay stops at
            // the first one: later records go to a new segment so they stay readable.
            if result.is_err() || self.size >= self.segment_bytes {
                self.current += 1;
                if let Err(e) = self.open_current() {
                    tracing::error!(error = %e, "message store: cannot start a new segment; writing on in the old one");
                    self.current -= 1;
                }
            }
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
            Err(e) => Err(format!("writing the message store: {e}")),
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
        let (j2, replayed) = Journal::open(dir.path(), SEGMENT_BYTES).unwrap();
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
        let (_, replayed) = Journal::open(dir.path(), 100).unwrap();
        let left: Vec<String> = replayed["m"]
            .iter()
            .map(|p| String::from_utf8_lossy(p.message.body()).into_owned())
            .collect();
        assert_eq!(left, vec!["{\"n\":9}", "{\"n\":10}"]);
    }

    #[tokio::test]
    async fn a_torn_tail_is_ignored_at_every_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path(), SEGMENT_BYTES).unwrap();
        store(&j, "m", 0).await;
        store(&j, "m", 1).await;
        drop(j);
        let whole = std::fs::read(segment_path(dir.path(), 1)).unwrap();
        let (records, torn) = parse_segment(&whole);
        assert_eq!((records.len(), torn), (2, None));
        let first_len = 8 + u32::from_le_bytes(whole[0..4].try_into().unwrap()) as usize;
        for cut in 0..whole.len() {
            let (records, torn) = parse_segment(&whole[..cut]);
            let expect = if cut >= first_len { 1 } else { 0 };
            assert_eq!(records.len(), expect, "cut at {cut}");
            assert_eq!(torn.is_some(), cut != 0 && cut != first_len, "cut at {cut}");
        }
        // A flipped byte is caught by the checksum.
        let mut bad = whole.clone();
        bad[first_len + 12] ^= 0x40;
        let (records, torn) = parse_segment(&bad);
        assert_eq!((records.len(), torn), (1, Some(first_len)));
    }
}
