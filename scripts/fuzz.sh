#!/usr/bin/env bash
# Fuzzes what a client controls: MQTT packets, property bags, route texts, telemetry
# (fuzz/fuzz_targets). Installs cargo-fuzz (crates.io) if missing, builds the targets with
# the stable toolchain (`--sanitizer none`: libFuzzer's coverage guidance, no sanitizer) and
# runs each for SECONDS (default 60), starting from fuzz/seeds/<target>. New inputs go to a
# scratch corpus, not the repo; a crash leaves its input in fuzz/artifacts/<target>/ and
# fails the script.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SECONDS_EACH="${1:-60}"
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(mqtt_packets property_bag route_text telemetry)

export CARGO_INCREMENTAL=0
if ! cargo fuzz --version >/dev/null 2>&1; then
    printf '== installing cargo-fuzz (crates.io)\n' >&2
    cargo install cargo-fuzz --version 0.13.2 --locked
fi
# One build of every target (instrumented, release).
cargo fuzz build --sanitizer none
SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT
for t in "${TARGETS[@]}"; do
    mkdir -p "$SCRATCH/$t"
    log="$SCRATCH/$t.log"
    if ! cargo fuzz run --sanitizer none "$t" "$SCRATCH/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$SECONDS_EACH" -max_len=65536 -rss_limit_mb=1024 -timeout=10 \
        >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        printf 'fuzz: %s failed; its input is in fuzz/artifacts/%s/\n' "$t" "$t" >&2
        exit 1
    fi
    runs="$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | tail -n 1 || true)"
    cov="$(grep -o 'cov: [0-9]* ft: [0-9]*' "$log" | tail -n 1 || true)"
    printf 'fuzz: %-14s %s (%s; corpus %s inputs)\n' "$t" "${runs:-?}" "${cov:-?}" "$(ls "$SCRATCH/$t" | wc -l)"
done
