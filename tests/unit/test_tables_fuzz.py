"""Hypothesis fuzz of the two parsers that read untrusted bytes in ``engram shard``: the
safetensors header and the manifest. Whatever they are given, they either return a valid
result or raise the project's BadInputError (exit 3), never another exception."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engram_cli.errors import BadInputError
from engram_cli.tables.manifest import Manifest
from engram_cli.tables.st_format import DTYPE_SIZE, parse_header

JSON = st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=20),
                    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4),
                    max_leaves=20)


def _check_header(raw: bytes, size: int) -> None:
    try:
        h = parse_header(raw, size)
    except BadInputError:
        return
    spans = sorted((e.offset, e.offset + e.nbytes) for e in h.tensors.values())
    pos = 8 + len(raw)
    for a, b in spans:  # a header that parses covers the data exactly
        assert a == pos and b >= a
        pos = b
    assert pos == size


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=300), extra=st.integers(0, 10**6))
def test_header_bytes(raw, extra):
    _check_header(raw, 8 + len(raw) + extra)


ENTRY = st.fixed_dictionaries({}, optional={
    "dtype": st.sampled_from(sorted(DTYPE_SIZE)) | JSON,
    "shape": st.lists(st.integers(-2, 6), max_size=3) | JSON,
    "data_offsets": st.lists(st.integers(-4, 400), min_size=2, max_size=2) | JSON,
})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries=st.dictionaries(st.text(max_size=8), ENTRY | JSON, max_size=5), meta=JSON, data=st.integers(0, 500),
       dup=st.booleans())
def test_header_structures(entries, meta, data, dup):
    doc = dict(entries)
    if meta is not None:
        doc["__metadata__"] = meta
    text = json.dumps(doc)
    if dup and entries:
        k = next(iter(entries))
        text = text[:-1] + ", " + json.dumps({k: entries[k]})[1:-1] + "}"
    raw = text.encode()
    _check_header(raw, 8 + len(raw) + data)


def _valid_manifest() -> dict:
    enc = {"name": "fp8-e4m3", "weight_dtype": "F8_E4M3", "scale_dtype": "F8_E8M0", "group": 32}
    tensor = {"name": "l1.rows", "dtype": "U8", "shape": [10, 264], "offset": 0, "nbytes": 2640, "row_bytes": 264,
              "layer": 1, "part": "rows", "dim": 256, "encoding": enc, "pieces": [[0, 10, None]], "pad_rows": 0, "heads": None}
    return {"schema": "engram.shards/1", "target": "packed", "family": "deepseek-v4.1", "source": {"path": "x"},
            "tables": [{"layer": 1, "rows": 10, "dim": 256, "output_encoding": enc, "source_encoding": enc,
                        "source_names": ["a"], "source_parts": None, "head_sizes": [3, 7]}],
            "files": [{"name": "engram-l1.bin", "format": "raw", "bytes": 2640, "checksum": "xxh3-128",
                       "xxh3_128": "0" * 32, "tensors": [tensor]}],
            "side_files": [{"name": "engram_layout.json", "role": "layout", "bytes": 10, "checksum": "sha256", "sha256": "0" * 64}],
            "omitted": {"tensors": ["t"], "files": ["config.json"]}, "options": {}, "ranges": []}


def _paths(doc, prefix=()):
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, prefix + (i,))


PATHS = list(_paths(_valid_manifest()))


def test_valid_manifest_round_trips(tmp_path):
    m = Manifest.from_dict(_valid_manifest(), tmp_path)
    assert m.files[0].tensors[0].table.pieces[0].stop == 10 and m.side_files[0].checksum == "sha256"
    again = Manifest.from_dict(json.loads(json.dumps(m.to_dict())), tmp_path)
    assert again == m


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.sampled_from(PATHS), value=JSON, drop=st.booleans())
def test_manifest_mutations(tmp_path: Path, where, value, drop):
    doc = copy.deepcopy(_valid_manifest())
    if not where:
        doc = value
    else:
        parent = doc
        for k in where[:-1]:
            parent = parent[k]
        if drop and isinstance(parent, dict):
            del parent[where[-1]]
        else:
            parent[where[-1]] = value
    try:
        m = Manifest.from_dict(doc, tmp_path)
    except BadInputError:
        return
    for f in m.files + m.side_files:  # whatever loads names files inside the folder
        assert not f.name.startswith("/") and ".." not in Path(f.name).parts


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=JSON)
def test_manifest_any_json(tmp_path: Path, doc):
    try:
        Manifest.from_dict(doc, tmp_path)
    except BadInputError:
        pass
