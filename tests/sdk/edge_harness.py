"""Harness for the SDK conformance tests (used by conftest.py and the tests).

It drives the real `iotedge-local` binary (env IOTEDGE_LOCAL_BIN, default
target/debug/iotedge-local) and the official azure-iot-device SDK, and checks
what ends up in the upstream store (STATE/upstream/messages.jsonl).

Note: the SDK always connects to port 8883 (hard-coded), so only one runtime
can run at a time; every runtime is stopped before the next one starts.
"""

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

SDK_DIR = Path(__file__).resolve().parent
REPO_ROOT = SDK_DIR.parents[1]
MQTT_PORT = 8883  # fixed by the SDK (azure/iot/device/common/mqtt_transport.py)
READY_TIMEOUT = float(os.environ.get("IOTEDGE_SDK_READY_TIMEOUT", "60"))
WAIT_TIMEOUT = float(os.environ.get("IOTEDGE_SDK_WAIT_TIMEOUT", "20"))
STOP_TIMEOUT = 10.0

# Runtimes whose logs are attached to the report of a failing test.
_LIVE_RUNTIMES = []


def sdk_python():
    """Interpreter that has azure-iot-device installed (the one running pytest
    unless IOTEDGE_SDK_PYTHON says otherwise)."""
    return os.environ.get("IOTEDGE_SDK_PYTHON", sys.executable)


_SDK_CHECKED = []


