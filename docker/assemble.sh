#!/usr/bin/env bash
# Assembles, in a folder, the file tree each module image would contain on linux/amd64 (what
# docker/Dockerfile.amd64 makes, by the same docker/rootfs.sh and the same ONNX Runtime wheel),
# and optionally runs the modules from it on the local runtime. For a machine without a
# container engine: it exercises the image recipe and shows the modules work from that tree.
#
#   docker/assemble.sh [--bin-dir DIR] [--out DIR] [--gpu] [--parts DIR]
#                                                                   assemble only
#   docker/assemble.sh [--bin-dir DIR] [--out DIR] --run [--state DIR] [--manifest FILE]
#                      [--runtime FILE]
#                                                                   then run the manifest with
#                                                                   every module from its tree
#                                                                   (foreground; Ctrl-C stops)
#
# Environment for --run: MQTT_PORT (edgeHub's port, default 0: any free port), MODULE_ENV
# (extra NAME=VALUE words for the modules, e.g. SCORING_HTTP_ADDR=127.0.0.1:8088).
#
# --bin-dir  release binaries (default: $CARGO_TARGET_DIR/release, else target/release); a
#            module without a binary there is left out.
# --runtime  iotedge-local for --run (default: the one in --bin-dir, else target/release).
# --out      default: out/image-tree (out/image-tree-gpu with --gpu)
# --parts    also write each module's own files (docker/rootfs.sh's rootfs/ and owned/) to
#            DIR/<module>/, as the Dockerfiles' `prebuilt` stage takes them
#            (docker/build-images.sh uses docker/prebuilt).
# --gpu      the classifier's GPU image (docker/Dockerfile.amd64.gpu) instead: onnxruntime-gpu
#            and NVIDIA's CUDA and cuDNN wheels (about 1.6 GB to download, cached in the out
#            folder; 2.6 GB of tree).
#
# Needs a Debian 12 (bookworm) amd64 machine: the image's shared libraries are bookworm's
# libc6, libgcc-s1 and libstdc++6, taken here from the installed packages (the Dockerfile
# downloads the same packages). The wheel is downloaded with pip (cached in the out folder).
#
# Writes OUT/<module>/ (the image's files: the base image's few, emulated, plus the module's),
# OUT/sizes.json (estimated image sizes, docs/deploy.md says how) and prints a summary.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

BIN_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/release"
OUT=""
GPU=0
RUN=0
STATE=""
MANIFEST="$ROOT/deployment.template.json"
RT=""
PARTS=""
while [ $# -gt 0 ]; do
    case "$1" in
        --bin-dir) BIN_DIR="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --run) RUN=1; shift ;;
        --gpu) GPU=1; shift ;;
        --parts) PARTS="$2"; shift 2 ;;
        --state) STATE="$2"; shift 2 ;;
        --manifest) MANIFEST="$2"; shift 2 ;;
        --runtime) RT="$2"; shift 2 ;;
        -h | --help) sed -n '2,30p' "$0"; exit 0 ;;
        *) echo "assemble.sh: unknown argument $1 (see --help)" >&2; exit 64 ;;
    esac
done
note() { printf 'assemble: %s\n' "$*" >&2; }
[ -n "$OUT" ] || OUT="$ROOT/out/image-tree$([ "$GPU" = 0 ] || echo -gpu)"
fail() { note "$*"; exit 1; }

# Kept in step with docker/Dockerfile.amd64 (tests/deploy checks it).
TRIPLE=x86_64-linux-gnu
ORT_VERSION=1.31.1
ORT_WHEEL_PLATFORM=manylinux_2_28_x86_64
ORT_WHEEL_SHA256=5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f
MODULE_UID=65532
. "$ROOT/scripts/modules.sh"
mapfile -t ALL_MODULES < <(project_modules)
MODULES=("${ALL_MODULES[@]}")
RUNTIME_PACKAGES=(libc6 libgcc-s1 libstdc++6)
# Kept in step with docker/Dockerfile.amd64.gpu (tests/deploy checks it).
GPU_ORT_WHEEL_SHA256=e26c475fe361b2015f45b4b824bd13f0bb20204e59b62814e6f0acd5f3d491a6
GPU_EXTRA_PACKAGES=(zlib1g)
if [ "$GPU" = 1 ]; then
    MODULES=(turbofanRulClassifier)
    RUNTIME_PACKAGES+=("${GPU_EXTRA_PACKAGES[@]}")
fi

. /etc/os-release 2>/dev/null || true
[ "${ID:-}" = debian ] && [ "${VERSION_ID:-}" = 12 ] ||
    fail "needs Debian 12 (bookworm), the Dockerfiles' build and library base; this is ${PRETTY_NAME:-unknown}"
[ "$(dpkg --print-architecture)" = amd64 ] || fail "needs an amd64 machine"
command -v readelf >/dev/null || fail "needs readelf (binutils)"
BIN_DIR="$(cd "$BIN_DIR" 2>/dev/null && pwd)" || fail "no binary folder $BIN_DIR (cargo build --release first)"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

