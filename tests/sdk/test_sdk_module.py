"""The official Python SDK as an IoT Edge module, unmodified, against iotedge-local.

One runtime runs for the whole file; the module is tests/sdk/sdk_module.py
(started through `--exec sdkModule=...`). Each test waits for what it needs,
so any of them can also be run alone (-k).
"""

import json
import queue
import subprocess
import threading
import time
from pathlib import Path

import pytest

from edge_harness import (
    MQTT_PORT, WAIT_TIMEOUT, app_props, payload_kind, python_command, system_props,
    wait_until,
)

MODULE = "sdkModule"
LEAF_ID = "sdk-leaf-echo"
LEAF_COUNT = 5
# The SDK module, the leaf and the runtime all start from cold: allow for
# Python start-up and the first TLS handshakes on top of the usual wait.
FIRST_TIMEOUT = max(WAIT_TIMEOUT, 45.0)

MANIFEST = {
    "modulesContent": {
        "$edgeAgent": {
            "properties.desired": {
                "schemaVersion": "1.1",
                "runtime": {
                    "type": "docker",
                    "settings": {"minDockerVersion": "v1.25", "loggingOptions": "",
                                 "registryCredentials": {}},
                },
                "systemModules": {
                    "edgeAgent": {
                        "type": "docker",
                        "settings": {"image": "mcr.microsoft.com/azureiotedge-agent:1.4",
                                     "createOptions": {}},
                    },
                    "edgeHub": {
                        "type": "docker",
                        "status": "running",
                        "restartPolicy": "always",
                        "settings": {"image": "mcr.microsoft.com/azureiotedge-hub:1.4",
                                     "createOptions": {}},
                    },
                },
                "modules": {
                    MODULE: {
                        "version": "1.0",
                        "type": "docker",
                        "status": "running",
                        "restartPolicy": "always",
                        "settings": {"image": "local/sdkmodule:1", "createOptions": {}},
                    }
                },
            }
        },
        "$edgeHub": {
            "properties.desired": {
                "schemaVersion": "1.1",
                "routes": {
                    "r1": "FROM /messages/* WHERE NOT IS_DEFINED($connectionModuleId) "
                          "INTO BrokeredEndpoint(\"/modules/%s/inputs/input1\")" % MODULE,
                    "r2": "FROM /messages/modules/%s/outputs/* INTO $upstream" % MODULE,
                },
                "storeAndForwardConfiguration": {"timeToLiveSecs": 7200},
            }
        },
        MODULE: {"properties.desired": {"greeting": "hello"}},
    }
}


@pytest.fixture(scope="module")
def edge(iotedge_local_factory, tmp_path_factory):
    manifest = tmp_path_factory.mktemp("manifest") / "deployment.json"
    manifest.write_text(json.dumps(MANIFEST, indent=2))
    command = python_command("sdk_module.py", "--input", "input1", "--output", "output1")
    return iotedge_local_factory("sdk-module", manifest, execs={MODULE: command})


def from_module(record):
    return record.get("module") == MODULE


def twin_records(edge, kind, count=1, timeout=FIRST_TIMEOUT):
    return edge.wait_records(lambda r: from_module(r) and payload_kind(r) == kind,
                             count=count, timeout=timeout)


def echoes(edge):
    return [r for r in edge.upstream()
            if from_module(r) and app_props(r).get("echoedBy") == "sdk_module"]


def leaf_body(i):
    return {"deviceId": LEAF_ID, "seq": i, "value": i * 10}


@pytest.fixture(scope="module")
def module_ready(edge):
    """The module has read its twin and patched its reported properties (so
    its input and desired-patch subscriptions are in place). Waited for once:
    if it never happens, every test that needs it errors at once."""
    recs = twin_records(edge, "reported")
    if not recs:
        pytest.fail("sdkModule never sent its 'reported' message upstream within %.0f s"
                    % FIRST_TIMEOUT, pytrace=False)
    return recs[0]


@pytest.fixture(scope="module")
def leaf_sent(edge, module_ready):
    """Register a leaf device and send LEAF_COUNT messages through the SDK
    once the module is up."""
    cs = edge.add_device(LEAF_ID)
    res = edge.run_leaf(cs, LEAF_COUNT)
    assert res.returncode == 0, "sdk_leaf.py failed (%d):\n%s%s" % (
        res.returncode, res.stdout, res.stderr)
    return cs


def test_runtime_json(edge):
    info = edge.info
    for key in ("pid", "mqttPort", "hubHostname", "deviceId", "gatewayHostname", "caCert"):
        assert key in info, "runtime.json lacks %r: %r" % (key, info)
    assert info["pid"] == edge.proc.pid
    assert info["mqttPort"] == MQTT_PORT
    assert info["gatewayHostname"] == "localhost"
    assert info["hubHostname"] and info["deviceId"]
    ca = Path(info["caCert"])
    assert ca.is_absolute() and ca.is_file(), info["caCert"]
    assert "-----BEGIN CERTIFICATE-----" in ca.read_text()


