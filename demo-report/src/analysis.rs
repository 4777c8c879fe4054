//! The pure part of the report: which sent message got which outcome, each engine's last
//! prediction against the truth, RMSE and the PHM08 score.

use hub_records::{DeadLetter, RulMessage};
use leaf_simulator::plan::unit_of;
use leaf_simulator::SentRecord;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use turbofan_domain::cmapss::Row;

/// What became of the sent messages.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcomes {
    /// Distinct messages in the sent log.
    pub sent: usize,
    /// Sent messages with a RUL message in IoT Hub.
    pub classified: usize,
    /// Sent messages with a dead letter (and no RUL message).
    pub dead_letters: usize,
    /// Sent messages with neither, yet.
    pub pending: usize,
    /// RUL messages beyond the first for the same message (at-least-once delivery).
    pub duplicates: usize,
    /// RUL messages and dead letters of messages not in the sent log (other runs, other
    /// senders).
    pub unmatched: usize,
    /// A few correlation ids of pending messages, for a look in the logs.
    pub pending_examples: Vec<String>,
}

impl Outcomes {
    /// Sent messages with an outcome.
    pub fn done(&self) -> usize {
        self.classified + self.dead_letters
    }
}

/// Matches sent messages with RUL messages and dead letters by correlation id.
pub fn match_outcomes(sent: &[SentRecord], ruls: &[RulMessage], dead: &[DeadLetter]) -> Outcomes {
    let sent_ids: HashSet<&str> = sent.iter().map(|s| s.correlation_id.as_str()).collect();
    let mut rul_count: HashMap<&str, usize> = HashMap::new();
    let mut unmatched = 0;
    for r in ruls {
        if sent_ids.contains(r.correlation_id.as_str()) {
            *rul_count.entry(r.correlation_id.as_str()).or_default() += 1;
        } else {
            unmatched += 1;
        }
    }
    let mut dead_ids = HashSet::new();
    for d in dead {
        match d.correlation_id.as_deref() {
            Some(cid) if sent_ids.contains(cid) => {
                dead_ids.insert(cid);
            }
            _ => unmatched += 1,
        }
    }
    let mut o = Outcomes {
        sent: sent_ids.len(),
        unmatched,
        duplicates: rul_count.values().map(|n| n - 1).sum(),
        ..Outcomes::default()
    };
    let mut seen = HashSet::new();
    for s in sent {
        let cid = s.correlation_id.as_str();
        if !seen.insert(cid) {
            continue;
        }
        if rul_count.contains_key(cid) {
            o.classified += 1;
        } else if dead_ids.contains(cid) {
            o.dead_letters += 1;
        } else {
            o.pending += 1;
            if o.pending_examples.len() < 5 {
                o.pending_examples.push(cid.to_owned());
            }
        }
    }
    o
}

/// Dead letters grouped by reason, most frequent first.
pub fn group_reasons<'a>(dead: impl IntoIterator<Item = &'a DeadLetter>) -> Vec<(String, usize)> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for d in dead {
        *counts.entry(d.reason.as_str()).or_default() += 1;
    }
    let mut v: Vec<(String, usize)> = counts.into_iter().map(|(r, n)| (r.to_owned(), n)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v
}

/// The truth of a test file: each engine's last cycle in the file and its true RUL there
/// (from `RUL_FDxxx.txt`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Truth {
    last_cycle: BTreeMap<u32, u32>,
    rul_at_last: BTreeMap<u32, f64>,
}

impl Truth {
    /// From a test file's rows and its RUL file (one value per unit, in unit order).
    pub fn new(rows: &[Row], rul: &[f64]) -> Truth {
        let mut last_cycle = BTreeMap::new();
        for r in rows {
            let c = last_cycle.entry(r.unit).or_insert(r.cycle);
            *c = (*c).max(r.cycle);
        }
        let rul_at_last = last_cycle
            .keys()
            .filter_map(|&u| {
                let i = usize::try_from(u).ok()?.checked_sub(1)?;
                rul.get(i).map(|&v| (u, v))
            })
            .collect();
        Truth {
            last_cycle,
            rul_at_last,
        }
    }

