"""Qwen4-Exp NVFP4 PLE tables (formats.md 5.4): weight_scale_2 must agree across shard_i pieces,
and pieces are re-partitioned by row with their bytes copied through."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.tables_helpers import QWEN_NGRAM, make_qwen_nvfp4_checkpoint, read_tables, run_shard

BASE = QWEN_NGRAM.format(layer=1)
run = run_shard



def _assert_pieces_equal(back: dict, orig: dict) -> None:
    """Every ngram_embedding piece (weight, scales) of ``orig`` is byte-identical in ``back``."""
    for k, v in orig.items():
        if ".ngram_embedding." in k:
            assert np.array_equal(back[k], v), k

def _whole(tensors: dict, suffix: str) -> np.ndarray:
    """Concatenate shard_0, shard_1, ... of one part (weight / weight_scale) by row."""
    out, i = [], 0
    while f"{BASE}.shard_{i}.{suffix}" in tensors:
        out.append(tensors[f"{BASE}.shard_{i}.{suffix}"])
        i += 1
    return np.concatenate(out)


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    root = make_qwen_nvfp4_checkpoint(tmp_path_factory.mktemp("q") / "src", rows=1000, parts=4)
    return root, read_tables(root)


def test_repartition_copies_bytes_and_scale_2(src, tmp_path):
    root, orig = src
    r = run("convert", root, "-o", tmp_path / "p3", "--to", "hf", "--split-parts", 3, "--verify", "full", "--json")
    assert r.exit_code == 0, r.output
    got = read_tables(tmp_path / "p3")
    rows = [got[f"{BASE}.shard_{i}.weight"].shape[0] for i in range(3)]
    assert rows == [334, 334, 332] and f"{BASE}.shard_3.weight" not in got  # torch.chunk pieces
    assert got[f"{BASE}.shard_0.weight"].shape == (334, 80) and got[f"{BASE}.shard_2.weight_scale"].shape == (332, 10)
    for part in ("weight", "weight_scale"):
        assert np.array_equal(_whole(got, part), _whole(orig, part)), part
    for i in range(3):
        assert np.array_equal(got[f"{BASE}.shard_{i}.weight_scale_2"], orig[f"{BASE}.shard_0.weight_scale_2"])
    for k, v in orig.items():  # everything else copied
        if ".ngram_embedding." not in k:
            assert np.array_equal(got[k], v), k
    from safetensors import safe_open

    assert not (tmp_path / "p3" / "model.safetensors.index.json").exists()  # one shard: no index, like transformers
    name = f"{BASE}.shard_1.weight"
    with safe_open(str(tmp_path / "p3" / "model.safetensors"), "pt") as fh:
        assert fh.get_slice(name).get_dtype() == "U8"
    cfg = json.loads((tmp_path / "p3" / "config.json").read_text())
    assert cfg["text_config"]["split_ngram_parts"] == 3
    man = json.loads((tmp_path / "p3" / "engram-shards.json").read_text())
    assert man["tables"][0]["source_encoding"]["name"] == "nvfp4"
    assert man["tables"][0]["global_scale"]["value"] == 0.0078125
    # and back to four pieces, from the engram output: byte-identical to the source pieces
    r = run("convert", tmp_path / "p3", "-o", tmp_path / "p4", "--to", "hf", "--split-parts", 4)
    assert r.exit_code == 0, r.output
    _assert_pieces_equal(read_tables(tmp_path / "p4"), orig)


def test_ranks_carry_scale_2_and_round_trip(src, tmp_path):
    root, orig = src
    r = run("convert", root, "-o", tmp_path / "r", "--to", "ranks", "--policy", "sglang-floor", "--ranks", 3, "--verify", "full")
    assert r.exit_code == 0, r.output
    from safetensors.torch import load_file

    rank = load_file(str(tmp_path / "r" / "engram-rank001-of-003.safetensors"))
    assert rank[f"{BASE}.weight"].shape == (333, 80) and rank[f"{BASE}.weight_scale"].shape == (333, 10)
    assert float(rank[f"{BASE}.weight_scale_2"]) == 0.0078125
    assert run("verify", tmp_path / "r", "--source", root).exit_code == 0
    r = run("convert", tmp_path / "r", "-o", tmp_path / "b", "--to", "hf", "--split-parts", 4)
    assert r.exit_code == 0, r.output
    _assert_pieces_equal(read_tables(tmp_path / "b"), orig)


def test_differing_scale_2_is_refused(tmp_path):
    root = make_qwen_nvfp4_checkpoint(tmp_path / "bad", rows=200, parts=4, scale2=[0.5, 0.5, 0.25, 0.5])
    r = run("convert", root, "-o", tmp_path / "o", "--to", "hf", "--split-parts", 2)
    assert r.exit_code == 3, r.output
    assert "weight_scale_2" in r.output and "shard_0=0.5" in r.output and "shard_2=0.25" in r.output
    assert not (tmp_path / "o").exists()


def test_nvfp4_is_not_converted(src, tmp_path):
    root, _ = src
    r = run("convert", root, "-o", tmp_path / "o", "--to", "hf", "--dtype", "bf16")
    assert r.exit_code == 2 and "nvfp4" in r.output


def test_local_copy_keeps_scale_2(src, tmp_path):
    root, orig = src
    r = run("convert", root, "-o", tmp_path / "l", "--to", "local", "--policy", "sglang-floor", "--ranks", 2, "--rank", 1)
    assert r.exit_code == 0, r.output
    got = read_tables(tmp_path / "l")
    for i in range(4):
        k = f"{BASE}.shard_{i}.weight_scale_2"
        assert np.array_equal(got[k], orig[k]), k
    w = _whole(got, "weight")
    assert np.array_equal(w[500:], _whole(orig, "weight")[500:]) and not w[:500].any()
    assert run("verify", tmp_path / "l", "--source", root).exit_code == 0
