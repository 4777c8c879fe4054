//! Engine history for the windowed RUL model: per leaf device, the last [`WINDOW`] cycles of
//! the model's sensors and the discounted moments of the whole history, turned into the
//! model's [`N_FEATURES`] features.
//!
//! This is the same state machine as `models/history_features.py`, operation for operation in
//! `f64` (no fused multiply-adds, sums in the same order), so Rust and the training script
//! give bit-identical features and the ONNX model sees identical inputs. The features, for
//! each sensor of [`SENSORS`]: level and slope of a quadratic fitted over the whole history
//! with weights `LAMBDA^(cycles before now)`, slope and level of the discounted straight
//! line, and mean, slope and end value of the last [`WINDOW`] cycles; last, the number of
//! cycles in the window.
//!
//! The moments are kept about the current cycle, in units of [`SCALE`] cycles: when the
//! engine moves on by `gap` cycles, each moment is re-centred by the binomial expansion of
//! `(u - gap/SCALE)^p` and decayed by `LAMBDA^gap`; the new row then adds `u = 0`.
//!
//! [`HistoryStore`] keeps one [`EngineHistory`] per device, bounded by a device cap (least
//! recently seen evicted first) and an idle expiry, and decides what a row is to the history:
//! the next cycle, a repeat, an older cycle, or the first cycle of a new engine.

use lru::LruCache;
use serde::{Deserialize, Serialize};
use std::num::NonZeroUsize;

/// Names the feature definition; the ONNX model's `feature_set` metadata must say the same.
pub const FEATURE_SET: &str = "turbofan-history-v1";
/// The sensors the model reads (numbers as in `Sensor2`…): the ones that degrade the same
/// way under both fault modes of C-MAPSS.
pub const SENSORS: [usize; 9] = [2, 3, 4, 8, 9, 11, 13, 14, 17];
/// Number of model sensors.
pub const N_SENSORS: usize = SENSORS.len();
/// Cycles in the window.
pub const WINDOW: usize = 30;
/// Weight of a point one cycle older, in the discounted fits.
pub const LAMBDA: f64 = 0.99;
/// Cycles per time unit of the moments (keeps their powers near 1).
pub const SCALE: f64 = 256.0;
/// Cycles before the discounted fits are solved (fewer: levels are the mean, slopes 0).
pub const MIN_FIT: u32 = 8;
/// Slopes of the fits are given per this many cycles.
pub const SLOPE_SPAN: f64 = 30.0;
/// A gap longer than this decays the old history as if it were this long.
pub const MAX_DECAY_STEPS: u32 = 2000;
/// A gap of this many cycles or more starts a new history (the window keeps the low 16 bits
/// of its cycles).
pub const MAX_GAP: u32 = 1 << 16;
/// Answers kept for redeliveries: those of the last this many cycles of the window.
pub const ANSWERS_KEPT: usize = 6;
const _: () = assert!(WINDOW.is_multiple_of(ANSWERS_KEPT));
/// Features per row.
pub const N_FEATURES: usize = 7 * N_SENSORS + 1;

const BINOM: [[f64; 5]; 5] = [
    [1.0, 0.0, 0.0, 0.0, 0.0],
    [1.0, 1.0, 0.0, 0.0, 0.0],
    [1.0, 2.0, 1.0, 0.0, 0.0],
    [1.0, 3.0, 3.0, 1.0, 0.0],
    [1.0, 4.0, 6.0, 4.0, 1.0],
];

/// The model's sensors out of a row's `Sensor1..Sensor21`.
pub fn model_sensors(row: &[f32]) -> [f32; N_SENSORS] {
    SENSORS.map(|s| row.get(s - 1).copied().unwrap_or(f32::NAN))
}

/// What the model said for one cycle, kept so a redelivered row gets the same answer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// `PredictedRul`.
    pub rul: f32,
    /// `PredictedRulLow`.
    pub low: f32,
    /// `PredictedRulHigh`.
    pub high: f32,
}

/// One engine's history: 1,480 bytes (so that with its device entry it fits mimalloc's
/// 1,536-byte size class; a test checks).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EngineHistory {
    n: u32,
    last: u32,
    p: [f64; 5],
    q: [[f64; N_SENSORS]; 3],
    start: u8,
    len: u8,
    /// Cycles between the first and the last that never arrived (saturating; in what was
    /// padding, so the size stays).
    #[serde(default)]
    missing: u16,
    /// Low 16 bits of each window row's cycle (a window never spans [`MAX_GAP`]).
    cycles: [u16; WINDOW],
    rows: [[f32; N_SENSORS]; WINDOW],
    /// By window slot modulo [`ANSWERS_KEPT`]: the answer for that slot's cycle, `rul` NaN
    /// when none (yet).
    scored: [Prediction; ANSWERS_KEPT],
}