    /// The engine's last cycle in the test file.
    pub fn last_cycle(&self, unit: u32) -> Option<u32> {
        self.last_cycle.get(&unit).copied()
    }

    /// The true RUL of `unit` at `cycle`: the RUL at its last test cycle plus the cycles
    /// between.
    pub fn rul_at(&self, unit: u32, cycle: u32) -> Option<f64> {
        let last = self.last_cycle(unit)?;
        let at_last = self.rul_at_last.get(&unit)?;
        Some(at_last + f64::from(last) - f64::from(cycle))
    }
}

/// One engine's last prediction against the truth.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EngineResult {
    /// Engine unit.
    pub unit: u32,
    /// Its leaf device.
    pub device: String,
    /// The cycle of its last prediction (highest `CycleTime`).
    pub cycle: u32,
    /// Its last cycle in the test file.
    pub last_cycle: u32,
    /// Predicted RUL at `cycle`.
    pub predicted: f64,
    /// True RUL at `cycle`.
    pub actual: f64,
    /// `predicted − actual`.
    pub error: f64,
    /// The interval given with the prediction (history model).
    pub interval: Option<(f64, f64)>,
    /// Cycles of history behind the prediction (history model).
    pub history_cycles: Option<u32>,
}

/// Maps devices to engine units: from the sent log, else from the `Client_NNN` name.
pub fn units_of_devices(sent: &[SentRecord]) -> HashMap<String, u32> {
    sent.iter().map(|s| (s.device.clone(), s.unit)).collect()
}

fn unit(device: &str, units: &HashMap<String, u32>) -> Option<u32> {
    units.get(device).copied().or_else(|| unit_of(device))
}

/// Per engine, the prediction with the highest cycle, against the truth at that cycle.
/// Engines the truth does not know are left out.
pub fn engine_results(
    ruls: &[&RulMessage],
    units: &HashMap<String, u32>,
    truth: &Truth,
) -> Vec<EngineResult> {
    let mut last: BTreeMap<u32, &RulMessage> = BTreeMap::new();
    for r in ruls {
        let Some(u) = unit(&r.device, units) else {
            continue;
        };
        let e = last.entry(u).or_insert(r);
        if r.cycle > e.cycle {
            *e = r;
        }
    }
    last.into_iter()
        .filter_map(|(u, r)| {
            let actual = truth.rul_at(u, r.cycle)?;
            Some(EngineResult {
                unit: u,
                device: r.device.clone(),
                cycle: r.cycle,
                last_cycle: truth.last_cycle(u)?,
                predicted: r.predicted_rul,
                actual,
                error: r.predicted_rul - actual,
                interval: r.interval,
                history_cycles: r.history_cycles,
            })
        })
        .collect()
}

/// One engine's prediction intervals over its cycles, in cycle order.
pub fn interval_series(ruls: &[&RulMessage], device: &str) -> Vec<(u32, f64, f64)> {
    let by_cycle: BTreeMap<u32, (f64, f64)> = ruls
        .iter()
        .filter(|r| r.device == device)
        .filter_map(|r| r.interval.map(|i| (r.cycle, i)))
        .collect();
    by_cycle.into_iter().map(|(c, (l, h))| (c, l, h)).collect()
}

/// Fraction of engines whose true RUL lies in the interval given with their prediction,
/// and how many had one.
pub fn interval_coverage(engines: &[EngineResult]) -> Option<(f64, usize)> {
    let with: Vec<&EngineResult> = engines.iter().filter(|e| e.interval.is_some()).collect();
    if with.is_empty() {
        return None;
    }
    let inside = with
        .iter()
        .filter(|e| {
            e.interval
                .is_some_and(|(l, h)| l <= e.actual && e.actual <= h)
        })
        .count();
    Some((inside as f64 / with.len() as f64, with.len()))
}

