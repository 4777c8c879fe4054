"""The container images, without a container engine: the Dockerfiles as Docker parses them and
as hadolint judges them, the build context, and the file tree the amd64 images contain,
assembled by docker/assemble.sh (the same docker/rootfs.sh, the same ONNX Runtime wheel) and
run on the local runtime, each module from its own tree."""
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import dockerfile
import pytest

from conftest import (BUILT_MODULES, IMAGE_PLATFORMS, MODULE_UID, MODULES, ROOT, TRIPLE,
                      bin_dir, load_json, runtime_path, stop)

PLATFORMS = ("amd64", "arm64v8", "arm32v7", "amd64.gpu")
MARKER = "# ---- identical in the four Dockerfiles below this line"
GPU_ORT_SHA256 = "e26c475fe361b2015f45b4b824bd13f0bb20204e59b62814e6f0acd5f3d491a6"
# Size targets of the issue, in MB (10^6 bytes), for the images' uncompressed file trees.
SIZE_TARGETS_MB = {"turbofanRouter": 30, "avroFileWriter": 30, "turbofanRulClassifier": 80}


def dockerfile_path(platform):
    return ROOT / "docker" / ("Dockerfile." + platform)


def header_args(platform):
    return {c.value[0].split("=", 1)[0]: c.value[0].split("=", 1)[1]
            for c in dockerfile.parse_file(str(dockerfile_path(platform)))
            if c.cmd == "ARG" and "=" in c.value[0]}


def stages(platform):
    """{stage name: [instructions]} as BuildKit's parser reads the file."""
    out, current = {}, None
    for c in dockerfile.parse_file(str(dockerfile_path(platform))):
        if c.cmd == "FROM":
            current = c.value[2] if len(c.value) == 3 else "(final)"
            out[current] = [c]
        elif current:
            out[current].append(c)
    return out


# ---- the Dockerfiles -------------------------------------------------------------------------

def test_the_four_dockerfiles_differ_only_in_their_header():
    bodies = {p: dockerfile_path(p).read_text().split(MARKER, 1) for p in PLATFORMS}
    assert all(len(b) == 2 for b in bodies.values())
    assert len({b[1] for b in bodies.values()}) == 1
    expected = {
        "amd64": ("x86_64-unknown-linux-gnu", "x86_64-linux-gnu", "amd64", "nonroot-amd64", "manylinux_2_28_x86_64"),
        "arm64v8": ("aarch64-unknown-linux-gnu", "aarch64-linux-gnu", "arm64", "nonroot-arm64", "manylinux_2_28_aarch64"),
        "arm32v7": ("armv7-unknown-linux-gnueabihf", "arm-linux-gnueabihf", "armhf", "nonroot-arm", ""),
        "amd64.gpu": ("x86_64-unknown-linux-gnu", "x86_64-linux-gnu", "amd64", "nonroot-amd64", "manylinux_2_28_x86_64"),
    }
    for p, (target, triple, deb, tag, wheel) in expected.items():
        a = header_args(p)
        assert (a["RUST_TARGET"], a["GNU_TRIPLE"], a["DEB_ARCH"], a["ORT_WHEEL_PLATFORM"]) == (target, triple, deb, wheel)
        assert a["BASE_IMAGE"] == "gcr.io/distroless/static-debian12:" + tag
        assert bool(a["ORT_WHEEL_SHA256"]) == bool(wheel)
        gpu = p.endswith(".gpu")
        assert a["ORT_PACKAGE"] == ("onnxruntime-gpu" if gpu else "onnxruntime"), p
        assert a["CUDA_REQUIREMENTS"] == ("gpu-requirements.txt" if gpu else ""), p
        assert a["EXTRA_PACKAGES"] == ("zlib1g" if gpu else ""), p
    # The GPU image is the amd64 one with the GPU build of ONNX Runtime and CUDA: nothing else.
    cpu, gpu = header_args("amd64"), header_args("amd64.gpu")
    differ = {k for k in cpu if cpu[k] != gpu[k]}
    assert differ == {"ORT_PACKAGE", "ORT_WHEEL_SHA256", "CUDA_REQUIREMENTS", "EXTRA_PACKAGES"}


