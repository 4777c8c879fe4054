"""Shared fixtures of tests/deploy (run by tests/deploy/run.sh, in .venv-deploy).

Environment: DEPLOY_MODULES (modules whose binaries the image tests use; default all),
DEPLOY_BIN_DIR (release binaries of the modules; default
$CARGO_TARGET_DIR/release, else target/release), DEPLOY_RUNTIME (iotedge-local; default the
one in DEPLOY_BIN_DIR), DEPLOY_CONFIG_DIR (where genconfig writes; default <repo>/config).
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
import genconfig  # noqa: E402

MODULES = ("turbofanRouter", "turbofanRulClassifier", "avroFileWriter")
# Platforms each module has an image for (module.json); the classifier has no arm32v7 image
# because ONNX Runtime publishes no armv7 wheel (docs/deploy.md), and a GPU image for amd64.
IMAGE_PLATFORMS = {
    "turbofanRouter": ("amd64", "arm64v8", "arm32v7"),
    "turbofanRulClassifier": ("amd64", "arm64v8", "amd64.gpu"),
    "avroFileWriter": ("amd64", "arm64v8", "arm32v7"),
}
MODULE_UID = 65532
TRIPLE = "x86_64-linux-gnu"
# The modules whose binaries the image tests use (DEPLOY_MODULES narrows it, e.g. while a
# module does not build; tests/deploy/run.sh always tests all).
BUILT_MODULES = tuple(os.environ.get("DEPLOY_MODULES", " ".join(MODULES)).split())


def bin_dir():
    d = os.environ.get("DEPLOY_BIN_DIR")
    if d:
        return Path(d)
    return Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target") / "release"


def runtime_path():
    p = os.environ.get("DEPLOY_RUNTIME")
    return Path(p) if p else bin_dir() / "iotedge-local"


def load_json(path):
    return json.loads(Path(path).read_text())


def agent_desired(doc):
    return doc["modulesContent"]["$edgeAgent"]["properties.desired"]


def hub_desired(doc):
    return doc["modulesContent"]["$edgeHub"]["properties.desired"]


def create_options(settings):
    """createOptions as an object: templates hold objects, generated manifests JSON strings
    (split by iotedgedev into createOptions, createOptions01, … when longer than 512)."""
    co = settings.get("createOptions")
    if co is None or isinstance(co, dict):
        return co or {}
    text = co + "".join(settings.get("createOptions%02d" % i, "") for i in range(1, 8))
    return json.loads(text) if text.strip() else {}


@pytest.fixture(scope="session")
def generated():
    """Every template × platform through `iotedgedev solution genconfig` (once per session)."""
    out = Path(os.environ.get("DEPLOY_CONFIG_DIR") or ROOT / "config")
    return genconfig.run(out)


@pytest.fixture(scope="session")
def tree():
    """The amd64 image trees, assembled by docker/assemble.sh (once per session)."""
    for m in BUILT_MODULES:
        assert (bin_dir() / m).is_file(), "no %s in %s (tests/deploy/run.sh builds it)" % (m, bin_dir())
    out = Path(os.environ.get("DEPLOY_TREE_DIR") or ROOT / "out" / "image-tree")
    env = dict(os.environ, PYTHON=str(ROOT / ".venv-deploy" / "bin" / "python"))
    proc = subprocess.run(["bash", str(ROOT / "docker" / "assemble.sh"), "--bin-dir", str(bin_dir()),
                           "--out", str(out)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="session")
def gpu_tree():
    """The classifier's GPU image tree (docker/assemble.sh --gpu, once per session): about 1.6 GB
    of wheels, cached in the out folder."""
    assert (bin_dir() / "turbofanRulClassifier").is_file(), "no classifier in %s" % bin_dir()
    out = Path(os.environ.get("DEPLOY_GPU_TREE_DIR") or ROOT / "out" / "image-tree-gpu")
    env = dict(os.environ, PYTHON=str(ROOT / ".venv-deploy" / "bin" / "python"))
    proc = subprocess.run(["bash", str(ROOT / "docker" / "assemble.sh"), "--gpu", "--bin-dir",
                           str(bin_dir()), "--out", str(out)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    return out


class LocalRuntime:
    """`iotedge-local run` on a manifest with every module skipped: edgeHub parses the routes."""

    def __init__(self, manifest, state):
        self.manifest = Path(manifest)
        self.state = Path(state)

    def ready_info(self, timeout=60):
        doc = load_json(self.manifest)
        modules = list(agent_desired(doc).get("modules", {}))
        rt = runtime_path()
        if not rt.is_file():
            pytest.fail("no iotedge-local at %s (tests/deploy/run.sh builds it)" % rt, pytrace=False)
        cmd = [str(rt), "--state", str(self.state), "run", "--manifest", str(self.manifest),
               "--mqtt-port", "0"]
        for m in modules:
            cmd += ["--skip", m]
        log = open(self.state.parent / (self.state.name + ".log"), "wb")
        env = {k: v for k, v in os.environ.items() if k not in ("ORT_DYLIB_PATH", "MODEL_PATH")}
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        ready = self.state / "runtime.json"
        try:
            deadline = time.monotonic() + timeout
            while not ready.is_file():
                if proc.poll() is not None:
                    log.flush()
                    pytest.fail("iotedge-local stopped (exit %s) on %s:\n%s" % (
                        proc.returncode, self.manifest,
                        (self.state.parent / (self.state.name + ".log")).read_text()[-3000:]),
                        pytrace=False)
                if time.monotonic() > deadline:
                    pytest.fail("iotedge-local was not ready within %d s" % timeout, pytrace=False)
                time.sleep(0.1)
            time.sleep(0.1)
            return load_json(ready)
        finally:
            stop(proc)
            log.close()


def stop(proc, grace=15):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
