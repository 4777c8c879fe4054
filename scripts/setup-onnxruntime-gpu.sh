#!/usr/bin/env bash
# Unpacks ONNX Runtime's GPU build (the onnxruntime-gpu wheel from PyPI, pinned and checked
# against its sha256: the same file the GPU image takes) into .tools/onnxruntime-gpu/,
# idempotently: libonnxruntime.so and its CUDA and shared provider libraries. The tests use it
# to show that asking for CUDA without an NVIDIA driver falls back to the CPU with a clear
# message. Prints the path of libonnxruntime.so last.
#
# CUDA itself (the runtime libraries, from NVIDIA's wheels) is not fetched here: the GPU image
# carries it (docker/Dockerfile.amd64.gpu); the driver always comes from the host.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Kept in step with docker/Dockerfile.amd64.gpu (tests/deploy checks it).
ORT_VERSION=1.31.1
WHEEL="onnxruntime_gpu-$ORT_VERSION-cp311-cp311-manylinux_2_28_x86_64.whl"
SHA256=e26c475fe361b2015f45b4b824bd13f0bb20204e59b62814e6f0acd5f3d491a6
DIR="$ROOT/.tools/onnxruntime-gpu"
LIB="$DIR/libonnxruntime.so.$ORT_VERSION"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python3

if [ "$(cat "$DIR/.sha256" 2>/dev/null)" != "$SHA256" ] || [ ! -f "$LIB" ]; then
    echo "setup-onnxruntime-gpu: fetching onnxruntime-gpu==$ORT_VERSION into $DIR" >&2
    rm -rf "$DIR"
    mkdir -p "$DIR/wheel"
    "$PY" -m pip download --disable-pip-version-check --quiet --no-deps --only-binary=:all: \
        --platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp --abi cp311 \
        -d "$DIR/wheel" "onnxruntime-gpu==$ORT_VERSION"
    echo "$SHA256  $DIR/wheel/$WHEEL" | sha256sum -c --quiet -
    "$PY" - "$DIR/wheel/$WHEEL" "$DIR" "$ORT_VERSION" <<'PYEOF'
import sys, zipfile
wheel, out, version = sys.argv[1:]
z = zipfile.ZipFile(wheel)
for name in (f"libonnxruntime.so.{version}", "libonnxruntime_providers_cuda.so",
             "libonnxruntime_providers_shared.so"):
    with open(f"{out}/{name}", "wb") as f:
        f.write(z.read(f"onnxruntime/capi/{name}"))
PYEOF
    rm -rf "$DIR/wheel"
    echo "$SHA256" > "$DIR/.sha256"
fi
echo "$LIB"