def test_stages_cross_compile_and_the_image_only_copies_files():
    for p in PLATFORMS:
        s = stages(p)
        assert list(s) == ["source", "prebuilt", "build", "image", "writer", "(final)"], p
        assert s["source"][0].value[0] == "${RUST_IMAGE}"
        # The build stage is the source build unless BUILD_FROM says prebuilt: the module's
        # files laid out beforehand in docker/prebuilt (docker/build-images.sh --bases local).
        assert header_args(p)["BUILD_FROM"] == "source"
        assert s["build"][0].value[0] == "${BUILD_FROM}" and len(s["build"]) == 1
        prebuilt = s["prebuilt"]
        assert prebuilt[0].value[0] == "scratch"
        assert [(c.cmd, c.value) for c in prebuilt[1:]] == [("COPY", ("docker/prebuilt/", "/out/"))]
        # No RUN after the source stage: building an arm image needs no emulation.
        for name in ("prebuilt", "build", "image", "writer", "(final)"):
            assert not [c for c in s[name] if c.cmd == "RUN"], (p, name)
        image = {c.cmd: c for c in s["image"]}
        assert image["FROM"].value[0] == "${BASE_IMAGE}"
        assert image["USER"].value == ("%d:%d" % (MODULE_UID, MODULE_UID),)
        assert image["ENTRYPOINT"].value == ("/app/module",)
        writer_copy = [c for c in s["writer"] if c.cmd == "COPY"]
        assert len(writer_copy) == 1
        assert "--chown=%d:%d" % (MODULE_UID, MODULE_UID) in writer_copy[0].flags
        assert writer_copy[0].value[-1] == "/avrofiles/"
        assert s["(final)"][0].value == ("image",)


def test_onnxruntime_pins_agree_everywhere():
    a = header_args("amd64")
    version = a["ORT_VERSION"]
    assert "onnxruntime==%s" % version in (ROOT / "tests" / "requirements.txt").read_text()
    lib = (ROOT / "crates" / "rul-model" / "src" / "lib.rs").read_text()
    assert re.search(r'ONNXRUNTIME_VERSION: &str = "%s"' % re.escape(version), lib)
    assemble = (ROOT / "docker" / "assemble.sh").read_text()
    for key in ("ORT_VERSION", "ORT_WHEEL_PLATFORM", "ORT_WHEEL_SHA256"):
        assert "%s=%s\n" % (key, a[key]) in assemble, key
    assert "TRIPLE=%s\n" % a["GNU_TRIPLE"] in assemble
    assert "MODULE_UID=%d\n" % MODULE_UID in assemble
    assert "static-debian12:" + a["BASE_IMAGE"].rsplit(":", 1)[1] in assemble
    gpu = header_args("amd64.gpu")
    assert gpu["ORT_WHEEL_SHA256"] == GPU_ORT_SHA256
    assert "GPU_ORT_WHEEL_SHA256=%s\n" % GPU_ORT_SHA256 in assemble
    assert "SHA256=%s\n" % GPU_ORT_SHA256 in (ROOT / "scripts" / "setup-onnxruntime-gpu.sh").read_text()
    # NVIDIA's wheels: each pinned to one version and hash, the CUDA major the provider links.
    reqs = [l for l in (ROOT / "docker" / "gpu-requirements.txt").read_text().splitlines()
            if l and not l.startswith("#")]
    assert reqs and all(re.fullmatch(r"nvidia-[a-z0-9-]+==[0-9.]+ --hash=sha256:[0-9a-f]{64}", l) for l in reqs)
    names = {l.split("==")[0] for l in reqs}
    assert {"nvidia-cuda-runtime", "nvidia-cublas", "nvidia-cudnn-cu13"} <= names
    arm32 = header_args("arm32v7")
    assert arm32["ORT_WHEEL_PLATFORM"] == "" and "arm32v7" not in IMAGE_PLATFORMS["turbofanRulClassifier"]


