#!/usr/bin/env bash
# Appending records: this module's writer (default durability: group sync, every record
# fsynced before it counts) against the tutorial's write path (fastavro, file reopened and
# schema parsed per message, no sync), on the same records. Prints both and the ratio.
#
#   modules/avroFileWriter/bench/run.sh            # RECORDS=200000 RUNS=3 by default
#
# Environment: RECORDS, RUNS, CMAPSS_DIR, CARGO_TARGET_DIR.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
cd "$ROOT"
RECORDS="${RECORDS:-200000}"
RUNS="${RUNS:-3}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

PY="$(scripts/setup-python.sh)"

echo "== Rust avroFileWriter ($RECORDS records, $RUNS runs)" >&2
cargo bench --locked -p avroFileWriter --bench append -- \
    --records "$RECORDS" --runs "$RUNS" --export "$WORK" | tee "$WORK/rust.txt"

echo "== tutorial write path, same records" >&2
"$PY" modules/avroFileWriter/bench/tutorial_write.py \
    "$WORK/records.jsonl" "$WORK/schema.avsc" "$WORK/py" --runs "$RUNS" | tee "$WORK/py.txt"

rust="$(awk '/^RESULT rust /{print $3}' "$WORK/rust.txt")"
tutorial="$(awk '/^RESULT tutorial /{print $3}' "$WORK/py.txt")"
echo
echo "records/s, median of $RUNS runs of $RECORDS records:"
printf '  avroFileWriter (Rust, group sync):           %10d\n' "$rust"
printf '  tutorial path (fastavro, reopen, no sync):   %10d\n' "$tutorial"
awk -v r="$rust" -v t="$tutorial" 'BEGIN { printf "  ratio: %.1fx\n", r / t }'
