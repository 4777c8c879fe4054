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

# One pass over the workspace: an incremental cache would only take disk (gigabytes).
export CARGO_INCREMENTAL=0

TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
mkdir -p "$TARGET"
free_mb=$(df -Pm "$TARGET" | awk 'NR==2 {print $4}')
if [ "${free_mb:-0}" -lt 4000 ]; then
    printf 'warning: %s MB free for %s; a clean run of the suite needs about 2.5 GB (target) and 0.9 GB (.venv, .venv-deploy, .tools). Free some space or point CARGO_TARGET_DIR elsewhere.\n' \
        "$free_mb" "$TARGET" >&2
fi

step "python environment (.venv), Azurite, the GPU build of ONNX Runtime (.tools), a container engine"
PY="$(scripts/setup-python.sh)"
scripts/setup-node.sh >/dev/null
# The classifier and its tests load ONNX Runtime from the pinned wheel in .venv.
export ORT_DYLIB_PATH="$ROOT/.venv/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1"
# ONNX Runtime's GPU build (.tools/onnxruntime-gpu): the CUDA fallback test needs it.
ORT_GPU_DYLIB_PATH="$(scripts/setup-onnxruntime-gpu.sh)"
export ORT_GPU_DYLIB_PATH REQUIRE_ORT_GPU=1
# A container engine (Docker if its daemon answers, else Podman, installed and its API
# started): tests/deploy builds the module images with it and runs them.
engine="$(scripts/setup-container-engine.sh)"
eval "$engine"
export DOCKER_HOST REQUIRE_CONTAINER_ENGINE=1

step "format and lints"
cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build"
cargo build --workspace --locked

step "rust tests"
cargo test --workspace --locked

step "fuzzing smoke run: ${FUZZ_SECONDS:-15} s per target (scripts/fuzz.sh; longer runs: scripts/fuzz.sh 600)"
scripts/fuzz.sh "${FUZZ_SECONDS:-15}"

step "Azure IoT Python SDK conformance (tests/sdk; uses port 8883), reference Avro readers (tests/avro)"
"$PY" -m pytest tests/sdk tests/avro -q -p no:cacheprovider

step "containers and deployment (tests/deploy: iotedgedev manifests, GPU and blob storage variants, KubeVirt, image trees, the images built by the engine, linkage)"
tests/deploy/run.sh

step "the pipeline on the module images (container mode: tests/e2e/tests/containers.rs, on the images tests/deploy built)"
TURBOFAN_IMAGES="$ROOT/out/images.json" cargo test --locked -p e2e-tests --test containers
