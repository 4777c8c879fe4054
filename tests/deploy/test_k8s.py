"""The variant for IoT Edge hosted on Kubernetes (Azure Stack Edge Pro GPU and the like):
deployment.k8s.template.json and deployment.k8s.gpu.template.json, as written and as iotedgedev
generates them."""
import re

import pytest

from conftest import (ENV_NAME, MODULE_UID, MODULES, ROOT, agent_desired, create_options,
                      hub_desired, load_json)

K8S_TEMPLATES = ("deployment.k8s.template.json", "deployment.k8s.gpu.template.json")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
MEMORY = re.compile(r"^(\d+)(Mi|Gi)$")
CPU = re.compile(r"^(\d+m|\d+(\.\d+)?)$")
RESERVED_PORTS = ("35000", "35001")  # IoT Edge's proxy on Kubernetes


def manifests():
    """Each variant as written and as generated for amd64 and arm64v8."""
    out = [(t, None) for t in K8S_TEMPLATES]
    out += [(t, p) for t in K8S_TEMPLATES for p in ("amd64", "arm64v8")]
    return out


def load(generated, template, platform):
    if platform is None:
        return load_json(ROOT / template)
    return load_json(generated[(template, platform)][0])


def mebibytes(q):
    n, unit = MEMORY.match(q).groups()
    return int(n) * (1024 if unit == "Gi" else 1)


def millicores(q):
    return int(q[:-1]) if q.endswith("m") else float(q) * 1000


@pytest.fixture(params=manifests(), ids=lambda p: "%s-%s" % (p[0].split(".")[1], p[1] or "template"))
def variant(request, generated):
    template, platform = request.param
    return template, load(generated, template, platform)


def test_module_names_are_kubernetes_names(variant):
    _, doc = variant
    modules = agent_desired(doc)["modules"]
    assert sorted(modules) == sorted(m.lower() for m in MODULES)
    for name in modules:
        assert DNS_LABEL.match(name) and len(name) <= 63, name
    # Desired properties and routes follow the renamed modules.
    content = doc["modulesContent"]
    assert sorted(k for k in content if not k.startswith("$")) == sorted(modules)
    for route in hub_desired(doc)["routes"].values():
        for m in re.findall(r"/modules/([^/]+)/", route):
            assert m in modules, route


def test_no_binds_only_volumes_and_directory_mounts(variant):
    _, doc = variant
    for name, spec in agent_desired(doc)["modules"].items():
        host = create_options(spec["settings"]).get("HostConfig", {})
        assert "Binds" not in host, name
        for mount in host.get("Mounts", []):
            assert mount["Type"] in ("volume", "bind"), mount
            # Kubernetes mounts folders, never single files.
            assert "." not in mount["Target"].rsplit("/", 1)[-1], mount
            if mount["Type"] == "volume":
                assert DNS_LABEL.match(mount["Source"]), mount
            else:
                assert "." not in mount["Source"].rsplit("/", 1)[-1], mount
    writer = create_options(agent_desired(doc)["modules"]["avrofilewriter"]["settings"])
    targets = {m["Target"]: m for m in writer["HostConfig"]["Mounts"]}
    assert targets["/avrofiles"]["Type"] == "volume"
    assert targets["/etc/aziot"] == {"Type": "volume", "Source": "aziot-config", "Target": "/etc/aziot",
                                     "ReadOnly": True}
    assert writer["k8s-experimental"]["strategy"] == {"type": "Recreate"}


def test_cpu_and_memory_requests_and_limits(variant):
    _, doc = variant
    for name, spec in agent_desired(doc)["modules"].items():
        k8s = create_options(spec["settings"])["k8s-experimental"]
        res = k8s["resources"]
        for kind in ("requests", "limits"):
            assert MEMORY.match(res[kind]["memory"]), (name, kind)
            assert CPU.match(res[kind]["cpu"]), (name, kind)
        assert mebibytes(res["requests"]["memory"]) <= mebibytes(res["limits"]["memory"]), name
        assert millicores(res["requests"]["cpu"]) <= millicores(res["limits"]["cpu"]), name
        # The pod runs as the image's user, and volumes are writable by its group.
        assert k8s["securityContext"] == {"runAsNonRoot": True, "runAsUser": MODULE_UID,
                                          "runAsGroup": MODULE_UID, "fsGroup": MODULE_UID}


def test_gpu_only_in_the_gpu_variant_with_the_cuda_provider(variant):
    template, doc = variant
    modules = agent_desired(doc)["modules"]
    gpu = "gpu" in template
    for name, spec in modules.items():
        limits = create_options(spec["settings"])["k8s-experimental"]["resources"]["limits"]
        if name == "turbofanrulclassifier":
            provider = spec["env"]["ORT_EXECUTION_PROVIDER"]["value"]
            if gpu:
                assert isinstance(limits["nvidia.com/gpu"], int) and limits["nvidia.com/gpu"] >= 1
                assert provider == "cuda"
            else:
                assert "nvidia.com/gpu" not in limits
                assert provider == "cpu"
        else:
            assert "nvidia.com/gpu" not in limits, name


def test_env_names_valid_and_k8s_extensions_enabled(variant):
    _, doc = variant
    agent = agent_desired(doc)
    for group in ("systemModules", "modules"):
        for name, spec in agent[group].items():
            for key in spec.get("env", {}):
                assert ENV_NAME.match(key) and ":" not in key, (name, key)
    env = agent["systemModules"]["edgeAgent"]["env"]
    assert env["ExperimentalFeatures__Enabled"]["value"] == "true"
    assert env["ExperimentalFeatures__EnableK8SExtensions"]["value"] == "true"


def test_ports_35000_and_35001_are_not_used(variant):
    _, doc = variant
    agent = agent_desired(doc)
    for group in ("systemModules", "modules"):
        for name, spec in agent[group].items():
            create = create_options(spec["settings"])
            ports = set()
            for p in create.get("ExposedPorts", {}):
                ports.add(p.split("/")[0])
            for p, bindings in create.get("HostConfig", {}).get("PortBindings", {}).items():
                ports.add(p.split("/")[0])
                ports |= {b.get("HostPort", "") for b in bindings}
            assert not ports & set(RESERVED_PORTS), (name, ports)
            for key, v in spec.get("env", {}).items():
                assert not any(port in str(v["value"]) for port in RESERVED_PORTS), (name, key)


def test_same_routes_and_settings_as_the_docker_manifest(variant):
    _, doc = variant
    base = load_json(ROOT / "deployment.template.json")
    lower = lambda routes: {k: v.lower() for k, v in routes.items()}  # noqa: E731
    assert lower(hub_desired(doc)["routes"]) == lower(hub_desired(base)["routes"])
    assert hub_desired(doc)["storeAndForwardConfiguration"] == hub_desired(base)["storeAndForwardConfiguration"]
    for m in MODULES:
        assert doc["modulesContent"][m.lower()] == base["modulesContent"][m]
