#!/usr/bin/env python3
"""Train the turbofan Remaining-Useful-Life model and export it to ONNX.

    .venv/bin/python models/train.py              # train, export, verify, evaluate, benchmark
    .venv/bin/python models/train.py --compare    # also re-derive the model-choice table

Per-row contract (the tutorial's): one C-MAPSS row in, one RUL out. The features are
Sensor1..Sensor21 of that row, in that order, as float32; no history, no operational settings.

Writes (paths relative to the repo):
    models/rul.onnx                       input "input" float32 [N,21] -> "PredictedRul" float32 [N,1]
    models/reference/test_FD00{1,3}.pred  ONNX Runtime prediction for every row of the test files
    models/build/rul.joblib               the fitted scikit-learn pipeline (used by bench_tutorial_score.py)
    models/build/metrics.json             the figures printed at the end

Data: --data DIR, else $CMAPSS_DIR, else <repo>/../shared/data/cmapss. See models/MODEL_CARD.md.
"""

from __future__ import annotations

import os

# One thread for every numeric library: reproducible fits and a one-core benchmark.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import hashlib
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO / "models"
BUILD_DIR = MODELS_DIR / "build"
REFERENCE_DIR = MODELS_DIR / "reference"
ONNX_PATH = MODELS_DIR / "rul.onnx"
JOBLIB_PATH = BUILD_DIR / "rul.joblib"

SETTINGS = [f"OperationalSetting{i}" for i in range(1, 4)]
SENSORS = [f"Sensor{i}" for i in range(1, 22)]
COLUMNS = ["unit", "cycle", *SETTINGS, *SENSORS]

# Piecewise-linear target: an engine is taken as healthy (RUL = RUL_CAP) until RUL_CAP cycles
# before its failure, then its RUL falls by one per cycle. 125 is the usual choice for FD001.
RUL_CAP = 125
SEED = 0
# train_FD001 has six constant sensors (1, 5, 10, 16, 18, 19): after standardisation the data
# span 15 dimensions, so the rotation keeps 15 principal components (checked in fit_model).
N_COMPONENTS = 15
GBR_PARAMS = dict(
    n_estimators=100,
    max_depth=3,
    learning_rate=0.1,
    subsample=0.8,
    min_samples_leaf=1,
)
ONNX_OPSETS = {"": 17, "ai.onnx.ml": 3}
INPUT_NAME = "input"
OUTPUT_NAME = "PredictedRul"
# Python-vs-ONNX tolerance (RUL cycles): float32 sums of 100 leaf values against sklearn's float64.
TOLERANCE = 1e-4


# ----------------------------------------------------------------------------------- data


def default_data_dir() -> Path:
    env = os.environ.get("CMAPSS_DIR")
    return Path(env) if env else REPO.parent / "shared" / "data" / "cmapss"


def read_cmapss(path: Path) -> pd.DataFrame:
    """One C-MAPSS text file (space separated, trailing spaces) with named columns.

    Settings and sensors are rounded to float32 (the model's input type) and kept as float64
    holding those float32 values, so scikit-learn and ONNX Runtime see identical numbers."""
    frame = pd.read_csv(path, sep=r"\s+", header=None, names=COLUMNS, engine="c")
    if frame.shape[1] != len(COLUMNS) or frame.isna().any().any():
        raise ValueError(f"{path}: expected {len(COLUMNS)} numeric columns per row")
    for col in SETTINGS + SENSORS:
        frame[col] = frame[col].astype(np.float32).astype(np.float64)
    return frame


def read_true_rul(path: Path) -> np.ndarray:
    return np.loadtxt(path, dtype=np.float64, ndmin=1)


def rul_of_rows(frame: pd.DataFrame, cap: float | None) -> np.ndarray:
    """RUL of each training row: last cycle of its unit minus its cycle, capped if cap is set."""
    rul = frame.groupby("unit")["cycle"].transform("max") - frame["cycle"]
    rul = rul.to_numpy(dtype=np.float64)
    return np.minimum(rul, cap) if cap is not None else rul


