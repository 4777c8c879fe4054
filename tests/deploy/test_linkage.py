"""The amd64 release binaries link only against what the image provides.

The image is distroless static (no shared libraries at all) plus what docker/rootfs.sh copies
in: the shared-library closure of the module (and of ONNX Runtime, which the classifier
dlopens) taken from Debian 12's libc6, libgcc-s1 and libstdc++6 for the target. So:
- every NEEDED entry is a library of those three packages, and ONNX Runtime is not one of the
  classifier's NEEDED entries (it is loaded at run time, from beside the binary);
- every versioned symbol reference (GLIBC_2.x, GCC_x, GLIBCXX_3.4.x, …) of every ELF file in
  the assembled tree is defined by the library copy in that same tree;
- the program interpreter is the one Debian's libc6 installs.
The assembled trees come from the `tree` fixture (docker/assemble.sh).
"""
import re
import subprocess
from pathlib import Path

import pytest

from conftest import BUILT_MODULES, TRIPLE, bin_dir

RUNTIME_PACKAGES = ("libc6", "libgcc-s1", "libstdc++6")
# What a Rust program of this workspace may need; libstdc++ only ONNX Runtime needs.
BINARY_ALLOWED = {"libc.so.6", "libm.so.6", "libgcc_s.so.1", "ld-linux-x86-64.so.2",
                  "libdl.so.2", "libpthread.so.0", "librt.so.1"}
GLIBC_MAX = (2, 36)  # Debian 12


def readelf(*args):
    return subprocess.run(["readelf", *args], capture_output=True, text=True, check=True).stdout


def needed(path):
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", readelf("-d", "-W", str(path)))


def version_needs(path):
    """{(library file, version name)} a file references."""
    out, current = set(), None
    text = readelf("-V", "-W", str(path))
    section = text.split("Version needs section", 1)
    if len(section) < 2:
        return out
    for line in section[1].splitlines():
        m = re.search(r"File: (\S+)", line)
        if m:
            current = m.group(1)
            continue
        m = re.search(r"Name: (\S+)\s+Flags", line)
        if m and current:
            out.add((current, m.group(1)))
    return out


def version_definitions(path):
    text = readelf("-V", "-W", str(path))
    section = text.split("Version definition section", 1)
    if len(section) < 2:
        return set()
    body = section[1].split("Version needs section", 1)[0]
    return set(re.findall(r"Name: (\S+)", body)) | set(re.findall(r"Parent \d+: (\S+)", body))


def package_sonames():
    names = set()
    for p in RUNTIME_PACKAGES:
        listing = subprocess.run(["dpkg", "-L", p], capture_output=True, text=True, check=True).stdout
        names |= {Path(f).name for f in listing.split() if re.search(r"\.so(\.\d+)+$", f)}
    return names


@pytest.fixture(scope="module")
def binaries():
    paths = {m: bin_dir() / m for m in BUILT_MODULES}
    for m, p in paths.items():
        assert p.is_file(), "no %s (tests/deploy/run.sh builds the release binaries)" % p
    return paths


def test_binaries_need_only_libc_libm_and_libgcc(binaries):
    for m, path in binaries.items():
        libs = set(needed(path))
        assert libs <= BINARY_ALLOWED, (m, sorted(libs - BINARY_ALLOWED))
        assert not [n for n in libs if "onnxruntime" in n], m
        interp = re.search(r"Requesting program interpreter: ([^\]]+)\]", readelf("-l", "-W", str(path)))
        assert interp and interp.group(1) == "/lib64/ld-linux-x86-64.so.2", m


def test_the_classifier_loads_onnx_runtime_at_run_time(binaries):
    if "turbofanRulClassifier" not in binaries:
        pytest.skip("the classifier is not among DEPLOY_MODULES")
    assert b"libonnxruntime.so" in binaries["turbofanRulClassifier"].read_bytes()


def test_binaries_need_no_glibc_newer_than_debian_12(binaries):
    for m, path in binaries.items():
        versions = [tuple(int(x) for x in v.split("_", 1)[1].split("."))
                    for lib, v in version_needs(path) if v.startswith("GLIBC_2")]
        assert versions and max(versions) <= GLIBC_MAX, (m, max(versions))


def test_every_library_comes_from_the_three_debian_packages(tree):
    allowed = package_sonames()
    assert BINARY_ALLOWED | {"libstdc++.so.6"} <= allowed
    for m in BUILT_MODULES:
        libdir = tree / m / "usr" / "lib" / TRIPLE
        assert {p.name for p in libdir.iterdir()} <= allowed, m
        app = tree / m / "app"
        for elf in [app / m] + ([app / "libonnxruntime.so"] if m == "turbofanRulClassifier" else []):
            for lib in needed(elf):
                assert lib in allowed, (m, elf.name, lib)
                assert (libdir / lib).is_file(), (m, elf.name, lib)


def test_every_versioned_symbol_is_defined_in_the_tree(tree):
    for m in BUILT_MODULES:
        root = tree / m
        libdir = root / "usr" / "lib" / TRIPLE
        elves = [root / "app" / m] + sorted(libdir.iterdir())
        if m == "turbofanRulClassifier":
            elves.append(root / "app" / "libonnxruntime.so")
        definitions = {}
        missing = []
        for elf in elves:
            for lib, version in sorted(version_needs(elf)):
                if lib not in definitions:
                    assert (libdir / lib).is_file(), (m, elf.name, lib)
                    definitions[lib] = version_definitions(libdir / lib)
                if version not in definitions[lib]:
                    missing.append("%s needs %s from %s" % (elf.name, version, lib))
        assert not missing, (m, missing)