def check_sdk_python():
    """Fail early, with a hint, if the module/leaf interpreter lacks the SDK."""
    if _SDK_CHECKED:
        return
    res = subprocess.run([sdk_python(), "-c", "import azure.iot.device"],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.fail("%s cannot import azure.iot.device (run scripts/setup-python.sh and use "
                    ".venv/bin/python -m pytest, or set IOTEDGE_SDK_PYTHON):\n%s"
                    % (sdk_python(), res.stderr), pytrace=False)
    _SDK_CHECKED.append(True)


def iotedge_bin():
    path = Path(os.environ.get("IOTEDGE_LOCAL_BIN", REPO_ROOT / "target" / "debug" / "iotedge-local"))
    if not path.is_absolute():
        path = (REPO_ROOT / path).resolve()
    if not os.access(path, os.X_OK):
        pytest.fail("iotedge-local binary not found or not executable at %s "
                    "(build it, or set IOTEDGE_LOCAL_BIN)" % path, pytrace=False)
    return str(path)


def python_command(script, *args):
    """A shell command (for `--exec MODULE=COMMAND`, run via sh -c) that
    runs one of the SDK programs of this directory. A single simple command,
    so the shell replaces itself with Python (the runtime itself also runs it
    as `sh -c "exec COMMAND"`) and the runtime's SIGTERM reaches Python."""
    argv = [sdk_python(), "-u", str(SDK_DIR / script)] + [str(a) for a in args]
    return " ".join(shlex.quote(a) for a in argv)


def wait_until(predicate, timeout=WAIT_TIMEOUT, interval=0.25):
    """Poll predicate() until it returns a truthy value; return that value or
    the last falsy one at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def port_in_use(port, host="127.0.0.1"):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def tail(path, lines=150):
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as exc:
        return "<unreadable: %s>" % exc
    parts = text.splitlines()
    if len(parts) > lines:
        parts = ["... (%d earlier lines cut)" % (len(parts) - lines)] + parts[-lines:]
    return "\n".join(parts)


class EdgeRuntime:
    """One `iotedge-local run` process with its own state directory."""

    def __init__(self, name, workdir, manifest, execs=None, skips=(), extra_args=()):
        self.name = name
        self.workdir = Path(workdir)
        self.state = self.workdir / "state"
        self.manifest = Path(manifest)
        self.execs = dict(execs or {})
        self.skips = list(skips)
        self.extra_args = list(extra_args)
        self.bin = iotedge_bin()
        check_sdk_python()
        self.proc = None
        self.info = None
        self.exit_code = None
        self.stdout_path = self.workdir / "runtime.stdout.log"
        self.stderr_path = self.workdir / "runtime.stderr.log"

    # -- lifecycle ---------------------------------------------------------
    def start(self):
        self.state.mkdir(parents=True, exist_ok=True)
        runtime_json = self.state / "runtime.json"
        if runtime_json.exists():
            runtime_json.unlink()
        if wait_until(lambda: not port_in_use(MQTT_PORT), timeout=STOP_TIMEOUT) is False:
            pytest.fail("port %d is already in use by another process; the SDK can only "
                        "connect to 8883, so stop the other edge runtime first" % MQTT_PORT,
                        pytrace=False)
        cmd = [self.bin, "run", "--manifest", str(self.manifest), "--state", str(self.state),
               "--mqtt-port", str(MQTT_PORT)]
        for module, command in self.execs.items():
            cmd += ["--exec", "%s=%s" % (module, command)]
        for module in self.skips:
            cmd += ["--skip", module]
        cmd += self.extra_args
        env = dict(os.environ, PYTHONUNBUFFERED="1", RUST_BACKTRACE="1")
        (self.workdir / "runtime.cmd").write_text(" ".join(shlex.quote(c) for c in cmd) + "\n")
        self.proc = subprocess.Popen(
            cmd, cwd=str(REPO_ROOT), env=env, stdin=subprocess.DEVNULL,
            stdout=open(self.stdout_path, "wb"), stderr=open(self.stderr_path, "wb"),
            start_new_session=True)
        _LIVE_RUNTIMES.append(self)

        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                self.exit_code = self.proc.returncode
                pytest.fail("iotedge-local exited with %s before it was ready\n%s"
                            % (self.exit_code, self.dump_logs()), pytrace=False)
            if runtime_json.exists():
                try:
                    self.info = json.loads(runtime_json.read_text())
                    break
                except ValueError:
                    pass  # still being written
            if time.monotonic() > deadline:
                pytest.fail("iotedge-local did not write %s within %.0f s\n%s"
                            % (runtime_json, READY_TIMEOUT, self.dump_logs()), pytrace=False)
            time.sleep(0.2)
        return self

    def stop(self):
        """SIGTERM, then SIGKILL after 10 s. Returns the exit code (or None if
        it had to be killed)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.exit_code = self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._kill_group()
                self.proc.wait(timeout=STOP_TIMEOUT)
                self.exit_code = None
        elif self.exit_code is None:
            self.exit_code = self.proc.returncode
        # Anything the runtime left behind in its own process group (modules
        # it failed to stop) goes too, so the next runtime gets port 8883.
        self._kill_group()
        return self.exit_code

    def _kill_group(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    # -- CLI helpers ---------------------------------------------------------
    def cli(self, *args, timeout=30, check=True):
        res = subprocess.run([self.bin] + [str(a) for a in args], cwd=str(REPO_ROOT),
                             stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             timeout=timeout)
        if check and res.returncode != 0:
            pytest.fail("`iotedge-local %s` exited %d\nstdout:\n%s\nstderr:\n%s"
                        % (" ".join(map(str, args)), res.returncode, res.stdout, res.stderr),
                        pytrace=False)
        return res

    def add_device(self, device_id):
        res = self.cli("device", "add", device_id, "--state", self.state)
        lines = [l.strip() for l in res.stdout.splitlines() if "HostName=" in l]
        assert len(lines) == 1, "expected one connection string on stdout, got:\n%s" % res.stdout
        cs = lines[0]
        fields = dict(p.split("=", 1) for p in cs.split(";") if "=" in p)
        assert fields.get("DeviceId") == device_id, cs
        assert fields.get("SharedAccessKey"), cs
        assert fields.get("GatewayHostName") == self.info["gatewayHostname"], cs
        assert fields.get("HostName") == self.info["hubHostname"], cs
        return cs

    def twin_set(self, module, patch):
        return self.cli("twin", "set", module, json.dumps(patch), "--state", self.state)

    def run_leaf(self, connection_string, count, timeout=90):
        cmd = [sdk_python(), "-u", str(SDK_DIR / "sdk_leaf.py"), connection_string,
               self.info["caCert"], "--count", str(count)]
        res = subprocess.run(cmd, cwd=str(REPO_ROOT), stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=timeout)
        (self.workdir / "leaf.log").write_text(res.stdout + res.stderr)
        return res

    # -- upstream store ------------------------------------------------------
    @property
    def upstream_path(self):
        return self.state / "upstream" / "messages.jsonl"

    def upstream(self):
        """All complete records of the upstream store, in file order."""
        try:
            data = self.upstream_path.read_text()
        except FileNotFoundError:
            return []
        records = []
        for line in data.splitlines(keepends=True):
            if not line.endswith("\n"):
                break  # a record still being written
            if line.strip():
                records.append(json.loads(line))
        return records

    def wait_records(self, predicate, count=1, timeout=WAIT_TIMEOUT):
        """Wait until at least `count` upstream records satisfy predicate;
        returns the matching records (possibly fewer at the timeout)."""
        found = []

        def check():
            found[:] = [r for r in self.upstream() if predicate(r)]
            return len(found) >= count

        wait_until(check, timeout=timeout)
        return list(found)

    # -- diagnostics ---------------------------------------------------------
    def module_log(self, module):
        return self.state / "logs" / ("%s.log" % module)

    def dump_logs(self):
        out = ["==== iotedge-local [%s] state=%s" % (self.name, self.state)]
        cmd_file = self.workdir / "runtime.cmd"
        if cmd_file.exists():
            out.append("---- command: " + cmd_file.read_text().strip())
        if self.proc is not None:
            out.append("---- pid %s, exit code %s" % (self.proc.pid, self.proc.poll()))
        for label, path in (("runtime stdout", self.stdout_path),
                            ("runtime stderr", self.stderr_path)):
            out.append("---- %s (%s)\n%s" % (label, path, tail(path)))
        logs = self.state / "logs"
        if logs.is_dir():
            for path in sorted(logs.glob("*.log")):
                out.append("---- module log %s\n%s" % (path.name, tail(path)))
        leaf = self.workdir / "leaf.log"
        if leaf.exists():
            out.append("---- leaf output\n%s" % tail(leaf))
        out.append("---- upstream (%s)\n%s" % (self.upstream_path, tail(self.upstream_path, 60)))
        return "\n".join(out)


# -- assertion helpers shared by the tests -----------------------------------
def system_props(record):
    return (record.get("properties") or {}).get("system") or {}


def app_props(record):
    return (record.get("properties") or {}).get("application") or {}


def payload_kind(record):
    payload = record.get("payload")
    return payload.get("kind") if isinstance(payload, dict) else None
