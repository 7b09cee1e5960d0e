"""A hostile-input corpus for ``engram shard``: malformed safetensors headers, indexes,
manifests, layouts and options. Every case must end with its documented exit code, one
``error:`` line on stderr (plus at most one ``hint:``), no traceback, nothing written, and
the inputs unchanged."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from tests.tables_helpers import make_v41_checkpoint, run_shard, snapshot, tiny_v41_tensors, write_raw_safetensors

INDEX = "model.safetensors.index.json"
MANIFEST = "engram-shards.json"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    root, _ = make_v41_checkpoint(d / "ck")
    r = run_shard("convert", root, "-o", d / "packed", "--to", "packed", "--quiet")
    assert r.exit_code == 0, r.output
    return root, d / "packed"


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Path, tuple], list]  # (tmp, base) -> command arguments (writing into tmp/"out")
    code: int
    says: str = ""  # a piece of the error line


# ---------------------------------------------------------------- safetensors headers
def _st(mutate: Callable[[dict, bytes], tuple], length_delta: int | None = None) -> Callable:
    def build(tmp: Path, base: tuple) -> list:
        d = tmp / "st"
        d.mkdir()
        header, data = tiny_v41_tensors()
        header, data = mutate(header, data)
        length = None
        if length_delta is not None:
            raw = json.dumps(header).encode()
            length = len(raw) + (-len(raw)) % 8 + length_delta
        write_raw_safetensors(d / "model.safetensors", header, data, length)
        return ["convert", d, "-o", tmp / "out", "--to", "packed"]
    return build


W, S = "layers.1.engram.embed.weight", "layers.1.engram.embed.scale"


def _entry(name: str, **kw) -> Callable:
    def m(h, d):
        h[name] = {**h[name], **kw}
        return h, d
    return m


def _raw(raw: bytes) -> Callable:
    def build(tmp: Path, base: tuple) -> list:
        d = tmp / "st"
        d.mkdir()
        write_raw_safetensors(d / "model.safetensors", raw, b"")
        return ["convert", d, "-o", tmp / "out", "--to", "packed"]
    return build


def _truncate(n: int) -> Callable:
    def build(tmp: Path, base: tuple) -> list:
        args = _st(lambda h, d: (h, d))(tmp, base)
        p = tmp / "st" / "model.safetensors"
        p.write_bytes(p.read_bytes()[:n] if n >= 0 else p.read_bytes()[:n])
        return args
    return build


def _dup(h, d):
    raw = json.dumps(h)
    dup = json.dumps({W: h[W]})[1:-1]
    return raw[:-1] + ", " + dup + "}", d


def _dup_build(tmp: Path, base: tuple) -> list:
    d = tmp / "st"
    d.mkdir()
    header, data = tiny_v41_tensors()
    text, _ = _dup(header, data)
    write_raw_safetensors(d / "model.safetensors", text.encode(), data)
    return ["convert", d, "-o", tmp / "out", "--to", "packed"]


ST_CASES = [
    Case("st-overlap", _st(_entry(S, data_offsets=[1000, 1032])), 3, "overlaps"),
    Case("st-duplicate-name", _dup_build, 3, "appears twice"),
    Case("st-shape-string", _st(_entry(S, shape="48")), 3, "shape"),
    Case("st-shape-float", _st(_entry(S, shape=[4.0, 8])), 3, "shape"),
    Case("st-shape-negative", _st(_entry(S, shape=[-4, 8])), 3, "shape"),
    Case("st-shape-bool", _st(_entry(S, shape=[True, 8])), 3, "shape"),
    Case("st-shape-null", _st(_entry(S, shape=None)), 3, "shape"),
    Case("st-dtype-int", _st(_entry(S, dtype=5)), 3, "dtype"),
    Case("st-dtype-unknown", _st(_entry(S, dtype="Q4_K")), 3, "dtype"),
    Case("st-offsets-three", _st(_entry(S, data_offsets=[1024, 1056, 2000])), 3, "data_offsets"),
    Case("st-offsets-reversed", _st(_entry(S, data_offsets=[1056, 1024])), 3, "data_offsets"),
    Case("st-offsets-strings", _st(_entry(S, data_offsets=["1024", "1056"])), 3, "data_offsets"),
    Case("st-offsets-span", _st(_entry(S, data_offsets=[1024, 1050])), 3, "needs"),
    Case("st-gap", _st(lambda h, d: ({**h, S: {**h[S], "data_offsets": [1032, 1064]}}, d + bytes(8))), 3, "belong to no tensor"),
    Case("st-trailing-bytes", _st(lambda h, d: (h, d + bytes(16))), 3, "after the last tensor"),
    Case("st-truncated-data", _truncate(-10), 3, "truncated"),
    Case("st-truncated-header", _truncate(20), 3, "truncated"),
    Case("st-three-bytes", _truncate(3), 3, "not a safetensors file"),
    Case("st-length-past-end", _st(lambda h, d: (h, d), length_delta=10**6), 3, "header"),
    Case("st-length-huge", _st(lambda h, d: (h, d), length_delta=2**40), 3, "header"),
    Case("st-not-json", _raw(b"{not json"), 3, "not JSON"),
    Case("st-not-utf8", _raw(b'{"\xff\xfe": 1}'), 3, "not JSON"),
    Case("st-array", _raw(b"[1, 2, 3]"), 3, "not an object"),
    Case("st-deep-nesting", _raw(b"[" * 100000 + b"]" * 100000), 3, "not JSON"),
    Case("st-metadata-list", _st(lambda h, d: ({**h, "__metadata__": ["format", "pt"]}, d)), 3, "__metadata__"),
    Case("st-metadata-int-value", _st(lambda h, d: ({**h, "__metadata__": {"format": 1}}, d)), 3, "__metadata__"),
    Case("st-entry-string", _st(lambda h, d: ({**h, S: "F8_E8M0"}, d)), 3, "malformed"),
    Case("st-entry-missing-dtype", _st(lambda h, d: ({**h, S: {"shape": [4, 8], "data_offsets": [1024, 1056]}}, d)), 3, "dtype"),
]


# ---------------------------------------------------------------- index
def _index(mutate: Callable[[dict], object], cmd: str = "convert") -> Callable:
    def build(tmp: Path, base: tuple) -> list:
        d = tmp / "ck"
        shutil.copytree(base[0], d)
        idx = json.loads((d / INDEX).read_text())
        new = mutate(idx)
        (d / INDEX).write_text(new if isinstance(new, str) else json.dumps(new))
        return [cmd, d, "-o", tmp / "out", "--to", "hf"] if cmd == "convert" else [cmd, d, "--to", "hf"]
    return build


def _wm(value) -> Callable:
    def m(idx):
        idx["weight_map"]["norm.weight"] = value(idx) if callable(value) else value
        return idx
    return m


def _victim(tmp: Path, base: tuple) -> list:
    shutil.copy(base[0] / "model-00002-of-00003.safetensors", tmp / "victim.safetensors")
    return _index(_wm("../victim.safetensors"))(tmp, base)


def _absolute(tmp: Path, base: tuple) -> list:
    victim = tmp / "victim.safetensors"
    shutil.copy(base[0] / "model-00002-of-00003.safetensors", victim)
    return _index(_wm(str(victim)))(tmp, base)


def _symlinked_shard(tmp: Path, base: tuple) -> list:
    args = _index(lambda idx: idx)(tmp, base)
    d = tmp / "ck"
    outside = tmp / "elsewhere.safetensors"
    shutil.move(d / "model-00002-of-00003.safetensors", outside)
    os.symlink(outside, d / "model-00002-of-00003.safetensors")
    return args


def _symlinked_config(tmp: Path, base: tuple) -> list:
    args = _index(lambda idx: idx)(tmp, base)
    (tmp / "secret.txt").write_text("secret")
    (tmp / "ck" / "config.json").unlink()
    os.symlink(tmp / "secret.txt", tmp / "ck" / "config.json")
    return args


INDEX_CASES = [
    Case("index-dotdot", _victim, 3, "../victim.safetensors"),
    Case("index-absolute", _absolute, 3, "absolute"),
    Case("index-plan-dotdot", _index(_wm("../../etc/passwd"), "plan"), 3, "leads out"),
    Case("index-value-int", _index(_wm(5)), 3, "weight_map"),
    Case("index-value-list", _index(_wm(["a.safetensors"])), 3, "weight_map"),
    Case("index-weight-map-list", _index(lambda idx: {**idx, "weight_map": list(idx["weight_map"])}), 3, "weight_map"),
    Case("index-metadata-string", _index(lambda idx: {**idx, "metadata": "big"}), 3, "metadata"),
    Case("index-not-json", _index(lambda idx: "{oops"), 3, "corrupt index"),
    Case("index-array", _index(lambda idx: [1, 2]), 3, "corrupt index"),
    Case("index-missing-file", _index(_wm("model-00009-of-00009.safetensors")), 3, "missing"),
    Case("index-control-chars", _index(_wm("model\x1b[31m.safetensors")), 3, "control"),
    Case("shard-symlink-escape", _symlinked_shard, 3, "outside"),
    Case("config-symlink-escape", _symlinked_config, 3, "outside"),
]


# ---------------------------------------------------------------- manifests (as a source: exit 3; verified: exit 4)
def _man(mutate: Callable[[dict], object], cmd: str = "convert") -> Callable:
    def build(tmp: Path, base: tuple) -> list:
        d = tmp / "p"
        shutil.copytree(base[1], d)
        doc = json.loads((d / MANIFEST).read_text())
        new = mutate(doc)
        (d / MANIFEST).write_text(new if isinstance(new, str) else json.dumps(new))
        return ["convert", d, "-o", tmp / "out", "--to", "hf"] if cmd == "convert" else ["verify", d]
    return build


def _f0(**kw) -> Callable:
    def m(doc):
        doc["files"][0].update(kw)
        return doc
    return m


def _t0(**kw) -> Callable:
    def m(doc):
        doc["files"][0]["tensors"][0].update(kw)
        return doc
    return m


def _drop(key: str, where: str = "doc") -> Callable:
    def m(doc):
        target = {"doc": doc, "file": doc["files"][0], "table": doc["tables"][0], "tensor": doc["files"][0]["tensors"][0]}[where]
        del target[key]
        return doc
    return m


def _secret(tmp: Path, base: tuple) -> list:
    (tmp / "x").mkdir()
    (tmp / "x" / "secret.bin").write_bytes(b"secret" * 100)
    return _man(_f0(name="../../x/secret.bin"))(tmp, base)


MANIFEST_MUTATIONS = [
    ("dotdot-name", _f0(name="../../x/secret.bin"), "leads out"),
    ("absolute-name", _f0(name="/etc/passwd"), "absolute"),
    ("no-files", _drop("files"), "files"),
    ("no-tables", _drop("tables"), "tables"),
    ("file-no-bytes", _drop("bytes", "file"), "bytes"),
    ("file-no-name", _drop("name", "file"), "name"),
    ("bytes-string", _f0(bytes="lots"), "bytes"),
    ("tensors-string", _f0(tensors="all"), "tensors"),
    ("tensor-string", _f0(tensors=["x"]), "tensors[0]"),
    ("pieces-string", _t0(pieces="0:10"), "pieces"),
    ("piece-reversed", _t0(pieces=[[10, 5, None]]), "pieces[0]"),
    ("offset-negative", _t0(offset=-8), "negative"),
    ("encoding-unknown", _t0(encoding={"weight_dtype": "Q9", "scale_dtype": None, "group": 32}), "encoding"),
    ("table-rows-string", lambda d: {**d, "tables": [{**d["tables"][0], "rows": "many"}] + d["tables"][1:]}, "rows"),
    ("table-no-layer", _drop("layer", "table"), "layer"),
    ("schema-unknown", lambda d: {**d, "schema": "engram.shards/99"}, "schema"),
    ("not-json", lambda d: "{", "corrupt"),
    ("array", lambda d: [d], "list"),
    ("duplicate-file", lambda d: {**d, "files": d["files"] + d["files"][:1]}, "twice"),
    ("checksum-unknown", _f0(checksum="md5"), "md5"),
]


def _wrong_stride(doc):
    doc["files"][0]["tensors"][0]["row_bytes"] = 7
    return doc


def _past_rows(doc):
    t = doc["files"][0]["tensors"][0]
    t["pieces"] = [[0, 10**9, None]]
    return doc


def _foreign_layer(doc):
    doc["files"][0]["tensors"][0]["layer"] = 99
    return doc


def _truncated_data(tmp: Path, base: tuple) -> list:
    args = _man(lambda d: d)(tmp, base)
    f = next((tmp / "p").glob("*.bin"))
    f.write_bytes(f.read_bytes()[:-100])
    return args


MANIFEST_CASES = [Case(f"manifest-{n}", _man(m), 3, says) for n, m, says in MANIFEST_MUTATIONS] + [
    Case("manifest-secret-file", _secret, 3, "secret.bin"),
    Case("manifest-wrong-stride", _man(_wrong_stride), 3, "cannot be read back"),
    Case("manifest-rows-past-table", _man(_past_rows), 3, "past"),
    Case("manifest-foreign-layer", _man(_foreign_layer), 3, "layer 99"),
    Case("manifest-truncated-data", _truncated_data, 3, "truncated"),
] + [Case(f"verify-{n}", _man(m, "verify"), 4, "cannot be read") for n, m, _ in MANIFEST_MUTATIONS[:12]]


# ---------------------------------------------------------------- options and layouts
def _ck(*extra) -> Callable:
    def build(tmp: Path, base: tuple) -> list:
        return [a.format(src=base[0], out=tmp / "out") if isinstance(a, str) else a for a in extra]
    return build


def _layout(mutate: Callable[[dict], object]) -> Callable:
    def build(tmp: Path, base: tuple) -> list:
        lay = tmp / "lay"
        lay.mkdir()
        shutil.copy(base[0] / "engram_layout.json", lay)
        shutil.copy(base[0] / "token_map.safetensors", lay)
        doc = json.loads((lay / "engram_layout.json").read_text())
        (lay / "engram_layout.json").write_text(json.dumps(mutate(doc)))
        return ["convert", base[0], "-o", tmp / "out", "--to", "heads", "--layout", lay]
    return build


def _tm(value) -> Callable:
    def m(doc):
        doc["token_map"] = value if not isinstance(value, dict) else {**doc["token_map"], **value}
        return doc
    return m


def _gguf_bad_layer(tmp: Path, base: tuple) -> list:
    import gguf
    import numpy as np

    p = tmp / "bad.gguf"
    w = gguf.GGUFWriter(str(p), "deepseek41")
    w.add_string("deepseek41.engram.encoding", "e4m3_e8m0_32_row264")
    w.add_tensor("blk.x.engram_embd.weight", np.zeros((4, 264), np.int8))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return ["convert", p, "-o", tmp / "out", "--to", "packed"]


def _gguf_fix_wrong_layout(tmp: Path, base: tuple) -> list:
    assert run_shard("convert", base[0], "-o", tmp / "g", "--to", "gguf", "--quiet").exit_code == 0
    return ["gguf-fix", tmp / "g" / "engram.gguf", "--preset", "deepseek-v4.1-flash", "-o", tmp / "out"]


def _out_is_file(tmp: Path, base: tuple) -> list:
    (tmp / "out.txt").write_text("not a folder")
    return ["convert", base[0], "-o", tmp / "out.txt", "--to", "packed"]


OPTION_CASES = [
    Case("gguf-name-dotdot", _ck("convert", "{src}", "-o", "{out}", "--to", "gguf", "--gguf-name", "../escaped.gguf"), 3, "escaped.gguf"),
    Case("gguf-name-absolute", _ck("convert", "{src}", "-o", "{out}", "--to", "gguf", "--gguf-name", "/tmp/x.gguf"), 3, "absolute"),
    Case("gguf-name-folder", _ck("convert", "{src}", "-o", "{out}", "--to", "gguf", "--gguf-name", "sub/x.gguf"), 2, "file name"),
    Case("from-gguf-on-safetensors", _ck("convert", "{src}", "-o", "{out}", "--from", "gguf"), 3, ".gguf"),
    Case("from-engram-on-hf", _ck("convert", "{src}", "-o", "{out}", "--from", "engram"), 3, "engram-shards.json"),
    Case("gguf-layer-not-a-number", _gguf_bad_layer, 3, "blk.x"),
    Case("gguf-fix-layout-of-another-model", _gguf_fix_wrong_layout, 3, "does not fit its tables"),
    Case("ranks-zero", _ck("convert", "{src}", "-o", "{out}", "--to", "ranks", "--policy", "sglang-floor", "--ranks", "0"), 2, "--ranks"),
    Case("ranks-huge", _ck("convert", "{src}", "-o", "{out}", "--to", "ranks", "--policy", "sglang-floor", "--ranks", str(2**40)), 2, "ranks"),
    Case("ranks-no-policy", _ck("convert", "{src}", "-o", "{out}", "--to", "ranks", "--ranks", "2"), 2, "--policy"),
    Case("local-rank-outside", _ck("convert", "{src}", "-o", "{out}", "--to", "local", "--policy", "vllm-head", "--ranks", "4",
                                   "--rank", "9"), 2, "--rank 9"),
    Case("max-shard-size-words", _ck("convert", "{src}", "-o", "{out}", "--max-shard-size", "lots"), 2, "size"),
    Case("block-size-zero", _ck("convert", "{src}", "-o", "{out}", "--block-size", "0"), 2, "size"),
    Case("to-unknown", _ck("convert", "{src}", "-o", "{out}", "--to", "onnx"), 2, "onnx"),
    Case("policy-unknown", _ck("ranges", "--policy", "round-robin", "--ranks", "2"), 2, "round-robin"),
    Case("out-and-old-out-differ", _ck("convert", "{src}", "-o", "{out}", "--out", "/tmp/elsewhere"), 2, "--output"),
    Case("output-is-a-file", _out_is_file, 2, "not a directory"),
    Case("output-inside-source", _ck("convert", "{src}", "-o", "{src}/sub", "--to", "packed"), 2, "inside the source"),
    Case("layout-missing", _ck("convert", "{src}", "-o", "{out}", "--to", "heads", "--layout", "/nonexistent/layout"), 3, "layout"),
    Case("layout-token-map-dotdot", _layout(_tm({"file": "../token_map.safetensors"})), 3, "leads out"),
    Case("layout-token-map-absolute", _layout(_tm({"file": "/etc/passwd"})), 3, "absolute"),
    Case("layout-token-map-string", _layout(_tm("token_map.safetensors")), 3, "token_map"),
    Case("layout-token-map-file-int", _layout(_tm({"file": 7})), 3, "token_map"),
]

CASES = ST_CASES + INDEX_CASES + MANIFEST_CASES + OPTION_CASES


def test_corpus_is_large_enough():
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input(case, base, tmp_path):
    args = case.build(tmp_path, base)
    before_tmp, before_base = snapshot(tmp_path), (snapshot(base[0]), snapshot(base[1]))
    r = run_shard(*args)
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.exit_code == case.code, (r.exit_code, r.output)
    assert "Traceback" not in r.output and "Traceback" not in r.stderr
    assert len(err) in (1, 2) and err[0].startswith("error:") and all(x.startswith("hint:") for x in err[1:]), err
    assert "unexpected" not in err[0] and "\x1b" not in r.stderr
    assert case.says in err[0], err[0]
    assert not (tmp_path / "out").exists()
    assert snapshot(tmp_path) == before_tmp, "an input changed"
    assert (snapshot(base[0]), snapshot(base[1])) == before_base
