"""`engram shard` end to end through the real command tree (CliRunner), on synthetic V4.1
checkpoints built by tests/tables_helpers.py."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.tables_helpers import make_v41_checkpoint, read_tables, run_shard

run = run_shard


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    root, lay = make_v41_checkpoint(tmp_path_factory.mktemp("ck") / "src")
    return root, lay, read_tables(root)


def _engram_tensors(d):
    return {k: v for k, v in d.items() if ".engram.embed." in k}


@pytest.mark.parametrize("args", [
    ["--to", "ranks", "--policy", "vllm-head", "--ranks", 4],
    ["--to", "ranks", "--policy", "vllm-head", "--ranks", 2, "--edp", 2],
    ["--to", "ranks", "--policy", "sglang-floor", "--ranks", 3],
    ["--to", "ranks", "--policy", "ref-ceil", "--ranks", 4],
    ["--to", "ranks", "--policy", "megatron-ep", "--ranks", 3],
    ["--to", "heads"],
    ["--to", "heads", "--head-format", "rows"],
    ["--to", "packed"],
    ["--to", "packed", "--packing", "split", "--policy", "sglang-floor", "--ranks", 2],
    ["--to", "gguf"],
    ["--to", "hf", "--max-shard-size", "2MB"],
])
def test_round_trip_bit_exact(src, tmp_path, args):
    root, _lay, orig = src
    r = run("convert", root, "-o", tmp_path / "a", *args, "--verify", "full", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["schema"] == "engram.shard.convert/1" and doc["files"]
    assert (tmp_path / "a" / "engram-shards.json").is_file()
    r = run("verify", tmp_path / "a", "--source", root)
    assert r.exit_code == 0, r.output
    r = run("convert", tmp_path / "a", "-o", tmp_path / "b", "--to", "hf", "--verify", "full")
    assert r.exit_code == 0, r.output
    back = read_tables(tmp_path / "b")
    want = _engram_tensors(orig)
    assert set(back) >= set(want)
    for k, v in want.items():
        assert np.array_equal(back[k], v), k
    if args[1] == "hf":  # a full re-shard keeps every tensor and the index
        full = read_tables(tmp_path / "a")
        assert set(full) - {"token_map"} == set(orig) - {"token_map"}
        assert all(np.array_equal(full[k], orig[k]) for k in orig)
        idx = json.loads((tmp_path / "a" / "model.safetensors.index.json").read_text())
        assert idx["metadata"]["total_size"] == sum(v.nbytes for k, v in orig.items() if k != "token_map")
        assert any(n.startswith("model-00001-of-") for n in idx["weight_map"].values())


def test_plan_prints_ranges_and_writes_nothing(src, tmp_path):
    root, _, _ = src
    r = run("plan", root, "--to", "ranks", "--policy", "megatron-ep", "--ranks", 2, "--json")
    assert r.exit_code == 0, r.output
    plan = json.loads(r.stdout)["plan"]
    assert plan["ranges"][0]["ranks"][0]["pieces"]
    r = run("convert", root, "-o", tmp_path / "x", "--to", "ranks", "--policy", "vllm-head", "--ranks", 4, "--dry-run")
    assert r.exit_code == 0 and "row ranges" in r.stdout
    assert not (tmp_path / "x").exists()
    r = run("convert", root, "-o", tmp_path / "x", "--to", "ranks", "--policy", "vllm-head", "--ranks", 7)
    assert r.exit_code == 2 and "valid shard counts: 1, 2, 3, 4, 5, 6, 8, 12, 24" in r.output


def test_rank_files_record_ranges(src, tmp_path):
    root, lay, _ = src
    r = run("convert", root, "-o", tmp_path / "r", "--to", "ranks", "--policy", "vllm-head", "--ranks", 4)
    assert r.exit_code == 0, r.output
    from safetensors import safe_open

    with safe_open(str(tmp_path / "r" / "engram-rank001-of-004.safetensors"), "pt") as f:
        rng = json.loads(f.metadata()["engram.ranges"])
    offs = lay.offsets[0]
    assert rng["1"]["rows"] == [offs[6], offs[12]] and rng["1"]["heads"] == [6, 12]


@pytest.mark.parametrize("dtype", ["bf16", "fp32", "int8", "fp8-e4m3"])
def test_dtype_conversions(src, tmp_path, dtype):
    root, _, orig = src
    r = run("convert", root, "-o", tmp_path / "d", "--to", "hf", "--dtype", dtype, "--engram-only", "--verify", "full")
    assert r.exit_code == 0, r.output
    import torch
    from safetensors.torch import load_file

    got = {}
    for f in (tmp_path / "d").glob("*.safetensors"):
        got.update(load_file(str(f)))
    w = got["layers.1.engram.embed.weight"]
    assert str(w.dtype) == {"bf16": "torch.bfloat16", "fp32": "torch.float32", "int8": "torch.int8",
                            "fp8-e4m3": "torch.float8_e4m3fn"}[dtype]
    if dtype in ("bf16", "fp32"):
        ref = torch.from_numpy(orig["layers.1.engram.embed.weight"]).view(torch.float8_e4m3fn).float().reshape(-1, 8, 32)
        sc = torch.pow(2.0, torch.from_numpy(orig["layers.1.engram.embed.scale"]).float() - 127).reshape(-1, 8, 1)
        assert torch.equal(w.float(), (ref * sc).reshape(-1, 256))


@pytest.mark.parametrize("target", [["--to", "hf", "--max-shard-size", "300KB"], ["--to", "heads"],
                                    ["--to", "ranks", "--policy", "vllm-head", "--ranks", 2]], ids=["hf-split", "heads", "ranks"])
@pytest.mark.parametrize("dtype", ["int8", "fp8-e4m3"])
def test_scales_kept_from_the_weight_pass_equal_recomputed_ones(src, tmp_path, monkeypatch, dtype, target):
    """A quantised table's scale tensor comes from the weight pass (ScaleMemo's spill file), not
    a second read and quantisation of the source: no scales-only pass, and the files are
    byte-identical to those of the old path (the memo switched off), scale tensors in other
    shard files than their weights included; the spill file is gone afterwards."""
    from engram_cli.tables import blocks, codecs

    root = src[0]
    assert run("convert", root, "-o", tmp_path / "bf16", "--to", "hf", "--dtype", "bf16", "--engram-only").exit_code == 0
    calls = []
    real = codecs.convert_scales
    monkeypatch.setattr(blocks, "convert_scales", lambda *a: calls.append(1) or real(*a))
    outs = {}
    for use in (True, False):
        if not use:
            monkeypatch.setattr(blocks.ScaleMemo, "start", lambda self, sl: False)
        calls.clear()
        out = tmp_path / f"q{use}"
        r = run("convert", tmp_path / "bf16", "-o", out, "--dtype", dtype, "--engram-only", *target)
        assert r.exit_code == 0, r.output
        outs[use] = {f.name: f.read_bytes() for f in sorted(out.glob("*.safetensors"))}
        assert bool(calls) == (not use)
        assert not list(out.rglob("*.tmp"))
    assert len(outs[False]) >= 2 and outs[False] == outs[True]


def test_gguf_keys_read_back(src, tmp_path):
    import gguf

    root, lay, _ = src
    r = run("convert", root, "-o", tmp_path / "g", "--to", "gguf", "--with-projections")
    assert r.exit_code == 0, r.output
    rd = gguf.GGUFReader(str(tmp_path / "g" / "engram.gguf"))
    t = {x.name: x for x in rd.tensors}
    emb = t["blk.1.engram_embd.weight"]
    assert emb.tensor_type == gguf.GGMLQuantizationType.I8 and list(emb.shape) == [264, lay.num_embeddings[0]]
    assert "blk.14.engram_q.weight" in t
    f = rd.fields
    T = gguf.GGUFValueType
    types = {"layer_ids": T.INT32, "multipliers": T.UINT64, "primes": T.UINT64, "offsets": T.UINT64, "token_map": T.INT32}
    for k, sub in types.items():
        fld = f[f"deepseek41.engram.{k}"]
        assert fld.types == [T.ARRAY, sub], k
    for k in ("head_count", "key_length", "max_ngram_size", "pad_id"):
        assert f[f"deepseek41.engram.{k}"].types == [T.UINT32], k
    assert f["deepseek41.engram.primes"].contents() == [p for i in range(2) for p in lay.primes[i]]
    assert f["deepseek41.engram.offsets"].contents() == [p for i in range(2) for p in lay.offsets[i]]
    assert f["deepseek41.engram.multipliers"].contents() == [m for i in range(2) for m in lay.multipliers[i]]
    assert f["deepseek41.engram.token_map"].contents() == [int(x) for x in lay.token_map]
    assert f["deepseek41.engram.layer_ids"].contents() == [1, 14]
    assert f["deepseek41.engram.pad_id"].contents() == lay.compressed_pad_id
    assert f["deepseek41.engram.head_count"].contents() == 8 and f["deepseek41.engram.key_length"].contents() == 256
    assert f["deepseek41.engram.max_ngram_size"].contents() == 4
    assert f["deepseek41.engram.encoding"].contents() == "e4m3_e8m0_32_row264"
    # Q8_0 variant
    r = run("convert", root, "-o", tmp_path / "q", "--to", "gguf", "--gguf-type", "q8_0")
    assert r.exit_code == 0, r.output
    rd = gguf.GGUFReader(str(tmp_path / "q" / "engram.gguf"))
    assert rd.tensors[0].tensor_type == gguf.GGMLQuantizationType.Q8_0


def test_gguf_fix_adds_missing_keys(src, tmp_path):
    import gguf

    root, lay, _ = src
    old = tmp_path / "old.gguf"
    rows = lay.num_embeddings[0]  # the layout must fit the table (a 4-row table is refused: issue 14 item 11)
    table = (np.arange(264 * rows) % 251 - 125).astype(np.int8).reshape(rows, 264)
    w = gguf.GGUFWriter(str(old), "deepseek41")
    w.add_uint32("deepseek41.engram.head_count", 8)
    w.add_tensor("blk.1.engram_embd.weight", table)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    r = run("gguf-fix", old, "--layout", root, "-o", tmp_path / "new.gguf", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)["gguf_fix"]
    assert "primes" in doc["added_keys"] and "head_count" not in doc["added_keys"]
    rd = gguf.GGUFReader(str(tmp_path / "new.gguf"))
    assert rd.fields["deepseek41.engram.primes"].types[-1] == gguf.GGUFValueType.UINT64
    assert np.array_equal(rd.tensors[0].data, table)


def test_local_sparse_copy(src, tmp_path):
    root, lay, _ = src
    r = run("convert", root, "-o", tmp_path / "l", "--to", "local", "--policy", "vllm-head", "--ranks", 4, "--rank", 1)
    assert r.exit_code == 0, r.output
    for f in root.glob("*.safetensors"):
        g = tmp_path / "l" / f.name
        assert g.stat().st_size == f.stat().st_size
    loc = json.loads((tmp_path / "l" / "engram-local.json").read_text())
    offs = lay.offsets[0]
    assert loc["layers"]["1"] == [offs[6], offs[12]]
    # the rows of the rank equal the source; other rows are zero
    a, b = loc["layers"]["1"]
    import torch
    from safetensors.torch import load_file

    s = load_file(str(root / "model-00002-of-00003.safetensors"))["layers.1.engram.embed.weight"].view(torch.uint8)
    l_ = load_file(str(tmp_path / "l" / "model-00002-of-00003.safetensors"))["layers.1.engram.embed.weight"].view(torch.uint8)
    assert torch.equal(s[a:b], l_[a:b]) and not l_[:a].any()
    assert run("verify", tmp_path / "l", "--source", root).exit_code == 0


def test_flipped_byte_is_caught(src, tmp_path):
    root, _, _ = src
    out = tmp_path / "p"
    assert run("convert", root, "-o", out, "--to", "packed").exit_code == 0
    f = next(out.glob("*.bin"))
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    r = run("verify", out)
    assert r.exit_code == 4 and f.name in r.output
    r = run("verify", out, "--source", root, "--json")
    assert r.exit_code == 4 and json.loads(r.stdout)["verify"]["ok"] is False


def test_refuses_existing_output_without_force(src, tmp_path):
    root, _, _ = src
    out = tmp_path / "o"
    assert run("convert", root, "-o", out, "--to", "heads").exit_code == 0
    r = run("convert", root, "-o", out, "--to", "packed")
    assert r.exit_code == 2 and "--force" in r.output
    r = run("convert", root, "-o", out, "--to", "packed", "--force")
    assert r.exit_code == 0, r.output
    assert not list(out.glob("engram-l1-h*.safetensors"))  # stale files removed
    assert run("verify", out, "--source", root).exit_code == 0


def _copy(root, tmp_path):
    d = tmp_path / "bad"
    shutil.copytree(root, d)
    return d


def test_truncated_shard_is_bad_input(src, tmp_path):
    d = _copy(src[0], tmp_path)
    f = d / "model-00003-of-00003.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    r = run("convert", d, "-o", tmp_path / "o", "--to", "packed")
    assert r.exit_code == 3 and "model-00003-of-00003.safetensors" in r.output and "truncated" in r.output


def test_index_header_mismatch_is_bad_input(src, tmp_path):
    d = _copy(src[0], tmp_path)
    idx = json.loads((d / "model.safetensors.index.json").read_text())
    idx["weight_map"]["layers.1.engram.embed.scale"] = "model-00001-of-00003.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(idx))
    r = run("plan", d, "--to", "hf")
    assert r.exit_code == 3 and "layers.1.engram.embed.scale" in r.output and "model-00001" in r.output


def test_wrong_dtype_and_shape_are_bad_input(tmp_path):
    import torch
    from safetensors.torch import save_file

    d = tmp_path / "w"
    d.mkdir()
    save_file({"layers.1.engram.embed.weight": torch.zeros(10, 256, dtype=torch.int16),
               "layers.1.engram.embed.scale": torch.zeros(10, 8, dtype=torch.uint8)}, str(d / "model.safetensors"))
    r = run("plan", d, "--to", "hf")
    assert r.exit_code == 3 and "layers.1.engram.embed.weight" in r.output and "I16" in r.output
    save_file({"layers.1.engram.embed.weight": torch.zeros(10, 256, dtype=torch.float8_e4m3fn),
               "layers.1.engram.embed.scale": torch.zeros(9, 8, dtype=torch.uint8)}, str(d / "model.safetensors"))
    r = run("plan", d, "--to", "hf")
    assert r.exit_code == 3 and "layers.1.engram.embed.scale" in r.output and "[9, 8]" in r.output


def test_weight_scale_name_and_u8_scales(tmp_path):
    root, _ = make_v41_checkpoint(tmp_path / "q", scale_name="weight_scale", scale_u8=True)
    r = run("convert", root, "-o", tmp_path / "o", "--to", "packed", "--verify", "full")
    assert r.exit_code == 0, r.output
    assert run("convert", tmp_path / "o", "-o", tmp_path / "b", "--to", "hf").exit_code == 0
    orig, back = read_tables(root), read_tables(tmp_path / "b")
    assert np.array_equal(back["layers.1.engram.embed.weight_scale"], orig["layers.1.engram.embed.weight_scale"])
