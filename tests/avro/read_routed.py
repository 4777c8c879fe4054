"""Reads blobs of an IoT Hub storage endpoint (Avro) whole with fastavro.

    read_routed.py FILE...

Prints one JSON object: {"FILE": {"schema": "<full name>", "fields": [...], "bodies": ["..."]}},
the bodies decoded as UTF-8. Exits 1 with the file and fastavro's error if a file does not
read back whole. The hub-routing tests use it as a reader independent of the runtime's.
"""

import json
import sys

import fastavro


def read(path):
    with open(path, "rb") as f:
        reader = fastavro.reader(f)
        schema = reader.writer_schema
        bodies = [record["Body"].decode("utf-8") for record in reader]
    return {
        "schema": schema.get("name", ""),
        "fields": [field["name"] for field in schema["fields"]],
        "bodies": bodies,
    }


def main(paths):
    out = {}
    for path in paths:
        try:
            out[path] = read(path)
        except Exception as e:  # each kind fastavro raises is a failed read
            print(f"{path}: fastavro could not read it whole: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
