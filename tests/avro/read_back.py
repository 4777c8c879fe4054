"""Reads Avro container files whole with fastavro and prints each one's correlation ids.

    read_back.py FILE...

Prints one JSON object: {"FILE": ["CorrelationId", ...], ...}, in file order. Exits 1 with
the file and fastavro's error if any file does not read back whole (a torn or damaged
block, bytes after the last block, a record that does not decode). The end-to-end fault
tests run it on every file they check, as a reader independent of the writer's own.
"""

import json
import sys

import fastavro


def correlation_ids(path):
    with open(path, "rb") as f:
        return [record["CorrelationId"] for record in fastavro.reader(f)]


def run(paths, read):
    """Prints {path: read(path)} as JSON; 1 with fastavro's error if a file does not read whole."""
    out = {}
    for path in paths:
        try:
            out[path] = read(path)
        except Exception as e:  # fastavro raises several kinds; each is a failed read
            print(f"{path}: fastavro could not read it whole: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
    json.dump(out, sys.stdout)
    return 0


def main(paths):
    return run(paths, correlation_ids)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
