"""--with-projections: the fp8 engram.wkv with 32x32-tile e8m0 scales is written dequantised to
BF16 (hf and gguf), block by block, bit-exact against a straightforward reference."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.tables_helpers import WKV_SHAPE, make_v41_checkpoint, read_tables, run_shard, wkv_reference

run = run_shard


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    root, lay = make_v41_checkpoint(tmp_path_factory.mktemp("w") / "src", with_wkv=True)
    return root, lay, read_tables(root)


def _ref(orig, layer):
    w = orig[f"layers.{layer}.engram.wkv.weight"].reshape(WKV_SHAPE)
    s = orig[f"layers.{layer}.engram.wkv.scale"].reshape(-(-WKV_SHAPE[0] // 32), -(-WKV_SHAPE[1] // 32))
    return wkv_reference(w, s)


# --block-size 8KB: a few 32-row tile rows per block, so block boundaries are exercised
@pytest.mark.parametrize("extra", [[], ["--engram-only", "--block-size", "8KB"]])
def test_hf_wkv_dequantised_bit_exact(src, tmp_path, extra):
    root, lay, orig = src
    r = run("convert", root, "-o", tmp_path / "h", "--to", "hf", "--with-projections", *extra, "--verify", "full")
    assert r.exit_code == 0, r.output
    from safetensors.torch import load_file

    got = {}
    for f in (tmp_path / "h").glob("*.safetensors"):
        got.update(load_file(str(f)))
    for layer in lay.layer_ids:
        w = got[f"layers.{layer}.engram.wkv.weight"]
        assert w.dtype == torch.bfloat16 and tuple(w.shape) == WKV_SHAPE
        assert f"layers.{layer}.engram.wkv.scale" not in got
        assert torch.equal(w.view(torch.int16), _ref(orig, layer).view(torch.int16))
        assert f"layers.{layer}.engram.q_weight" in got  # BF16 projections copied
    assert ("embed.weight" in got) == (not extra)
    man = json.loads((tmp_path / "h" / "engram-shards.json").read_text())
    docs = [t for f in man["files"] for t in f["tensors"] if t.get("dequantised_from")]
    assert {d["name"] for d in docs} == {f"layers.{l}.engram.wkv.weight" for l in lay.layer_ids}
    assert all(d["tile"] == [32, 32] for d in docs)
    assert run("verify", tmp_path / "h", "--source", root).exit_code == 0


def test_gguf_wkv_dequantised(src, tmp_path):
    import gguf

    root, lay, orig = src
    r = run("convert", root, "-o", tmp_path / "g", "--to", "gguf", "--with-projections", "--block-size", "8KB")
    assert r.exit_code == 0, r.output
    rd = gguf.GGUFReader(str(tmp_path / "g" / "engram.gguf"))
    t = {x.name: x for x in rd.tensors}
    for layer in lay.layer_ids:
        x = t[f"blk.{layer}.engram_wkv.weight"]
        assert x.tensor_type == gguf.GGMLQuantizationType.BF16
        got = np.asarray(x.data).view(np.int16).reshape(WKV_SHAPE)
        assert np.array_equal(got, _ref(orig, layer).view(torch.int16).numpy())
        assert f"blk.{layer}.engram_q.weight" in t


def test_wrong_block_scale_is_refused(tmp_path):
    from safetensors.torch import save_file

    root, _ = make_v41_checkpoint(tmp_path / "s", with_wkv=True)
    f = next(p for p in root.glob("*.safetensors") if "00002" in p.name)
    from safetensors.torch import load_file

    d = load_file(str(f))
    d["layers.1.engram.wkv.scale"] = torch.zeros(3, 8, dtype=torch.uint8)  # not [3, 7]
    save_file(d, str(f), metadata={"format": "pt"})
    r = run("convert", root, "-o", tmp_path / "o", "--to", "hf", "--with-projections")
    assert r.exit_code == 2 and "layers.1.engram.wkv.scale" in r.output and "[3, 7]" in r.output
