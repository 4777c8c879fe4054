"""The GPU variant (deployment.gpu.template.json: the classifier's GPU image given the device's
GPUs) and the supported Kubernetes route (deploy/kubevirt: IoT Edge in a KubeVirt virtual
machine), as written and as iotedgedev generates them. The retired IoT Edge on Kubernetes
preview (`k8s-experimental`) must not come back."""
import copy
import re
import tomllib

import yaml

from conftest import MODULE_UID, ROOT, agent_desired, create_options, load_json

GPU_TEMPLATE = "deployment.gpu.template.json"
CLASSIFIER = "turbofanRulClassifier"
KUBEVIRT = ROOT / "deploy" / "kubevirt"


def test_gpu_template_is_the_tutorials_with_the_gpu_image_the_gpus_and_cuda():
    base = load_json(ROOT / "deployment.template.json")
    gpu = load_json(ROOT / GPU_TEMPLATE)
    spec = agent_desired(gpu)["modules"][CLASSIFIER]
    assert spec["settings"]["image"] == "${MODULES.%s.amd64.gpu}" % CLASSIFIER
    assert spec["env"]["ORT_EXECUTION_PROVIDER"] == {"value": "cuda"}
    host = create_options(spec["settings"])["HostConfig"]
    # What `docker run --gpus all` asks Docker for.
    assert host["DeviceRequests"] == [{"Count": -1, "Capabilities": [["gpu"]]}]
    # Nothing else differs: routes, other modules, binds, desired properties.
    expected = copy.deepcopy(base)
    want = agent_desired(expected)["modules"][CLASSIFIER]
    want["settings"]["image"] = spec["settings"]["image"]
    want.setdefault("env", {})["ORT_EXECUTION_PROVIDER"] = {"value": "cuda"}
    want["settings"]["createOptions"]["HostConfig"]["DeviceRequests"] = host["DeviceRequests"]
    assert gpu == expected


def test_generated_gpu_manifest_names_the_gpu_image(generated):
    doc = load_json(generated[(GPU_TEMPLATE, "amd64")][0])
    modules = agent_desired(doc)["modules"]
    assert modules[CLASSIFIER]["settings"]["image"].endswith("/turbofanrulclassifier:0.1.0-amd64.gpu")
    assert modules["turbofanRouter"]["settings"]["image"].endswith("/turbofanrouter:0.1.0-amd64")
    assert create_options(modules[CLASSIFIER]["settings"])["HostConfig"]["DeviceRequests"]
    # Only for amd64: there is no GPU image for arm.
    assert not [k for k in generated if k[0] == GPU_TEMPLATE and k[1] != "amd64"]


def test_the_retired_kubernetes_preview_is_gone():
    for t in sorted(ROOT.glob("deployment*.template.json")):
        text = t.read_text()
        assert "k8s-experimental" not in text and "EnableK8SExtensions" not in text, t.name
    assert not list(ROOT.glob("deployment.k8s*"))


def kubevirt_docs():
    return list(yaml.safe_load_all((KUBEVIRT / "iotedge-vm.yaml").read_text()))


def test_kubevirt_vm_boots_from_the_cloud_init_secret_and_keeps_its_data():
    vm, service = kubevirt_docs()
    assert (vm["apiVersion"], vm["kind"]) == ("kubevirt.io/v1", "VirtualMachine")
    spec = vm["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    disks = {d["name"] for d in spec["domain"]["devices"]["disks"]}
    assert set(volumes) == disks
    assert volumes["cloudinit"]["cloudInitNoCloud"] == {"secretRef": {"name": "iotedge-cloud-init"}}
    data = volumes["data"]["dataVolume"]["name"]
    assert data in {d["metadata"]["name"] for d in vm["spec"]["dataVolumeTemplates"]}
    assert re.fullmatch(r"quay\.io/containerdisks/ubuntu:\d\d\.04", volumes["os"]["containerDisk"]["image"])
    # The Service reaches the VM's pod, on edgeHub's ports of the manifest.
    assert (service["kind"], service["spec"]["selector"]) == ("Service", vm["spec"]["template"]["metadata"]["labels"])
    hub = load_json(ROOT / "deployment.template.json")
    bindings = create_options(agent_desired(hub)["systemModules"]["edgeHub"]["settings"])["HostConfig"]["PortBindings"]
    hub_ports = {int(p.split("/")[0]) for p in bindings}
    assert {p["port"] for p in service["spec"]["ports"]} == hub_ports
    vm_ports = {p["port"] for i in spec["domain"]["devices"]["interfaces"] for p in i.get("ports", [])}
    assert vm_ports == hub_ports


def test_cloud_init_installs_iot_edge_and_prepares_the_manifests_binds():
    text = (KUBEVIRT / "cloud-init.yaml").read_text()
    assert text.startswith("#cloud-config\n")
    ci = yaml.safe_load(text)
    files = {f["path"]: f for f in ci["write_files"]}
    config = files["/etc/aziot/config.toml"]
    assert config["permissions"] == "0600"
    toml = tomllib.loads(config["content"])
    assert toml["provisioning"]["source"] == "manual"
    # The DPS example, uncommented in place of the manual block, is a valid DPS X.509 config.
    lines = config["content"].splitlines()
    dps = [l.strip()[1:].strip() for l in lines if l.strip().startswith("#   ")]
    kept = [l for l in lines if not l.strip().startswith("#")]
    manual = kept.index("[provisioning]")
    dps_config = tomllib.loads("\n".join(kept[:manual] + dps))
    assert dps_config["provisioning"]["source"] == "dps"
    assert dps_config["provisioning"]["attestation"]["method"] == "x509"
    commands = [c if isinstance(c, str) else " ".join(c) for c in ci["runcmd"]]
    joined = "\n".join(commands)
    assert "apt-get install -y moby-engine aziot-edge" in joined
    assert commands[-1] == "iotedge config apply -c /etc/aziot/config.toml"
    # The tutorial's writer (uid 65532) reads the device connection string from config.toml.
    assert "setfacl -m u:%d:r /etc/aziot/config.toml" % MODULE_UID in joined
    assert "nvidia:580-server" in joined
    # Every host folder the manifest binds exists on the data disk and belongs to the modules.
    base = load_json(ROOT / "deployment.template.json")
    folders = set()
    for spec in agent_desired(base)["modules"].values():
        for b in create_options(spec["settings"]).get("HostConfig", {}).get("Binds", []):
            host = b.split(":", 1)[0]
            if host.startswith("/data/"):
                folders.add(host)
    assert folders == {"/data/avrofiles", "/data/turbofanRulClassifier"}
    for f in folders:
        assert re.search(r"mkdir -p [^\n]*%s" % re.escape(f), joined), f
        assert re.search(r"chown %d:%d [^\n]*%s" % (MODULE_UID, MODULE_UID, re.escape(f)), joined), f
    assert ["/dev/vdb1", "/data"] == ci["mounts"][0][:2]
    # The GPU path: driver, NVIDIA container toolkit, moby configured for it.
    assert "nvidia-container-toolkit" in joined and "nvidia-ctk runtime configure --runtime=docker" in joined


def test_kubevirt_gpu_patch_passes_a_gpu_through():
    patch = yaml.safe_load((KUBEVIRT / "iotedge-vm.gpu.yaml").read_text())
    gpus = patch["spec"]["template"]["spec"]["domain"]["devices"]["gpus"]
    assert len(gpus) == 1 and gpus[0]["deviceName"].startswith("nvidia.com/")
