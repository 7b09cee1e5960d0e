"""A real tiny Qwen4ExpForCausalLM saved by transformers (ngram_embedding.shard_i layout):
re-partitioned to another split_ngram_parts, transformers loads it back with identical logits."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from engram_cli.cli.app import app

transformers = pytest.importorskip("transformers")


def _tiny():
    from transformers import Qwen4ExpForCausalLM, Qwen4ExpTextConfig

    cfg = Qwen4ExpTextConfig(
        vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        head_dim=32, linear_key_head_dim=16, linear_value_head_dim=16, linear_num_key_heads=2,
        linear_num_value_heads=2, moe_intermediate_size=32, shared_expert_intermediate_size=32, num_experts=4,
        num_experts_per_tok=2, hc_lowrank=8, ple_layer_ids=[1], ple_embed_dim=64, ngram_size=3, heads_per_ngram=2,
        ngram_vocab_size_base=50, make_ngram_vocab_size_divisible_by=8, split_ngram_parts=4, eos_token_id=1,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    return Qwen4ExpForCausalLM(cfg).eval()


def test_qwen_repartition_identical_logits(tmp_path):
    from transformers import Qwen4ExpForCausalLM

    model = _tiny()
    src = tmp_path / "src"
    model.save_pretrained(src)
    idx_keys = json.loads((src / "model.safetensors.index.json").read_text())["weight_map"] \
        if (src / "model.safetensors.index.json").exists() else None
    from safetensors import safe_open

    with safe_open(str(next(src.glob("*.safetensors"))), "pt") as f:
        keys = list(f.keys()) if idx_keys is None else list(idx_keys)
    assert any("ngram_embedding.shard_3.weight" in k for k in keys), keys
    ids = torch.tensor([[5, 9, 1, 7, 7, 3, 2, 8, 1, 4, 6]])
    with torch.no_grad():
        ref = model(ids, use_cache=False).logits
    runner = CliRunner()
    r = runner.invoke(app, ["shard", "convert", str(src), "-o", str(tmp_path / "out"), "--to", "hf",
                            "--split-parts", "3", "--max-shard-size", "100KB", "--verify", "full"])
    assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg.get("split_ngram_parts", cfg.get("text_config", {}).get("split_ngram_parts")) == 3
    wm = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())["weight_map"]
    assert any("ngram_embedding.shard_2.weight" in k for k in wm) and not any("shard_3" in k for k in wm)
    back = Qwen4ExpForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        assert torch.equal(back(ids, use_cache=False).logits, ref)
    # and through per-head tables and back (the layout comes from config.json)
    r = runner.invoke(app, ["shard", "convert", str(src), "-o", str(tmp_path / "heads"), "--to", "heads"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["shard", "convert", str(tmp_path / "heads"), "-o", str(tmp_path / "h2"), "--to", "hf"])
    assert r.exit_code == 0, r.output