def test_hadolint_finds_nothing():
    files = [str(dockerfile_path(p)) for p in PLATFORMS]
    hadolint = Path(sys.executable).parent / "hadolint"
    proc = subprocess.run([str(hadolint), "--no-color", *files], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_build_context_has_the_workspace_and_the_model_and_no_build_output():
    from docker.utils.build import exclude_paths

    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    included = set(exclude_paths(str(ROOT), patterns, dockerfile="docker/Dockerfile.amd64"))
    members = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["members"]
    for folder in members:
        # Every file of the member that git knows or that is not ignored (new modules too).
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard",
                                 "--", folder], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.split()
        assert folder + "/Cargo.toml" in listed, folder
        for f in listed:
            assert f in included, "%s (workspace member %s) would not be in the build context" % (f, folder)
    for f in ("Cargo.toml", "Cargo.lock", "models/rul.onnx", "models/rul_history.onnx", "docker/rootfs.sh"):
        assert f in included, f
    for f in included:
        assert not f.startswith(("target/", ".venv", ".git/", "out/", ".edge-state", "config/")), f
        assert not (f.startswith("models/") and f not in ("models/rul.onnx", "models/rul_history.onnx")), f


# ---- the amd64 file tree, assembled and run ---------------------------------------------------

def files_of(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink())


def test_tree_has_the_image_layout(tree, tmp_path):
    libs = ["usr/lib/%s/%s" % (TRIPLE, n) for n in ("ld-linux-x86-64.so.2", "libc.so.6", "libgcc_s.so.1", "libm.so.6")]
    # The base image's files (docker/base-tree.sh), what distroless static has.
    subprocess.run(["bash", str(ROOT / "docker" / "base-tree.sh"), str(tmp_path / "base")], check=True)
    base = set(files_of(tmp_path / "base"))
    assert {"etc/group", "etc/passwd", "etc/ssl/certs/ca-certificates.crt", "etc/services",
            "usr/share/zoneinfo/UTC", "etc/os-release"} <= base
    assert not [f for f in base if f.startswith(("bin/", "usr/bin/", "sbin/", "usr/sbin/", "usr/share/doc/"))]
    for m in BUILT_MODULES:
        root = tree / m
        have = set(files_of(root))
        want = {"app/" + m, "app/module", "lib64/ld-linux-x86-64.so.2", *libs, *base}
        if m == "turbofanRulClassifier":
            want |= {"app/rul.onnx", "app/rul_history.onnx", "app/libonnxruntime.so"}
            want |= {"usr/lib/%s/%s" % (TRIPLE, n) for n in ("libstdc++.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1")}
        assert have == want, (m, sorted(have ^ want))
        assert os.readlink(root / "app" / "module") == m
        assert os.readlink(root / "lib64" / "ld-linux-x86-64.so.2") == "/usr/lib/%s/ld-linux-x86-64.so.2" % TRIPLE
        assert "nonroot:x:%d:%d:" % (MODULE_UID, MODULE_UID) in (root / "etc" / "passwd").read_text()
        assert (root / "tmp").stat().st_mode & 0o1777 == 0o1777
    model = ROOT / "models" / "rul.onnx"
    assert (tree / "turbofanRulClassifier" / "app" / "rul.onnx").read_bytes() == model.read_bytes()
    history = ROOT / "models" / "rul_history.onnx"
    assert (tree / "turbofanRulClassifier" / "app" / "rul_history.onnx").read_bytes() == history.read_bytes()
    avro = tree / "avroFileWriter" / "avrofiles"
    if "avroFileWriter" not in BUILT_MODULES:
        return
    assert avro.is_dir() and not any(avro.iterdir())
    if os.geteuid() == 0:
        assert (avro.stat().st_uid, avro.stat().st_gid) == (MODULE_UID, MODULE_UID)


def test_estimated_image_sizes_are_within_target(tree):
    sizes = load_json(tree / "sizes.json")
    for m, target in SIZE_TARGETS_MB.items():
        if m not in BUILT_MODULES:
            continue
        estimate = sizes["modules"][m]["imageBytesEstimate"] / 1e6
        assert estimate <= target, "%s: %.1f MB estimated, target %d MB" % (m, estimate, target)


def twin(state, module):
    proc = subprocess.run([str(runtime_path()), "--state", str(state), "twin", "get", module],
                          capture_output=True, text=True, timeout=30)
    return json.loads(proc.stdout) if proc.returncode == 0 else {}


