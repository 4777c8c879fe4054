//! Scoring a batch in history mode: each row joins its leaf device's history (keyed by the
//! `ConnectionDeviceId` property the router sets, ordered by the row's `CycleTime`) and is
//! scored by the history model over it, in one model run for the batch. A redelivered cycle
//! gets the answer it had; see [`turbofan_domain::history`] for repeats, older cycles and
//! new engines. A message that cannot be scored keeps its body and gets `ClassifierError`,
//! without touching any history.
//!
//! Every row that moves a history on is handed back as a [`Change`] with its answer: the
//! module logs them before acknowledging the batch, so a crash loses no history. A row that
//! joins its history past missing cycles is logged at warn, and every answer says how many
//! cycles its history lacks (`MissingCycles`).

use crate::scoring::apply_answers;
use bytes::Bytes;
use edge_client::Message;
use rul_model::{Interval, ModelError};
use turbofan_domain::history::{self, Answer, Change, HistoryStore, Prediction, Seen};
use turbofan_domain::ports::properties::CONNECTION_DEVICE_ID;
use turbofan_domain::scoring::{Request, RowAnswer, CYCLE_TIME};

/// A row's cycle: a whole number from 1.
fn cycle_of(row: usize, c: Option<f64>) -> Result<u32, String> {
    match c {
        Some(c) if c >= 1.0 && c <= u32::MAX as f64 && c.fract() == 0.0 => Ok(c as u32),
        Some(c) => Err(format!(
            "row {row}: {CYCLE_TIME} {c} is not a whole number from 1: history scoring orders each device's rows by it"
        )),
        None => Err(format!(
            "row {row}: {CYCLE_TIME} is missing: history scoring orders each device's rows by it"
        )),
    }
}

/// A message's request, its device and its rows' cycles.
type Parsed<'a> = (Request<'a>, &'a str, Vec<u32>);

enum Pending {
    Model { at: usize, record: bool },
    Known(Prediction),
}

struct Row {
    cycle: u32,
    history_cycles: u32,
    missing_cycles: u32,
    pending: Pending,
    sensors: [f32; history::N_SENSORS],
}

/// Scores `messages` in place: rows join their device's history in `store` (at `now`, unix
/// seconds), then one call of `predict` scores every row that needs the model. Each row that
/// moved a history on is pushed to `changes`. Returns how many messages were scored.
///
/// Four stages: each message parsed ([`parse`]), its rows joined to their history
/// ([`join_histories`], which gathers the model's input), one model run, each message
/// answered ([`answer`]).
pub fn score_batch(
    messages: &mut [Message],
    max_body: usize,
    store: &mut HistoryStore,
    now: u64,
    changes: &mut Vec<Change>,
    mut predict: impl FnMut(&[f32]) -> Result<Vec<Interval>, ModelError>,
) -> usize {
    let mut features: Vec<f32> = Vec::with_capacity(messages.len() * history::N_FEATURES);
    let answers = {
        let requests: Vec<Result<Parsed<'_>, String>> =
            messages.iter().map(|m| parse(m, max_body)).collect();
        let joined: Vec<Result<(&Parsed<'_>, Vec<Row>), &String>> = requests
            .iter()
            .map(|r| {
                let parsed = r.as_ref()?;
                Ok((parsed, join_histories(parsed, store, now, &mut features)))
            })
            .collect();
        let predictions = if features.is_empty() {
            Ok(Vec::new())
        } else {
            predict(&features)
        };
        joined
            .into_iter()
            .map(|j| match j {
                Ok((parsed, rows)) => answer(parsed, rows, &predictions, store, changes),
                Err(e) => Err(e.clone()),
            })
            .collect()
    };
    apply_answers(messages, answers)
}

/// Stage 1: a message's request, its device and its rows' cycles, or why it cannot be
/// scored.
fn parse(m: &Message, max_body: usize) -> Result<Parsed<'_>, String> {
    let req = Request::parse(&m.body, max_body).map_err(|e| e.to_string())?;
    let device = m.property(CONNECTION_DEVICE_ID).ok_or_else(|| {
        format!("property {CONNECTION_DEVICE_ID} is missing: history scoring keeps a history per leaf device")
    })?;
    let cycles = req
        .cycles
        .iter()
        .enumerate()
        .map(|(i, c)| cycle_of(i, *c))
        .collect::<Result<Vec<u32>, String>>()?;
    Ok((req, device, cycles))
}

