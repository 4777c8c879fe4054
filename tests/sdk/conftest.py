"""pytest fixtures for the SDK conformance tests (see edge_harness.py)."""

import pytest

from edge_harness import EdgeRuntime, _LIVE_RUNTIMES


@pytest.fixture(scope="module")
def iotedge_local_factory(tmp_path_factory):
    """Start runtimes for a test module; all are stopped when it ends."""
    started = []

    def start(name, manifest, execs=None, skips=(), extra_args=()):
        workdir = tmp_path_factory.mktemp(name)
        rt = EdgeRuntime(name, workdir, manifest, execs=execs, skips=skips,
                         extra_args=extra_args)
        started.append(rt)
        return rt.start()

    yield start
    for rt in started:
        rt.stop()
        if rt in _LIVE_RUNTIMES:
            _LIVE_RUNTIMES.remove(rt)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for rt in list(_LIVE_RUNTIMES):
            try:
                report.sections.append(("iotedge-local logs: %s" % rt.name, rt.dump_logs()))
            except Exception as exc:  # never hide the real failure
                report.sections.append(("iotedge-local logs: %s" % rt.name, repr(exc)))
