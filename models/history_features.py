"""The engine-history features of the windowed model, computed exactly as the classifier does.

The classifier (crates/turbofan-domain/src/history.rs) keeps, per leaf device, the last WINDOW
cycles of the model's sensors and the discounted moments of the whole history; this module is
the same state machine, step for step, in float64. Every operation is an elementwise IEEE
operation (no BLAS, no pairwise sums), in the order the Rust code does it, so both sides give
bit-identical features for the same rows; the ONNX model then sees identical float32 inputs.

Features (64 float32 values), for each of the nine sensors in SENSORS:
    fit_level      level at the current cycle of a quadratic fitted over the whole history,
                   points weighted by LAMBDA ** (cycles before now)
    fit_slope      that quadratic's slope at the current cycle, per SLOPE_SPAN cycles
    line_slope     slope of the discounted straight-line fit, per SLOPE_SPAN cycles
    line_level     level of that line at the current cycle
    window_mean    mean of the last WINDOW cycles (fewer while the history is shorter)
    window_slope   least-squares slope over those cycles, per WINDOW cycles (0 under 3 cycles)
    window_end     that line's value at the current cycle
and last the number of cycles in the window. Under MIN_FIT cycles the fits are not solved:
both levels are the discounted mean and both slopes are 0.
"""

from __future__ import annotations

from collections import deque

import numpy as np

FEATURE_SET = "turbofan-history-v1"
# The sensors that degrade the same way under both fault modes of C-MAPSS (HPC and fan):
# temperatures 2-4 (T24, T30, T50), Ps30 (11), fan/core speeds 8-9, 13-14 and the bleed
# enthalpy 17. Sensors 7, 12, 15, 20, 21 reverse direction under a fan fault (see MODEL_CARD).
SENSORS = [2, 3, 4, 8, 9, 11, 13, 14, 17]
WINDOW = 30
LAMBDA = 0.99
SCALE = 256.0
MIN_FIT = 8
SLOPE_SPAN = 30.0
MAX_DECAY_STEPS = 2000
MAX_GAP = 1 << 16  # a longer gap starts a new history (the classifier keeps 16-bit cycles)
N_FEATURES = 7 * len(SENSORS) + 1
BINOM = [[1.0], [1.0, 1.0], [1.0, 2.0, 1.0], [1.0, 3.0, 3.0, 1.0], [1.0, 4.0, 6.0, 4.0, 1.0]]
PARTS = ["fit_level", "fit_slope", "line_slope", "line_level",
         "window_mean", "window_slope", "window_end"]


def feature_names() -> list[str]:
    return [f"{p}_Sensor{s}" for p in PARTS for s in SENSORS] + ["window_cycles"]


class History:
    """One device's history: see the module docstring; mirrors history.rs."""

    def __init__(self) -> None:
        self.n = 0
        self.last = 0
        self.p = [0.0] * 5
        self.q = [np.zeros(len(SENSORS)) for _ in range(3)]
        self.window: deque = deque(maxlen=WINDOW)

    def absorb(self, cycle: int, x32: np.ndarray) -> None:
        """Adds the row of `cycle` (later than the last one) with the sensors `x32` (float32)."""
        x = np.asarray(x32, dtype=np.float32).astype(np.float64)
        if self.n > 0 and cycle - self.last >= MAX_GAP:
            self.__init__()
        if self.n > 0:
            gap = cycle - self.last
            decay = 1.0
            for _ in range(min(gap, MAX_DECAY_STEPS)):
                decay = decay * LAMBDA
            m = -float(gap) / SCALE
            pw = [1.0]
            for _ in range(4):
                pw.append(pw[-1] * m)
            p_new, q_new = [], []
            for p in range(5):
                acc = 0.0
                for k in range(p + 1):
                    acc = acc + (BINOM[p][k] * pw[p - k]) * self.p[k]
                p_new.append(acc * decay)
            for p in range(3):
                acc = np.zeros(len(SENSORS))
                for k in range(p + 1):
                    acc = acc + (BINOM[p][k] * pw[p - k]) * self.q[k]
                q_new.append(acc * decay)
            self.p, self.q = p_new, q_new
        self.p[0] = self.p[0] + 1.0
        self.q[0] = self.q[0] + x
        self.n += 1
        self.last = cycle
        self.window.append((cycle, x))

    def features(self) -> np.ndarray:
        a, b, c, d, e = self.p
        q0, q1, q2 = self.q
        if self.n >= MIN_FIT:
            m00 = c * e - d * d
            m01 = b * e - d * c
            m02 = b * d - c * c
            det = a * m00 - b * m01 + c * m02
            det0 = q0 * m00 - b * (q1 * e - d * q2) + c * (q1 * d - c * q2)
            det1 = a * (q1 * e - d * q2) - q0 * m01 + c * (b * q2 - q1 * c)
            fit_level = det0 / det
            fit_slope = (det1 / det) * (SLOPE_SPAN / SCALE)
            det_l = a * c - b * b
            line_level = (q0 * c - b * q1) / det_l
            line_slope = ((a * q1 - b * q0) / det_l) * (SLOPE_SPAN / SCALE)
        else:
            fit_level = q0 / a
            fit_slope = np.zeros(len(SENSORS))
            line_slope = np.zeros(len(SENSORS))
            line_level = fit_level
        k = len(self.window)
        sum_t, sum_x = 0.0, np.zeros(len(SENSORS))
        for cyc, x in self.window:
            sum_t = sum_t + float(cyc - self.last)
            sum_x = sum_x + x
        kf = float(k)
        tbar = sum_t / kf
        mean = sum_x / kf
        if k >= 3:
            stt, stx = 0.0, np.zeros(len(SENSORS))
            for cyc, x in self.window:
                dt = float(cyc - self.last) - tbar
                stt = stt + dt * dt
                stx = stx + dt * (x - mean)
            slope = stx / stt
        else:
            slope = np.zeros(len(SENSORS))
        window_slope = slope * float(WINDOW)
        window_end = mean + slope * (-tbar)
        out = np.concatenate([fit_level, fit_slope, line_slope, line_level,
                              mean, window_slope, window_end, [kf]])
        return out.astype(np.float32)


def engine_features(cycles: np.ndarray, x32: np.ndarray) -> np.ndarray:
    """Features after each row of one engine's rows (in cycle order): float32 [rows, 64]."""
    h = History()
    out = np.empty((len(cycles), N_FEATURES), dtype=np.float32)
    for i, (cyc, x) in enumerate(zip(cycles, x32)):
        h.absorb(int(cyc), x)
        out[i] = h.features()
    return out