def sensor_matrix(frame: pd.DataFrame) -> np.ndarray:
    """The ONNX input: Sensor1..Sensor21, float32, C order."""
    return np.ascontiguousarray(frame[SENSORS].to_numpy(dtype=np.float32))


def last_cycle_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Each test unit's last row, in unit order (the order of RUL_FD00x.txt)."""
    return frame.sort_values(["unit", "cycle"]).groupby("unit", sort=True).tail(1)


# ---------------------------------------------------------------------------------- model


def make_model(seed: int = SEED):
    from sklearn.decomposition import PCA
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    return Pipeline(
        [
            ("scale", StandardScaler()),
            ("rotate", PCA(n_components=N_COMPONENTS, svd_solver="full")),
            ("trees", GradientBoostingRegressor(random_state=seed, **GBR_PARAMS)),
        ]
    )


def fit_model(train: pd.DataFrame, cap: float | None = RUL_CAP, seed: int = SEED):
    """Fit the pipeline on the sensors of train_FD001 rows (as a DataFrame, so the model knows
    its feature names, as the tutorial's scoring code expects)."""
    model = make_model(seed)
    model.fit(train[SENSORS], rul_of_rows(train, cap))
    pca = model.named_steps["rotate"]
    full = pca.explained_variance_.sum() / pca.explained_variance_ratio_.sum()
    dropped = full - pca.explained_variance_.sum()
    if dropped > 1e-9 * full:
        raise AssertionError(f"the {N_COMPONENTS} components leave variance {dropped:.3g} out")
    return model


def train_model(data_dir: Path | None = None, seed: int = SEED):
    """The production model, trained on train_FD001 with the capped target."""
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    return fit_model(read_cmapss(data_dir / "train_FD001.txt"), RUL_CAP, seed)


def sklearn_predict(model, x32: np.ndarray, clip: bool = True) -> np.ndarray:
    frame = pd.DataFrame(x32.astype(np.float64), columns=SENSORS)
    pred = model.predict(frame)
    return np.clip(pred, 0.0, RUL_CAP) if clip else pred


# ------------------------------------------------------------------------------------ ONNX


