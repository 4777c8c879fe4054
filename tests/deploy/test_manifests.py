"""The deployment templates, module.json files and .env.template, and the manifests Microsoft's
iotedgedev generates from them for every platform."""
import json
import re
import shutil
import subprocess
import sys
import tomllib

import jsonschema
import pytest

from conftest import (ENV_NAME, IMAGE_PLATFORMS, MODULES, ROOT, LocalRuntime,
                      agent_desired, create_options, hub_desired, load_json)
import genconfig
import schemas

SCHEMAS = ROOT / ".venv-deploy" / "schemas"

# The tutorial's routes, exactly (docs/architecture.md §1), including the mixed-case turboFanRouter.
TUTORIAL_ROUTES = {
    "leafMessagesToRouter": 'FROM /messages/* WHERE NOT IS_DEFINED($connectionModuleId) INTO BrokeredEndpoint("/modules/turbofanRouter/inputs/deviceInput")',
    "classifierToRouter": 'FROM /messages/modules/turbofanRulClassifier/outputs/amlOutput INTO BrokeredEndpoint("/modules/turbofanRouter/inputs/rulInput")',
    "routerToClassifier": 'FROM /messages/modules/turbofanRouter/outputs/classOutput INTO BrokeredEndpoint("/modules/turbofanRulClassifier/inputs/amlInput")',
    "routerToIoTHub": "FROM /messages/modules/turboFanRouter/outputs/hubOutput INTO $upstream",
    "routerToAvro": 'FROM /messages/modules/turbofanRouter/outputs/avroOutput INTO BrokeredEndpoint("/modules/avroFileWriter/inputs/avroModuleInput")',
    "deadLetter": "FROM /messages/modules/turboFanRouter/outputs/deadMessages INTO $upstream",
}
WRITER_BINDS = ["/data/avrofiles:/avrofiles", "/etc/aziot/config.toml:/etc/aziot/config.toml:ro"]

# What each module reads from its twin, with the values its code accepts (modules/*/src).
DESIRED = {
    "turbofanRouter": {"LoggingLevel": str, "RulThreshold": (type(None), int, float)},
    "turbofanRulClassifier": {"LoggingLevel": str, "MaxBatchSize": (1, 4096),
                              "MaxBatchWaitMs": (0, 1000), "MaxBodyBytes": (1024, 16 << 20),
                              "ScoringMode": {"history", "row"},
                              "HistoryMaxDevices": (1, 10_000_000),
                              "HistoryIdleSeconds": (60, 10 * 365 * 24 * 3600),
                              "HistorySnapshotSeconds": (1, 3600)},
    "avroFileWriter": {"LoggingLevel": str, "QuietPeriodSecs": (0, 30 * 86400),
                       "CheckIntervalSecs": (0.1, 86400), "MaxDiskMB": (0, 1e9),
                       "SyncIntervalMs": (1, 60000), "SyncRecords": (1, 1000000)},
}
LOG_LEVELS = {"trace", "debug", "info", "warn", "warning", "error"}


def templates():
    return [ROOT / t for t in genconfig.TEMPLATES]


# ---- the templates ---------------------------------------------------------------------------

@pytest.mark.parametrize("template", genconfig.TEMPLATES)
def test_template_matches_the_iot_edge_template_schema(template):
    schema = schemas.load(SCHEMAS, "azure-iot-edge-deployment-template-4.0")
    validator = jsonschema.Draft4Validator(schema, registry=schemas.registry(SCHEMAS))
    errors = ["%s: %s" % ("/".join(map(str, e.absolute_path)), e.message)
              for e in validator.iter_errors(load_json(ROOT / template))]
    assert not errors, "\n".join(errors)


def test_base_template_keeps_the_tutorials_routes_binds_and_ttl():
    doc = load_json(ROOT / "deployment.template.json")
    hub = hub_desired(doc)
    assert hub["routes"] == TUTORIAL_ROUTES
    assert hub["storeAndForwardConfiguration"] == {"timeToLiveSecs": 7200}
    writer = agent_desired(doc)["modules"]["avroFileWriter"]
    assert create_options(writer["settings"])["HostConfig"]["Binds"] == WRITER_BINDS
    for m in MODULES:
        assert agent_desired(doc)["modules"][m]["settings"]["image"] == "${MODULES.%s}" % m


