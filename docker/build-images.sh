#!/usr/bin/env bash
# Builds the three module images (linux/amd64) from docker/Dockerfile.amd64 with whichever
# container engine is here (scripts/setup-container-engine.sh: Docker, else Podman, installed
# when missing), idempotently, and prints their sizes as the engine reports them.
#
#   docker/build-images.sh [--bases local|registry] [--registry ADDR] [--bin-dir DIR]
#                          [--modules "M ..."] [--gpu]
#
# --bases local     (default) for a machine that reaches no container registry: the base image
#                   is made here from Debian 12 packages (docker/base-tree.sh: what distroless
#                   static-debian12:nonroot has) and the build stage is replaced by the module
#                   files laid out from this machine's release binaries by the same
#                   docker/rootfs.sh (docker/assemble.sh --parts docker/prebuilt). Selected by
#                   build arguments only: BASE_IMAGE, BUILD_FROM=prebuilt.
# --bases registry  the Dockerfiles as they are: rust and distroless pulled from their
#                   registries, the modules built inside the build stage.
# --registry ADDR   the images are named ADDR/<module, lower case>:<version>-amd64, as
#                   iotedgedev names them with CONTAINER_REGISTRY_ADDRESS=ADDR (default
#                   localhost: the engine's own store).
# --bin-dir DIR     release binaries for --bases local (default: built now with cargo build
#                   --release into $CARGO_TARGET_DIR or target).
# --gpu             also the classifier's GPU image (docker/Dockerfile.amd64.gpu, tagged
#                   <version>-amd64.gpu; about 2.5 GB): onnxruntime-gpu and NVIDIA's CUDA and
#                   cuDNN wheels from PyPI (pip's cache keeps them after the first time).
#
# Writes out/images.json: for each module its image name, id, size in bytes and user.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

BASES=local
REGISTRY=localhost
BIN_DIR=""
. "$ROOT/scripts/modules.sh"
MODULES="$(project_modules | tr '\n' ' ')"
GPU=0
while [ $# -gt 0 ]; do
    case "$1" in
        --bases) BASES="$2"; shift 2 ;;
        --registry) REGISTRY="$2"; shift 2 ;;
        --bin-dir) BIN_DIR="$2"; shift 2 ;;
        --modules) MODULES="$2"; shift 2 ;;
        --gpu) GPU=1; shift ;;
        -h | --help) sed -n '2,29p' "$0"; exit 0 ;;
        *) echo "build-images.sh: unknown argument $1 (see --help)" >&2; exit 64 ;;
    esac
done
note() { printf 'build-images: %s\n' "$*" >&2; }
fail() { note "$*"; exit 1; }
case "$BASES" in local | registry) ;; *) fail "--bases is local or registry, not '$BASES'" ;; esac

engine="$(scripts/setup-container-engine.sh)" || fail "no container engine (scripts/setup-container-engine.sh said why)"
eval "$engine"
export DOCKER_HOST
# Docker's classic builder builds every stage, `source` too (which pulls rust:…): a local build
# needs BuildKit, which skips the stages the target does not use. Podman (Buildah) skips them.
if [ "$BASES" = local ] && [ "$ENGINE" = docker ] && ! docker buildx version >/dev/null 2>&1; then
    fail "--bases local needs BuildKit (docker buildx) with Docker, to skip the source stage; install the buildx plugin, or use Podman"
fi
# pip for ONNX Runtime's wheel (docker/ort-libs.sh): PYTHON, else the repo's .venv, else python3.
if [ -z "${PYTHON:-}" ] && [ -x "$ROOT/.venv/bin/python" ]; then export PYTHON="$ROOT/.venv/bin/python"; fi
# Limits for RUN steps (--bases registry) within the host's hard limits (Podman's defaults
# are above them on some hosts).
ULIMITS=(--ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)")
# Podman writes OCI images by default, which have no HEALTHCHECK: the images are Docker's format.
FORMAT=()
case "$ENGINE" in podman*) FORMAT=(--format docker) ;; esac

# Only one build at a time: docker/prebuilt is shared.
exec 9>"$ROOT/docker/prebuilt/.lock"
flock 9

