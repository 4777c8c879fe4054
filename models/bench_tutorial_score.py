#!/usr/bin/env python3
"""The tutorial's scoring path, re-created, timed one message at a time on one core.

In the tutorial the classifier module is an Azure ML scoring container: `init()` loads the
scikit-learn model, and `run(raw)` is called once per message with its JSON body. `run`
parses the JSON, makes a pandas DataFrame of it (one object or a list of objects), keeps the
Sensor1..Sensor21 columns, calls `model.predict`, adds the prediction to the frame as
`PredictedRul`, and answers the frame as JSON records. This script re-creates that logic
from its description (no code of the tutorial is used) around this project's scikit-learn
model (models/build/rul.joblib, retrained with train.py's code if missing), so its
messages/s can be put beside the Rust module's.

    .venv/bin/python models/bench_tutorial_score.py [-n 20000] [--data DIR]

Messages are the first N rows of test_FD003 (from its start again past its 16,596 rows),
each as the single-row JSON body a leaf device sends ({"CycleTime":..,"OperationalSetting1":..,..,"Sensor21":..}). Output: one
machine-readable line

    tutorial_path messages_per_s=<x> us_per_message=<y> n=<n>

then a line for people. BLAS/OpenMP threads are forced to 1 and the process is pinned to
one CPU (unless --no-pin).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train  # noqa: E402  (models/train.py: data location, columns, model code)

model = None


def init(model_path: Path = train.JOBLIB_PATH, data_dir: Path | None = None) -> None:
    """Load the scikit-learn model, as the scoring container's init() does."""
    global model
    import joblib

    if not Path(model_path).is_file():
        print(f"{model_path} missing: training it with models/train.py's code", file=sys.stderr)
        fitted = train.train_model(data_dir)
        Path(model_path).parent.mkdir(parents=True, exist_ok=True)
        joblib.dump(fitted, model_path)
    model = joblib.load(model_path)


def run(raw_data: str) -> str:
    """One message in, its rows with PredictedRul out, as the scoring container's run() does."""
    try:
        data = json.loads(raw_data)
        frame = pd.DataFrame([data] if isinstance(data, dict) else data)
        features = frame[train.SENSORS]
        frame["PredictedRul"] = model.predict(features)
        return frame.to_json(orient="records")
    except Exception as exc:  # the container answers errors as text, it does not raise
        return json.dumps({"error": str(exc)})


def _number(value: float) -> str:
    """A number as the Rust leaf devices print it (shortest round-trip, no exponent)."""
    return np.format_float_positional(value, unique=True, trim="-")


def leaf_messages(data_dir: Path, n: int) -> tuple[list[str], int]:
    """The first n rows of test_FD003 as leaf-device JSON bodies, values as in the file.
    The file has 16,596 rows: past its end, the rows are sent again from its start.
    Returns the bodies and how many distinct rows they hold."""
    frame = pd.read_csv(data_dir / "test_FD003.txt", sep=r"\s+", header=None,
                        names=train.COLUMNS, nrows=n)
    names = ["CycleTime", *train.SETTINGS, *train.SENSORS]
    columns = ["cycle", *train.SETTINGS, *train.SENSORS]
    bodies = []
    for row in frame[columns].itertuples(index=False):
        fields = [f'"{k}":{_number(float(v))}' for k, v in zip(names, row)]
        bodies.append("{" + ",".join(fields) + "}")
    return ([bodies[i % len(bodies)] for i in range(n)] if bodies else []), len(bodies)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--messages", type=int, default=20_000,
                        help="rows of test_FD003 to send, one message each (default 20000)")
    parser.add_argument("--data", type=Path, default=None,
                        help="C-MAPSS folder (default: $CMAPSS_DIR, else <repo>/../shared/data/cmapss)")
    parser.add_argument("--model", type=Path, default=train.JOBLIB_PATH,
                        help="the scikit-learn model (default models/build/rul.joblib)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to one CPU")
    args = parser.parse_args(argv)

    data_dir = (args.data or train.default_data_dir()).resolve()
    if not (data_dir / "test_FD003.txt").is_file():
        print(f"bench_tutorial_score.py: {data_dir / 'test_FD003.txt'} not found "
              "(use --data or CMAPSS_DIR)", file=sys.stderr)
        return 2
    where = "unpinned" if args.no_pin else train.pin_to_one_cpu()
    warnings.simplefilter("ignore")

    init(args.model, data_dir)
    messages, rows = leaf_messages(data_dir, args.messages)
    n = len(messages)
    if n == 0:
        print("bench_tutorial_score.py: no messages", file=sys.stderr)
        return 2

    # Sanity: the answer is the message's fields plus PredictedRul, and no error.
    first = json.loads(run(messages[0]))
    if not (isinstance(first, list) and len(first) == 1 and "PredictedRul" in first[0]):
        print(f"bench_tutorial_score.py: unexpected answer {first!r}", file=sys.stderr)
        return 1

    for body in messages[: min(200, n)]:  # warm-up, not timed
        run(body)
    errors = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    for body in messages:
        if run(body).startswith('{"error"'):
            errors += 1
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    if errors:
        print(f"bench_tutorial_score.py: {errors} messages answered with an error", file=sys.stderr)
        return 1

    rate = n / elapsed
    print(f"tutorial_path messages_per_s={rate:.1f} us_per_message={1e6 / rate:.1f} n={n}")
    print(f"tutorial scoring path (json -> pandas -> sklearn predict -> to_json), one message "
          f"per run(), 1 thread ({where}): {rate:,.0f} messages/s, {1e6 / rate:,.0f} µs each "
          f"({n / cpu:,.0f} per CPU second), over {n:,} rows of test_FD003"
          f"{' (from its start again past its end)' if n > rows else ''}; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