const UNSCORED: Prediction = Prediction::NONE;

impl Prediction {
    /// No answer (NaN): recorded, it leaves the cycle unanswered.
    pub const NONE: Prediction = Prediction {
        rul: f32::NAN,
        low: f32::NAN,
        high: f32::NAN,
    };
}

impl PartialEq for EngineHistory {
    /// Field by field, floats by their bits (an unscored slot's NaN equals itself).
    fn eq(&self, o: &Self) -> bool {
        let bits = |p: &[Prediction; ANSWERS_KEPT]| {
            p.map(|p| [p.rul.to_bits(), p.low.to_bits(), p.high.to_bits()])
        };
        self.n == o.n
            && self.last == o.last
            && self.p.map(f64::to_bits) == o.p.map(f64::to_bits)
            && self.q.map(|r| r.map(f64::to_bits)) == o.q.map(|r| r.map(f64::to_bits))
            && self.start == o.start
            && self.len == o.len
            && self.missing == o.missing
            && self.cycles == o.cycles
            && self.rows.map(|r| r.map(f32::to_bits)) == o.rows.map(|r| r.map(f32::to_bits))
            && bits(&self.scored) == bits(&o.scored)
    }
}

impl Default for EngineHistory {
    fn default() -> Self {
        EngineHistory {
            n: 0,
            last: 0,
            p: [0.0; 5],
            q: [[0.0; N_SENSORS]; 3],
            start: 0,
            len: 0,
            missing: 0,
            cycles: [0; WINDOW],
            rows: [[0.0; N_SENSORS]; WINDOW],
            scored: [UNSCORED; ANSWERS_KEPT],
        }
    }
}

impl EngineHistory {
    /// A history holding just `sensors` at `cycle`.
    pub fn single(cycle: u32, sensors: &[f32; N_SENSORS]) -> EngineHistory {
        let mut h = EngineHistory::default();
        h.absorb(cycle, sensors);
        h
    }

    /// Cycles absorbed since the history began.
    pub fn cycles(&self) -> u32 {
        self.n
    }

    /// Cycles between the first and the latest that never reached the history (up to
    /// `u16::MAX`).
    pub fn missing_cycles(&self) -> u32 {
        u32::from(self.missing)
    }

    /// The latest cycle (0 before the first).
    pub fn last_cycle(&self) -> u32 {
        self.last
    }

    /// The oldest cycle still in the window.
    pub fn oldest_cycle(&self) -> Option<u32> {
        (self.len > 0).then(|| self.cycle_at(self.start as usize))
    }

    fn slot(&self, i: usize) -> usize {
        (self.start as usize + i) % WINDOW
    }

    /// The cycle of window slot `slot`, from its low 16 bits and the last cycle.
    fn cycle_at(&self, slot: usize) -> u32 {
        self.last - u32::from((self.last as u16).wrapping_sub(self.cycles[slot]))
    }

    /// Cycles from window slot `slot` to the last one.
    fn age_at(&self, slot: usize) -> u32 {
        u32::from((self.last as u16).wrapping_sub(self.cycles[slot]))
    }

    fn position_of(&self, cycle: u32) -> Option<usize> {
        if cycle > self.last || self.last - cycle >= MAX_GAP {
            return None;
        }
        (0..self.len as usize).find(|&i| self.cycle_at(self.slot(i)) == cycle)
    }

    /// Adds the row of `cycle`, which must be later than [`last_cycle`](Self::last_cycle)
    /// by less than [`MAX_GAP`] (the store checks: a longer gap starts a new history).
    pub fn absorb(&mut self, cycle: u32, sensors: &[f32; N_SENSORS]) {
        if self.n > 0 {
            let gap = cycle.saturating_sub(self.last);
            let skipped = u16::try_from(gap.saturating_sub(1)).unwrap_or(u16::MAX);
            self.missing = self.missing.saturating_add(skipped);
            let mut decay = 1.0f64;
            for _ in 0..gap.min(MAX_DECAY_STEPS) {
                decay *= LAMBDA;
            }
            let m = -(gap as f64) / SCALE;
            let mut pw = [1.0f64; 5];
            for j in 1..5 {
                pw[j] = pw[j - 1] * m;
            }
            let mut p_new = [0.0f64; 5];
            for (p, out) in p_new.iter_mut().enumerate() {
                let mut acc = 0.0f64;
                for k in 0..=p {
                    acc += (BINOM[p][k] * pw[p - k]) * self.p[k];
                }
                *out = acc * decay;
            }
            let mut q_new = [[0.0f64; N_SENSORS]; 3];
            for (p, out) in q_new.iter_mut().enumerate() {
                for (s, o) in out.iter_mut().enumerate() {
                    let mut acc = 0.0f64;
                    for k in 0..=p {
                        acc += (BINOM[p][k] * pw[p - k]) * self.q[k][s];
                    }
                    *o = acc * decay;
                }
            }
            self.p = p_new;
            self.q = q_new;
        }
        self.p[0] += 1.0;
        for (q, x) in self.q[0].iter_mut().zip(sensors) {
            *q += *x as f64;
        }
        self.n += 1;
        self.last = cycle;
        let slot = if (self.len as usize) < WINDOW {
            self.len += 1;
            self.slot(self.len as usize - 1)
        } else {
            let s = self.start as usize;
            self.start = ((s + 1) % WINDOW) as u8;
            s
        };
        self.cycles[slot] = cycle as u16;
        self.rows[slot] = *sensors;
        self.scored[slot % ANSWERS_KEPT] = UNSCORED;
    }