/// Root mean square of the errors; `None` without errors.
pub fn rmse(errors: &[f64]) -> Option<f64> {
    if errors.is_empty() {
        return None;
    }
    Some((errors.iter().map(|e| e * e).sum::<f64>() / errors.len() as f64).sqrt())
}

/// The PHM08 challenge score: `e = predicted − true`; `exp(−e/13) − 1` for early
/// predictions (`e < 0`), `exp(e/10) − 1` for late ones, summed. Late predictions cost more.
pub fn phm08_score(errors: &[f64]) -> Option<f64> {
    if errors.is_empty() {
        return None;
    }
    Some(
        errors
            .iter()
            .map(|&e| {
                if e < 0.0 {
                    (-e / 13.0).exp() - 1.0
                } else {
                    (e / 10.0).exp() - 1.0
                }
            })
            .sum(),
    )
}

/// One engine's predictions over its cycles, in cycle order (the latest message wins when a
/// cycle was predicted twice).
pub fn prediction_series(ruls: &[&RulMessage], device: &str) -> Vec<(u32, f64)> {
    let by_cycle: BTreeMap<u32, f64> = ruls
        .iter()
        .filter(|r| r.device == device)
        .map(|r| (r.cycle, r.predicted_rul))
        .collect();
    by_cycle.into_iter().collect()
}

