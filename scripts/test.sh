#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what it needs (idempotently, inside
# the repo), checks formatting and lints, runs the Rust tests, then the Azure IoT Python SDK
# conformance tests against the local runtime.
#
#   scripts/test.sh
#
# Environment: CMAPSS_DIR (data folder, default ../shared/data/cmapss), CARGO_TARGET_DIR.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

step() { printf '\n== %s\n' "$*" >&2; }

step "python environment (.venv)"
PY="$(scripts/setup-python.sh)"

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build"
cargo build --workspace --locked

step "rust tests"
cargo test --workspace --locked

step "Azure IoT Python SDK conformance (tests/sdk; uses port 8883), reference Avro readers (tests/avro)"
"$PY" -m pytest tests/sdk tests/avro -q -p no:cacheprovider