    /// The model's features of the history as it stands.
    pub fn features(&self) -> [f32; N_FEATURES] {
        let [a, b, c, d, e] = self.p;
        let [q0, q1, q2] = &self.q;
        let mut f = [[0.0f64; N_SENSORS]; 7];
        let to_span = SLOPE_SPAN / SCALE;
        if self.n >= MIN_FIT {
            let m00 = c * e - d * d;
            let m01 = b * e - d * c;
            let m02 = b * d - c * c;
            let det = a * m00 - b * m01 + c * m02;
            let det_l = a * c - b * b;
            for s in 0..N_SENSORS {
                let (q0, q1, q2) = (q0[s], q1[s], q2[s]);
                let det0 = q0 * m00 - b * (q1 * e - d * q2) + c * (q1 * d - c * q2);
                let det1 = a * (q1 * e - d * q2) - q0 * m01 + c * (b * q2 - q1 * c);
                f[0][s] = det0 / det;
                f[1][s] = (det1 / det) * to_span;
                f[2][s] = ((a * q1 - b * q0) / det_l) * to_span;
                f[3][s] = (q0 * c - b * q1) / det_l;
            }
        } else {
            for s in 0..N_SENSORS {
                f[0][s] = q0[s] / a;
                f[3][s] = f[0][s];
            }
        }
        let k = self.len as usize;
        let mut sum_t = 0.0f64;
        let mut sum_x = [0.0f64; N_SENSORS];
        for i in 0..k {
            let slot = self.slot(i);
            sum_t += -(self.age_at(slot) as f64);
            for (acc, x) in sum_x.iter_mut().zip(&self.rows[slot]) {
                *acc += *x as f64;
            }
        }
        let kf = k as f64;
        let tbar = sum_t / kf;
        let mean = sum_x.map(|x| x / kf);
        let mut slope = [0.0f64; N_SENSORS];
        if k >= 3 {
            let mut stt = 0.0f64;
            let mut stx = [0.0f64; N_SENSORS];
            for i in 0..k {
                let slot = self.slot(i);
                let dt = -(self.age_at(slot) as f64) - tbar;
                stt += dt * dt;
                for s in 0..N_SENSORS {
                    stx[s] += dt * (self.rows[slot][s] as f64 - mean[s]);
                }
            }
            slope = stx.map(|x| x / stt);
        }
        for s in 0..N_SENSORS {
            f[4][s] = mean[s];
            f[5][s] = slope[s] * WINDOW as f64;
            f[6][s] = mean[s] + slope[s] * (-tbar);
        }
        let mut out = [0.0f32; N_FEATURES];
        for (i, v) in f.iter().flatten().enumerate() {
            out[i] = *v as f32;
        }
        out[N_FEATURES - 1] = kf as f32;
        out
    }

    /// Remembers what the model said for `cycle` (if it is among the last
    /// [`ANSWERS_KEPT`] cycles of the window).
    pub fn record(&mut self, cycle: u32, prediction: Prediction) {
        if let Some(i) = self.position_of(cycle) {
            if (self.len as usize - 1 - i) < ANSWERS_KEPT {
                self.scored[self.slot(i) % ANSWERS_KEPT] = prediction;
            }
        }
    }

    /// What was said for `cycle`, and the history's length then.
    fn recorded(&self, cycle: u32) -> Option<(Prediction, u32)> {
        let i = self.position_of(cycle)?;
        let back = self.len as usize - 1 - i;
        let p = self.scored[self.slot(i) % ANSWERS_KEPT];
        (back < ANSWERS_KEPT && !p.rul.is_nan()).then_some((p, self.n - back as u32))
    }
}

/// What a row was to its device's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The next cycle: added.
    Next,
    /// The first row of the device (or after its history expired or was evicted).
    First,
    /// A cycle already in the history (a redelivery or a repeat): not counted again.
    Repeat,
    /// A cycle older than the history, or one it skipped: scored on its own, history untouched.
    Older,
    /// A row that starts an engine's life again (a new engine on the same device): cycle 1
    /// when the history holds no cycle 1, or a cycle the history holds with other sensor
    /// values. A new history begins with it.
    Restart,
}