def mapped_libraries(pid):
    libs = set()
    for line in Path("/proc/%d/maps" % pid).read_text().splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and ".so" in parts[5]:
            libs.add(parts[5].strip())
    return libs


def module_processes(tree, modules=BUILT_MODULES):
    """{module: pid} of the processes running each module's binary from TREE."""
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            exe = os.readlink(d / "exe")
        except OSError:
            continue
        for m in modules:
            if exe == str(tree / m / "app" / m):
                found[m] = int(d.name)
    return found


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_from_tree(tree, tmp_path, *args):
    """`docker/assemble.sh --out TREE --run` (ARGS: its other options) in the background, the
    classifier's scoring endpoint on a free port: (process, log file, state folder, port)."""
    state = tmp_path / "state"
    port = free_port()
    env = dict(os.environ, MODULE_ENV="SCORING_HTTP_ADDR=127.0.0.1:%d" % port)
    log = open(tmp_path / "assemble-run.log", "wb")
    proc = subprocess.Popen(["bash", str(ROOT / "docker" / "assemble.sh"), *args, "--bin-dir",
                             str(bin_dir()), "--out", str(tree), "--run", "--state", str(state),
                             "--runtime", str(runtime_path())],
                            stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    return proc, log, state, port


def score_one_row(port):
    """One row through the classifier's debug endpoint: its PredictedRul."""
    row = {"Sensor%d" % i: 500.0 + i for i in range(1, 22)}
    req = urllib.request.Request("http://127.0.0.1:%d/score" % port, data=json.dumps(row).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)[0]["PredictedRul"]


def test_modules_run_from_their_trees(tree, tmp_path):
    """deployment.template.json on the local runtime, every module started from its tree's
    /app/module with the tree's libraries: the classifier loads its model and ONNX Runtime from
    beside itself, every module gets its twin, and no library outside the trees is used."""
    proc, log, state, port = run_from_tree(tree, tmp_path)
    try:
        deadline = time.monotonic() + 120
        reported = {}
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "assemble-run.log").read_text()[-3000:]
            if (state / "runtime.json").is_file():
                reported = {m: twin(state, m).get("reported", {}) for m in MODULES}
                if all("LoggingLevel" in reported[m] or "ModelStatus" in reported[m]
                       for m in BUILT_MODULES):
                    break
            time.sleep(0.5)
        logs = {m: (state / "logs" / ("%s.log" % m)).read_text()[-2000:]
                for m in MODULES if (state / "logs" / ("%s.log" % m)).is_file()}
        classifier = reported.get("turbofanRulClassifier", {})
        assert classifier.get("ModelStatus") == "loaded", (classifier, logs)
        sha = hashlib.sha256((ROOT / "models" / "rul.onnx").read_bytes()).hexdigest()
        assert classifier["Models"]["row"]["Sha256"] == sha
        # The manifest asks for history mode: the live model is the history model of the tree.
        sha = hashlib.sha256((ROOT / "models" / "rul_history.onnx").read_bytes()).hexdigest()
        assert (classifier["ScoringMode"], classifier["Model"]["Sha256"]) == ("history", sha)
        for m in BUILT_MODULES:
            assert reported[m].get("LoggingLevel") == "info", (m, reported[m], logs)

        # The health endpoint and one scoring request, on the model from the tree.
        with urllib.request.urlopen("http://127.0.0.1:%d/" % port, timeout=10) as r:
            assert json.load(r)["status"] == "healthy"
        assert 0 <= score_one_row(port) <= 125

        procs = module_processes(tree)
        assert set(procs) == set(BUILT_MODULES), procs
        host_loader = None
        for m, pid in procs.items():
            for lib in mapped_libraries(pid):
                if lib.startswith(str(tree / m) + "/"):
                    continue
                # The kernel maps the program interpreter by the path in the binary, i.e. the
                # machine's own /lib64/ld-linux-x86-64.so.2: it must be the tree's file.
                assert Path(lib).name == "ld-linux-x86-64.so.2", (m, lib)
                host_loader = lib
                tree_loader = tree / m / "usr" / "lib" / TRIPLE / "ld-linux-x86-64.so.2"
                assert Path(lib).read_bytes() == tree_loader.read_bytes(), (m, lib)
        assert host_loader
        classifier_libs = mapped_libraries(procs["turbofanRulClassifier"])
        assert str(tree / "turbofanRulClassifier" / "app" / "libonnxruntime.so") in classifier_libs
    finally:
        stop(proc)
        log.close()


