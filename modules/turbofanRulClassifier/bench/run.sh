#!/usr/bin/env bash
# Classifier speed and memory, side by side in one run (issue #3):
#  1. the Rust path on one core (criterion, crates/rul-model/benches/scoring.rs):
#     single message bytes → JSON → features → ONNX Runtime → JSON, and batched rows;
#  2. the tutorial's Python path (json → pandas → scikit-learn → pandas, models/bench_tutorial_score.py)
#     on the same test_FD003 rows, one core;
#  3. the ratio; then the resident memory of the running module with the model loaded.
#
#   modules/turbofanRulClassifier/bench/run.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
cd "$ROOT"
PY="$(scripts/setup-python.sh 2>/dev/null | tail -n 1)"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$ROOT/.venv/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1}"
CPU=0

median_thrpt() { # criterion's "thrpt: [low median high]" for a benchmark id, as elements/s
    awk -v id="$1" '
        index($0, id) { found = 1 }
        found && /thrpt:/ { v = $4; u = $5; gsub(/\[/, "", v);
            m = (u ~ /^Gelem/) ? 1e9 : (u ~ /^Melem/) ? 1e6 : (u ~ /^Kelem/) ? 1e3 : 1;
            printf "%.0f\n", v * m; exit }'
}

echo "== Rust, one core (taskset -c $CPU)"
taskset -c "$CPU" cargo bench -q -p rul-model --bench scoring -- --noplot 2>&1 | tee /tmp/classifier-bench.txt | grep -E "^classifier|thrpt:" || true
rust_single="$(median_thrpt "classifier/single message" < /tmp/classifier-bench.txt)"
rust_batch="$(median_thrpt "classifier/batch of 1024 rows" < /tmp/classifier-bench.txt)"

echo "== the tutorial's Python path, one core"
taskset -c "$CPU" "$PY" models/bench_tutorial_score.py -n 20000 | tee /tmp/tutorial-bench.txt
py_single="$(sed -n 's/.*messages_per_s=\([0-9.]*\).*/\1/p' /tmp/tutorial-bench.txt | head -n 1)"

echo "== summary"
python3 - "$rust_single" "$rust_batch" "$py_single" <<'PYEOF'
import sys
rs, rb, py = (float(x) for x in sys.argv[1:4])
print(f"Rust single message : {rs:,.0f} messages/s ({1e6/rs:.2f} us)  target >= 77,000")
print(f"Rust batched        : {rb:,.0f} rows/s  target >= 500,000")
print(f"tutorial Python path: {py:,.0f} messages/s ({1e6/py:.0f} us)")
print(f"ratio single message: {rs/py:.0f}x  target >= 100x")
PYEOF

echo "== resident memory of the running module (model loaded)"
cargo build -q --release -p turbofanRulClassifier -p iotedge-local
STATE="$(mktemp -d)"
"$ROOT/target/release/iotedge-local" --state "$STATE" run --manifest deployment.template.json \
    --mqtt-port 0 --skip turbofanRouter --skip avroFileWriter >"$STATE/runtime.log" 2>&1 &
RT=$!
trap 'kill $RT 2>/dev/null; wait $RT 2>/dev/null; rm -rf "$STATE"' EXIT
for _ in $(seq 1 100); do
    "$ROOT/target/release/iotedge-local" --state "$STATE" twin get turbofanRulClassifier 2>/dev/null \
        | grep -q '"ModelStatus": "loaded"' && break
    sleep 0.2
done
PID="$(pgrep -f "$ROOT/target/release/turbofanRulClassifier" | head -n 1)"
grep -E "VmRSS|VmHWM" "/proc/$PID/status" | sed 's/^/turbofanRulClassifier /'
