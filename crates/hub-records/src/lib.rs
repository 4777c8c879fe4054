//! What reached IoT Hub, as operators read it.
//!
//! The local runtime keeps what IoT Hub receives in its `$upstream` store
//! (`upstream/messages.jsonl` in the state folder: one [`Record`] a line, as `iotedge-local
//! monitor` prints them). This crate is its one reader:
//!
//! - [`Record`]: a line of the store;
//! - [`Tail`]: follows the store, returning the whole lines appended since the last look;
//! - [`classify`]: sorts a record into a [`RulMessage`] from `turbofanRouter`, a
//!   [`DeadLetter`] from it, or anything else;
//! - [`Reader`]: both, keeping the sorted [`Outcomes`] so far.
//!
//! - [`routed`]: what IoT Hub's message routing writes to a storage endpoint (IoT Hub's
//!   Avro schema or JSON lines), and the log of blobs each endpoint wrote.
//!
//! Who sent a record is what edgeHub authenticated (`module`), never what the body says: only
//! the router's records are RUL messages or dead letters.

pub mod routed;

use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use turbofan_domain::ports::{properties, router};

/// A line of the `$upstream` store.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// Its place in the store (from 1).
    #[serde(default)]
    pub seq: u64,
    /// When edgeHub took the message.
    #[serde(default)]
    pub enqueued_time_utc: Option<String>,
    /// Who sent it: `device` or `device/module`, as edgeHub authenticated it.
    #[serde(default)]
    pub origin: Option<String>,
    /// The body: JSON as it was, text as a string, or base64 (see `payload_encoding`).
    #[serde(default)]
    pub payload: Value,
    /// `json`, `utf-8` or `base64`.
    #[serde(default)]
    pub payload_encoding: String,
    /// System and application properties.
    #[serde(default)]
    pub properties: Properties,
    /// The sending module, for a module's message.
    #[serde(default)]
    pub module: Option<String>,
    /// The endpoints IoT Hub's message routing sent it to (`events` is the built-in one);
    /// none when no route and no fallback took it. Absent in stores older than routing.
    #[serde(default)]
    pub endpoints: Option<Vec<String>>,
    /// The hub routes it matched (the fallback route's name when only it took it).
    #[serde(default)]
    pub routes: Option<Vec<String>>,
}

impl Record {
    /// Whether routing sent it to `endpoint` (a store older than routing sent everything
    /// to the built-in `events`).
    pub fn reached(&self, endpoint: &str) -> bool {
        match &self.endpoints {
            Some(e) => e.iter().any(|e| e == endpoint),
            None => endpoint == "events",
        }
    }
}

/// A record's properties.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Properties {
    /// System properties.
    #[serde(default)]
    pub system: SystemProperties,
    /// Application properties.
    #[serde(default)]
    pub application: BTreeMap<String, String>,
}

/// The system properties a record may carry.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SystemProperties {
    /// `message-id`.
    pub message_id: Option<String>,
    /// `correlation-id`.
    pub correlation_id: Option<String>,
    /// `content-type`.
    pub content_type: Option<String>,
    /// `content-encoding`.
    pub content_encoding: Option<String>,
    /// `user-id`.
    pub user_id: Option<String>,
    /// The device edgeHub authenticated.
    pub connection_device_id: Option<String>,
    /// The module edgeHub authenticated.
    pub connection_module_id: Option<String>,
    /// The module output it was sent on.
    pub output_name: Option<String>,
}

/// A RUL message as operators see it in IoT Hub: what `turbofanRouter` sends to `hubOutput`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RulMessage {
    /// The body's `CorrelationId` (else the message's).
    pub correlation_id: String,
    /// The message's correlation id (system property).
    pub system_correlation_id: Option<String>,
    /// The leaf device the telemetry came from (the body's `ConnectionDeviceId`).
    pub device: String,
    /// The engine cycle (the body's `CycleTime`).
    pub cycle: u32,
    /// The body's `PredictedRul`.
    pub predicted_rul: f64,
    /// When edgeHub took the message.
    pub enqueued: Option<String>,
    /// `PredictedRulLow` and `PredictedRulHigh` (history model).
    pub interval: Option<(f64, f64)>,
    /// `HistoryCycles` (history model).
    pub history_cycles: Option<u32>,
    /// `ModelName`.
    pub model: Option<String>,
}

/// A message the router could not handle: one it sent to `deadMessages`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The correlation id it carries (property `CorrelationId`, else the system property).
    pub correlation_id: Option<String>,
    /// `DeadLetterReason`.
    pub reason: String,
    /// The payload as stored (JSON, text, or base64).
    pub payload: Value,
    /// How the payload is stored: `json`, `utf-8` or `base64`.
    pub payload_encoding: String,
}