# ---- the target's runtime packages, unpacked into one folder (as the Dockerfile does) ------
pkgroot="$OUT/.pkgroot"
rm -rf "$pkgroot"
mkdir -p "$pkgroot"
for p in "${RUNTIME_PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || fail "package $p is not installed"
    dpkg -L "$p" | while read -r f; do
        if [ -f "$f" ] && [[ "$f" == */lib/* ]]; then
            mkdir -p "$pkgroot$(dirname "$f")"
            cp -L "$f" "$pkgroot$f"
        fi
    done
done

# ---- libonnxruntime.so from the pinned wheel, by the Dockerfile's own script -----------------
ort_lib="" ort_extra=""
if [ -x "$BIN_DIR/turbofanRulClassifier" ]; then
    ort=(--package onnxruntime --sha256 "$ORT_WHEEL_SHA256")
    if [ "$GPU" = 1 ]; then
        ort=(--package onnxruntime-gpu --sha256 "$GPU_ORT_WHEEL_SHA256"
            --cuda-requirements "$ROOT/docker/gpu-requirements.txt")
        ort_extra="$OUT/.ort/extra"
    fi
    bash "$ROOT/docker/ort-libs.sh" "${ort[@]}" --version "$ORT_VERSION" \
        --platform "$ORT_WHEEL_PLATFORM" --out "$OUT/.ort" --cache "$OUT/.wheel" ||
        fail "could not get ONNX Runtime $ORT_VERSION (docker/ort-libs.sh)"
    ort_lib="$OUT/.ort/libonnxruntime.so"
fi

# ---- the base image's files (distroless static's, from the Debian packages), once ------------
bash "$ROOT/docker/base-tree.sh" "$OUT/.base"
base_bytes="$(du -sb "$OUT/.base" | cut -f1)"

# ---- one tree per module -----------------------------------------------------------------
built=()
sizes="{\"baseImage\": \"gcr.io/distroless/static-debian12:nonroot-amd64\", \"baseBytesEstimate\": $base_bytes, \"modules\": {"
sep=""
for m in "${MODULES[@]}"; do
    if [ ! -x "$BIN_DIR/$m" ]; then
        note "no $BIN_DIR/$m: $m left out"
        continue
    fi
    work="$OUT/.work/$m"
    bash "$ROOT/docker/rootfs.sh" --module "$m" --binary "$BIN_DIR/$m" --pkgroot "$pkgroot" \
        --triple "$TRIPLE" --out "$work" --ort-lib "$ort_lib" --ort-extra "$ort_extra" \
        --model "$ROOT/models/rul.onnx" \
        --history-model "$ROOT/models/rul_history.onnx"
    # The image strips its binaries (CARGO_PROFILE_RELEASE_STRIP=symbols): so does the tree.
    strip --strip-all "$work/rootfs/app/$m"
    tree="$OUT/$m"
    rm -rf "$tree"
    mkdir -p "$tree"
    cp -a "$OUT/.base/." "$tree/"
    cp -a "$work/rootfs/." "$tree/"
    cp -a "$work/owned/." "$tree/"
    if [ -n "$PARTS" ]; then
        rm -rf "${PARTS:?}/$m"
        mkdir -p "$PARTS/$m"
        cp -a "$work/rootfs" "$work/owned" "$PARTS/$m/"
    fi
    if [ -d "$tree/avrofiles" ] && [ "$(id -u)" = 0 ]; then chown "$MODULE_UID:$MODULE_UID" "$tree/avrofiles"; fi
    module_bytes="$(du -sb "$work/rootfs" | cut -f1)"
    sizes="$sizes$sep\"$m\": {\"moduleBytes\": $module_bytes, \"imageBytesEstimate\": $((module_bytes + base_bytes))}"
    sep=", "
    built+=("$m")
    awk -v m="$m" -v a="$module_bytes" -v b="$base_bytes" 'BEGIN { printf "assemble: %-22s %5.1f MB of module files + %3.1f MB base = %5.1f MB (estimate)\n", m, a / 1e6, b / 1e6, (a + b) / 1e6 }' >&2
done
echo "$sizes}}" >"$OUT/sizes.json"
rm -rf "$OUT/.work" "$OUT/.base"
[ "${#built[@]}" -gt 0 ] || fail "no module binaries in $BIN_DIR"
note "trees in $OUT (${built[*]}); sizes in $OUT/sizes.json"

[ "$RUN" = 1 ] || exit 0

# ---- run the manifest, each module from its tree --------------------------------------------
# Each module runs its tree's /app/module (the image's ENTRYPOINT) with the tree's libraries
# first on the search path, and none of the development fallbacks (ORT_DYLIB_PATH, MODEL_PATH):
# the classifier must find its model and ONNX Runtime beside itself, as in the image.
if [ -z "$RT" ]; then
    RT="$BIN_DIR/iotedge-local"
    [ -x "$RT" ] || RT="$ROOT/target/release/iotedge-local"
fi
[ -x "$RT" ] || fail "no iotedge-local at $RT (cargo build --release -p iotedge-local)"
STATE="${STATE:-$OUT/.edge-state}"
args=(--state "$STATE" run --manifest "$MANIFEST" --mqtt-port "${MQTT_PORT:-0}")
for m in "${ALL_MODULES[@]}"; do
    if [[ " ${built[*]} " == *" $m "* ]]; then
        args+=(--exec "$m=env LD_LIBRARY_PATH=$OUT/$m/usr/lib/$TRIPLE ${MODULE_ENV:-} $OUT/$m/app/module")
    else
        args+=(--skip "$m")
    fi
done
note "running $MANIFEST with the modules from $OUT (state $STATE)"
exec env -u ORT_DYLIB_PATH -u MODEL_PATH -u LD_LIBRARY_PATH "$RT" "${args[@]}"
