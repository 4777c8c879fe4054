#!/usr/bin/env python3
"""Derives the other deployment templates from deployment.template.json (the tutorial's, which
the local runtime runs), so they never drift apart:

    deployment.debug.template.json    the same images, debug logging, backtraces, and the
                                      classifier's HTTP scoring endpoint on the device's
                                      127.0.0.1:5001
    deployment.k8s.template.json      for IoT Edge hosted on Kubernetes (e.g. Azure Stack Edge
                                      Pro GPU), CPU scoring
    deployment.k8s.gpu.template.json  the same, the classifier asking for one nvidia.com/gpu and
                                      ONNX Runtime's CUDA execution provider
                                      (ORT_EXECUTION_PROVIDER=cuda; docs/decisions.md says what
                                      the classifier still needs for it)

    scripts/derive-templates.py           rewrite the three files
    scripts/derive-templates.py --check   exit 1 if they differ from what this script makes

What changes on Kubernetes (docs/deploy.md explains each):
- module names become valid Kubernetes names (lowercase), in the modules, their desired
  properties and the routes (route sources match case-insensitively, as on any IoT Edge);
- HostConfig.Binds become HostConfig.Mounts of type volume (persistent storage); a bind of a
  single file becomes a volume mounted on its folder (Kubernetes mounts folders only);
- k8s-experimental: CPU and memory requests and limits, the module user as pod security
  context (so volumes are writable by it), Recreate for modules with a volume;
- edgeAgent gets the two ExperimentalFeatures__* variables that enable k8s-experimental;
- nothing may use ports 35000 and 35001 (the IoT Edge proxy's on Kubernetes).
"""
import copy
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "deployment.template.json"
DEBUG_SCORING_PORT = "5001"

# The images run as distroless's `nonroot` user (docker/Dockerfile.*).
MODULE_UID = 65532

# Each bind of the Docker template, as a Kubernetes volume mount. Source is the volume's name:
# on Azure Stack Edge, the name of an Edge local share; elsewhere, a persistent volume claim.
MOUNTS = {
    "/data/avrofiles:/avrofiles": {"Type": "volume", "Source": "avrofiles", "Target": "/avrofiles"},
    # The classifier's engine histories (state file), so they survive a pod restart.
    "/data/turbofanRulClassifier:/state": {
        "Type": "volume", "Source": "classifier-state", "Target": "/state"},
    # config.toml is a file: its folder is mounted instead, from a volume holding config.toml.
    "/etc/aziot/config.toml:/etc/aziot/config.toml:ro": {
        "Type": "volume", "Source": "aziot-config", "Target": "/etc/aziot", "ReadOnly": True},
}

# Requests are what the scheduler reserves, limits what the container may use (measured
# figures in docs/deploy.md).
RESOURCES = {
    "turbofanRouter": {"requests": {"cpu": "100m", "memory": "32Mi"},
                       "limits": {"cpu": "500m", "memory": "128Mi"}},
    "turbofanRulClassifier": {"requests": {"cpu": "250m", "memory": "128Mi"},
                              "limits": {"cpu": "1", "memory": "512Mi"}},
    "avroFileWriter": {"requests": {"cpu": "100m", "memory": "64Mi"},
                       "limits": {"cpu": "500m", "memory": "256Mi"}},
}
GPU_MODULE = "turbofanRulClassifier"
GPU_RESOURCES = {"requests": {"cpu": "250m", "memory": "512Mi"},
                 "limits": {"cpu": "1", "memory": "2Gi", "nvidia.com/gpu": 1}}

EDGE_AGENT_ENV = {
    "ExperimentalFeatures__Enabled": {"value": "true"},
    "ExperimentalFeatures__EnableK8SExtensions": {"value": "true"},
}


def k8s_name(module):
    """A module name as Kubernetes accepts it for the objects IoT Edge makes of it."""
    name = module.lower()
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) or len(name) > 63:
        raise SystemExit("module %r has no valid Kubernetes name (%r)" % (module, name))
    return name


def rename_in_route(route, names):
    for old, new in names.items():
        route = re.sub(r"(/modules/)%s(/)" % re.escape(old), r"\g<1>%s\2" % new, route,
                       flags=re.IGNORECASE)
    return route


