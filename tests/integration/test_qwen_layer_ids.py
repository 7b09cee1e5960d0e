"""Layer numbering done once: a real tiny ``Qwen4ExpForCausalLM`` saved by transformers with
1-based ``ple_layer_ids`` (tensors named ``layers.{id - 1}``, hash seeded by the position in
the list) converts to heads and ranks and back bit for bit, and ``engram hash`` labels each
layer with its config id, seed id and tensor index."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tables_helpers import read_tables, run_shard  # noqa: E402


def _model(ple_layer_ids, n_layers):
    from tiny_models import tiny_qwen4_exp_config
    from transformers import Qwen4ExpForCausalLM

    cfg = tiny_qwen4_exp_config(ple_layer_ids=list(ple_layer_ids), num_hidden_layers=n_layers, split_ngram_parts=3,
                                make_ngram_vocab_size_divisible_by=16)
    torch.manual_seed(0)
    return Qwen4ExpForCausalLM(cfg).eval()


def _tables(root: Path) -> dict[str, np.ndarray]:
    return {k: v for k, v in read_tables(root).items() if "ngram_embedding" in k and "weight_scale" not in k}


def _whole(tables: dict[str, np.ndarray]) -> dict[int, np.ndarray]:
    """Each layer's table, its shard_i pieces concatenated, keyed by the tensor-name index."""
    out: dict[int, list] = {}
    for k in sorted(tables, key=lambda k: (int(k.split("layers.")[1].split(".")[0]), int(k.split("shard_")[1].split(".")[0])
                                           if "shard_" in k else 0)):
        out.setdefault(int(k.split("layers.")[1].split(".")[0]), []).append(tables[k])
    return {k: np.concatenate(v) for k, v in out.items()}


@pytest.mark.parametrize("ple_ids,n_layers", [([2, 3], 4), ([1, 3], 4), ([2, 3, 6], 6)])
def test_qwen_ple_ids_round_trip(ple_ids, n_layers, tmp_path):
    from engram_cli.layout import layout_from_config

    model = _model(ple_ids, n_layers)
    src = tmp_path / "src"
    model.save_pretrained(src)
    lay = layout_from_config(json.loads((src / "config.json").read_text()))
    assert lay.layer_ids == tuple(ple_ids)
    assert lay.tensor_ids == tuple(i - 1 for i in ple_ids) and lay.seed_ids == tuple(range(len(ple_ids)))
    for i, cid in enumerate(ple_ids):  # the buffers transformers saved are the ones the layout derives
        emb = model.model.layers[cid - 1].ple.ple_embedding
        assert emb.layer_multipliers.tolist() == list(lay.multipliers[i])
        assert emb.ngram_heads_vocab_sizes.tolist() == list(lay.primes[i])
        assert emb.ngram_embedding.num_embeddings == lay.num_embeddings[i]
    orig = _whole(_tables(src))
    assert sorted(orig) == sorted(lay.tensor_ids)
    runs = {"heads": ["--to", "heads"], "floor": ["--to", "ranks", "--policy", "sglang-floor", "-P", "3"],
            "ceil": ["--to", "ranks", "--policy", "ref-ceil", "-P", "2"]}
    for name, args in runs.items():
        r = run_shard("convert", src, "-o", tmp_path / name, *args)
        assert r.exit_code == 0, (name, r.output)
        r = run_shard("convert", tmp_path / name, "-o", tmp_path / f"{name}-back", "--to", "hf")
        assert r.exit_code == 0, (name, r.output)
        back = _whole(_tables(tmp_path / f"{name}-back"))
        assert sorted(back) == sorted(orig) and all(np.array_equal(back[k], orig[k]) for k in orig), name
    heads = json.loads((tmp_path / "heads" / "engram-shards.json").read_text())
    assert sorted(t["layer"] for t in heads["tables"]) == sorted(lay.tensor_ids)


def test_vllm_head_drops_qwen_padding_rows(tmp_path):
    """vLLM's last head shard ends at the sum of primes; the manifest says the padding was dropped."""
    from engram_cli.layout import layout_from_config

    model = _model([2, 3], 4)
    src = tmp_path / "src"
    model.save_pretrained(src)
    lay = layout_from_config(json.loads((src / "config.json").read_text()))
    r = run_shard("convert", src, "-o", tmp_path / "v", "--to", "ranks", "--policy", "vllm-head", "-P", "2")
    assert r.exit_code == 0, r.output
    man = json.loads((tmp_path / "v" / "engram-shards.json").read_text())
    for t in man["tables"]:
        i = lay.tensor_ids.index(t["layer"])
        pad = lay.num_embeddings[i] - sum(lay.primes[i])
        assert pad > 0 and t["padding"] == {"rows": pad, "rule": "dropped", "by": "vllm-head"}
    last = man["ranges"][0]["ranks"][-1]
    assert last["rows"][1] == sum(lay.primes[lay.tensor_ids.index(man["ranges"][0]["layer"])])


def test_hash_labels_all_three_ids(tmp_path):
    from typer.testing import CliRunner

    from engram_cli.cli.app import app

    model = _model([2, 3], 4)
    src = tmp_path / "src"
    model.save_pretrained(src)
    r = CliRunner().invoke(app, ["hash", "--config", str(src / "config.json"), "--ids", "5,9,1,7"])
    assert r.exit_code == 0, r.output
    assert "layer 2 (seed 0, tensor 1)" in r.stdout and "layer 3 (seed 1, tensor 2)" in r.stdout
    r = CliRunner().invoke(app, ["hash", "--config", str(src / "config.json"), "--ids", "5,9,1,7", "--json"])
    doc = json.loads(r.stdout)
    assert doc["layers"] == [{"config_id": 2, "seed_id": 0, "tensor_index": 1}, {"config_id": 3, "seed_id": 1, "tensor_index": 2}]
