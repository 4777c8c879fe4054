"""Reads blobs of an IoT Hub storage endpoint (Avro) whole with fastavro.

    read_routed.py FILE...

Prints one JSON object: {"FILE": {"schema": "<full name>", "fields": [...], "bodies": ["..."]}},
the bodies decoded as UTF-8. Exits 1 with the file and fastavro's error if a file does not
read back whole. The hub-routing tests use it as a reader independent of the runtime's.
"""

import sys

import fastavro

from read_back import run


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
    return run(paths, read)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
