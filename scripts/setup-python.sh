#!/usr/bin/env bash
# Create the Python virtualenv used by the SDK conformance tests (tests/sdk)
# and install tests/requirements.txt into it. Idempotent: pip only runs when
# the requirements file (or the interpreter) changed since the last install.
#
#   scripts/setup-python.sh          -> prints the venv's python path last
#
# Environment: PYTHON (interpreter to create the venv with, default python3),
#              VENV (default <repo>/.venv).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
REQ="$ROOT/tests/requirements.txt"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.requirements.sha256"

if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 8) else 1)' 2>/dev/null; then
    echo "setup-python: need Python >= 3.8 (tried '$PYTHON')" >&2
    exit 1
fi

# (Re)create the venv if it is missing or its interpreter no longer runs.
if ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    echo "setup-python: creating $VENV" >&2
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    rm -f "$STAMP"
fi

want="$( { cat "$REQ"; "$VENV/bin/python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)"
have="$(cat "$STAMP" 2>/dev/null || true)"

if [ "$want" != "$have" ]; then
    echo "setup-python: installing $REQ" >&2
    "$VENV/bin/python" -m pip install --disable-pip-version-check --quiet -r "$REQ"
    echo "$want" > "$STAMP"
else
    echo "setup-python: $VENV is up to date" >&2
fi

echo "$VENV/bin/python"
