#!/usr/bin/env python3
"""Derives the other deployment templates from deployment.template.json (the tutorial's, which
the local runtime runs), so they never drift apart:

    deployment.debug.template.json  the same images, debug logging, backtraces, and the
                                    classifier's HTTP scoring endpoint on the device's
                                    127.0.0.1:5001
    deployment.gpu.template.json    the classifier's GPU image (docker/Dockerfile.amd64.gpu,
                                    platform amd64.gpu of its module.json) given the device's
                                    NVIDIA GPUs (HostConfig.DeviceRequests, as `docker run
                                    --gpus all`) and ORT_EXECUTION_PROVIDER=cuda; for an amd64
                                    IoT Edge device with the NVIDIA driver and container
                                    toolkit, including IoT Edge in a KubeVirt VM with a GPU
                                    passed through (deploy/kubevirt, docs/deploy.md)

    deployment.blobstorage.template.json
                                    the writer uploads without the device's key: to the
                                    Azure Blob Storage on IoT Edge module added beside it
                                    (local account, Shared Key), which copies the files to a
                                    cloud storage account; no config.toml bind (for devices
                                    provisioned with DPS or X.509; docs/deploy.md)

    scripts/derive-templates.py           rewrite the three files
    scripts/derive-templates.py --check   exit 1 if they differ from what this script makes

The Kubernetes templates of IoT Edge's retired Kubernetes preview (`k8s-experimental`) were
made here until #20; docs/deploy.md says what replaced them.
"""
import copy
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "deployment.template.json"
DEBUG_SCORING_PORT = "5001"

GPU_MODULE = "turbofanRulClassifier"
# The classifier's module.json platform for docker/Dockerfile.amd64.gpu; iotedgedev resolves
# ${MODULES.<module>.<platform>} to that image whatever platform it generates for.
GPU_PLATFORM = "amd64.gpu"
# Docker's request for every NVIDIA GPU of the device (what `--gpus all` sends).
GPU_DEVICE_REQUEST = {"Count": -1, "Capabilities": [["gpu"]]}


def make_gpu(base):
    doc = copy.deepcopy(base)
    agent = doc["modulesContent"]["$edgeAgent"]["properties.desired"]
    classifier = agent["modules"][GPU_MODULE]
    classifier["settings"]["image"] = "${MODULES.%s.%s}" % (GPU_MODULE, GPU_PLATFORM)
    create = classifier["settings"].get("createOptions") or {}
    create.setdefault("HostConfig", {})["DeviceRequests"] = [copy.deepcopy(GPU_DEVICE_REQUEST)]
    classifier["settings"]["createOptions"] = create
    classifier.setdefault("env", {})["ORT_EXECUTION_PROVIDER"] = {"value": "cuda"}
    return doc


# Azure Blob Storage on IoT Edge (Microsoft's module; docs/deploy.md has the source). Its
# name is lowercase because storage clients lowercase host names; it listens on 11002 inside
# the device's network only (no port is published on the host).
BLOB_MODULE = "azureblobstorageoniotedge"
BLOB_IMAGE = "mcr.microsoft.com/azure-blob-storage:latest"
BLOB_PORT = "11002"
BLOB_CONTAINER = "avrofiles"
WRITER = "avroFileWriter"


def make_blobstorage(base):
    doc = copy.deepcopy(base)
    content = doc["modulesContent"]
    agent = content["$edgeAgent"]["properties.desired"]
    agent["modules"][BLOB_MODULE] = {
        "version": "1.0",
        "type": "docker",
        "status": "running",
        "restartPolicy": "always",
        "env": {
            "LOCAL_STORAGE_ACCOUNT_NAME": {"value": "${LOCAL_STORAGE_ACCOUNT_NAME}"},
            "LOCAL_STORAGE_ACCOUNT_KEY": {"value": "${LOCAL_STORAGE_ACCOUNT_KEY}"},
        },
        "settings": {
            "image": BLOB_IMAGE,
            # Its user (uid 11000) must own the folder: docs/deploy.md.
            "createOptions": {"HostConfig": {"Binds": ["/data/blobroot:/blobroot"]}},
        },
    }
    writer = agent["modules"][WRITER]
    host = writer["settings"]["createOptions"]["HostConfig"]
    host["Binds"] = [b for b in host["Binds"] if not b.startswith("/etc/aziot/")]
    writer.setdefault("env", {}).update({
        "AVRO_UPLOAD_STORAGE_CONNECTION_STRING": {"value": (
            "DefaultEndpointsProtocol=http;"
            "BlobEndpoint=http://%s:%s/${LOCAL_STORAGE_ACCOUNT_NAME};"
            "AccountName=${LOCAL_STORAGE_ACCOUNT_NAME};AccountKey=${LOCAL_STORAGE_ACCOUNT_KEY}"
            % (BLOB_MODULE, BLOB_PORT))},
        "AVRO_UPLOAD_CONTAINER": {"value": BLOB_CONTAINER},
    })
    content[BLOB_MODULE] = {"properties.desired": {
        # Each file goes to the cloud once, then leaves the device.
        "deviceToCloudUploadProperties": {
            "uploadOn": True,
            "uploadOrder": "OldestFirst",
            "cloudStorageConnectionString": "${CLOUD_STORAGE_CONNECTION_STRING}",
            "storageContainersForUpload": {BLOB_CONTAINER: {"target": BLOB_CONTAINER}},
            "deleteAfterUpload": True,
        },
        # A cloud outage must not fill the device: the oldest blobs go after a week, unless
        # they are still being uploaded.
        "deviceAutoDeleteProperties": {
            "deleteOn": True,
            "deleteAfterMinutes": 10080,
            "retainWhileUploading": True,
        },
    }}
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
    "deployment.gpu.template.json": make_gpu,
    "deployment.blobstorage.template.json": make_blobstorage,
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