/// One record, sorted.
#[derive(Debug, Clone, PartialEq)]
pub enum Sorted {
    /// A RUL message from the router.
    Rul(RulMessage),
    /// A dead letter from the router.
    Dead(DeadLetter),
    /// Anything else.
    Other,
}

fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// Sorts one record. A RUL message is what the operators' hub route selects
/// (`IS_DEFINED($body.PredictedRul) AND NOT IS_DEFINED($body.OperationalSetting1)`), sent by
/// the router, with a device, a whole cycle and a correlation id; a dead letter is the
/// router's message with the application property `DeadLetter=true`.
pub fn classify(record: &Record) -> Sorted {
    let from_router = record
        .module
        .as_deref()
        .is_some_and(|m| m.eq_ignore_ascii_case(router::MODULE));
    if !from_router {
        return Sorted::Other;
    }
    let app = &record.properties.application;
    let system_cid = record.properties.system.correlation_id.as_deref();
    if app
        .get(properties::DEAD_LETTER)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        return Sorted::Dead(DeadLetter {
            correlation_id: app
                .get(properties::CORRELATION_ID)
                .map(String::as_str)
                .or(system_cid)
                .map(str::to_owned),
            reason: app
                .get(properties::DEAD_LETTER_REASON)
                .cloned()
                .unwrap_or_else(|| "(no reason given)".into()),
            payload: record.payload.clone(),
            payload_encoding: record.payload_encoding.clone(),
        });
    }
    let p = &record.payload;
    if p.get("OperationalSetting1").is_some() {
        return Sorted::Other;
    }
    let num = |k: &str| p.get(k).and_then(Value::as_f64);
    let cycle = num("CycleTime")
        .filter(|c| c.is_finite() && *c >= 0.0 && c.fract() == 0.0 && *c <= f64::from(u32::MAX));
    let cid = text(p, properties::CORRELATION_ID).or(system_cid);
    let device = text(p, properties::CONNECTION_DEVICE_ID);
    match (num(turbofan_domain::PREDICTED_RUL), cycle, cid, device) {
        (Some(predicted_rul), Some(cycle), Some(cid), Some(device)) => Sorted::Rul(RulMessage {
            correlation_id: cid.to_owned(),
            system_correlation_id: system_cid.map(str::to_owned),
            device: device.to_owned(),
            cycle: cycle as u32,
            predicted_rul,
            enqueued: record.enqueued_time_utc.clone(),
            interval: num("PredictedRulLow").zip(num("PredictedRulHigh")),
            history_cycles: p
                .get("HistoryCycles")
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok()),
            model: text(p, properties::MODEL_NAME).map(str::to_owned),
        }),
        _ => Sorted::Other,
    }
}

/// Follows the store's file: each [`poll_lines`](Tail::poll_lines) gives the whole lines
/// appended since the last one (a line still being written waits for the next).
#[derive(Debug)]
pub struct Tail {
    path: PathBuf,
    /// The store, once it exists: kept open (it is only appended to), so that a follower
    /// polling every millisecond does not open it a thousand times a second.
    file: Option<std::fs::File>,
    offset: u64,
    partial: Vec<u8>,
    restarted: bool,
}

impl Tail {
    /// Follows the store at `path` (which may not exist yet) from its start.
    pub fn new(path: &Path) -> Tail {
        Tail {
            path: path.to_path_buf(),
            file: None,
            offset: 0,
            partial: Vec::new(),
            restarted: false,
        }
    }

    /// Follows the store at `path` from byte `offset`, the start of a line (an
    /// [`offset`](Tail::offset) an earlier tail gave).
    pub fn from_offset(path: &Path, offset: u64) -> Tail {
        Tail {
            offset,
            ..Tail::new(path)
        }
    }

    /// Where the next whole line starts: the bytes of the lines given so far.
    pub fn offset(&self) -> u64 {
        self.offset - self.partial.len() as u64
    }

