"""GGUF dialects: every reader against files built with ``gguf.GGUFWriter`` from each dialect's
documented keys (formats.md 4 and 7.1), our ds4 writer against the keys a ds4-side reader
requires, round trips back to the source tables bit for bit, and ``gguf-fix --dialect``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tables_helpers import make_v41_checkpoint, random_fp8, random_scales, read_tables, run_shard, small_layout, write_sharded  # noqa: E402

from engram_cli.layout.store import save_layout  # noqa: E402

T = gguf.GGUFValueType
P = "deepseek41.engram."

# What each dialect's readers require, written out here from the sources (not from our data module):
# llama.cpp #28696 patch / ik_llama.cpp, and antirez/ds4 deepseek41_metadata.py (strix-llama.cpp runtime).
LLAMACPP = {"layer_ids": (T.ARRAY, T.INT32), "head_count": (T.UINT32,), "key_length": (T.UINT32,),
            "max_ngram_size": (T.UINT32,), "multipliers": (T.ARRAY, T.UINT64), "primes": (T.ARRAY, T.UINT64),
            "offsets": (T.ARRAY, T.UINT64), "token_map": (T.ARRAY, T.INT32), "pad_id": (T.UINT32,)}
DS4 = {"encoding": (T.STRING,), "layer_ids": (T.ARRAY, T.UINT32), "rows": (T.ARRAY, T.UINT32),
       "compressed_vocab_size": (T.UINT32,), "pad_id": (T.UINT32,), "token_map": (T.ARRAY, T.UINT32),
       "primes": (T.ARRAY, T.UINT32), "multipliers": (T.ARRAY, T.UINT64)}


def flat(rows):
    return [int(v) for r in rows for v in r]


def raw_rows(lay, seed=0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for i, layer in enumerate(lay.layer_ids):
        n = lay.num_embeddings[i]
        w = random_fp8(n, 256, rng).view(torch.uint8).numpy()
        s = random_scales(n, 8, rng).view(torch.uint8).numpy()
        out[layer] = np.concatenate([w, s], axis=1)
    return out


def write_gguf(path: Path, arch: str, kv: list, tensors: list) -> Path:
    w = gguf.GGUFWriter(str(path), arch)
    for key, val, vt, sub in kv:
        w.add_key_value(key, val, vt, sub_type=sub)
    for name, arr, raw in tensors:
        if raw is None:
            w.add_tensor(name, arr)
        else:
            w.add_tensor(name, arr, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _kv(prefix, spec, values):
    out = []
    for name, types in spec.items():
        out.append((prefix + name, values[name], types[0], types[1] if len(types) > 1 else None))
    return out


def values(lay):
    return {"layer_ids": list(lay.layer_ids), "head_count": lay.n_heads, "key_length": lay.head_dim, "head_dim": lay.head_dim,
            "n_heads": lay.n_heads, "max_ngram_size": lay.max_ngram_size, "multipliers": flat(lay.multipliers),
            "primes": flat(lay.primes), "offsets": flat(lay.offsets), "token_map": [int(x) for x in lay.token_map],
            "pad_id": lay.compressed_pad_id, "pad_token_id": lay.compressed_pad_id, "pad_id_compressed": lay.compressed_pad_id,
            "encoding": "e4m3_e8m0_32_row264", "rows": list(lay.num_embeddings), "num_embeddings": list(lay.num_embeddings),
            "compressed_vocab_size": lay.compressed_vocab_size, "vocab_size": 300}


def table_tensors(lay, rows):
    return [(f"blk.{layer}.engram_embd.weight", rows[layer].view(np.int8), None) for layer in lay.layer_ids]


def constant_tensors(lay):
    n, layers = lay.max_ngram_size, len(lay.layer_ids)
    mult = np.asarray(lay.multipliers, dtype=np.int64)  # numpy [L, N] = GGUF [N, L]
    primes = np.asarray(lay.primes, dtype=np.int64).reshape(layers, n - 1, lay.n_heads)  # GGUF [H, N-1, L]
    offs = np.asarray(lay.offsets, dtype=np.int64)  # GGUF [(N-1)*H, L]
    return [("engram.token_map", np.asarray(lay.token_map, dtype=np.int32), None), ("engram.multipliers", mult, None),
            ("engram.primes", primes, None), ("engram.offsets", offs, None)]


def build(dialect: str, root: Path, lay, rows) -> Path:
    """A file of ``dialect`` as its own producer writes it."""
    v = values(lay)
    p = root / f"{dialect}.gguf"
    if dialect == "llamacpp":
        return write_gguf(p, "deepseek41", _kv(P, LLAMACPP, v) + [(P + "encoding", v["encoding"], T.STRING, None)],
                          table_tensors(lay, rows))
    if dialect == "legacy":  # the first published files: deepseek4 architecture and prefix
        return write_gguf(p, "deepseek4", _kv("deepseek4.engram.", LLAMACPP, v) + [("deepseek4.engram.encoding", v["encoding"], T.STRING, None)],
                          table_tensors(lay, rows))
    if dialect == "ds4":
        return write_gguf(p, "deepseek41", _kv(P, DS4, v), table_tensors(lay, rows))
    if dialect == "mini":
        spec = {"layer_ids": (T.ARRAY, T.UINT32), "head_dim": (T.UINT32,), "n_heads": (T.UINT32,), "max_ngram_size": (T.UINT32,),
                "pad_token_id": (T.UINT32,), "compressed_vocab_size": (T.UINT32,), "num_embeddings": (T.ARRAY, T.UINT64),
                "primes": (T.ARRAY, T.UINT32), "offsets": (T.ARRAY, T.UINT32), "multipliers": (T.ARRAY, T.INT64),
                "token_map": (T.ARRAY, T.UINT32), "encoding": (T.STRING,)}
        return write_gguf(p, "deepseek41", _kv(P, spec, v), table_tensors(lay, rows))
    if dialect == "bound":
        spec = {k: LLAMACPP[k] for k in ("layer_ids", "head_count", "key_length", "max_ngram_size", "pad_id")}
        return write_gguf(p, "deepseek41", _kv(P, spec, v) + [(P + "encoding", v["encoding"], T.STRING, None)],
                          constant_tensors(lay) + table_tensors(lay, rows))
    if dialect == "pointer":
        return build_pointer(root, lay, rows)
    raise AssertionError(dialect)


def build_pointer(root: Path, lay, rows, table_path=None) -> Path:
    """deepseek4.engram.{i}.table_path/weight_offset/scale_offset into a safetensors shard beside the GGUF."""
    from engram_cli.tables.st_format import read_header

    t = {}
    for layer in lay.layer_ids:
        t[f"layers.{layer}.engram.embed.weight"] = torch.from_numpy(rows[layer][:, :256].copy()).view(torch.float8_e4m3fn)
        t[f"layers.{layer}.engram.embed.scale"] = torch.from_numpy(rows[layer][:, 256:].copy()).view(torch.float8_e8m0fnu)
    shard = "model-00001-of-00001.safetensors"
    write_sharded(root, t, {shard: sorted(t)})
    hd = read_header(root / shard)
    v = values(lay)
    spec = {"layer_ids": (T.ARRAY, T.INT32), "num_embeddings": (T.ARRAY, T.UINT64), "max_ngram_size": (T.UINT32,),
            "head_count": (T.UINT32,), "head_dim": (T.UINT32,), "vocab_size": (T.UINT32,),
            "compressed_vocab_size": (T.UINT32,), "pad_id_compressed": (T.UINT32,)}
    kv = _kv("deepseek4.engram.", spec, v)
    for i, layer in enumerate(lay.layer_ids):
        kv.append((f"deepseek4.engram.{i}.table_path", table_path or str((root / shard).resolve()), T.STRING, None))
        kv.append((f"deepseek4.engram.{i}.weight_offset", hd.tensors[f"layers.{layer}.engram.embed.weight"].offset, T.UINT64, None))
        kv.append((f"deepseek4.engram.{i}.scale_offset", hd.tensors[f"layers.{layer}.engram.embed.scale"].offset, T.UINT64, None))
    return write_gguf(root / "pointer.gguf", "deepseek4", kv, constant_tensors(lay))


@pytest.fixture(scope="module")
def lay():
    return small_layout()


@pytest.fixture(scope="module")
def rows(lay):
    return raw_rows(lay)


def _tables_of_hf(out: Path) -> dict[int, np.ndarray]:
    got = read_tables(out)
    return {int(k.split(".")[1]): np.concatenate([got[k], got[k.replace(".weight", ".scale")]], axis=1)
            for k in got if k.endswith("engram.embed.weight")}


@pytest.mark.parametrize("dialect", ["llamacpp", "legacy", "ds4", "mini", "bound", "pointer"])
def test_every_dialect_reads_back(dialect, tmp_path, lay, rows):
    from engram_cli.tables.gguf_read import layout_from_gguf, read_gguf

    path = build(dialect, tmp_path, lay, rows)
    g = read_gguf(path)
    assert g.dialect == {"legacy": "llamacpp"}.get(dialect, dialect)
    got = layout_from_gguf(g)
    assert got.primes == lay.primes and got.offsets == lay.offsets and got.multipliers == lay.multipliers
    assert np.array_equal(got.token_map, lay.token_map) and got.compressed_pad_id == lay.compressed_pad_id
    assert (got.n_heads, got.max_ngram_size, got.compressed_vocab_size) == (8, 4, 500)
    assert got.tensor_ids == lay.layer_ids and got.num_embeddings == lay.num_embeddings
    out = tmp_path / "hf"
    r = run_shard("convert", path, "-o", out, "--to", "hf", "--engram-only")
    assert r.exit_code == 0, r.output
    back = _tables_of_hf(out)
    assert sorted(back) == sorted(rows) and all(np.array_equal(back[k], rows[k]) for k in rows)


def test_pointer_paths_stay_in_the_gguf_folder(tmp_path, lay, rows):
    from engram_cli.errors import BadInputError
    from engram_cli.tables.gguf_read import read_gguf

    d = tmp_path / "inside"
    d.mkdir()
    build_pointer(d, lay, rows, table_path="model-00001-of-00001.safetensors")  # relative: resolved beside the GGUF
    assert read_gguf(d / "pointer.gguf").tables[0].rows == lay.num_embeddings[0]
    other = tmp_path / "elsewhere"
    other.mkdir()
    build_pointer(other, lay, rows)
    (other / "pointer.gguf").rename(d / "escape.gguf")  # absolute path into another folder
    with pytest.raises(BadInputError, match="outside"):
        read_gguf(d / "escape.gguf")
    (d / "dots").mkdir()
    build_pointer(d / "dots", lay, rows, table_path="../model-00001-of-00001.safetensors")
    r = run_shard("convert", d / "dots" / "pointer.gguf", "-o", tmp_path / "o", "--to", "hf", "--engram-only")
    assert r.exit_code == 3 and "out of its folder" in r.output and "Traceback" not in r.output


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    root, lay = make_v41_checkpoint(tmp_path_factory.mktemp("v41") / "ck")
    return root, lay


def _fields(path):
    rd = gguf.GGUFReader(str(path))
    return rd, {k[len(P):]: f for k, f in rd.fields.items() if k.startswith(P)}


def test_ds4_output_has_every_key_a_ds4_reader_requires_and_round_trips(ck, tmp_path):
    root, lay = ck
    out = tmp_path / "g"
    r = run_shard("convert", root, "-o", out, "--to", "gguf", "--gguf-dialect", "ds4")
    assert r.exit_code == 0, r.output
    rd, f = _fields(out / "engram.gguf")
    for key, types in DS4.items():
        assert key in f and f[key].types == list(types), key
    assert not set(f) - set(DS4), "ds4 readers recompute head_count, key_length, max_ngram_size and offsets"
    assert f["encoding"].contents() == "e4m3_e8m0_32_row264"
    assert f["rows"].contents() == list(lay.num_embeddings) and f["layer_ids"].contents() == list(lay.layer_ids)
    assert f["primes"].contents() == flat(lay.primes) and f["multipliers"].contents() == flat(lay.multipliers)
    assert f["token_map"].contents() == [int(x) for x in lay.token_map]
    assert f["compressed_vocab_size"].contents() == 500 and f["pad_id"].contents() == lay.compressed_pad_id
    tabs = [t for t in rd.tensors if t.name.endswith("engram_embd.weight")]
    assert [t.name for t in rd.tensors[-len(tabs):]] == [t.name for t in tabs]  # tables last
    assert all(t.tensor_type == gguf.GGMLQuantizationType.I8 and int(t.shape[0]) == 264 for t in tabs)
    back = tmp_path / "back"
    r = run_shard("convert", out / "engram.gguf", "-o", back, "--to", "hf", "--engram-only")
    assert r.exit_code == 0, r.output
    src, got = read_tables(root), read_tables(back)
    for layer in lay.layer_ids:
        for part in ("weight", "scale"):
            k = f"layers.{layer}.engram.embed.{part}"
            assert np.array_equal(got[k], src[k]), k


def test_gguf_fix_converts_both_ways(ck, tmp_path):
    root, lay = ck
    r = run_shard("convert", root, "-o", tmp_path / "l", "--to", "gguf")
    assert r.exit_code == 0, r.output
    orig = tmp_path / "l" / "engram.gguf"
    r = run_shard("gguf-fix", orig, "--dialect", "ds4", "-o", tmp_path / "d.gguf", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)["gguf_fix"]
    assert doc["source_dialect"] == "llamacpp" and doc["dialect"] == "ds4"
    assert set(doc["added_keys"]) == {"rows", "compressed_vocab_size"}
    assert set(doc["removed_keys"]) == {"head_count", "key_length", "max_ngram_size", "offsets"}
    _, f = _fields(tmp_path / "d.gguf")
    assert {k: f[k].types for k in f} == {k: list(v) for k, v in DS4.items()}
    r = run_shard("gguf-fix", tmp_path / "d.gguf", "--dialect", "llamacpp", "-o", tmp_path / "l2.gguf")
    assert r.exit_code == 0, r.output
    a, fa = _fields(orig)
    b, fb = _fields(tmp_path / "l2.gguf")
    assert set(fa) == set(fb)
    for k in fa:
        assert fa[k].types == fb[k].types and fa[k].contents() == fb[k].contents(), k
    for x, y in zip(a.tensors, b.tensors):
        assert x.name == y.name and np.array_equal(np.asarray(x.data), np.asarray(y.data))
    r = run_shard("gguf-fix", orig, "--dialect", "both", "-o", tmp_path / "b.gguf")
    assert r.exit_code == 0, r.output
    _, f = _fields(tmp_path / "b.gguf")
    assert set(LLAMACPP) | set(DS4) == set(f)


def test_gguf_reader_reads_every_file_we_write(tmp_path):
    root, lay = _small_wkv_checkpoint(tmp_path / "ck")
    for dialect in ("llamacpp", "ds4", "both"):
        for kind in ("raw", "q8_0"):
            out = tmp_path / f"{dialect}-{kind}"
            r = run_shard("convert", root, "-o", out, "--to", "gguf", "--gguf-dialect", dialect, "--gguf-type", kind,
                          "--with-projections", "--block-size", "8KB")
            if dialect == "ds4" and kind == "q8_0":
                assert r.exit_code == 2 and "raw" in r.output
                continue
            assert r.exit_code == 0, (dialect, kind, r.output)
            rd = gguf.GGUFReader(str(out / "engram.gguf"))
            assert len(rd.tensors) == 2 * (1 + (3 if dialect != "both" else 6))
            for t in rd.tensors:
                assert np.asarray(t.data).nbytes == int(t.n_bytes)


def _small_wkv_checkpoint(root: Path):
    """V4.1 names with an fp8 wkv whose values fit F16 (the real model's do; ds4 writes engram_kv as F16)."""
    lay = small_layout()
    rng = np.random.default_rng(1)
    t = {}
    for i, layer in enumerate(lay.layer_ids):
        n = lay.num_embeddings[i]
        t[f"layers.{layer}.engram.embed.weight"] = random_fp8(n, 256, rng)
        t[f"layers.{layer}.engram.embed.scale"] = random_scales(n, 8, rng)
        t[f"layers.{layer}.engram.q_weight"] = torch.randn(4, 64, dtype=torch.bfloat16)
        t[f"layers.{layer}.engram.k_weight"] = torch.randn(4, 64, dtype=torch.bfloat16)
        t[f"layers.{layer}.engram.wkv.weight"] = random_fp8(80, 200, rng)
        t[f"layers.{layer}.engram.wkv.scale"] = torch.from_numpy(rng.integers(110, 125, (3, 7), dtype=np.uint8)).view(torch.float8_e8m0fnu)
    root.mkdir(parents=True)
    write_sharded(root, t, {"model.safetensors": sorted(t)})
    (root / "config.json").write_text(json.dumps({"architectures": ["Test"]}))
    save_layout(lay, root)
    return root, lay


def test_ds4_projections_are_cast_exactly(tmp_path):
    from tables_helpers import wkv_reference

    root, lay = _small_wkv_checkpoint(tmp_path / "ck")
    r = run_shard("convert", root, "-o", tmp_path / "g", "--to", "gguf", "--gguf-dialect", "ds4", "--with-projections",
                  "--block-size", "8KB")
    assert r.exit_code == 0, r.output
    rd = gguf.GGUFReader(str(tmp_path / "g" / "engram.gguf"))
    t = {x.name: x for x in rd.tensors}
    src = read_tables(root)
    for layer in lay.layer_ids:
        q = t[f"blk.{layer}.engram_q_norm.weight"]
        assert q.tensor_type == gguf.GGMLQuantizationType.F32 and [int(x) for x in q.shape] == [64, 4]
        want = torch.from_numpy(src[f"layers.{layer}.engram.q_weight"]).view(torch.bfloat16).float().numpy()
        assert np.array_equal(np.asarray(q.data), want)  # bf16 -> f32 is exact
        kv = t[f"blk.{layer}.engram_kv.weight"]
        assert kv.tensor_type == gguf.GGMLQuantizationType.F16
        ref = wkv_reference(src[f"layers.{layer}.engram.wkv.weight"], src[f"layers.{layer}.engram.wkv.scale"])
        assert np.array_equal(np.asarray(kv.data), ref.float().half().numpy())
    names = [x.name for x in rd.tensors]
    assert names[-2:] == ["blk.1.engram_embd.weight", "blk.14.engram_embd.weight"]


def test_f16_overflow_and_missing_constants_are_refused(ck, tmp_path):
    root, lay = make_v41_checkpoint(tmp_path / "big", with_wkv=True)  # random fp8 x 2^9 overflows F16
    r = run_shard("convert", root, "-o", tmp_path / "g", "--to", "gguf", "--gguf-dialect", "ds4", "--with-projections")
    assert r.exit_code == 3 and "F16" in r.output
    bare = write_gguf(tmp_path / "bare.gguf", "deepseek41", [(P + "head_count", 8, T.UINT32, None)],
                      table_tensors(lay, raw_rows(lay)))
    r = run_shard("gguf-fix", bare, "--dialect", "ds4", "-o", tmp_path / "x.gguf")
    assert r.exit_code == 2 and "no Engram hash constants" in r.output
    r = run_shard("gguf-fix", bare, "--dialect", "ds4", "--layout", ck[0], "-o", tmp_path / "x.gguf")
    assert r.exit_code == 0, r.output
    r = run_shard("convert", root, "-o", tmp_path / "q", "--to", "gguf", "--gguf-type", "q8_0")
    assert r.exit_code == 0, r.output
    r = run_shard("gguf-fix", tmp_path / "q" / "engram.gguf", "--dialect", "ds4", "-o", tmp_path / "y.gguf")
    assert r.exit_code == 2 and "q8_0" in r.output