# ---- the classifier's GPU image (docker/Dockerfile.amd64.gpu) -------------------------------

def needed(path):
    out = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", out)


def test_gpu_tree_carries_onnxruntime_gpu_and_cuda_and_needs_only_the_driver(gpu_tree):
    root = gpu_tree / "turbofanRulClassifier"
    app = {p.name for p in (root / "app").iterdir()}
    assert {"turbofanRulClassifier", "module", "rul.onnx", "rul_history.onnx", "libonnxruntime.so",
            "libonnxruntime_providers_cuda.so", "libonnxruntime_providers_shared.so",
            "libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10",
            "libcufft.so.12", "libcudnn.so.9"} <= app
    # Every library any file of the tree links is in the tree, but the NVIDIA driver's.
    here = app | {p.name for p in (root / "usr" / "lib" / TRIPLE).iterdir()}
    missing = {}
    for f in [*(root / "app").iterdir(), *(root / "usr" / "lib" / TRIPLE).iterdir()]:
        if f.is_symlink() or f.suffix == ".onnx" or f.name == "module":
            continue
        lost = [n for n in needed(f) if n not in here and n != "libonnxruntime.so.1"]
        if lost:
            missing[f.name] = lost
    assert all(lost == ["libcuda.so.1"] for lost in missing.values()), missing
    assert "libonnxruntime_providers_cuda.so" in missing and "libcuda.so.1" not in here
    sizes = load_json(gpu_tree / "sizes.json")
    estimate = sizes["modules"]["turbofanRulClassifier"]["imageBytesEstimate"] / 1e6
    assert 2000 < estimate <= 2700, "%.0f MB estimated (docs/deploy.md says about 2.5 GB)" % estimate


def test_gpu_image_without_a_gpu_scores_on_the_cpu_and_says_why(gpu_tree, tmp_path):
    """deployment.gpu.template.json on the local runtime, the classifier from the GPU tree, on a
    machine without an NVIDIA driver (a GPU image scheduled where no GPU was given): it loads,
    reports that CUDA cannot start and why, and scores on the CPU."""
    if Path("/dev/nvidia0").exists():
        pytest.skip("this machine has an NVIDIA GPU")
    proc, log, state, port = run_from_tree(gpu_tree, tmp_path, "--gpu", "--manifest",
                                           str(ROOT / "deployment.gpu.template.json"))
    try:
        deadline = time.monotonic() + 120
        reported = {}
        while time.monotonic() < deadline and "ExecutionProvider" not in reported:
            assert proc.poll() is None, (tmp_path / "assemble-run.log").read_text()[-3000:]
            if (state / "runtime.json").is_file():
                reported = twin(state, "turbofanRulClassifier").get("reported", {})
            time.sleep(0.5)
        assert reported.get("ModelStatus") == "loaded", reported
        p = reported["ExecutionProvider"]
        assert (p["Requested"], p["Used"]) == ("cuda", "cpu"), p
        assert "NVIDIA driver (libcuda.so.1) is not there" in p["Fallback"], p
        assert reported["Model"]["ExecutionProvider"] == "CPUExecutionProvider"
        logfile = state / "logs" / "turbofanRulClassifier.log"
        assert "libcuda.so.1" in logfile.read_text()
        assert 0 <= score_one_row(port) <= 125
        pid = module_processes(gpu_tree, ["turbofanRulClassifier"])["turbofanRulClassifier"]
        libs = mapped_libraries(pid)
        assert str(gpu_tree / "turbofanRulClassifier" / "app" / "libonnxruntime.so") in libs
        # Nothing of CUDA was half loaded: the driver check comes first.
        assert not [l for l in libs if "libcudart" in l or "providers_cuda" in l], libs
    finally:
        stop(proc)
        log.close()