/// How to answer a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Run the model on these features, then [`HistoryStore::record`] the result.
    Score(Box<[f32; N_FEATURES]>),
    /// The answer given for this cycle before.
    Again(Prediction),
}

/// A row's place in its history and how to answer it.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// What the row was to the history.
    pub seen: Seen,
    /// Cycles of history behind the answer (`HistoryCycles`): under [`WINDOW`] the window is
    /// not full; 1 for a row scored on its own.
    pub history_cycles: u32,
    /// Cycles the history behind the answer lacks between its first and latest
    /// (`MissingCycles`).
    pub missing_cycles: u32,
    /// Cycles this row skipped past: over 0 when it opened a new gap.
    pub skipped: u32,
    /// How to answer.
    pub answer: Answer,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Device {
    history: EngineHistory,
    seen_at: u64,
}

/// Per-device histories, bounded by a device cap (least recently seen evicted first) and an
/// idle expiry.
pub struct HistoryStore {
    devices: LruCache<Box<str>, Device>,
    idle_secs: u64,
    evicted: u64,
    expired: u64,
}

/// Whether a row at `cycle`, not later than the history's last, starts a new engine: it is
/// cycle 1 and the history holds no cycle 1 (engines count their cycles from 1), or the
/// history holds that cycle with other sensor values (a redelivery repeats the row exactly).
fn is_restart(h: &EngineHistory, cycle: u32, sensors: &[f32; N_SENSORS]) -> bool {
    match h.position_of(cycle) {
        Some(i) => h.rows[h.slot(i)].map(f32::to_bits) != sensors.map(|x| x.to_bits()),
        None => cycle == 1,
    }
}

impl HistoryStore {
    /// A store for at most `max_devices` devices, forgetting a device idle for `idle_secs`.
    pub fn new(max_devices: usize, idle_secs: u64) -> HistoryStore {
        HistoryStore {
            devices: LruCache::new(
                NonZeroUsize::new(max_devices.max(1)).unwrap_or(NonZeroUsize::MIN),
            ),
            idle_secs,
            evicted: 0,
            expired: 0,
        }
    }

    /// Changes the bounds (evicting the least recently seen devices over the new cap).
    pub fn set_bounds(&mut self, max_devices: usize, idle_secs: u64) {
        let cap = NonZeroUsize::new(max_devices.max(1)).unwrap_or(NonZeroUsize::MIN);
        let before = self.devices.len();
        self.devices.resize(cap);
        self.evicted += (before - self.devices.len()) as u64;
        self.idle_secs = idle_secs;
    }

    /// Devices kept.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// Whether no device is kept.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Devices evicted by the cap and expired by idleness, since start.
    pub fn dropped(&self) -> (u64, u64) {
        (self.evicted, self.expired)
    }

    /// A device's history, if kept.
    pub fn get(&self, device: &str) -> Option<&EngineHistory> {
        self.devices.peek(device).map(|d| &d.history)
    }

    /// Forgets devices idle for longer than the expiry at `now` (seconds).
    pub fn expire(&mut self, now: u64) {
        while let Some((_, d)) = self.devices.peek_lru() {
            if now.saturating_sub(d.seen_at) <= self.idle_secs {
                break;
            }
            self.devices.pop_lru();
            self.expired += 1;
        }
    }

    /// Takes the row of `device` at `cycle` (model sensors `sensors`) seen at `now` seconds.
    pub fn observe(
        &mut self,
        device: &str,
        cycle: u32,
        sensors: &[f32; N_SENSORS],
        now: u64,
    ) -> Observation {
        self.expire(now);
        let Some(d) = self.devices.get_mut(device) else {
            let history = EngineHistory::single(cycle, sensors);
            let obs = Observation {
                seen: Seen::First,
                history_cycles: 1,
                missing_cycles: 0,
                skipped: 0,
                answer: Answer::Score(Box::new(history.features())),
            };
            if self
                .devices
                .push(
                    device.into(),
                    Device {
                        history,
                        seen_at: now,
                    },
                )
                .is_some_and(|(k, _)| &*k != device)
            {
                self.evicted += 1;
            }
            return obs;
        };
        d.seen_at = now;
        let h = &mut d.history;
        if cycle > h.last && cycle - h.last >= MAX_GAP {
            *h = EngineHistory::single(cycle, sensors);
            return Observation {
                seen: Seen::Restart,
                history_cycles: 1,
                missing_cycles: 0,
                skipped: 0,
                answer: Answer::Score(Box::new(h.features())),
            };
        }
        if cycle > h.last {
            let skipped = cycle - h.last - 1;
            h.absorb(cycle, sensors);
            return Observation {
                seen: Seen::Next,
                history_cycles: h.n,
                missing_cycles: h.missing_cycles(),
                skipped,
                answer: Answer::Score(Box::new(h.features())),
            };
        }
        if is_restart(h, cycle, sensors) {
            *h = EngineHistory::single(cycle, sensors);
            return Observation {
                seen: Seen::Restart,
                history_cycles: 1,
                missing_cycles: 0,
                skipped: 0,
                answer: Answer::Score(Box::new(h.features())),
            };
        }
        if let Some((p, cycles_then)) = h.recorded(cycle) {
            return Observation {
                seen: Seen::Repeat,
                history_cycles: cycles_then,
                missing_cycles: h.missing_cycles(),
                skipped: 0,
                answer: Answer::Again(p),
            };
        }
        if cycle == h.last {
            // The latest row again, before its first answer was recorded (same batch).
            return Observation {
                seen: Seen::Repeat,
                history_cycles: h.n,
                missing_cycles: h.missing_cycles(),
                skipped: 0,
                answer: Answer::Score(Box::new(h.features())),
            };
        }
        let seen = if h.position_of(cycle).is_some() {
            Seen::Repeat
        } else {
            Seen::Older
        };
        Observation {
            seen,
            history_cycles: 1,
            missing_cycles: 0,
            skipped: 0,
            answer: Answer::Score(Box::new(EngineHistory::single(cycle, sensors).features())),
        }
    }