def export_onnx(model):
    """The pipeline as one ONNX graph, converted by skl2onnx in two parts and joined:

        input f32[N,21] -Cast-> f64 -[StandardScaler, PCA] (skl2onnx, double)-> f64[N,15]
            -Cast-> f32 -[GradientBoostingRegressor] (skl2onnx, float)-> f32[N,1]
            -Clip(0, RUL_CAP)-> PredictedRul f32[N,1]

    The projection runs in double, like scikit-learn; its result is rounded to float32 once,
    as GradientBoostingRegressor.predict does before walking its trees. The tree inputs are
    then the very floats scikit-learn compares, whatever batch size ORT runs with, so the
    split taken at every node matches sklearn's (a float32 projection would now and then
    land on the other side of a split than sklearn's float64 one)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnx.compose import add_prefix
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType
    from sklearn.pipeline import Pipeline

    n_features = len(SENSORS)
    projection = Pipeline(model.steps[:-1])
    trees = model.steps[-1][1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proj = to_onnx(
            projection,
            initial_types=[("x", DoubleTensorType([None, n_features]))],
            target_opset=ONNX_OPSETS,
        )
        ens = to_onnx(
            trees,
            initial_types=[("x", FloatTensorType([None, N_COMPONENTS]))],
            target_opset=ONNX_OPSETS,
        )
    proj = add_prefix(proj, "proj_")
    ens = add_prefix(ens, "trees_")
    (proj_in,), (proj_out,) = proj.graph.input, proj.graph.output
    (ens_in,), (ens_out,) = ens.graph.input, ens.graph.output

    nodes = [helper.make_node("Cast", [INPUT_NAME], [proj_in.name], to=TensorProto.DOUBLE,
                              name="to_double")]
    nodes += list(proj.graph.node)
    nodes.append(helper.make_node("Cast", [proj_out.name], [ens_in.name], to=TensorProto.FLOAT,
                                  name="to_float"))
    nodes += list(ens.graph.node)
    nodes.append(helper.make_node("Clip", [ens_out.name, "rul_min", "rul_max"], [OUTPUT_NAME],
                                  name="clip_rul"))
    initializers = list(proj.graph.initializer) + list(ens.graph.initializer) + [
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "rul_min"),
        numpy_helper.from_array(np.array(RUL_CAP, dtype=np.float32), "rul_max"),
    ]
    graph = helper.make_graph(
        nodes,
        "turbofan_rul",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", n_features])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", 1])],
        initializer=initializers,
    )
    opsets = {}
    for part in (proj, ens):
        for imp in part.opset_import:
            opsets[imp.domain] = max(opsets.get(imp.domain, 0), imp.version)
    opsets[""] = max(opsets.get("", 0), ONNX_OPSETS[""])
    onnx_model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
        producer_name="skl2onnx",
        producer_version=ens.producer_version,
        doc_string=(
            "Turbofan Remaining Useful Life (cycles) from one NASA C-MAPSS row. "
            "input: Sensor1..Sensor21 float32 [N,21]; PredictedRul: float32 [N,1] in "
            f"[0, {RUL_CAP}]. Trained on train_FD001, target min(RUL, {RUL_CAP}). "
            "See models/MODEL_CARD.md."
        ),
    )
    onnx_model.ir_version = min(ens.ir_version, proj.ir_version)
    meta = {
        "features": ",".join(SENSORS),
        "rul_cap": str(RUL_CAP),
        "trained_on": "train_FD001",
        "pipeline": f"StandardScaler -> PCA({N_COMPONENTS}) -> GradientBoostingRegressor "
        + json.dumps(GBR_PARAMS, sort_keys=True),
    }
    for key, value in meta.items():
        prop = onnx_model.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.checker.check_model(onnx_model, full_check=True)
    return onnx_model


def ort_session(model_bytes: bytes, threads: int = 1):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def ort_predict(session, x32: np.ndarray, batch: int | None = None) -> np.ndarray:
    """[N] float32 predictions, computed in batches of `batch` rows (all at once if None)."""
    if batch is None or batch >= len(x32):
        return session.run([OUTPUT_NAME], {INPUT_NAME: x32})[0][:, 0]
    parts = [
        session.run([OUTPUT_NAME], {INPUT_NAME: x32[i : i + batch]})[0][:, 0]
        for i in range(0, len(x32), batch)
    ]
    return np.concatenate(parts)


def check_signature(session) -> str:
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    got = (inp.name, inp.type, inp.shape, out.name, out.type, out.shape)
    want = (INPUT_NAME, "tensor(float)", ["N", 21], OUTPUT_NAME, "tensor(float)", ["N", 1])
    if got != want:
        raise AssertionError(f"ONNX signature {got} != {want}")
    return f"{inp.name}: float32 {inp.shape} -> {out.name}: float32 {out.shape}"


# ------------------------------------------------------------------------------- metrics


def phm08_score(pred: np.ndarray, true: np.ndarray) -> float:
    """PHM08 challenge score: late predictions (e > 0) cost more than early ones."""
    e = np.asarray(pred, dtype=np.float64) - np.asarray(true, dtype=np.float64)
    return float(np.sum(np.where(e < 0, np.exp(-e / 13.0) - 1.0, np.exp(e / 10.0) - 1.0)))


def rmse(pred: np.ndarray, true: np.ndarray) -> float:
    e = np.asarray(pred, dtype=np.float64) - np.asarray(true, dtype=np.float64)
    return float(np.sqrt(np.mean(e * e)))


def last_cycle_metrics(predict, data_dir: Path, fd: str) -> dict:
    """RMSE and PHM08 score of `predict` (float32 [N,21] -> [N]) at each test unit's last cycle."""
    last = last_cycle_rows(read_cmapss(data_dir / f"test_{fd}.txt"))
    true = read_true_rul(data_dir / f"RUL_{fd}.txt")
    if len(true) != len(last):
        raise ValueError(f"{fd}: {len(last)} test units but {len(true)} true RUL values")
    pred = np.asarray(predict(sensor_matrix(last)), dtype=np.float64)
    return {"rmse": round(rmse(pred, true), 3), "phm08": round(phm08_score(pred, true), 1),
            "units": int(len(true))}


