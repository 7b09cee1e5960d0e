"""Adapters: reference model, Qwen4Exp PLE, LLaMA-like without Engram, probing and overrides."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models_helpers import tiny_qwen4exp, tiny_reference_model  # noqa: E402

from engram_cli.errors import BadInputError  # noqa: E402
from engram_cli.models.views import require_engram, view_for  # noqa: E402


def test_reference_view():
    v = view_for(tiny_reference_model())
    assert v.family == "engram-reference" and v.engram_layer_ids == [1, 2]
    assert v.ngram_columns(2) == [0, 1] and v.ngram_columns(3) == [2, 3]
    x = torch.randint(0, 64, (1, 6))
    with torch.no_grad():
        assert torch.allclose(v.logits_at(x), v.model(x).logits)


def test_qwen4exp_view_and_refusal():
    v = view_for(tiny_qwen4exp(ple=True))
    assert v.family == "qwen4-exp" and v.engram_layer_ids == [0]
    with pytest.raises(BadInputError, match="no PLE"):
        view_for(tiny_qwen4exp(ple=False))


def test_llama_like_has_no_engram():
    from transformers import LlamaConfig, LlamaForCausalLM

    m = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2))
    v = view_for(m)
    assert v.family == "llama-like" and len(v.layers) == 2 and not v.engram_modules
    with pytest.raises(BadInputError, match="no Engram modules") as exc:
        require_engram(v)
    assert "--engram-path" in exc.value.hint and "model.layers" in exc.value.hint


def test_overrides_and_probing():
    m = tiny_reference_model()
    v = view_for(m, layers_path="model.layers", engram_path="engram")
    assert v.family == "probed" and v.engram_layer_ids == [1, 2]
    with pytest.raises(BadInputError, match="does not resolve"):
        view_for(m, layers_path="model.nope")