/// Stage 2: each row of a parsed message joins its device's history; a row the model must
/// score has its features appended to `features`, and remembers where.
fn join_histories(
    (req, device, cycles): &Parsed<'_>,
    store: &mut HistoryStore,
    now: u64,
    features: &mut Vec<f32>,
) -> Vec<Row> {
    let mut out = Vec::with_capacity(cycles.len());
    for (i, cycle) in cycles.iter().enumerate() {
        let sensors = history::model_sensors(
            &req.features[i * rul_model::N_FEATURES..(i + 1) * rul_model::N_FEATURES],
        );
        let obs = store.observe(device, *cycle, &sensors, now);
        if obs.skipped > 0 {
            tracing::warn!(
                device = *device,
                cycle,
                skipped = obs.skipped,
                missing = obs.missing_cycles,
                "the history skips cycles it never received: its answers say MissingCycles"
            );
        } else if !matches!(obs.seen, Seen::Next | Seen::First) {
            tracing::debug!(device = *device, cycle, seen = ?obs.seen, "not the next cycle");
        }
        let pending = match obs.answer {
            Answer::Again(p) => Pending::Known(p),
            Answer::Score(f) => {
                features.extend_from_slice(&f[..]);
                Pending::Model {
                    at: features.len() / history::N_FEATURES - 1,
                    record: matches!(obs.seen, Seen::Next | Seen::First | Seen::Restart),
                }
            }
        };
        out.push(Row {
            cycle: *cycle,
            history_cycles: obs.history_cycles,
            missing_cycles: obs.missing_cycles,
            pending,
            sensors,
        });
    }
    out
}

