#!/usr/bin/env bash
# The main job, end to end on this machine: build, run deployment.template.json on the local
# IoT Edge runtime (edgeHub on mqtts://localhost:8883, blobs in Azurite), replay the C-MAPSS
# test engines as leaf devices Client_001… through it, wait until every message has its RUL
# message (or a dead letter) in IoT Hub and the Avro files are uploaded, write a report, and
# stop everything. About a minute once built.
#
#   scripts/demo.sh [leaf-simulator options]      e.g. scripts/demo.sh --devices 10 --rate 20
#
# Modules of the manifest that the workspace does not build (or that cannot run here, e.g. the
# classifier without its model) are skipped with a note; messages for them wait in edgeHub.
# While it runs, watch what operators see:  target/release/iotedge-local monitor --rul-below 30
#
# Environment: CMAPSS_DIR (data folder, default ../shared/data/cmapss), CARGO_TARGET_DIR,
#   DEMO_STATE (runtime state folder, default .edge-state; emptied first), DEMO_MQTT_PORT
#   (edgeHub's port, default 8883), DEMO_METRICS (edgeHub's metrics address, default
#   127.0.0.1:9600; the modules' follow it; off for none), DEMO_WAIT (seconds to wait for
#   the pipeline, default 120),
#   MODEL_PATH (the classifier's model, default models/rul.onnx), ORT_DYLIB_PATH,
#   DEMO_CONTAINERS=1 (run the modules as their container images, built by
#   docker/build-images.sh with Podman or Docker, which scripts/setup-container-engine.sh
#   installs and starts, instead of as local processes).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

STARTED=$SECONDS
STATE="${DEMO_STATE:-$ROOT/.edge-state}"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
MQTT_PORT="${DEMO_MQTT_PORT:-8883}"
WAIT="${DEMO_WAIT:-120}"
. "$ROOT/scripts/modules.sh"
mapfile -t MODULES < <(project_modules)

step() { printf '\n== %s\n' "$*" >&2; }
note() { printf 'demo: %s\n' "$*" >&2; }

# ---- stopping: whatever happens, nothing started here is left running ----------------------
RT_PID=""
stop_runtime() {
    [ -n "$RT_PID" ] || return 0
    if kill -0 "$RT_PID" 2>/dev/null; then
        note "stopping the runtime (pid $RT_PID) and its modules"
        kill -TERM "$RT_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$RT_PID" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$RT_PID" 2>/dev/null; then
            note "the runtime did not stop within 20 s; killing it"
        fi
    fi
    # The runtime leads its own process group (setsid): what is left of it (a module or
    # Azurite that outlived it) goes too.
    kill -KILL -- "-$RT_PID" 2>/dev/null || true
    wait "$RT_PID" 2>/dev/null || true
    RT_PID=""
}
trap stop_runtime EXIT
trap 'note "interrupted"; exit 130' INT TERM

# ---- what the simulator is told to replay (the report needs the same file) ----------------
DATA_FILE=test_FD003.txt
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[$i]}" in
        --file) DATA_FILE="${args[$((i + 1))]:-$DATA_FILE}" ;;
        --file=*) DATA_FILE="${args[$i]#--file=}" ;;
    esac
done

# ---- installs (idempotent, inside the repo) and build -------------------------------------
step "python environment (.venv, with ONNX Runtime for the classifier)"
if ! scripts/setup-python.sh >/dev/null; then
    note "the Python environment could not be set up; the classifier will lack ONNX Runtime"
fi
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$ROOT/.venv/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1}"
MODEL="${MODEL_PATH:-$ROOT/models/rul.onnx}"

step "Azurite (the Azure Storage emulator, for file uploads)"
runtime_args=()
if AZURITE="$(scripts/setup-node.sh)"; then
    runtime_args+=(--azurite "$AZURITE")
else
    note "Azurite is not available: uploaded files go to a folder of the runtime state instead"
fi

step "build (release)"
BUILD_STARTED=$SECONDS
build_failed=()
if ! cargo build --release --workspace --locked; then
    note "the workspace build failed (see above): building the runtime, simulator and report, then each module on its own"
    cargo build --release --locked -p iotedge-local -p leaf-simulator -p demo-report
    for m in "${MODULES[@]}"; do
        if [ -f "modules/$m/Cargo.toml" ] && ! cargo build --release --locked -p "$m"; then
            build_failed+=("$m")
        fi
    done
fi

if [ "${DEMO_CONTAINERS:-0}" = 1 ]; then
    step "the module images (docker/build-images.sh, from the release binaries) and a container engine"
    eval "$(scripts/setup-container-engine.sh)"
    export DOCKER_HOST
    bash docker/build-images.sh --bin-dir "$BIN"
    runtime_args+=(--containers --images "$ROOT/out/images.json")
fi
BUILD_SECS=$((SECONDS - BUILD_STARTED))

# ---- which modules run --------------------------------------------------------------------
running=()
skipped=()
skip() {
    note "skipping module $1: $2"
    skipped+=("$1 ($2)")
    runtime_args+=(--skip "$1")
}
for m in "${MODULES[@]}"; do
    if [[ " ${build_failed[*]-} " == *" $m "* ]]; then
        skip "$m" "it failed to build"
    elif [ ! -x "$BIN/$m" ]; then
        skip "$m" "the workspace does not build it yet"
    elif [ "$m" = turbofanRulClassifier ] && [ ! -f "$MODEL" ]; then
        skip "$m" "no model at $MODEL; models/train.py makes it"
    elif [ "$m" = turbofanRulClassifier ] && [ ! -f "$ORT_DYLIB_PATH" ]; then
        skip "$m" "no ONNX Runtime library at $ORT_DYLIB_PATH; scripts/setup-python.sh installs it"
    else
        running+=("$m")
        if [ "$m" = turbofanRulClassifier ] && [ "${DEMO_CONTAINERS:-0}" != 1 ]; then
            # The model is found next to target/release by default; say where it is, for
            # any CARGO_TARGET_DIR.
            runtime_args+=(--exec "$m=env MODEL_PATH=$(printf '%q' "$MODEL") $(printf '%q' "$BIN/$m")")
        fi
    fi
