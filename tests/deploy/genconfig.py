"""Runs Microsoft's `iotedgedev genconfig` on the deployment templates, for every platform, the
way a developer does (a solution folder with .env, the templates and modules/*/module.json),
in a scratch copy of those files: registry values are dummies from .env.template, iotedgedev's
telemetry is off, and its schema download is answered by a loopback proxy (schemas.py), so the
generated manifests are validated against the real schema without any network.

    .venv-deploy/bin/python tests/deploy/genconfig.py [OUT_DIR]   (default: <repo>/config)

Writes OUT_DIR/<template prefix>.<platform>.json (e.g. config/deployment.amd64.json) and
OUT_DIR/genconfig.log; exits non-zero when iotedgedev fails or reports a validation problem.
"""
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
import schemas  # noqa: E402

TEMPLATES = (
    "deployment.template.json",
    "deployment.debug.template.json",
    "deployment.gpu.template.json",
    "deployment.blobstorage.template.json",
)
PLATFORMS = ("amd64", "arm64v8", "arm32v7")
# The GPU image is amd64 only (docker/Dockerfile.amd64.gpu).
TEMPLATE_PLATFORMS = {"deployment.gpu.template.json": ("amd64",)}


def pairs(templates=TEMPLATES, platforms=PLATFORMS):
    """(template, platform) for each manifest genconfig makes."""
    return [(t, p) for t in templates for p in platforms if p in TEMPLATE_PLATFORMS.get(t, p)]

# Dummy registry settings for .env (from .env.template; nothing is pushed).
DUMMY_ENV = {
    "CONTAINER_REGISTRY_ADDRESS": "turbofanci.azurecr.io",
    "CONTAINER_REGISTRY_USERNAME": "turbofanci",
    "CONTAINER_REGISTRY_PASSWORD": "not-a-secret",
    "LOCAL_STORAGE_ACCOUNT_NAME": "turbofanedge",
    "LOCAL_STORAGE_ACCOUNT_KEY": "bm90LWEtc2VjcmV0LWJ1dC02NC1ieXRlcy1sb25nLW5vdC1hLXNlY3JldC1idXQtNjQtYnl0ZXMtbG9uZw==",
    "CLOUD_STORAGE_CONNECTION_STRING": "DefaultEndpointsProtocol=https;AccountName=turbofanci;AccountKey=bm90LWEtc2VjcmV0;EndpointSuffix=core.windows.net",
}


def output_name(template, platform):
    return template[: -len(".template.json")] + "." + platform + ".json"


def dotenv_from_template(text):
    lines = []
    for line in text.splitlines():
        key = line.split("=", 1)[0].strip()
        if key in DUMMY_ENV and not line.lstrip().startswith("#"):
            line = "%s=%s" % (key, DUMMY_ENV[key])
        lines.append(line)
    return "\n".join(lines) + "\n"


def solution_copy(dest):
    """The files iotedgedev reads, as in this repo: .env, templates, module.json, Dockerfiles."""
    dest = Path(dest)
    (dest / ".env").write_text(dotenv_from_template((ROOT / ".env.template").read_text()))
    for t in TEMPLATES:
        shutil.copy(ROOT / t, dest / t)
    for module_json in sorted((ROOT / "modules").glob("*/module.json")):
        target = dest / "modules" / module_json.parent.name
        target.mkdir(parents=True)
        shutil.copy(module_json, target / "module.json")
    shutil.copytree(ROOT / "docker", dest / "docker")


def iotedgedev_env(venv, proxy_url):
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith(("CONTAINER_REGISTRY", "DEPLOYMENT_CONFIG", "DEFAULT_PLATFORM",
                                        "CONTAINER_TAG", "BYPASS_MODULES", "CONFIG_OUTPUT_DIR",
                                        "MODULES_PATH", "DOTENV_FILE"))
           and k.lower() not in ("http_proxy", "https_proxy", "no_proxy", "all_proxy")}
    env.update({
        "HOME": str(Path(venv) / "home"),  # iotedgedev's settings: telemetry off (setup.sh)
        "PATH": str(Path(venv) / "bin") + os.pathsep + env.get("PATH", ""),
        "http_proxy": proxy_url,
        "https_proxy": proxy_url,
        "no_proxy": "",
        "PYTHONWARNINGS": "ignore",
    })
    return env


def run(out_dir, venv=None, templates=TEMPLATES, platforms=PLATFORMS):
    """Generates every manifest; returns {(template, platform): (path, log text)}."""
    venv = Path(venv or ROOT / ".venv-deploy")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    problems = []
    log = []
    with tempfile.TemporaryDirectory() as tmp, schemas.SchemaProxy(venv / "schemas") as proxy:
        solution_copy(tmp)
        env = iotedgedev_env(venv, proxy.url)
        for t, p in pairs(templates, platforms):
            cmd = [str(venv / "bin" / "iotedgedev"), "solution", "genconfig", "-f", t, "-P", p,
                   "--fail-on-validation-error"]
            before = len(proxy.served)
            proc = subprocess.run(cmd, cwd=tmp, env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, timeout=300)
            text = proc.stdout
            log.append("$ %s\n%s" % (" ".join(cmd[1:]), text))
            generated = Path(tmp) / "config" / output_name(t, p)
            if proc.returncode != 0 or not generated.is_file():
                problems.append("%s -P %s: exit %d" % (t, p, proc.returncode))
            elif "ERROR" in text or "schema error" in text or "validation failed" in text.lower():
                problems.append("%s -P %s: iotedgedev reported a problem" % (t, p))
            elif len(proxy.served) == before or "Deployment manifest schema validation passed" not in text:
                problems.append("%s -P %s: the manifest was not validated against the schema" % (t, p))
            else:
                shutil.copy(generated, out / generated.name)
            results[(t, p)] = (out / generated.name, text)
    (out / "genconfig.log").write_text("\n".join(log))
    if problems:
        raise RuntimeError("iotedgedev genconfig: %s (see %s)" % ("; ".join(problems), out / "genconfig.log"))
    return results


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "config"
    try:
        res = run(target)
    except RuntimeError as e:
        raise SystemExit(str(e))
    for (t, p), (path, _) in sorted(res.items()):
        print("%-34s %-8s -> %s" % (t, p, path.relative_to(ROOT) if ROOT in path.parents else path))
