"""The module images built by a real container engine (docker/build-images.sh: Docker where
its daemon answers, else Podman from Debian's packages) from docker/Dockerfile.amd64, with the
base image made from Debian packages and the module files from this machine's release binaries
(no registry is reachable here). Measured from the engine: sizes, user, HEALTHCHECK; each
image started: its program and libraries load inside it.

Where no engine can be started these tests are skipped, saying why; with
REQUIRE_CONTAINER_ENGINE=1 (scripts/test.sh sets it, after installing Podman) they fail instead.
"""
import os
import shlex
import subprocess
import sys

import pytest

from conftest import BUILT_MODULES, MODULE_UID, ROOT, bin_dir, load_json

SIZE_TARGETS_MB = {"turbofanRouter": 30, "avroFileWriter": 30, "turbofanRulClassifier": 80}


@pytest.fixture(scope="module")
def engine():
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "setup-container-engine.sh")],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        why = "no container engine: " + proc.stderr.strip()
        if os.environ.get("REQUIRE_CONTAINER_ENGINE") == "1":
            pytest.fail(why)
        pytest.skip(why)
    found = dict(line.split("=", 1) for line in proc.stdout.split("\n") if "=" in line)
    return shlex.split(shlex.split(found["ENGINE"])[0])


@pytest.fixture(scope="module")
def images(engine):
    # pip for ONNX Runtime's wheel: this environment's (a fresh Debian has none for python3).
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(ROOT / "docker" / "build-images.sh"), "--bin-dir", str(bin_dir()),
                           "--modules", " ".join(BUILT_MODULES)],
                          capture_output=True, text=True, timeout=1200, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return load_json(ROOT / "out" / "images.json")


def test_the_images_build_within_their_size_targets(images):
    for m in BUILT_MODULES:
        mb = images[m]["bytes"] / 1e6
        assert mb <= SIZE_TARGETS_MB[m], "%s: %.1f MB, target %d MB" % (m, mb, SIZE_TARGETS_MB[m])
        assert images[m]["image"] == "localhost/%s:0.1.0-amd64" % m.lower()


def test_each_image_runs_as_the_module_user_with_its_healthcheck(images):
    for m in BUILT_MODULES:
        assert images[m]["user"] == "%d:%d" % (MODULE_UID, MODULE_UID), m
        check = images[m]["healthcheck"]
        assert check["Test"] == ["CMD", "/app/module", "--health"], m
        assert check["Interval"] == 30 * 10**9 and check["Retries"] == 3, m


def run(engine, image, *args):
    limits = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
    return subprocess.run([*engine, "run", "--rm", *limits, image, *args],
                          capture_output=True, text=True, timeout=120)


def test_each_image_starts_its_program_with_the_libraries_inside_it(engine, images):
    for m in BUILT_MODULES:
        image = images[m]["image"]
        # The HEALTHCHECK's command: the program runs (loader, libc, libstdc++ from the image)
        # and says there is nothing ready to ask.
        health = run(engine, image, "--health")
        assert health.returncode == 1, (m, health.returncode, health.stderr[-2000:])
        assert "not healthy" in health.stderr and "panicked" not in health.stderr, health.stderr
        # Started as the runtime would, but with no IoT Edge environment: it says what is
        # missing and exits 1 for the runtime to restart it.
        start = run(engine, image)
        assert start.returncode == 1, (m, start.stderr[-2000:])
        assert "no module identity" in start.stdout + start.stderr, (m, start.stdout, start.stderr)