@pytest.mark.parametrize("template", ["deployment.template.json", "deployment.debug.template.json"])
def test_every_module_gets_the_desired_properties_it_supports(template):
    content = load_json(ROOT / template)["modulesContent"]
    for module, props in DESIRED.items():
        desired = content[module]["properties.desired"]
        assert set(desired) == set(props), module
        for key, rule in props.items():
            value = desired[key]
            if key == "LoggingLevel":
                assert value in LOG_LEVELS, (module, value)
            elif isinstance(rule, set):
                assert value in rule, (module, key, value)
            elif isinstance(rule, tuple) and isinstance(rule[0], type):
                assert isinstance(value, rule), (module, key, value)
            else:
                lo, hi = rule
                assert isinstance(value, (int, float)) and lo <= value <= hi, (module, key, value)


def test_derived_templates_are_up_to_date():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "derive-templates.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_debug_template_publishes_the_scoring_endpoint_on_loopback_only():
    doc = load_json(ROOT / "deployment.debug.template.json")
    c = agent_desired(doc)["modules"]["turbofanRulClassifier"]
    assert c["env"]["SCORING_HTTP_ADDR"]["value"] == "0.0.0.0:5001"
    bindings = create_options(c["settings"])["HostConfig"]["PortBindings"]["5001/tcp"]
    assert bindings == [{"HostIp": "127.0.0.1", "HostPort": "5001"}]


def test_dotenv_template_names_the_registry_and_holds_no_secret():
    values = {}
    for line in (ROOT / ".env.template").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            k, _, v = line.partition("=")
            values[k.strip()] = v.strip()
    for k in ("CONTAINER_REGISTRY_ADDRESS", "CONTAINER_REGISTRY_USERNAME", "CONTAINER_REGISTRY_PASSWORD"):
        assert values.get(k) == "", k
    assert values["CONTAINER_REGISTRY_SERVER"] == "${CONTAINER_REGISTRY_ADDRESS}"
    used = set()
    for t in templates():
        used |= set(re.findall(r"\$\{?(CONTAINER_REGISTRY_[A-Z]+)\}?", t.read_text()))
    assert used <= set(values), used - set(values)
    assert "/.env" in (ROOT / ".gitignore").read_text().split()


# ---- module.json -----------------------------------------------------------------------------

@pytest.mark.parametrize("module", MODULES)
def test_module_json_in_the_iot_edge_tooling_format(module):
    from iotedgedev.buildoptionsparser import BuildOptionsParser

    folder = ROOT / "modules" / module
    spec = load_json(folder / "module.json")
    image = spec["image"]
    assert spec["$schema-version"] == "0.0.1"
    assert image["repository"] == "${CONTAINER_REGISTRY_ADDRESS}/" + module.lower()
    cargo = tomllib.loads((folder / "Cargo.toml").read_text())
    assert image["tag"]["version"] == cargo["package"]["version"]
    assert tuple(image["tag"]["platforms"]) == IMAGE_PLATFORMS[module]
    for platform, dockerfile in image["tag"]["platforms"].items():
        assert dockerfile == "../../docker/Dockerfile.%s" % platform
        assert (folder / dockerfile).resolve().is_file()
    assert (folder / image["contextPath"]).resolve() == ROOT
    # What `iotedgedev build` hands to Docker (its own parser of buildOptions).
    options = BuildOptionsParser(image["buildOptions"]).parse_build_options()
    assert options["buildargs"] == {"MODULE": module}
    assert options.get("target") == ("writer" if module == "avroFileWriter" else None)


# ---- what iotedgedev generates ---------------------------------------------------------------

def test_iotedgedev_generates_and_validates_every_platform(generated):
    assert set(generated) == set(genconfig.pairs())
    for (t, p), (path, log) in generated.items():
        assert path.is_file(), (t, p)
        assert "Deployment manifest schema validation passed." in log, (t, p)
        assert "Validation for all createOptions passed." in log, (t, p)