    /// Follows the store of the runtime with state folder `state`.
    pub fn of_state(state: &Path) -> Tail {
        Tail::new(&runtime_state::layout::upstream_store(state))
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Calls `each` with every whole line appended since the last poll (nothing while the
    /// file does not exist); returns how many. A store that became shorter was made anew:
    /// it is read again from its start (and [`take_restarted`](Tail::take_restarted) says so).
    pub fn poll_lines(&mut self, each: impl FnMut(&[u8])) -> std::io::Result<usize> {
        self.poll_lines_up_to(u64::MAX, each)
    }

    /// [`poll_lines`](Tail::poll_lines), reading at most `limit` new bytes (a follower of
    /// a long backlog keeps its memory bounded; the rest comes with the next polls).
    pub fn poll_lines_up_to(
        &mut self,
        limit: u64,
        mut each: impl FnMut(&[u8]),
    ) -> std::io::Result<usize> {
        let f = match &mut self.file {
            Some(f) => f,
            None => match std::fs::File::open(&self.path) {
                Ok(f) => self.file.insert(f),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
                Err(e) => return Err(e),
            },
        };
        if f.metadata()?.len() < self.offset {
            self.start_over();
            return self.poll_lines_up_to(limit, each);
        }
        f.seek(std::io::SeekFrom::Start(self.offset))?;
        let mut buf = std::mem::take(&mut self.partial);
        let before = buf.len();
        f.take(limit).read_to_end(&mut buf)?;
        self.offset += (buf.len() - before) as u64;
        if buf.len() == before && self.replaced() {
            // Nothing new, and the path names another file now: the store was made anew.
            self.partial = buf;
            self.start_over();
            return self.poll_lines_up_to(limit, each);
        }
        let Some(last) = buf.iter().rposition(|b| *b == b'\n') else {
            self.partial = buf;
            return Ok(0);
        };
        self.partial = buf.split_off(last + 1);
        let mut n = 0;
        for line in buf
            .split(|b| *b == b'\n')
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        {
            each(line);
            n += 1;
        }
        Ok(n)
    }

    /// Whether the path names another file than the one open (checked only when nothing new
    /// was read).
    fn replaced(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Some(open) = self.file.as_ref().and_then(|f| f.metadata().ok()) else {
            return false;
        };
        std::fs::metadata(&self.path)
            .map_or(true, |m| (m.dev(), m.ino()) != (open.dev(), open.ino()))
    }

    fn start_over(&mut self) {
        self.file = None;
        self.offset = 0;
        self.partial.clear();
        self.restarted = true;
    }

    /// Whether the store was read again from its start since the last call.
    pub fn take_restarted(&mut self) -> bool {
        std::mem::take(&mut self.restarted)
    }
}

/// Everything read so far, sorted.
#[derive(Debug, Clone, Default)]
pub struct Outcomes {
    /// RUL messages from the router.
    pub ruls: Vec<RulMessage>,
    /// Dead letters from the router.
    pub dead: Vec<DeadLetter>,
    /// Records of any other kind (from another sender, or of another shape).
    pub other: Vec<Record>,
    /// Lines that were not a record.
    pub unreadable: usize,
}

impl Outcomes {
    /// Sorts one line of the store in.
    pub fn add_line(&mut self, line: &[u8]) {
        match serde_json::from_slice::<Record>(line) {
            Ok(r) => self.add(r),
            Err(_) => self.unreadable += 1,
        }
    }

    /// Sorts one record in.
    pub fn add(&mut self, record: Record) {
        match classify(&record) {
            Sorted::Rul(r) => self.ruls.push(r),
            Sorted::Dead(d) => self.dead.push(d),
            Sorted::Other => self.other.push(record),
        }
    }
}

/// Follows the store and keeps what it holds, sorted.
#[derive(Debug)]
pub struct Reader {
    tail: Tail,
    outcomes: Outcomes,
}

impl Reader {
    /// A reader of the store at `path` (which may not exist yet).
    pub fn new(path: &Path) -> Reader {
        Reader {
            tail: Tail::new(path),
            outcomes: Outcomes::default(),
        }
    }

    /// A reader of the store of the runtime with state folder `state`.
    pub fn of_state(state: &Path) -> Reader {
        Reader::new(&runtime_state::layout::upstream_store(state))
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        self.tail.path()
    }

    /// Reads what was appended since the last call; a missing store is empty.
    pub fn poll(&mut self) -> std::io::Result<()> {
        let mut lines = Vec::new();
        self.tail.poll_lines(|l| lines.push(l.to_vec()))?;
        if self.tail.take_restarted() {
            self.outcomes = Outcomes::default();
        }
        for l in &lines {
            self.outcomes.add_line(l);
        }
        Ok(())
    }

    /// What was read so far.
    pub fn outcomes(&self) -> &Outcomes {
        &self.outcomes
    }
}

impl std::ops::Deref for Reader {
    type Target = Outcomes;
    fn deref(&self) -> &Outcomes {
        &self.outcomes
    }
}

impl std::ops::DerefMut for Reader {
    fn deref_mut(&mut self) -> &mut Outcomes {
        &mut self.outcomes
    }
}

/// Reads the whole store of the runtime with state folder `state`.
pub fn read(state: &Path) -> std::io::Result<Outcomes> {
    let mut r = Reader::of_state(state);
    r.poll()?;
    Ok(r.outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::io::Write;

    fn rul(cid: &str, device: &str, cycle: u32, rul: f64) -> Value {
        json!({"seq": 1, "enqueuedTimeUtc": "2026-12-07T00:00:00Z", "origin": "edge/turbofanRouter",
            "module": "turbofanRouter", "payloadEncoding": "json",
            "payload": {"CorrelationId": cid, "ConnectionDeviceId": device, "CycleTime": cycle, "PredictedRul": rul,
                "PredictedRulLow": rul - 5.0, "PredictedRulHigh": rul + 5.0, "HistoryCycles": 12},
            "properties": {"system": {"correlationId": cid}, "application": {"ModelName": "x"}}})
    }

    fn record(v: Value) -> Record {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn sorts_rul_messages_dead_letters_and_the_rest() {
        let Sorted::Rul(r) = classify(&record(rul("c1", "Client_001", 7, 42.0))) else {
            panic!("a RUL message");
        };
        assert_eq!(
            (r.device.as_str(), r.cycle, r.predicted_rul),
            ("Client_001", 7, 42.0)
        );
        assert_eq!(r.interval, Some((37.0, 47.0)));
        assert_eq!(
            (r.history_cycles, r.system_correlation_id.as_deref()),
            (Some(12), Some("c1"))
        );
        assert_eq!(r.enqueued.as_deref(), Some("2026-12-07T00:00:00Z"));

        let dead = json!({"module": "turbofanRouter", "payload": "not json", "payloadEncoding": "utf-8",
            "properties": {"system": {"correlationId": "s1"}, "application": {"DeadLetter": "True", "DeadLetterReason": "bad row"}}});
        let Sorted::Dead(d) = classify(&record(dead.clone())) else {
            panic!("a dead letter");
        };
        assert_eq!(
            (d.correlation_id.as_deref(), d.reason.as_str()),
            (Some("s1"), "bad row")
        );
        assert_eq!(d.payload_encoding, "utf-8");

        // Only the router's records count: a body or property cannot make another sender's
        // record a RUL message or a dead letter.
        let mut other = rul("c2", "Client_002", 1, 1.0);
        other["module"] = json!("avroFileWriter");
        assert_eq!(classify(&record(other)), Sorted::Other);
        let mut from_leaf = dead;
        from_leaf.as_object_mut().unwrap().remove("module");
        assert_eq!(classify(&record(from_leaf)), Sorted::Other);
        // Telemetry (the hub route's other half) and fractional cycles are not RUL messages.
        let mut row = rul("c3", "Client_003", 1, 1.0);
        row["payload"]["OperationalSetting1"] = json!(0.1);
        assert_eq!(classify(&record(row)), Sorted::Other);
        let mut frac = rul("c4", "Client_004", 1, 1.0);
        frac["payload"]["CycleTime"] = json!(1.5);
        assert_eq!(classify(&record(frac)), Sorted::Other);
    }

    #[test]
    fn the_reader_follows_appends_whole_lines_only_and_a_store_made_anew() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("messages.jsonl");
        let mut r = Reader::new(&path);
        r.poll().unwrap();
        assert!(r.ruls.is_empty());
        let mut f = std::fs::File::create(&path).unwrap();
        writeln!(f, "{}", rul("a", "Client_001", 1, 10.0)).unwrap();
        write!(f, "{{\"module\": \"turb").unwrap();
        r.poll().unwrap();
        assert_eq!((r.ruls.len(), r.other.len(), r.unreadable), (1, 0, 0));
        writeln!(f, "ofanRouter\"}}").unwrap();
        writeln!(f, "not json").unwrap();
        r.poll().unwrap();
        assert_eq!((r.ruls.len(), r.other.len(), r.unreadable), (1, 1, 1));
        drop(f);
        std::fs::write(&path, format!("{}\n", rul("b", "Client_002", 2, 20.0))).unwrap();
        r.poll().unwrap();
        assert_eq!(r.ruls.len(), 1, "read again from the start");
        assert_eq!(r.ruls[0].correlation_id, "b");
        // A store replaced by another file (longer than the one read) is read anew too.
        let tmp = dir.path().join("new.jsonl");
        let lines: String = ["c", "d", "e"]
            .iter()
            .map(|c| format!("{}\n", rul(c, "Client_003", 3, 30.0)))
            .collect();
        std::fs::write(&tmp, lines).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        r.poll().unwrap();
        let cids: Vec<&str> = r.ruls.iter().map(|m| m.correlation_id.as_str()).collect();
        assert_eq!(cids, ["c", "d", "e"]);
    }
}