def grouped_cv_rmse(make, train: pd.DataFrame, cap: float, folds: int = 5) -> float:
    """Per-row RMSE (capped target) over folds that hold out whole engines."""
    from sklearn.model_selection import GroupKFold

    y = rul_of_rows(train, cap)
    pred = np.empty_like(y)
    for fit_idx, val_idx in GroupKFold(n_splits=folds).split(train, y, groups=train["unit"]):
        model = make().fit(train.iloc[fit_idx][SENSORS], y[fit_idx])
        pred[val_idx] = np.clip(model.predict(train.iloc[val_idx][SENSORS]), 0.0, cap)
    return round(rmse(pred, y), 3)


# ----------------------------------------------------------------------------- benchmark


def bench_ort(session, x32: np.ndarray, seconds: float = 0.5, repeats: int = 5) -> dict:
    """rows/s of session.run on the batch x32 (one call = the whole batch), best of `repeats`
    windows of `seconds`: by wall clock, and by the CPU time this process used (the same on an
    idle machine; on a shared one, the CPU figure is what one core of our own does)."""
    feed = {INPUT_NAME: x32}
    for _ in range(3):
        session.run([OUTPUT_NAME], feed)
    best_wall = best_cpu = 0.0
    for _ in range(repeats):
        rows, wall0, cpu0 = 0, time.perf_counter(), time.process_time()
        while True:
            session.run([OUTPUT_NAME], feed)
            rows += len(x32)
            wall = time.perf_counter() - wall0
            if wall >= seconds:
                break
        cpu = max(time.process_time() - cpu0, 1e-9)
        best_wall, best_cpu = max(best_wall, rows / wall), max(best_cpu, rows / cpu)
    return {"wall": best_wall, "cpu": best_cpu}


def identity_model_bytes() -> bytes:
    """A graph with the model's input and output names that copies its input (the baseline
    of the single-row timing)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", [INPUT_NAME], [OUTPUT_NAME])], "identity",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", len(SENSORS)])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", len(SENSORS)])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSETS[""])])
    model.ir_version = 8
    return model.SerializeToString()


def pin_to_one_cpu() -> str:
    try:
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return f"cpu {cpu}"
    except (AttributeError, OSError):
        return "unpinned"


# ----------------------------------------------------------------------------- comparison


def compare_candidates(data_dir: Path, train: pd.DataFrame) -> list[dict]:
    """The alternatives weighed in MODEL_CARD.md, refitted with their figures."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    candidates = {
        "chosen: StandardScaler+PCA(15)+GBR(100 trees, depth 3)": lambda: make_model(SEED),
        "GBR(100 trees, depth 3) on raw sensors": lambda: GradientBoostingRegressor(
            random_state=SEED, **GBR_PARAMS),
        "MinMaxScaler(clip)+StandardScaler+MLP(24,12)": lambda: make_pipeline(
            MinMaxScaler(clip=True), StandardScaler(),
            MLPRegressor(hidden_layer_sizes=(24, 12), alpha=0.1, batch_size=200,
                         max_iter=400, early_stopping=True, n_iter_no_change=20,
                         random_state=SEED)),
    }
    y = rul_of_rows(train, RUL_CAP)
    x_bench = sensor_matrix(read_cmapss(data_dir / "test_FD003.txt"))
    rows = []
    for name, make in candidates.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = make().fit(train[SENSORS], y)
            cv = grouped_cv_rmse(make, train, RUL_CAP)
            if name.startswith("chosen"):
                onx = export_onnx(model)
            else:
                onx = to_onnx(model, initial_types=[(INPUT_NAME, FloatTensorType([None, 21]))],
                              final_types=[(OUTPUT_NAME, FloatTensorType([None, 1]))],
                              target_opset=ONNX_OPSETS)
        sess = ort_session(onx.SerializeToString())
        pred = lambda x, m=model: sklearn_predict(m, x, clip=True)  # noqa: E731
        speed = bench_ort(sess, x_bench)
        row = {"model": name, "cv_rmse": cv,
               "FD001": last_cycle_metrics(pred, data_dir, "FD001"),
               "FD003": last_cycle_metrics(pred, data_dir, "FD003"),
               "ort_rows_per_s": round(speed["wall"]),
               "ort_rows_per_cpu_s": round(speed["cpu"]),
               "onnx_bytes": len(onx.SerializeToString())}
        print(f"  {name}: cv {row['cv_rmse']}  FD001 {row['FD001']['rmse']}  "
              f"FD003 {row['FD003']['rmse']}  ORT {row['ort_rows_per_s']:,} rows/s "
              f"({row['ort_rows_per_cpu_s']:,} per CPU s)", flush=True)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------- main


