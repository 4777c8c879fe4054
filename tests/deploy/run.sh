#!/usr/bin/env bash
# Containers and deployment, checked without a container engine (docs/deploy.md):
#   - .venv-deploy with Microsoft's iotedgedev (tests/deploy/setup.sh, idempotent);
#   - the release binaries of the three modules and of iotedge-local;
#   - pytest tests/deploy: `iotedgedev solution genconfig` for every template and platform
#     (validated against the IoT Edge manifest schema), the generated routes parsed by the
#     local runtime, images and env names, the Kubernetes variant's rules, the Dockerfiles
#     (BuildKit's parser, hadolint), the build context, the amd64 image trees assembled by
#     docker/assemble.sh and run on the local runtime, and the binaries' linkage.
#
#   tests/deploy/run.sh [pytest arguments]
#
# Environment: CARGO_TARGET_DIR; DEPLOY_BIN_DIR (use release binaries from there instead of
# building them); DEPLOY_RUNTIME (iotedge-local to use); DEPLOY_MODULES (modules to test the
# images of; default all three).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

step() { printf '\n== %s\n' "$*" >&2; }

step "deployment tools (.venv-deploy: iotedgedev, hadolint, schemas)"
PY="$(tests/deploy/setup.sh)"

if [ -z "${DEPLOY_BIN_DIR:-}" ]; then
    step "release build of the modules and iotedge-local (what the images contain)"
    modules=()
    . "$ROOT/scripts/modules.sh"
    for m in ${DEPLOY_MODULES:-$(project_modules)}; do
        modules+=(-p "$m")
    done
    cargo build --release --locked "${modules[@]}" -p iotedge-local
    export DEPLOY_BIN_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/release"
fi
export DEPLOY_RUNTIME="${DEPLOY_RUNTIME:-$DEPLOY_BIN_DIR/iotedge-local}"

step "tests/deploy (binaries from $DEPLOY_BIN_DIR)"
"$PY" -m pytest tests/deploy -q -p no:cacheprovider "$@"
