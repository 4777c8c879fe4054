//! What reached IoT Hub, sorted: RUL messages from `turbofanRouter`, dead letters, the rest.
//! Records are those of the runtime's `$upstream` store (`state/upstream/messages.jsonl`):
//! `{"origin", "module", "payload", "properties": {"system", "application"}, …}`.

use serde_json::Value;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

/// The module whose RUL messages operators read.
pub const ROUTER: &str = "turbofanRouter";

/// A RUL message as operators see it in IoT Hub.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RulMessage {
    /// The telemetry's correlation id.
    pub correlation_id: String,
    /// The leaf device the telemetry came from (`ConnectionDeviceId` of the body).
    pub device: String,
    /// The engine cycle.
    pub cycle: u32,
    /// The prediction.
    pub predicted_rul: f64,
    /// `PredictedRulLow` and `PredictedRulHigh` (history model).
    pub interval: Option<(f64, f64)>,
    /// `HistoryCycles` (history model).
    pub history_cycles: Option<u32>,
    /// `ModelName`.
    pub model: Option<String>,
}

/// A message the router could not handle.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The correlation id it carries (property `CorrelationId`, else the system property).
    pub correlation_id: Option<String>,
    /// `DeadLetterReason`.
    pub reason: String,
}

/// One upstream record, sorted.
#[derive(Debug, Clone, PartialEq)]
pub enum Upstream {
    /// A RUL message from the router.
    Rul(RulMessage),
    /// A dead letter.
    Dead(DeadLetter),
    /// Anything else.
    Other,
}

fn text<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// Sorts one upstream record. A RUL message is what the operators' hub route selects
/// (`IS_DEFINED($body.PredictedRul) AND NOT IS_DEFINED($body.OperationalSetting1)`), sent by
/// the router; a dead letter has the application property `DeadLetter=true`.
pub fn classify(record: &Value) -> Upstream {
    let is_dead = text(record, "/properties/application/DeadLetter")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if is_dead {
        let correlation_id = text(record, "/properties/application/CorrelationId")
            .or_else(|| text(record, "/properties/system/correlationId"))
            .map(str::to_owned);
        let reason = text(record, "/properties/application/DeadLetterReason")
            .unwrap_or("(no reason given)")
            .to_owned();
        return Upstream::Dead(DeadLetter {
            correlation_id,
            reason,
        });
    }
    let from_router = record
        .get("module")
        .and_then(Value::as_str)
        .is_some_and(|m| m.eq_ignore_ascii_case(ROUTER));
    let p = &record["payload"];
    if !from_router || p.get("OperationalSetting1").is_some() {
        return Upstream::Other;
    }
    let rul = p.get("PredictedRul").and_then(Value::as_f64);
    let cycle = p
        .get("CycleTime")
        .and_then(Value::as_f64)
        .filter(|c| c.is_finite() && *c >= 0.0 && c.fract() == 0.0 && *c <= f64::from(u32::MAX));
    let cid =
        text(p, "/CorrelationId").or_else(|| text(record, "/properties/system/correlationId"));
    let device = text(p, "/ConnectionDeviceId");
    match (rul, cycle, cid, device) {
        (Some(predicted_rul), Some(cycle), Some(cid), Some(device)) => {
            let num = |k: &str| p.get(k).and_then(Value::as_f64);
            Upstream::Rul(RulMessage {
                correlation_id: cid.to_owned(),
                device: device.to_owned(),
                cycle: cycle as u32,
                predicted_rul,
                interval: num("PredictedRulLow").zip(num("PredictedRulHigh")),
                history_cycles: p
                    .get("HistoryCycles")
                    .and_then(Value::as_u64)
                    .and_then(|n| u32::try_from(n).ok()),
                model: text(p, "/ModelName").map(str::to_owned),
            })
        }
        _ => Upstream::Other,
    }
}

/// Follows the upstream store, sorting the records added since the last call.
#[derive(Debug)]
pub struct UpstreamReader {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    /// RUL messages so far.
    pub ruls: Vec<RulMessage>,
    /// Dead letters so far.
    pub dead: Vec<DeadLetter>,
    /// Other records so far.
    pub other: usize,
    /// Lines that were not JSON.
    pub unreadable: usize,
}