done

# ---- the runtime, on a fresh state --------------------------------------------------------
step "runtime: deployment.template.json on edgeHub port $MQTT_PORT, state in $STATE"
if [ -f "$STATE/runtime.json" ]; then
    pid="$(sed -n 's/^ *"pid": *\([0-9][0-9]*\).*/\1/p' "$STATE/runtime.json")"
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        note "a runtime is already running with $STATE (pid $pid): stop it first"
        exit 1
    fi
fi
rm -rf "$STATE"
mkdir -p "$STATE/logs"
# IoT Hub's message routing, as the tutorial configures it (deploy/iothub-routing.json), with
# storage endpoints writing every 5 s instead of every minute so the report can read them.
HUB_CONFIG="$STATE/demo-hub-routing.json"
sed 's/"batchFrequencyInSeconds": [0-9]*/"batchFrequencyInSeconds": 5/' deploy/iothub-routing.json >"$HUB_CONFIG"
runtime_args+=(--hub-config "$HUB_CONFIG")
RUNTIME_LOG="$STATE/logs/runtime.log"
launcher=()
command -v setsid >/dev/null && launcher=(setsid)
"${launcher[@]}" "$BIN/iotedge-local" --state "$STATE" run --manifest deployment.template.json \
    --mqtt-port "$MQTT_PORT" --metrics "${DEMO_METRICS:-127.0.0.1:9600}" "${runtime_args[@]}" >"$RUNTIME_LOG" 2>&1 &
RT_PID=$!
for _ in $(seq 1 300); do
    [ -f "$STATE/runtime.json" ] && break
    if ! kill -0 "$RT_PID" 2>/dev/null; then
        wait "$RT_PID" 2>/dev/null || true
        RT_PID=""
        note "the runtime stopped before it was ready; its log ($RUNTIME_LOG) ends with:"
        tail -n 15 "$RUNTIME_LOG" >&2
        exit 1
    fi
    sleep 0.2
done
if [ ! -f "$STATE/runtime.json" ]; then
    note "the runtime was not ready within 60 s (see $RUNTIME_LOG)"
    exit 1
fi
note "runtime ready (pid $RT_PID; log $RUNTIME_LOG); modules started: ${running[*]:-none}"
note "module logs: $STATE/logs/<module>.log; Prometheus metrics while it runs (health: /health/ready):"
grep -o '"[A-Za-z]*": "http://[^"]*/metrics"' "$STATE/runtime.json" | sed 's/"\([^"]*\)": "\(.*\)"/    \1  curl -s \2/' >&2 || true

# Operator action: upload Avro files 5 s after they stop changing (default 10 min), so the
# demo sees its uploads. Harmless when the writer does not run: the patch waits in its twin.
"$BIN/iotedge-local" --state "$STATE" twin set avroFileWriter \
    '{"QuietPeriodSecs": 5, "CheckIntervalSecs": 2}' >/dev/null ||
    note "could not shorten the Avro writer's quiet period; uploads may come late"

# ---- the leaf devices ---------------------------------------------------------------------
step "leaf devices replay $DATA_FILE (watch IoT Hub: $BIN/iotedge-local --state $STATE monitor --rul-below 30)"
sim_status=0
"$BIN/leaf-simulator" --state "$STATE" "$@" || sim_status=$?
if [ "$sim_status" -eq 130 ]; then
    # Ctrl-C: the simulator stopped cleanly (exit 130); so does the demo.
    note "interrupted"
    exit 130
elif [ "$sim_status" -ge 2 ]; then
    note "the simulator could not run (see above)"
    exit 1
fi

# ---- wait for the pipeline, then report ---------------------------------------------------
OUT="$ROOT/out/demo-$(date -u +%Y%m%dT%H%M%SZ)"
report_args=(--state "$STATE" --file "$DATA_FILE" --wait "$WAIT" --out "$OUT")
if [[ " ${running[*]-} " != *" turbofanRouter "* || " ${running[*]-} " != *" turbofanRulClassifier "* ]]; then
    # Without both, no RUL message can reach IoT Hub: wait only for what can still happen.
    note "turbofanRouter and turbofanRulClassifier are not both running: RUL messages cannot reach IoT Hub"
    report_args+=(--stall 10)
fi
if [[ " ${running[*]-} " == *" avroFileWriter "* ]]; then
    report_args+=(--wait-uploads)
    step "waiting for RUL messages in IoT Hub and Avro uploads (at most $WAIT s), then the report"
else
    step "waiting for RUL messages in IoT Hub (at most $WAIT s), then the report"
fi
"$BIN/demo-report" "${report_args[@]}"

stop_runtime
step "done in $((SECONDS - STARTED)) s (build and installs $((BUILD_STARTED - STARTED + BUILD_SECS)) s, run $((SECONDS - BUILD_STARTED - BUILD_SECS)) s)"
if [ "${#skipped[@]}" -gt 0 ]; then
    note "skipped modules: ${skipped[*]}"
fi
if [ "$sim_status" -ne 0 ]; then
    note "some telemetry messages were not acknowledged by edgeHub (see the simulator's summary)"
fi
echo "Report: $OUT/report.md (also report.json and rul.svg)"
exit "$sim_status"
