"""A leaf device (official Python SDK, unmodified) through the project's real
deployment: deployment.template.json at the repository root.

turbofanRouter is replaced by tests/sdk/sdk_module.py (echo deviceInput ->
hubOutput); the classifier and the Avro writer are not started. Routes used:
  leafMessagesToRouter: FROM /messages/* WHERE NOT IS_DEFINED($connectionModuleId)
                        INTO BrokeredEndpoint("/modules/turbofanRouter/inputs/deviceInput")
  routerToIoTHub:       FROM /messages/modules/turboFanRouter/outputs/hubOutput INTO $upstream
(note the different case of turboFanRouter in the second route).
"""

import json
import time

import pytest

from edge_harness import (
    REPO_ROOT, WAIT_TIMEOUT, app_props, python_command, system_props, wait_until,
)

TEMPLATE = REPO_ROOT / "deployment.template.json"
ROUTER = "turbofanRouter"
SKIPPED = ("turbofanRulClassifier", "avroFileWriter")
LEAF_ID = "sdk-leaf-turbofan"
LEAF_COUNT = 10
READY_TIMEOUT = max(WAIT_TIMEOUT, 45.0)


def template_modules():
    if not TEMPLATE.is_file():
        pytest.fail("%s does not exist" % TEMPLATE, pytrace=False)
    doc = json.loads(TEMPLATE.read_text())
    agent = doc["modulesContent"]["$edgeAgent"]["properties.desired"]
    return agent.get("modules", {})


@pytest.fixture(scope="module")
def edge(iotedge_local_factory, tmp_path_factory):
    modules = template_modules()
    for name in (ROUTER,) + SKIPPED:
        assert name in modules, "%s has no module %r (has %r)" % (TEMPLATE, name, sorted(modules))
    ready = tmp_path_factory.mktemp("router") / "router.ready"
    command = python_command("sdk_module.py", "--input", "deviceInput", "--output", "hubOutput",
                             "--ready-file", ready)
    rt = iotedge_local_factory("sdk-leaf", TEMPLATE, execs={ROUTER: command}, skips=SKIPPED)
    assert wait_until(ready.exists, timeout=READY_TIMEOUT), \
        "turbofanRouter (sdk_module.py) did not get ready within %.0f s" % READY_TIMEOUT
    return rt


def leaf_body(i):
    return {"deviceId": LEAF_ID, "seq": i, "value": i * 10}


def router_echoes(edge):
    return [r for r in edge.upstream()
            if r.get("module") == ROUTER and app_props(r).get("echoedBy") == "sdk_module"]


def test_leaf_telemetry_reaches_upstream_through_router(edge):
    cs = edge.add_device(LEAF_ID)
    res = edge.run_leaf(cs, LEAF_COUNT)
    assert res.returncode == 0, "sdk_leaf.py failed (%d):\n%s%s" % (
        res.returncode, res.stdout, res.stderr)

    wait_until(lambda: len(router_echoes(edge)) >= LEAF_COUNT, timeout=WAIT_TIMEOUT)
    time.sleep(2)  # duplicates would show up now
    got = router_echoes(edge)
    assert len(got) == LEAF_COUNT, "expected %d messages from %s upstream, got %d:\n%s" % (
        LEAF_COUNT, ROUTER, len(got), "\n".join(json.dumps(r) for r in got))

    by_corr = {}
    for rec in got:
        by_corr.setdefault(system_props(rec).get("correlationId"), []).append(rec)
    assert sorted(by_corr) == sorted("corr-%d" % i for i in range(LEAF_COUNT)), sorted(by_corr)
    for i in range(LEAF_COUNT):
        (rec,) = by_corr["corr-%d" % i]
        sysp = system_props(rec)
        assert rec["payload"] == leaf_body(i), rec
        assert rec["origin"] == edge.info["deviceId"], rec
        assert sysp.get("connectionDeviceId") == edge.info["deviceId"], rec
        assert sysp.get("connectionModuleId") == ROUTER, rec
        assert sysp.get("messageId") == "%s-msg-%d" % (LEAF_ID, i), rec
        assert sysp.get("contentType") == "application/json", rec
        assert app_props(rec) == {"seq": str(i), "echoedBy": "sdk_module"}, rec