    /// Remembers the model's answer for `device` at `cycle`, for redeliveries.
    pub fn record(&mut self, device: &str, cycle: u32, prediction: Prediction) {
        if let Some(d) = self.devices.peek_mut(device) {
            d.history.record(cycle, prediction);
        }
    }

    /// Writes every device (least recently seen first) to `out` as CBOR.
    pub fn save(&self, out: impl std::io::Write) -> Result<(), SnapshotError> {
        let devices: Vec<(&str, &Device)> =
            self.devices.iter().rev().map(|(k, d)| (&**k, d)).collect();
        let snap = SnapshotRef {
            feature_set: FEATURE_SET,
            devices,
        };
        ciborium::into_writer(&snap, out).map_err(|e| SnapshotError(e.to_string()))
    }

    /// Reads what [`save`](Self::save) wrote into a store with these bounds; devices idle
    /// past the expiry at `now` are left out.
    pub fn load(
        input: impl std::io::Read,
        max_devices: usize,
        idle_secs: u64,
        now: u64,
    ) -> Result<HistoryStore, SnapshotError> {
        let snap: Snapshot =
            ciborium::from_reader(input).map_err(|e| SnapshotError(e.to_string()))?;
        if snap.feature_set != FEATURE_SET {
            return Err(SnapshotError(format!(
                "it holds histories for features '{}', this module computes '{FEATURE_SET}'",
                snap.feature_set
            )));
        }
        let mut store = HistoryStore::new(max_devices, idle_secs);
        for (k, d) in snap.devices {
            store.devices.push(k.into_boxed_str(), d);
        }
        store.expire(now);
        store.evicted = 0;
        store.expired = 0;
        Ok(store)
    }
}

/// A row that moved its device's history on (the next cycle, a first row, a new engine), with
/// the answer it got. The classifier logs each before acknowledging its message, so that a
/// restart replays on top of the last snapshot every row it had acknowledged.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The device (`ConnectionDeviceId`).
    pub device: Box<str>,
    /// The row's cycle.
    pub cycle: u32,
    /// The row's model sensors.
    pub sensors: [f32; N_SENSORS],
    /// What the model said.
    pub prediction: Prediction,
}

/// Bytes of a [`Change`] record before its device id: length, checksum, cycle, sensors,
/// prediction.
const CHANGE_HEAD: usize = 4 + 4 + 4 + 4 * N_SENSORS + 4 * 3;

impl Change {
    /// Appends the change to `out` as one record: its length and CRC-32, then the fields
    /// (little-endian), then the device id.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let at = out.len();
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&self.cycle.to_le_bytes());
        for x in self.sensors {
            out.extend_from_slice(&x.to_le_bytes());
        }
        let p = self.prediction;
        for x in [p.rul, p.low, p.high] {
            out.extend_from_slice(&x.to_le_bytes());
        }
        out.extend_from_slice(self.device.as_bytes());
        let len = (out.len() - at) as u32;
        let crc = crc32fast::hash(&out[at + 8..]);
        out[at..at + 4].copy_from_slice(&len.to_le_bytes());
        out[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
    }

    /// The record at the start of `buf` and its length; `None` if `buf` holds no whole,
    /// intact record there (the end of a log, or a record torn by a crash).
    pub fn decode(buf: &[u8]) -> Option<(Change, usize)> {
        let word = |at: usize| -> Option<[u8; 4]> { buf.get(at..at + 4)?.try_into().ok() };
        let len = u32::from_le_bytes(word(0)?) as usize;
        if len < CHANGE_HEAD || len > buf.len() {
            return None;
        }
        if crc32fast::hash(&buf[8..len]) != u32::from_le_bytes(word(4)?) {
            return None;
        }
        let f = |i: usize| -> Option<f32> { Some(f32::from_le_bytes(word(12 + 4 * i)?)) };
        let mut sensors = [0.0f32; N_SENSORS];
        for (i, s) in sensors.iter_mut().enumerate() {
            *s = f(i)?;
        }
        let device = std::str::from_utf8(&buf[CHANGE_HEAD..len]).ok()?;
        let change = Change {
            device: device.into(),
            cycle: u32::from_le_bytes(word(8)?),
            sensors,
            prediction: Prediction {
                rul: f(N_SENSORS)?,
                low: f(N_SENSORS + 1)?,
                high: f(N_SENSORS + 2)?,
            },
        };
        Some((change, len))
    }
}

