"""Files written by the Rust avroFileWriter, read back by the reference readers.

The Rust example `write_sample` writes archive files through the module's own code path
(JSON body -> checks -> group commit, a file reopened and appended to, a file with several
blocks, a torn copy repaired) plus `expected.json`, the JSON records each file must hold.
Here Apache Avro's Python package and fastavro read every record with the tutorial's schema
and the values must be the JSON numbers rounded to float32.
"""

import json
import math
import os
import pathlib
import struct
import subprocess

import avro.datafile
import avro.io
import avro.schema
import fastavro
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
STRINGS = ("CorrelationId", "ConnectionDeviceId", "CreationTimeUtc", "EnqueuedTimeUtc")


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    out = tmp_path_factory.mktemp("avro-sample")
    subprocess.run(
        ["cargo", "run", "--quiet", "--locked", "-p", "avroFileWriter",
         "--example", "write_sample", "--", str(out)],
        cwd=ROOT, check=True, env=os.environ.copy(),
    )
    expected = json.loads((out / "expected.json").read_text(encoding="utf-8"))
    schema_text = (out / "schema.avsc").read_text(encoding="utf-8")
    return out, expected, schema_text


def as_float32(x):
    """The float32 nearest to x, as Python's float (what a reader returns for `float`)."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def same_float(got, want):
    return got == want and math.copysign(1.0, got) == math.copysign(1.0, want)


def read_fastavro(path, schema_text):
    reader_schema = fastavro.parse_schema(json.loads(schema_text))
    with open(path, "rb") as fo:
        reader = fastavro.reader(fo, reader_schema=reader_schema)
        assert reader.metadata.get("avro.codec", "null") == "null"
        return list(reader)


def read_apache(path, schema_text):
    readers_schema = avro.schema.parse(schema_text)
    with open(path, "rb") as fo:
        reader = avro.datafile.DataFileReader(fo, avro.io.DatumReader(readers_schema=readers_schema))
        try:
            assert reader.get_meta("avro.codec") in (None, b"null")
            return list(reader)
        finally:
            reader.close()


def check(records, wanted, inputs, path, reader):
    assert len(records) == len(wanted), f"{reader}: {path}: record count"
    for got, index in zip(records, wanted):
        want = inputs[index]
        for name in STRINGS:
            assert got[name] == want[name], f"{reader}: {path}: {name}"
        assert set(got["Body"]) == set(want["Body"]), f"{reader}: {path}: Body fields"
        for field, value in want["Body"].items():
            assert same_float(got["Body"][field], as_float32(value)), (
                f"{reader}: {path}: record {index} Body.{field} = {got['Body'][field]!r}, "
                f"want float32({value!r}) = {as_float32(value)!r}"
            )


@pytest.mark.parametrize("reader", ["fastavro", "apache-avro"])
def test_reference_readers_read_every_record_exactly(sample, reader):
    out, expected, schema_text = sample
    read = read_fastavro if reader == "fastavro" else read_apache
    assert len(expected["files"]) == 3
    for rel, wanted in expected["files"].items():
        records = read(out / rel, schema_text)
        check(records, wanted, expected["inputs"], rel, reader)


def test_the_writer_appended_to_the_reopened_file_under_one_header(sample):
    out, expected, _ = sample
    tree_files = [rel for rel in expected["files"] if rel.startswith("tree/")]
    assert len(tree_files) == 1
    rel = tree_files[0]
    # tree/<year>/<month>/<day>/<hour>/<minute>.avro, no zero padding, minute a multiple of 5
    parts = rel.split("/")[1:]
    assert len(parts) == 5 and parts[-1].endswith(".avro")
    numbers = parts[:-1] + [parts[-1][: -len(".avro")]]
    assert all(p.isdigit() and (p == "0" or not p.startswith("0")) for p in numbers)
    assert int(numbers[-1]) % 5 == 0
    data = (out / rel).read_bytes()
    assert data.startswith(b"Obj\x01") and data.count(b"Obj\x01") == 1
    marker = data[-16:]  # a complete file ends with its sync marker
    # Two runs of 15 records in groups of at most 4: at least 8 blocks, each ending with
    # the file's one sync marker (plus the header's).
    assert data.count(marker) >= 9