impl UpstreamReader {
    /// A reader of the store at `path` (which may not exist yet).
    pub fn new(path: &Path) -> UpstreamReader {
        UpstreamReader {
            path: path.to_path_buf(),
            offset: 0,
            partial: Vec::new(),
            ruls: Vec::new(),
            dead: Vec::new(),
            other: 0,
            unreadable: 0,
        }
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads what was appended since the last call; a missing store is empty.
    pub fn poll(&mut self) -> std::io::Result<()> {
        let mut f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        if f.metadata()?.len() < self.offset {
            // The store was recreated: start over.
            *self = UpstreamReader::new(&self.path);
        }
        f.seek(std::io::SeekFrom::Start(self.offset))?;
        let before = self.partial.len();
        f.read_to_end(&mut self.partial)?;
        self.offset += (self.partial.len() - before) as u64;
        // Only whole lines are read; a line being written stays for the next call.
        let Some(end) = self.partial.iter().rposition(|b| *b == b'\n') else {
            return Ok(());
        };
        let complete: Vec<u8> = self.partial.drain(..=end).collect();
        for line in String::from_utf8_lossy(&complete)
            .lines()
            .filter(|l| !l.trim().is_empty())
        {
            self.add_line(line);
        }
        Ok(())
    }

    fn add_line(&mut self, line: &str) {
        match serde_json::from_str::<Value>(line) {
            Ok(record) => match classify(&record) {
                Upstream::Rul(r) => self.ruls.push(r),
                Upstream::Dead(d) => self.dead.push(d),
                Upstream::Other => self.other += 1,
            },
            Err(_) => self.unreadable += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rul_record(cid: &str, device: &str, cycle: u32, rul: f64) -> Value {
        json!({"seq": 0, "origin": "edge-device", "module": "turbofanRouter",
               "payload": {"ConnectionDeviceId": device, "CorrelationId": cid, "PredictedRul": rul, "CycleTime": cycle},
               "properties": {"system": {"correlationId": cid}, "application": {"CorrelationId": cid}}})
    }

    #[test]
    fn sorts_rul_messages_dead_letters_and_the_rest() {
        assert_eq!(
            classify(&rul_record("c1", "Client_001", 7, 112.5)),
            Upstream::Rul(RulMessage {
                correlation_id: "c1".into(),
                device: "Client_001".into(),
                cycle: 7,
                predicted_rul: 112.5,
                ..Default::default()
            })
        );
        let dead = json!({"module": "turbofanRouter", "payload": {"Sensor1": 1},
            "properties": {"system": {"correlationId": "c2"},
                           "application": {"DeadLetter": "true", "DeadLetterReason": "body is not valid JSON"}}});
        assert_eq!(
            classify(&dead),
            Upstream::Dead(DeadLetter {
                correlation_id: Some("c2".into()),
                reason: "body is not valid JSON".into()
            })
        );
        let telemetry = json!({"origin": "Client_001", "payload": {"CycleTime": 1, "OperationalSetting1": 0.0, "PredictedRul": 3}});
        assert_eq!(classify(&telemetry), Upstream::Other);
        let mut other_module = rul_record("c3", "Client_001", 1, 1.0);
        other_module["module"] = json!("someoneElse");
        assert_eq!(classify(&other_module), Upstream::Other);
        let mut fractional_cycle = rul_record("c4", "Client_001", 1, 1.0);
        fractional_cycle["payload"]["CycleTime"] = json!(1.5);
        assert_eq!(classify(&fractional_cycle), Upstream::Other);
    }

    #[test]
    fn the_reader_follows_appends_and_waits_for_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("messages.jsonl");
        let mut r = UpstreamReader::new(&path);
        r.poll().unwrap();
        assert!(r.ruls.is_empty(), "a missing store is empty");
        let line = rul_record("c1", "Client_001", 1, 10.0).to_string();
        let other = json!({"origin": "Client_001", "payload": {"CycleTime": 1}}).to_string();
        std::fs::write(&path, format!("{line}\nnot json\n{}", &other[..10])).unwrap();
        r.poll().unwrap();
        assert_eq!((r.ruls.len(), r.other, r.unreadable), (1, 0, 1));
        std::fs::write(&path, format!("{line}\nnot json\n{other}\n")).unwrap();
        r.poll().unwrap();
        assert_eq!((r.ruls.len(), r.other, r.unreadable), (1, 1, 1));
    }
}
