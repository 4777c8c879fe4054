#!/usr/bin/env bash
# Installs Azurite (the Azure Storage emulator, npm package `azurite`) into .tools/azurite,
# idempotently. Prints the path of the azurite-blob launcher last.
#
# 3.35.0 is the newest release that runs on Node 20 (3.36 needs Node 21+).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION=3.35.0
DIR="$ROOT/.tools/azurite"
BIN="$DIR/node_modules/.bin/azurite-blob"
if ! command -v node >/dev/null 2>&1; then
    echo "setup-node: Node.js is required for Azurite (apt-get install nodejs npm)" >&2
    exit 1
fi
if [ ! -x "$BIN" ] || [ "$(cat "$DIR/.version" 2>/dev/null)" != "$VERSION" ]; then
    echo "setup-node: installing azurite@$VERSION into $DIR" >&2
    mkdir -p "$DIR"
    npm install --prefix "$DIR" --no-audit --no-fund --loglevel=error "azurite@$VERSION" >&2
    echo "$VERSION" > "$DIR/.version"
fi
echo "$BIN"
