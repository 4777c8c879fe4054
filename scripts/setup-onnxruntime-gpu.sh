#!/usr/bin/env bash
# Unpacks ONNX Runtime's GPU build (the onnxruntime-gpu wheel from PyPI, pinned and checked
# against its sha256: the same file the GPU image takes, by the same docker/ort-libs.sh) into
# .tools/onnxruntime-gpu/, idempotently: libonnxruntime.so and its CUDA and shared provider
# libraries. The tests use it to show that asking for CUDA without an NVIDIA driver falls back
# to the CPU with a clear message. Prints the path of libonnxruntime.so last.
#
# CUDA itself (the runtime libraries, from NVIDIA's wheels) is not fetched here: the GPU image
# carries it (docker/Dockerfile.amd64.gpu); the driver always comes from the host.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Kept in step with docker/Dockerfile.amd64.gpu (tests/deploy checks it).
ORT_VERSION=1.31.1
SHA256=e26c475fe361b2015f45b4b824bd13f0bb20204e59b62814e6f0acd5f3d491a6
DIR="$ROOT/.tools/onnxruntime-gpu"
LIB="$DIR/libonnxruntime.so"
export PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3

if [ "$(cat "$DIR/.sha256" 2>/dev/null)" != "$SHA256" ] || [ ! -f "$LIB" ]; then
    echo "setup-onnxruntime-gpu: fetching onnxruntime-gpu==$ORT_VERSION into $DIR" >&2
    rm -rf "$DIR"
    # The image's own steps, without NVIDIA's CUDA wheels.
    bash "$ROOT/docker/ort-libs.sh" --package onnxruntime-gpu --version "$ORT_VERSION" \
        --platform manylinux_2_28_x86_64 --sha256 "$SHA256" --out "$DIR"
    # Beside libonnxruntime.so, where ONNX Runtime looks for its providers (as in the image).
    mv "$DIR"/extra/*.so "$DIR"/
    rm -rf "$DIR/extra" "$DIR/wheels"
    echo "$SHA256" > "$DIR/.sha256"
fi
echo "$LIB"