def test_module_reads_its_twin(edge):
    recs = twin_records(edge, "twin")
    assert len(recs) == 1, "expected exactly one twin report, got %r" % recs
    rec = recs[0]
    payload = rec["payload"]
    assert payload["desired"] == {"greeting": "hello"}
    assert isinstance(payload["desiredVersion"], int), \
        "desired properties must carry an integer $version: %r" % payload
    assert rec["origin"] == edge.info["deviceId"]
    sysp = system_props(rec)
    assert sysp.get("connectionDeviceId") == edge.info["deviceId"]
    assert sysp.get("connectionModuleId") == MODULE
    assert sysp.get("contentType") == "application/json"
    assert sysp.get("contentEncoding") == "utf-8"


def test_module_patches_reported_properties(edge, module_ready):
    recs = twin_records(edge, "reported", timeout=0)
    assert len(recs) == 1, recs
    assert recs[0]["payload"] == {"kind": "reported", "reported": {"started": True}}


def test_leaf_messages_are_echoed_upstream(edge, leaf_sent):
    wait_until(lambda: len(echoes(edge)) >= LEAF_COUNT, timeout=WAIT_TIMEOUT)
    time.sleep(2)  # anything extra (duplicates) would show up now
    got = echoes(edge)
    assert len(got) == LEAF_COUNT, "expected %d echoes, got %d:\n%s" % (
        LEAF_COUNT, len(got), "\n".join(json.dumps(r) for r in got))
    by_corr = {system_props(r).get("correlationId"): r for r in got}
    assert sorted(by_corr) == sorted("corr-%d" % i for i in range(LEAF_COUNT))
    for i in range(LEAF_COUNT):
        rec = by_corr["corr-%d" % i]
        sysp = system_props(rec)
        assert rec["origin"] == edge.info["deviceId"]
        assert rec["module"] == MODULE
        assert rec["payload"] == leaf_body(i), rec
        assert app_props(rec) == {"seq": str(i), "echoedBy": "sdk_module"}, rec
        assert sysp.get("messageId") == "%s-msg-%d" % (LEAF_ID, i), rec
        assert sysp.get("contentType") == "application/json", rec
        assert sysp.get("contentEncoding") == "utf-8", rec
        assert sysp.get("connectionDeviceId") == edge.info["deviceId"], rec
        assert sysp.get("connectionModuleId") == MODULE, rec
    # the leaf's own telemetry only goes to the module (route r1), never upstream
    assert not [r for r in edge.upstream() if r.get("origin") == LEAF_ID]


def test_desired_patch_reaches_module(edge, module_ready):
    twin = twin_records(edge, "twin", timeout=0)
    assert twin, "module never reported its twin"
    edge.twin_set(MODULE, {"greeting": "bye"})
    recs = edge.wait_records(
        lambda r: from_module(r) and payload_kind(r) == "patch"
        and r["payload"].get("patch", {}).get("greeting") == "bye")
    assert len(recs) == 1, "expected one patch report with greeting=bye, got %r" % recs
    payload = recs[0]["payload"]
    assert payload["patch"] == {"greeting": "bye"}, payload
    first = twin[0]["payload"]["desiredVersion"]
    assert isinstance(payload["version"], int) and payload["version"] > first, \
        "patch $version %r must be greater than the twin's %r" % (payload["version"], first)


def test_monitor_streams_module_messages(edge, leaf_sent):
    wait_until(lambda: len(echoes(edge)) >= LEAF_COUNT, timeout=WAIT_TIMEOUT)
    proc = subprocess.Popen(
        [edge.bin, "monitor", "--state", str(edge.state), "--module", MODULE, "--from-start"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = queue.Queue()

    def reader():
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)  # EOF

    threading.Thread(target=reader, daemon=True).start()
    got = []
    wanted = {"corr-%d" % i for i in range(LEAF_COUNT)}
    seen = set()
    try:
        deadline = time.monotonic() + WAIT_TIMEOUT
        while seen != wanted and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                break
            got.append(line)
            rec = json.loads(line)
            assert rec.get("module") == MODULE, "monitor --module %s printed %r" % (MODULE, rec)
            if app_props(rec).get("echoedBy") == "sdk_module":
                seen.add(system_props(rec).get("correlationId"))
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert seen == wanted, "monitor showed echoes %r (exit %r); output:\n%s\nstderr:\n%s" % (
        sorted(seen), proc.returncode, "".join(got), proc.stderr.read())


def test_runtime_stops_cleanly_on_sigterm(edge, module_ready):
    code = edge.stop()
    assert code == 0, "iotedge-local did not exit 0 within 10 s of SIGTERM (got %r)" % code
    log = edge.module_log(MODULE)
    assert log.is_file(), "no module log at %s" % log
    assert wait_until(lambda: "exiting cleanly" in log.read_text(), timeout=5), \
        "sdk_module was not stopped gracefully (no 'exiting cleanly' in %s)" % log