impl HistoryStore {
    /// Applies a logged change again, as when its row was first seen and its answer recorded
    /// (at `now`, seconds).
    pub fn replay(&mut self, change: &Change, now: u64) {
        self.observe(&change.device, change.cycle, &change.sensors, now);
        self.record(&change.device, change.cycle, change.prediction);
    }
}

#[derive(Serialize)]
struct SnapshotRef<'a> {
    feature_set: &'a str,
    devices: Vec<(&'a str, &'a Device)>,
}

#[derive(Deserialize)]
struct Snapshot {
    feature_set: String,
    devices: Vec<(String, Device)>,
}

/// A history snapshot that cannot be written or read.
#[derive(Debug, thiserror::Error)]
#[error("history snapshot: {0}")]
pub struct SnapshotError(String);

#[cfg(test)]
mod tests {
    use super::*;

    fn row(v: f32) -> [f32; N_SENSORS] {
        [v; N_SENSORS]
    }

    fn scored(obs: &Observation) -> &[f32; N_FEATURES] {
        match &obs.answer {
            Answer::Score(f) => f,
            other => panic!("expected features, got {other:?}"),
        }
    }

    /// Fits of a straight line are exact: a sensor rising 0.5 per cycle gives level = the last
    /// value and slopes of 0.5 × 30 per span, in the fits and the window.
    #[test]
    fn features_of_a_straight_line_are_its_level_and_slope() {
        let mut h = EngineHistory::default();
        for c in 1..=40u32 {
            h.absorb(c, &row(100.0 + 0.5 * c as f32));
        }
        let f = h.features();
        let at = |part: usize| f[part * N_SENSORS];
        assert!((at(0) - 120.0).abs() < 1e-3, "fit level {}", at(0));
        assert!((at(1) - 15.0).abs() < 1e-3, "fit slope {}", at(1));
        assert!((at(2) - 15.0).abs() < 1e-3, "line slope {}", at(2));
        assert!((at(3) - 120.0).abs() < 1e-3, "line level {}", at(3));
        assert!((at(4) - 112.75).abs() < 1e-3, "window mean {}", at(4));
        assert!((at(5) - 15.0).abs() < 1e-3, "window slope {}", at(5));
        assert!((at(6) - 120.0).abs() < 1e-3, "window end {}", at(6));
        assert_eq!(f[N_FEATURES - 1], 30.0);
    }

    #[test]
    fn a_device_fits_mimallocs_1536_byte_class() {
        let entry = std::mem::size_of::<Device>() + std::mem::size_of::<Box<str>>() + 16;
        assert!(entry <= 1536, "{entry} bytes per device entry");
    }

    #[test]
    fn skipped_cycles_are_counted_in_the_history_and_said_once() {
        let mut s = HistoryStore::new(10, 3600);
        for c in [1, 2, 3, 7, 8] {
            let o = s.observe("d", c, &row(c as f32), 0);
            let want = if c < 7 { 0 } else { 3 };
            assert_eq!(
                (o.missing_cycles, o.skipped),
                (want, if c == 7 { 3 } else { 0 })
            );
        }
        assert_eq!(s.get("d").unwrap().missing_cycles(), 3);
        let o = s.observe("d", 1, &row(2.0), 0);
        assert_eq!(
            (o.seen, o.missing_cycles),
            (Seen::Restart, 0),
            "a new engine"
        );
    }