BASE_IMAGE=localhost/turbofan-base/static-debian12:nonroot-amd64
args=()
if [ "$BASES" = local ]; then
    note "base image $BASE_IMAGE from Debian packages (docker/base-tree.sh)"
    ctx="$ROOT/out/base-image"
    bash docker/base-tree.sh "$ctx/rootfs"
    # /home/nonroot belongs to the module user, as in distroless.
    printf 'FROM scratch\nCOPY rootfs/ /\nCOPY --chown=65532:65532 rootfs/home/nonroot/ /home/nonroot/\n' >"$ctx/Containerfile"
    $ENGINE build -q "${FORMAT[@]}" -f "$ctx/Containerfile" -t "$BASE_IMAGE" "$ctx" >/dev/null
    if [ -z "$BIN_DIR" ]; then
        note "release build of the modules (cargo build --release)"
        p=()
        for m in $MODULES; do p+=(-p "$m"); done
        cargo build --release --locked "${p[@]}" >&2
        BIN_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/release"
    fi
    note "module files from $BIN_DIR (docker/assemble.sh --parts docker/prebuilt)"
    find docker/prebuilt -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +
    bash docker/assemble.sh --bin-dir "$BIN_DIR" --out "$ROOT/out/image-tree" --parts docker/prebuilt >&2
    args=(--build-arg BUILD_FROM=prebuilt --build-arg "BASE_IMAGE=$BASE_IMAGE"
        --build-arg EXTRA_PACKAGES= --build-arg CUDA_REQUIREMENTS=)
fi

json="{"
sep=""
# record KEY IMAGE: prints the image's size as the engine reports it and adds it to images.json.
record() {
    local id size user health
    read -r id size user < <($ENGINE image inspect --format '{{.Id}} {{.Size}} {{.Config.User}}' "$2")
    health="$($ENGINE image inspect --format '{{json .Config.Healthcheck}}' "$2")"
    awk -v i="$2" -v s="$size" 'BEGIN { printf "build-images: %-48s %6.1f MB\n", i, s / 1e6 }' >&2
    json="$json$sep\"$1\": {\"image\": \"$2\", \"id\": \"$id\", \"bytes\": $size, \"user\": \"$user\", \"healthcheck\": $health}"
    sep=", "
}
for m in $MODULES; do
    spec="modules/$m/module.json"
    [ -f "$spec" ] || fail "no $spec"
    version="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["image"]["tag"]["version"])' "$spec")"
    # The module's buildOptions (--build-arg MODULE=…, --target writer), as iotedgedev passes them.
    read -r -a options <<<"$(python3 -c 'import json,sys; print(" ".join(json.load(open(sys.argv[1]))["image"].get("buildOptions", [])))' "$spec")"
    image="$REGISTRY/$(echo "$m" | tr 'A-Z' 'a-z'):$version-amd64"
    note "building $image"
    $ENGINE build -q "${FORMAT[@]}" "${ULIMITS[@]}" -f docker/Dockerfile.amd64 "${options[@]}" "${args[@]}" -t "$image" . >/dev/null ||
        fail "building $image failed"
    record "$m" "$image"
done
if [ "$GPU" = 1 ]; then
    m=turbofanRulClassifier
    version="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["image"]["tag"]["version"])' "modules/$m/module.json")"
    image="$REGISTRY/turbofanrulclassifier:$version-amd64.gpu"
    if [ "$BASES" = local ]; then
        note "the classifier's GPU files (docker/assemble.sh --gpu --parts docker/prebuilt)"
        rm -rf "docker/prebuilt/$m"
        bash docker/assemble.sh --gpu --bin-dir "$BIN_DIR" --out "$ROOT/out/image-tree-gpu" --parts docker/prebuilt >&2
    fi
    note "building $image"
    $ENGINE build -q "${FORMAT[@]}" "${ULIMITS[@]}" -f docker/Dockerfile.amd64.gpu --build-arg MODULE=$m "${args[@]}" -t "$image" . >/dev/null ||
        fail "building $image failed"
    record "$m.amd64.gpu" "$image"
fi
mkdir -p out
echo "$json}" >out/images.json
note "images in out/images.json"
