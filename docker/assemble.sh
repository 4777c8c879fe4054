#!/usr/bin/env bash
# Assembles, in a folder, the file tree each module image would contain on linux/amd64 (what
# docker/Dockerfile.amd64 makes, by the same docker/rootfs.sh and the same ONNX Runtime wheel),
# and optionally runs the modules from it on the local runtime. For a machine without a
# container engine: it exercises the image recipe and shows the modules work from that tree.
#
#   docker/assemble.sh [--bin-dir DIR] [--out DIR]                  assemble only
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
# --out      default: out/image-tree
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
OUT="$ROOT/out/image-tree"
RUN=0
STATE=""
MANIFEST="$ROOT/deployment.template.json"
RT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --bin-dir) BIN_DIR="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --run) RUN=1; shift ;;
        --state) STATE="$2"; shift 2 ;;
        --manifest) MANIFEST="$2"; shift 2 ;;
        --runtime) RT="$2"; shift 2 ;;
        -h | --help) sed -n '2,28p' "$0"; exit 0 ;;
        *) echo "assemble.sh: unknown argument $1 (see --help)" >&2; exit 64 ;;
    esac
done
note() { printf 'assemble: %s\n' "$*" >&2; }
fail() { note "$*"; exit 1; }

# Kept in step with docker/Dockerfile.amd64 (tests/deploy checks it).
TRIPLE=x86_64-linux-gnu
ORT_VERSION=1.31.1
ORT_WHEEL_PLATFORM=manylinux_2_28_x86_64
ORT_WHEEL_SHA256=5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f
MODULE_UID=65532
MODULES=(turbofanRouter turbofanRulClassifier avroFileWriter)
RUNTIME_PACKAGES=(libc6 libgcc-s1 libstdc++6)
# What distroless static-debian12 is made of (for the size estimate and the emulated base).
BASE_PACKAGES=(base-files netbase tzdata ca-certificates media-types)

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

# ---- libonnxruntime.so from the pinned wheel (as the Dockerfile does) ----------------------
ort_lib=""
if [ -x "$BIN_DIR/turbofanRulClassifier" ]; then
    wheel_dir="$OUT/.wheel"
    wheel="$(ls "$wheel_dir"/onnxruntime-"$ORT_VERSION"-*.whl 2>/dev/null | head -n 1 || true)"
    if [ -z "$wheel" ]; then
        "${PYTHON:-python3}" -m pip download -q --no-deps --only-binary=:all: \
            --platform "$ORT_WHEEL_PLATFORM" --python-version 3.11 --implementation cp --abi cp311 \
            -d "$wheel_dir" "onnxruntime==$ORT_VERSION" >&2 ||
            fail "could not download onnxruntime==$ORT_VERSION for $ORT_WHEEL_PLATFORM"
        wheel="$(ls "$wheel_dir"/onnxruntime-"$ORT_VERSION"-*.whl | head -n 1)"
    fi
    echo "$ORT_WHEEL_SHA256  $wheel" | sha256sum -c --quiet - || fail "$wheel does not have the pinned sha256"
    ort_lib="$OUT/.wheel/libonnxruntime.so"
    "${PYTHON:-python3}" -c "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); open(sys.argv[3], 'wb').write(z.read('onnxruntime/capi/libonnxruntime.so.' + sys.argv[2]))" \
        "$wheel" "$ORT_VERSION" "$ort_lib"
fi

# ---- the emulated base image: distroless static's files the modules can touch ---------------
base_tree() {
    local d="$1"
    mkdir -p "$d/etc/ssl/certs" "$d/tmp" "$d/home/nonroot"
    chmod 1777 "$d/tmp"
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:%s:%s:nonroot:/home/nonroot:/sbin/nologin\n' \
        "$MODULE_UID" "$MODULE_UID" >"$d/etc/passwd"
    printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:%s:\n' "$MODULE_UID" >"$d/etc/group"
    cp /etc/ssl/certs/ca-certificates.crt "$d/etc/ssl/certs/ca-certificates.crt"
    if [ "$(id -u)" = 0 ]; then chown "$MODULE_UID:$MODULE_UID" "$d/home/nonroot"; fi
}

package_bytes() { # installed file bytes of Debian packages, without docs and manuals
    local p total=0 n
    for p in "$@"; do
        n="$(dpkg -L "$p" 2>/dev/null | while read -r f; do [ -f "$f" ] && [ ! -L "$f" ] && echo "$f"; done |
            grep -v -E '^/usr/share/(doc|man|info|lintian)/' | tr '\n' '\0' | du -cb --files0-from=- 2>/dev/null | tail -n 1 | cut -f1)"
        total=$((total + ${n:-0}))
    done
    echo "$total"
}
base_bytes="$(package_bytes "${BASE_PACKAGES[@]}")"

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
        --triple "$TRIPLE" --out "$work" --ort-lib "$ort_lib" --model "$ROOT/models/rul.onnx" \
        --history-model "$ROOT/models/rul_history.onnx"
    # The image strips its binaries (CARGO_PROFILE_RELEASE_STRIP=symbols): so does the tree.
    strip --strip-all "$work/rootfs/app/$m"
    tree="$OUT/$m"
    rm -rf "$tree"
    mkdir -p "$tree"
    base_tree "$tree"
    cp -a "$work/rootfs/." "$tree/"
    cp -a "$work/owned/." "$tree/"
    if [ -d "$tree/avrofiles" ] && [ "$(id -u)" = 0 ]; then chown "$MODULE_UID:$MODULE_UID" "$tree/avrofiles"; fi
    module_bytes="$(du -sb "$work/rootfs" | cut -f1)"
    sizes="$sizes$sep\"$m\": {\"moduleBytes\": $module_bytes, \"imageBytesEstimate\": $((module_bytes + base_bytes))}"
    sep=", "
    built+=("$m")
    awk -v m="$m" -v a="$module_bytes" -v b="$base_bytes" 'BEGIN { printf "assemble: %-22s %5.1f MB of module files + %3.1f MB base = %5.1f MB (estimate)\n", m, a / 1e6, b / 1e6, (a + b) / 1e6 }' >&2
done
echo "$sizes}}" >"$OUT/sizes.json"
rm -rf "$OUT/.work"
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
for m in "${MODULES[@]}"; do
    if [[ " ${built[*]} " == *" $m "* ]]; then
        args+=(--exec "$m=env LD_LIBRARY_PATH=$OUT/$m/usr/lib/$TRIPLE ${MODULE_ENV:-} $OUT/$m/app/module")
    else
        args+=(--skip "$m")
    fi
done
note "running $MANIFEST with the modules from $OUT (state $STATE)"
exec env -u ORT_DYLIB_PATH -u MODEL_PATH -u LD_LIBRARY_PATH "$RT" "${args[@]}"