    #[test]
    fn a_snapshot_and_its_replayed_changes_give_the_live_histories() {
        let mut live = HistoryStore::new(10, 3600);
        let mut log = Vec::new();
        let mut snapshot = Vec::new();
        for c in 1..=40u32 {
            for d in ["a", "b"] {
                let o = live.observe(d, c, &row(c as f32 + d.len() as f32), 0);
                assert!(matches!(o.answer, Answer::Score(_)));
                let prediction = Prediction {
                    rul: c as f32,
                    low: 0.0,
                    high: 2.0 * c as f32,
                };
                live.record(d, c, prediction);
                if c > 25 {
                    Change {
                        device: d.into(),
                        cycle: c,
                        sensors: row(c as f32 + d.len() as f32),
                        prediction,
                    }
                    .encode(&mut log);
                }
            }
            if c == 25 {
                live.save(&mut snapshot).unwrap();
            }
        }
        let mut restored = HistoryStore::load(&snapshot[..], 10, 3600, 0).unwrap();
        let mut at = 0;
        while let Some((change, len)) = Change::decode(&log[at..]) {
            restored.replay(&change, 0);
            at += len;
        }
        assert_eq!(at, log.len());
        assert_eq!(restored.get("a"), live.get("a"));
        assert_eq!(restored.get("b"), live.get("b"));
        let again = restored.observe("a", 39, &row(40.0), 0);
        assert_eq!(again.answer, live.observe("a", 39, &row(40.0), 0).answer);
    }

    #[test]
    fn a_torn_or_damaged_change_record_ends_the_log() {
        let mut log = Vec::new();
        let change = Change {
            device: "engine-7".into(),
            cycle: 9,
            sensors: row(1.5),
            prediction: UNSCORED,
        };
        change.encode(&mut log);
        let whole = log.len();
        change.encode(&mut log);
        assert_eq!(
            Change::decode(&log).map(|(c, n)| (c.cycle, n)),
            Some((9, whole))
        );
        assert!(Change::decode(&log[whole..log.len() - 1]).is_none(), "torn");
        log[whole + 20] ^= 1;
        assert!(Change::decode(&log[whole..]).is_none(), "damaged");
        assert!(Change::decode(&[]).is_none());
        assert!(Change::decode(&[255; 7]).is_none());
    }

    #[test]
    fn cycles_past_16_bits_and_huge_gaps() {
        let mut s = HistoryStore::new(10, 3600);
        for c in 65_530..65_545u32 {
            s.observe("d", c, &row(c as f32), 0);
        }
        let h = s.get("d").unwrap();
        assert_eq!(
            (h.oldest_cycle(), h.last_cycle(), h.cycles()),
            (Some(65_530), 65_544, 15)
        );
        assert_eq!(s.observe("d", 65_536, &row(65_536.0), 0).seen, Seen::Repeat);
        let o = s.observe("d", 65_544 + MAX_GAP, &row(0.0), 0);
        assert_eq!((o.seen, o.history_cycles), (Seen::Restart, 1));
    }

    #[test]
    fn a_short_history_has_means_and_no_slopes() {
        let mut h = EngineHistory::default();
        h.absorb(1, &row(10.0));
        h.absorb(2, &row(12.0));
        let f = h.features();
        assert_eq!(f[N_FEATURES - 1], 2.0);
        assert_eq!(f[N_SENSORS], 0.0, "no fit slope under MIN_FIT");
        assert_eq!(f[5 * N_SENSORS], 0.0, "no window slope under 3 cycles");
        assert!((f[4 * N_SENSORS] - 11.0).abs() < 1e-6);
    }

    #[test]
    fn a_redelivered_cycle_is_not_counted_twice_and_gets_the_same_answer() {
        let mut s = HistoryStore::new(10, 3600);
        for c in 1..=5 {
            let o = s.observe("d", c, &row(c as f32), 0);
            assert_eq!(o.history_cycles, c);
            s.record(
                "d",
                c,
                Prediction {
                    rul: 100.0 - c as f32,
                    low: 1.0,
                    high: 200.0,
                },
            );
        }
        let before = s.get("d").cloned();
        let again = s.observe("d", 3, &row(3.0), 0);
        assert_eq!(again.seen, Seen::Repeat);
        assert_eq!(again.history_cycles, 3);
        assert_eq!(
            again.answer,
            Answer::Again(Prediction {
                rul: 97.0,
                low: 1.0,
                high: 200.0
            })
        );
        assert_eq!(s.get("d").cloned(), before, "history unchanged");
        let next = s.observe("d", 6, &row(6.0), 0);
        assert_eq!((next.seen, next.history_cycles), (Seen::Next, 6));
    }

    #[test]
    fn the_latest_row_twice_in_one_batch_gets_the_same_features() {
        let mut s = HistoryStore::new(10, 3600);
        for c in 1..=12 {
            s.observe("d", c, &row(c as f32), 0);
        }
        let first = s.observe("d", 13, &row(13.0), 0);
        let again = s.observe("d", 13, &row(13.0), 0);
        assert_eq!(again.seen, Seen::Repeat);
        assert_eq!(scored(&first), scored(&again));
        assert_eq!(s.get("d").map(EngineHistory::cycles), Some(13));
    }

