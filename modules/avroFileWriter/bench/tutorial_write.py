#!/usr/bin/env python3
"""The tutorial's own Avro write path, re-created for comparison (not its code).

For every message, as the tutorial's Python avroFileWriter does: parse the JSON body, work
out the bucket file from the current UTC time, parse the Avro schema, open the file, append
the one record with fastavro (which reads the existing header to append with its sync
marker), close. No fsync: nothing is known to be on disk when the message is acknowledged.

    tutorial_write.py RECORDS_JSONL SCHEMA_AVSC OUT_DIR [--runs N]

RECORDS_JSONL has one message body a line (`bench/run.sh` makes it with the Rust bench's
--export, so both sides write the same records). Prints records/s per run and the median.
"""

import argparse
import datetime
import json
import os
import shutil
import statistics
import time

import fastavro


def write_message(root, schema, body):
    record = json.loads(body)
    now = datetime.datetime.now(datetime.timezone.utc)
    folder = os.path.join(root, str(now.year), str(now.month), str(now.day), str(now.hour))
    path = os.path.join(folder, f"{now.minute // 5 * 5}.avro")
    os.makedirs(folder, exist_ok=True)
    parsed = fastavro.parse_schema(schema)  # once per message, as the tutorial does
    with open(path, "a+b") as fo:
        fastavro.writer(fo, parsed, [record])


def count_records(root):
    n = 0
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as fo:
                n += sum(1 for _ in fastavro.reader(fo))
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("records")
    ap.add_argument("schema")
    ap.add_argument("out")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with open(args.records, encoding="utf-8") as f:
        bodies = [line.rstrip("\n") for line in f if line.strip()]
    with open(args.schema, encoding="utf-8") as f:
        schema = json.load(f)
    rates = []
    for run in range(1, args.runs + 1):
        root = os.path.join(args.out, f"run{run}")
        shutil.rmtree(root, ignore_errors=True)
        start = time.perf_counter()
        for body in bodies:
            write_message(root, schema, body)
        rate = len(bodies) / (time.perf_counter() - start)
        written = count_records(root)
        if written != len(bodies):
            raise SystemExit(f"tutorial path wrote {written} records, not {len(bodies)}")
        print(f"tutorial run {run}: {rate:.0f} records/s")
        rates.append(rate)
        shutil.rmtree(root, ignore_errors=True)
    median = statistics.median(rates)
    print(f"tutorial (fastavro, reopen + schema parse per message, no sync): "
          f"median {median:.0f} records/s over {args.runs} runs of {len(bodies)} records")
    print(f"RESULT tutorial {median:.0f}")


if __name__ == "__main__":
    main()