/// Picks `n` engines to draw, spread over the range of their number of predictions (the
/// longest first), so short and long histories both show.
pub fn pick_engines(predictions_per_unit: &BTreeMap<u32, usize>, n: usize) -> Vec<u32> {
    let mut units: Vec<(u32, usize)> = predictions_per_unit
        .iter()
        .filter(|(_, &c)| c > 0)
        .map(|(&u, &c)| (u, c))
        .collect();
    units.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    if units.len() <= n {
        return units.into_iter().map(|(u, _)| u).collect();
    }
    let mut picked = Vec::with_capacity(n);
    for k in 0..n {
        // Evenly spaced ranks from the longest to the shortest fifth.
        let i = k * (units.len() - 1) * 4 / (5 * (n - 1).max(1));
        let u = units[i].0;
        if !picked.contains(&u) {
            picked.push(u);
        }
    }
    picked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(device: &str, unit: u32, cycle: u32, cid: &str) -> SentRecord {
        SentRecord {
            device: device.into(),
            unit,
            cycle,
            correlation_id: cid.into(),
            sent_at: String::new(),
        }
    }

    fn rul(cid: &str, device: &str, cycle: u32, v: f64) -> RulMessage {
        RulMessage {
            correlation_id: cid.into(),
            device: device.into(),
            cycle,
            predicted_rul: v,
            ..Default::default()
        }
    }

    fn dead(cid: Option<&str>, reason: &str) -> DeadLetter {
        DeadLetter {
            correlation_id: cid.map(str::to_owned),
            reason: reason.into(),
            payload: serde_json::Value::Null,
            payload_encoding: "json".into(),
        }
    }

    fn row(unit: u32, cycle: u32) -> Row {
        Row {
            unit,
            cycle,
            settings: [0.0; 3],
            sensors: [0.0; 21],
        }
    }

    #[test]
    fn every_sent_message_is_classified_dead_or_pending() {
        let s = vec![
            sent("Client_001", 1, 1, "a"),
            sent("Client_001", 1, 2, "b"),
            sent("Client_002", 2, 1, "c"),
            sent("Client_002", 2, 2, "d"),
        ];
        let ruls = vec![
            rul("a", "Client_001", 1, 10.0),
            rul("a", "Client_001", 1, 10.0),
            rul("zz", "Client_009", 1, 1.0),
        ];
        let dead = vec![dead(Some("c"), "bad"), dead(None, "worse")];
        let o = match_outcomes(&s, &ruls, &dead);
        assert_eq!(
            (o.sent, o.classified, o.dead_letters, o.pending),
            (4, 1, 1, 2)
        );
        assert_eq!((o.duplicates, o.unmatched, o.done()), (1, 2, 2));
        assert_eq!(o.pending_examples, ["b", "d"]);
    }

    #[test]
    fn reasons_are_grouped_most_frequent_first() {
        let d = vec![
            dead(Some("1"), "b reason"),
            dead(Some("2"), "a reason"),
            dead(None, "b reason"),
            dead(None, "c reason"),
        ];
        assert_eq!(
            group_reasons(&d),
            vec![
                ("b reason".to_owned(), 2),
                ("a reason".to_owned(), 1),
                ("c reason".to_owned(), 1)
            ]
        );
    }

    #[test]
    fn the_truth_counts_back_from_the_last_test_cycle() {
        let rows = vec![row(1, 1), row(1, 2), row(1, 3), row(2, 1)];
        let t = Truth::new(&rows, &[100.0, 50.0]);
        assert_eq!(t.last_cycle(1), Some(3));
        assert_eq!(t.rul_at(1, 3), Some(100.0));
        assert_eq!(t.rul_at(1, 1), Some(102.0));
        assert_eq!(t.rul_at(2, 1), Some(50.0));
        assert_eq!(t.rul_at(3, 1), None);
        let short = Truth::new(&rows, &[100.0]);
        assert_eq!(short.rul_at(2, 1), None, "no RUL for unit 2");
    }

    #[test]
    fn each_engine_is_judged_on_its_highest_cycle() {
        let rows = vec![row(1, 1), row(1, 2), row(1, 3), row(2, 1), row(2, 2)];
        let t = Truth::new(&rows, &[100.0, 50.0]);
        let msgs = [
            rul("a", "Client_001", 3, 90.0),
            rul("b", "Client_001", 1, 500.0),
            rul("c", "Client_002", 1, 60.0),
            rul("d", "Client_777", 1, 60.0),
        ];
        let refs: Vec<&RulMessage> = msgs.iter().collect();
        let units = units_of_devices(&[sent("Client_002", 2, 1, "c")]);
        let r = engine_results(&refs, &units, &t);
        assert_eq!(r.len(), 2, "unit 777 has no truth");
        assert_eq!((r[0].unit, r[0].cycle, r[0].error), (1, 3, -10.0));
        assert_eq!((r[1].unit, r[1].cycle, r[1].actual), (2, 1, 51.0));
        assert_eq!(r[1].error, 9.0);
        assert_eq!(r[1].last_cycle, 2);
        assert_eq!(
            prediction_series(&refs, "Client_001"),
            vec![(1, 500.0), (3, 90.0)]
        );
    }

    #[test]
    fn rmse_and_phm08_score() {
        assert_eq!(rmse(&[]), None);
        assert_eq!(rmse(&[3.0, -4.0]), Some((12.5f64).sqrt()));
        assert_eq!(phm08_score(&[]), None);
        let s = phm08_score(&[-13.0, 10.0, 0.0]).unwrap();
        let want = (1f64.exp() - 1.0) * 2.0;
        assert!((s - want).abs() < 1e-12, "{s} vs {want}");
        // Late is worse than early by the same amount.
        assert!(phm08_score(&[20.0]).unwrap() > phm08_score(&[-20.0]).unwrap());
    }

    #[test]
    fn engines_to_draw_spread_over_history_lengths() {
        let counts: BTreeMap<u32, usize> = (1..=100u32).map(|u| (u, u as usize)).collect();
        let p = pick_engines(&counts, 5);
        assert_eq!(p.len(), 5);
        assert_eq!(p[0], 100, "the longest first");
        assert!(p.windows(2).all(|w| w[0] > w[1]), "{p:?}");
        assert!(*p.last().unwrap() >= 20, "not the very shortest: {p:?}");
        let few: BTreeMap<u32, usize> = [(3, 5), (1, 9), (2, 0)].into_iter().collect();
        assert_eq!(pick_engines(&few, 5), vec![1, 3]);
    }
}