    #[test]
    fn an_older_cycle_is_scored_alone_without_touching_the_history() {
        let mut s = HistoryStore::new(10, 3600);
        for c in 40..=100 {
            s.observe("d", c, &row(c as f32), 0);
        }
        let before = s.get("d").cloned();
        let old = s.observe("d", 50, &row(1.0), 0);
        assert_eq!((old.seen, old.history_cycles), (Seen::Older, 1));
        assert_eq!(
            scored(&old),
            &EngineHistory::single(50, &row(1.0)).features()
        );
        assert_eq!(s.get("d").cloned(), before);
    }

    #[test]
    fn a_device_that_starts_its_cycles_again_gets_a_new_history() {
        let mut s = HistoryStore::new(10, 3600);
        for c in 1..=200 {
            s.observe("d", c, &row(c as f32), 0);
        }
        let o = s.observe("d", 1, &row(7.0), 0);
        assert_eq!((o.seen, o.history_cycles), (Seen::Restart, 1));
        assert_eq!(s.get("d"), Some(&EngineHistory::single(1, &row(7.0))));
        // A new engine within the old one's window, whose first row was lost: the cycle is
        // known with other values, so it is not a redelivery.
        for c in 1..=20 {
            s.observe("e", c, &row(c as f32), 0);
        }
        assert_eq!(
            s.observe("e", 2, &row(2.0), 0).seen,
            Seen::Repeat,
            "same row: a redelivery"
        );
        assert_eq!(s.observe("e", 2, &row(9.5), 0).seen, Seen::Restart);
        assert_eq!(s.get("e").map(EngineHistory::cycles), Some(1));
        // An old cycle other than 1, out of the window, cannot be told apart: scored alone.
        for c in 3..=200 {
            s.observe("e", c, &row(c as f32), 0);
        }
        assert_eq!(s.observe("e", 10, &row(10.0), 0).seen, Seen::Older);
    }

    #[test]
    fn the_device_cap_evicts_the_least_recently_seen() {
        let mut s = HistoryStore::new(2, 3600);
        s.observe("a", 1, &row(1.0), 0);
        s.observe("b", 1, &row(1.0), 0);
        s.observe("a", 2, &row(1.0), 0);
        s.observe("c", 1, &row(1.0), 0);
        assert!(s.get("b").is_none(), "b was least recently seen");
        assert!(s.get("a").is_some() && s.get("c").is_some());
        assert_eq!(s.dropped(), (1, 0));
        s.set_bounds(1, 3600);
        assert_eq!(s.len(), 1);
        assert!(s.get("c").is_some());
    }

    #[test]
    fn idle_devices_expire() {
        let mut s = HistoryStore::new(10, 60);
        s.observe("a", 1, &row(1.0), 0);
        s.observe("b", 1, &row(1.0), 50);
        s.observe("b", 2, &row(1.0), 100);
        assert!(s.get("a").is_none(), "a idle for 100 s");
        assert!(s.get("b").is_some());
        assert_eq!(s.dropped(), (0, 1));
        let o = s.observe("a", 2, &row(1.0), 100);
        assert_eq!((o.seen, o.history_cycles), (Seen::First, 1));
    }

    #[test]
    fn a_saved_store_restores_the_same_histories_and_order() {
        let mut s = HistoryStore::new(10, 3600);
        for c in 1..=50 {
            s.observe("a", c, &row(c as f32 * 0.37), 10);
            s.record(
                "a",
                c,
                Prediction {
                    rul: c as f32,
                    low: 0.5,
                    high: 9.0,
                },
            );
        }
        s.observe("b", 1, &row(3.0), 20);
        let mut bytes = Vec::new();
        s.save(&mut bytes).unwrap();
        let mut r = HistoryStore::load(&bytes[..], 10, 3600, 30).unwrap();
        assert_eq!(r.get("a"), s.get("a"));
        assert_eq!(r.get("b"), s.get("b"));
        let (x, y) = (
            s.observe("a", 51, &row(1.0), 40),
            r.observe("a", 51, &row(1.0), 40),
        );
        assert_eq!(x, y);
        assert_eq!(
            r.observe("a", 49, &row(49.0 * 0.37), 40).answer,
            Answer::Again(Prediction {
                rul: 49.0,
                low: 0.5,
                high: 9.0
            })
        );
        // Too small a cap keeps the most recently seen; idle ones are left out.
        let r = HistoryStore::load(&bytes[..], 1, 3600, 30).unwrap();
        assert!(r.get("b").is_some() && r.get("a").is_none());
        let r = HistoryStore::load(&bytes[..], 10, 15, 30).unwrap();
        assert!(r.get("a").is_none() && r.get("b").is_some());
        assert!(HistoryStore::load(&b"not cbor"[..], 10, 15, 30).is_err());
    }
}