def write_reference(path: Path, pred: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="ascii", newline="\n") as out:
        for value in np.asarray(pred, dtype=np.float32):
            out.write("%.9g\n" % value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=None,
                        help="C-MAPSS folder (default: $CMAPSS_DIR, else <repo>/../shared/data/cmapss)")
    parser.add_argument("--no-bench", action="store_true", help="skip the ONNX Runtime benchmark")
    parser.add_argument("--compare", action="store_true",
                        help="also refit and measure the alternatives of the model card (~2 min)")
    args = parser.parse_args(argv)

    import joblib
    import onnxruntime
    import sklearn

    data_dir = (args.data or default_data_dir()).resolve()
    for name in ("train_FD001.txt", "test_FD001.txt", "RUL_FD001.txt",
                 "test_FD003.txt", "RUL_FD003.txt"):
        if not (data_dir / name).is_file():
            print(f"train.py: {data_dir / name} not found (use --data or CMAPSS_DIR)",
                  file=sys.stderr)
            return 2
    print(f"data: {data_dir}")

    train = read_cmapss(data_dir / "train_FD001.txt")
    t0 = time.perf_counter()
    model = fit_model(train, RUL_CAP, SEED)
    print(f"fitted {len(train)} rows of train_FD001 in {time.perf_counter() - t0:.1f} s")

    onnx_model = export_onnx(model)
    onnx_bytes = onnx_model.SerializeToString()
    session = ort_session(onnx_bytes)
    signature = check_signature(session)

    # Verification: ORT vs scikit-learn (clipped like the graph), and ORT vs itself across
    # batch sizes, on every row of the training and both test files.
    tests = {fd: read_cmapss(data_dir / f"test_{fd}.txt") for fd in ("FD001", "FD003")}
    x_all = np.concatenate([sensor_matrix(train)] + [sensor_matrix(t) for t in tests.values()])
    ort_all = ort_predict(session, x_all)
    sk_all = sklearn_predict(model, x_all, clip=True)
    diff_sklearn = float(np.max(np.abs(ort_all.astype(np.float64) - sk_all)))
    diff_batches = 0.0
    for batch in (1, 7, 64, 1000, 4096):
        other = ort_predict(session, x_all, batch=batch)
        diff_batches = max(diff_batches, float(np.max(np.abs(other - ort_all))))
    print(f"ONNX vs sklearn: max |diff| {diff_sklearn:.3g} over {len(x_all)} rows; "
          f"ORT batches of 1/7/64/1000/4096 vs one batch: max |diff| {diff_batches:.3g}")
    if not (diff_sklearn <= TOLERANCE and diff_batches <= TOLERANCE):
        print(f"train.py: predictions differ by more than {TOLERANCE}", file=sys.stderr)
        return 1

    # Artefacts.
    ONNX_PATH.write_bytes(onnx_bytes)
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, JOBLIB_PATH)
    for fd, frame in tests.items():
        write_reference(REFERENCE_DIR / f"test_{fd}.pred", ort_predict(session, sensor_matrix(frame)))

    # Accuracy at each test unit's last cycle.
    onnx_pred = lambda x: ort_predict(session, x)  # noqa: E731
    metrics = {fd: last_cycle_metrics(onnx_pred, data_dir, fd) for fd in ("FD001", "FD003")}
    tutorial_model = fit_model(train, None, SEED)
    tutorial_pred = lambda x: sklearn_predict(tutorial_model, x, clip=False)  # noqa: E731
    tutorial = {fd: last_cycle_metrics(tutorial_pred, data_dir, fd) for fd in ("FD001", "FD003")}

    result = {
        "onnx": {"path": str(ONNX_PATH.relative_to(REPO)), "bytes": len(onnx_bytes),
                 "sha256": hashlib.sha256(onnx_bytes).hexdigest(), "signature": signature},
        "versions": {"scikit-learn": sklearn.__version__, "onnxruntime": onnxruntime.__version__},
        "rul_cap": RUL_CAP,
        "max_abs_diff_onnx_vs_sklearn": diff_sklearn,
        "max_abs_diff_ort_batch_sizes": diff_batches,
        "capped_model": metrics,
        "tutorial_style_uncapped": tutorial,
    }

    if not args.no_bench:
        where = pin_to_one_cpu()
        x_bench = sensor_matrix(tests["FD003"])
        batch = bench_ort(session, x_bench)
        one = bench_ort(session, x_bench[:1])
        # The same call on a one-node graph (Identity) measures what the Python binding
        # itself costs per call; the difference estimates ORT's own time for one row.
        empty = bench_ort(ort_session(identity_model_bytes()), x_bench[:1])
        result["bench"] = {
            "batch_rows": len(x_bench), "intra_op_num_threads": 1, "pinned": where,
            "ort_batch_rows_per_s": round(batch["wall"]),
            "ort_batch_rows_per_cpu_s": round(batch["cpu"]),
            "python_single_row_call_us": round(1e6 / one["wall"], 2),
            "python_identity_call_us": round(1e6 / empty["wall"], 2),
            "ort_single_row_us_est": round(1e6 / one["wall"] - 1e6 / empty["wall"], 2),
            "ort_single_row_cpu_us_est": round(1e6 / one["cpu"] - 1e6 / empty["cpu"], 2),
            "load_average_1min": os.getloadavg()[0],
        }
    if args.compare:
        print("comparing candidates (refits, 5-fold grouped CV, ORT benchmark):")
        result["candidates"] = compare_candidates(data_dir, train)

    (BUILD_DIR / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")

    print(f"model: {result['onnx']['path']}  {len(onnx_bytes):,} bytes  "
          f"sha256 {result['onnx']['sha256'][:16]}…")
    print(f"signature: {signature}")
    for fd in ("FD001", "FD003"):
        m, t = metrics[fd], tutorial[fd]
        print(f"{fd} last cycle ({m['units']} units): RMSE {m['rmse']:.2f}  PHM08 {m['phm08']:.0f}"
              f"   | tutorial-style (uncapped target): RMSE {t['rmse']:.2f}  PHM08 {t['phm08']:.0f}")
    if "bench" in result:
        b = result["bench"]
        print(f"ort_batch rows_per_s={b['ort_batch_rows_per_s']} "
              f"rows_per_cpu_s={b['ort_batch_rows_per_cpu_s']} batch={b['batch_rows']} threads=1")
        print(f"ort_single_row call_us={b['python_single_row_call_us']} "
              f"identity_call_us={b['python_identity_call_us']} "
              f"ort_us_est={b['ort_single_row_us_est']} ort_cpu_us_est={b['ort_single_row_cpu_us_est']}"
              f"  (load average {b['load_average_1min']:.2f} on {os.cpu_count()} CPUs)")
    print(f"wrote {ONNX_PATH.relative_to(REPO)}, {JOBLIB_PATH.relative_to(REPO)}, "
          f"{REFERENCE_DIR.relative_to(REPO)}/test_FD001.pred, test_FD003.pred, "
          f"{(BUILD_DIR / 'metrics.json').relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