/// Stage 4: a message's answer from the model run's `predictions` (stage 3); each row that
/// moved its history on is recorded in `store` and pushed to `changes`.
fn answer(
    (req, device, _): &Parsed<'_>,
    rows: Vec<Row>,
    predictions: &Result<Vec<Interval>, ModelError>,
    store: &mut HistoryStore,
    changes: &mut Vec<Change>,
) -> Result<Bytes, String> {
    let p = match predictions {
        Ok(p) => p,
        Err(e) => {
            // The rows moved their histories on all the same: logged, unanswered, so a
            // restart has the histories the module had.
            for row in rows {
                if let Pending::Model { record: true, .. } = row.pending {
                    changes.push(Change {
                        device: (*device).into(),
                        cycle: row.cycle,
                        sensors: row.sensors,
                        prediction: Prediction::NONE,
                    });
                }
            }
            return Err(e.to_string());
        }
    };
    let mut written = Vec::with_capacity(rows.len());
    for row in rows {
        let got = match row.pending {
            Pending::Known(k) => k,
            Pending::Model { at, record } => {
                let i = p[at];
                let k = Prediction {
                    rul: i.rul,
                    low: i.low,
                    high: i.high,
                };
                if record {
                    store.record(device, row.cycle, k);
                    changes.push(Change {
                        device: (*device).into(),
                        cycle: row.cycle,
                        sensors: row.sensors,
                        prediction: k,
                    });
                }
                k
            }
        };
        written.push(RowAnswer {
            rul: got.rul,
            interval: Some((got.low, got.high)),
            history_cycles: Some(row.history_cycles),
            missing_cycles: Some(row.missing_cycles),
        });
    }
    let mut out = Vec::new();
    req.write_answers(&written, &mut out);
    Ok(out.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use turbofan_domain::ports::properties::CLASSIFIER_ERROR;

    fn telemetry(device: &str, cycle: u32, v: f64) -> Message {
        let mut m = serde_json::Map::new();
        m.insert("CycleTime".into(), json!(cycle));
        for i in 1..=21 {
            m.insert(format!("Sensor{i}"), json!(v + i as f64));
        }
        let mut msg = Message::json(Value::Object(m).to_string());
        msg.set_property(CONNECTION_DEVICE_ID, device);
        msg
    }

    /// A stand-in for the history model, for the bookkeeping only (the real model is checked
    /// against its reference in rul-model and in the module test): RUL = the window's cycle
    /// count (the last feature), interval ±1.
    fn window_count(f: &[f32]) -> Result<Vec<Interval>, ModelError> {
        Ok(f.chunks(history::N_FEATURES)
            .map(|r| {
                let k = r[history::N_FEATURES - 1];
                Interval {
                    rul: k,
                    low: k - 1.0,
                    high: k + 1.0,
                }
            })
            .collect())
    }

    fn answer(m: &Message) -> Value {
        serde_json::from_slice::<Value>(&m.body).expect("answer is JSON")[0].clone()
    }

    #[test]
    fn rows_build_each_devices_history_and_say_how_long_it_is() {
        let mut store = HistoryStore::new(100, 3600);
        let mut msgs: Vec<Message> = (1..=3)
            .flat_map(|c| [telemetry("a", c, 1.0), telemetry("b", c, 2.0)])
            .collect();
        msgs.push(telemetry("a", 4, 1.0));
        let mut calls = 0;
        let scored = score_batch(&mut msgs, 1 << 20, &mut store, 0, &mut Vec::new(), |f| {
            calls += 1;
            window_count(f)
        });
        assert_eq!((scored, calls), (7, 1));
        let a4 = answer(&msgs[6]);
        assert_eq!(a4["HistoryCycles"], json!(4));
        assert_eq!(a4["PredictedRul"], json!(4.0));
        assert_eq!(a4["PredictedRulLow"], json!(3.0));
        assert_eq!(a4["PredictedRulHigh"], json!(5.0));
        assert_eq!(
            answer(&msgs[5])["HistoryCycles"],
            json!(3),
            "b is its own history"
        );
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn a_redelivered_message_gets_its_first_answer_and_is_not_counted_twice() {
        let mut store = HistoryStore::new(100, 3600);
        let mut first: Vec<Message> = (1..=5).map(|c| telemetry("a", c, 1.0)).collect();
        score_batch(
            &mut first,
            1 << 20,
            &mut store,
            0,
            &mut Vec::new(),
            window_count,
        );
        let mut again = vec![telemetry("a", 3, 1.0), telemetry("a", 6, 1.0)];
        score_batch(&mut again, 1 << 20, &mut store, 0, &mut Vec::new(), |f| {
            assert_eq!(f.len(), history::N_FEATURES, "only cycle 6 needs the model");
            window_count(f)
        });
        assert_eq!(answer(&again[0]), answer(&first[2]));
        assert_eq!(answer(&again[1])["HistoryCycles"], json!(6));
    }

    #[test]
    fn messages_that_cannot_join_a_history_are_marked_and_leave_it_alone() {
        let mut store = HistoryStore::new(100, 3600);
        let mut no_device = telemetry("a", 1, 1.0);
        no_device.properties.clear();
        let mut msgs = vec![
            no_device,
            Message::json(
                String::from_utf8(telemetry("a", 1, 1.0).body.to_vec())
                    .unwrap()
                    .replace("\"CycleTime\":1", "\"CycleTime\":1.5"),
            ),
            telemetry("b", 1, 1.0),
        ];
        msgs[1].set_property(CONNECTION_DEVICE_ID, "a");
        let scored = score_batch(
            &mut msgs,
            1 << 20,
            &mut store,
            0,
            &mut Vec::new(),
            window_count,
        );
        assert_eq!(scored, 1);
        assert!(msgs[0]
            .property(CLASSIFIER_ERROR)
            .unwrap()
            .contains("property ConnectionDeviceId is missing"));
        assert_eq!(
            msgs[1].property(CLASSIFIER_ERROR),
            Some("row 0: CycleTime 1.5 is not a whole number from 1: history scoring orders each device's rows by it")
        );
        assert!(store.get("a").is_none(), "no history from refused messages");
    }

    #[test]
    fn a_failed_model_run_marks_every_message() {
        let mut store = HistoryStore::new(100, 3600);
        let mut msgs = vec![telemetry("a", 1, 1.0)];
        let scored = score_batch(&mut msgs, 1 << 20, &mut store, 0, &mut Vec::new(), |_| {
            Err(ModelError::Run("boom".into()))
        });
        assert_eq!(scored, 0);
        assert_eq!(
            msgs[0].property(CLASSIFIER_ERROR),
            Some("model run failed: boom")
        );
    }
}