def test_schema_validation_is_really_done(tmp_path, monkeypatch):
    """A template the schema forbids makes genconfig fail: the validation is not skipped."""
    bad = load_json(ROOT / "deployment.template.json")
    agent_desired(bad)["modules"]["turbofanRouter"]["restartPolicy"] = "sometimes"
    broken_root = tmp_path / "repo"
    shutil.copytree(ROOT, broken_root, ignore=shutil.ignore_patterns(
        "target", ".git", ".venv*", "out", ".edge-state", "config", ".tools", "models", "crates",
        "runtime", "simulator", "demo", "tests"))
    (broken_root / "deployment.template.json").write_text(json.dumps(bad))
    monkeypatch.setattr(genconfig, "ROOT", broken_root)
    with pytest.raises(RuntimeError, match="deployment.template.json -P amd64"):
        genconfig.run(tmp_path / "config", venv=ROOT / ".venv-deploy",
                      templates=("deployment.template.json",), platforms=("amd64",))
    assert "schema error" in (tmp_path / "config" / "genconfig.log").read_text()


def generated_params():
    return genconfig.pairs()


@pytest.mark.parametrize("template,platform", generated_params())
def test_generated_images_resolve(generated, template, platform):
    doc = load_json(generated[(template, platform)][0])
    agent = agent_desired(doc)
    registry = genconfig.DUMMY_ENV["CONTAINER_REGISTRY_ADDRESS"]
    creds = agent["runtime"]["settings"]["registryCredentials"]["registry"]
    assert creds == {"username": genconfig.DUMMY_ENV["CONTAINER_REGISTRY_USERNAME"],
                     "password": genconfig.DUMMY_ENV["CONTAINER_REGISTRY_PASSWORD"],
                     "address": registry}
    unresolved = {}
    for name, spec in agent["modules"].items():
        image = spec["settings"]["image"]
        if name == "azureblobstorageoniotedge":  # Microsoft's image, by its documented name
            assert image == "mcr.microsoft.com/azure-blob-storage:latest"
            continue
        module = next(m for m in MODULES if m.lower() == name.lower())
        if platform not in IMAGE_PLATFORMS[module]:
            unresolved[module] = image
            continue
        version = load_json(ROOT / "modules" / module / "module.json")["image"]["tag"]["version"]
        # The GPU template names the classifier's GPU image by its own platform.
        tag = "amd64.gpu" if template == "deployment.gpu.template.json" and module == "turbofanRulClassifier" else platform
        assert image == "%s/%s:%s-%s" % (registry, module.lower(), version, tag)
    for name, spec in agent["systemModules"].items():
        assert re.fullmatch(r"mcr\.microsoft\.com/azureiotedge-(agent|hub):1\.6", spec["settings"]["image"])
    # The one gap: no classifier image for arm32v7 (no ONNX Runtime wheel); the manifest keeps
    # the placeholder, so such a deployment cannot be mistaken for a complete one.
    expected = {"turbofanRulClassifier": "${MODULES.turbofanRulClassifier}"} if platform == "arm32v7" else {}
    assert unresolved == expected
    text = generated[(template, platform)][0].read_text()
    assert "$CONTAINER_REGISTRY" not in text and "${CONTAINER" not in text


@pytest.mark.parametrize("template,platform", generated_params())
def test_generated_env_names_and_values_are_valid(generated, template, platform):
    agent = agent_desired(load_json(generated[(template, platform)][0]))
    for group in ("systemModules", "modules"):
        for name, spec in agent[group].items():
            for key, v in spec.get("env", {}).items():
                assert ENV_NAME.match(key), (name, key)
                assert isinstance(v["value"], (str, int, float, bool)), (name, key)


@pytest.mark.parametrize("template,platform", generated_params())
def test_every_generated_route_parses_with_the_local_runtime(generated, template, platform, tmp_path):
    doc = load_json(generated[(template, platform)][0])
    routes = hub_desired(doc)["routes"]
    for settings in (s["settings"] for s in agent_desired(doc)["modules"].values()):
        # iotedge-local reads createOptions only, not createOptions01…: none are made here.
        assert not [k for k in settings if re.fullmatch(r"createOptions\d+", k)]
    info = LocalRuntime(generated[(template, platform)][0], tmp_path / "state").ready_info()
    assert info["routeErrors"] == []
    assert len(routes) == len(TUTORIAL_ROUTES)
    assert {k: v.lower() for k, v in routes.items()} == {k: v.lower() for k, v in TUTORIAL_ROUTES.items()}