def make(base, gpu):
    doc = copy.deepcopy(base)
    content = doc["modulesContent"]
    agent = content["$edgeAgent"]["properties.desired"]
    names = {m: k8s_name(m) for m in agent["modules"]}

    env = agent["systemModules"]["edgeAgent"].setdefault("env", {})
    env.update(EDGE_AGENT_ENV)

    modules = {}
    for name, spec in agent["modules"].items():
        spec = copy.deepcopy(spec)
        create = spec["settings"].get("createOptions") or {}
        if isinstance(create, str):
            create = json.loads(create) if create.strip() else {}
        host = create.setdefault("HostConfig", {})
        binds = host.pop("Binds", [])
        mounts = []
        for b in binds:
            if b not in MOUNTS:
                raise SystemExit("%s: no Kubernetes mount is defined for bind %r (add it to MOUNTS)"
                                 % (name, b))
            mounts.append(MOUNTS[b])
        if mounts:
            host["Mounts"] = mounts
        if not host:
            del create["HostConfig"]
        k8s = {
            "resources": copy.deepcopy(GPU_RESOURCES if gpu and name == GPU_MODULE
                                       else RESOURCES[name]),
            "securityContext": {"runAsNonRoot": True, "runAsUser": MODULE_UID,
                                "runAsGroup": MODULE_UID, "fsGroup": MODULE_UID},
        }
        if mounts:
            # A volume is attached to one pod at a time: stop the old pod before the new one.
            k8s["strategy"] = {"type": "Recreate"}
        create["k8s-experimental"] = k8s
        spec["settings"]["createOptions"] = create
        if name == GPU_MODULE:
            spec.setdefault("env", {})["ORT_EXECUTION_PROVIDER"] = {"value": "cuda" if gpu else "cpu"}
        modules[names[name]] = spec
    agent["modules"] = modules

    hub = content["$edgeHub"]["properties.desired"]
    hub["routes"] = {k: rename_in_route(v, names) for k, v in hub["routes"].items()}

    renamed = {}
    for key, value in content.items():
        renamed[names.get(key, key)] = value
    doc["modulesContent"] = renamed
    return doc


def make_debug(base):
    doc = copy.deepcopy(base)
    content = doc["modulesContent"]
    agent = content["$edgeAgent"]["properties.desired"]
    for system in agent["systemModules"].values():
        system.setdefault("env", {})["RuntimeLogLevel"] = {"value": "debug"}
    for name, spec in agent["modules"].items():
        spec.setdefault("env", {})["RUST_BACKTRACE"] = {"value": "1"}
        content[name]["properties.desired"]["LoggingLevel"] = "debug"
    classifier = agent["modules"][GPU_MODULE]
    classifier["env"]["SCORING_HTTP_ADDR"] = {"value": "0.0.0.0:" + DEBUG_SCORING_PORT}
    create = classifier["settings"].get("createOptions") or {}
    create["ExposedPorts"] = {DEBUG_SCORING_PORT + "/tcp": {}}
    create.setdefault("HostConfig", {})["PortBindings"] = {
        DEBUG_SCORING_PORT + "/tcp": [{"HostIp": "127.0.0.1", "HostPort": DEBUG_SCORING_PORT}]}
    classifier["settings"]["createOptions"] = create
    return doc


OUTPUTS = {
    "deployment.debug.template.json": make_debug,
    "deployment.k8s.template.json": lambda base: make(base, gpu=False),
    "deployment.k8s.gpu.template.json": lambda base: make(base, gpu=True),
}


def render(doc):
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def main(argv):
    check = "--check" in argv[1:]
    base = json.loads(BASE.read_text())
    stale = []
    for file, derive in OUTPUTS.items():
        text = render(derive(base))
        path = ROOT / file
        if check:
            if not path.is_file() or path.read_text() != text:
                stale.append(file)
        else:
            path.write_text(text)
            print("wrote %s" % file)
    if stale:
        print("out of date with deployment.template.json: %s (run scripts/derive-templates.py)"
              % ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
