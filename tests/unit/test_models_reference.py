"""The reference EngramForCausalLM: shapes, names, save/load round trip, Auto registration."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models_helpers import tiny_reference_model  # noqa: E402


@pytest.mark.parametrize("hc_mult", [1, 2])
def test_forward_and_roundtrip(tmp_path, hc_mult):
    from engram_cli.models.loading import load_model

    model = tiny_reference_model(hc_mult=hc_mult)
    x = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        y = model(x).logits
    assert y.shape == (2, 12, 64)
    model.save_pretrained(str(tmp_path))
    loaded = load_model(str(tmp_path), device="cpu").model
    assert type(loaded).__name__ == "EngramForCausalLM"
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, y)
    sd_a, sd_b = model.state_dict(), loaded.state_dict()
    assert sd_a.keys() == sd_b.keys()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


def test_parameter_names_follow_the_demo():
    model = tiny_reference_model(hc_mult=2)
    names = set(model.state_dict())
    for suffix in ("multi_head_embedding.embedding.weight", "multi_head_embedding.offsets", "short_conv.conv.weight",
                   "short_conv.norms.1.weight", "value_proj.weight", "value_proj.bias", "key_projs.1.weight",
                   "norm1.1.weight", "norm2.0.weight"):
        assert f"model.layers.1.engram.{suffix}" in names
    lay = model.model.engram_layout()
    emb = model.model.layers[1].engram.multi_head_embedding
    assert emb.embedding.weight.shape == (lay.num_embeddings[0], lay.head_dim)
    assert emb.offsets.tolist() == list(lay.offsets[0])
    conv = model.model.layers[1].engram.short_conv.conv
    assert conv.weight.shape == (2 * 32, 1, 4) and conv.dilation == (3,)


def test_causal_engram():
    """Changing a later token never changes earlier logits (hash, conv and attention are causal)."""
    model = tiny_reference_model()
    x = torch.randint(0, 64, (1, 10))
    x2 = x.clone()
    x2[0, 7] = (x[0, 7] + 5) % 64
    with torch.no_grad():
        a, b = model(x).logits, model(x2).logits
    assert torch.equal(a[:, :7], b[:, :7])
    assert not torch.equal(a[:, 7:], b[:, 7:])


def test_auto_registration(tmp_path):
    from transformers import AutoModelForCausalLM

    from engram_cli.models.reference import register_auto_classes

    register_auto_classes()
    tiny_reference_model().save_pretrained(str(tmp_path))
    m = AutoModelForCausalLM.from_pretrained(str(tmp_path), local_files_only=True)
    assert type(m).__name__ == "EngramForCausalLM"


def test_device_map_auto_and_bad_paths(tmp_path):
    from engram_cli.errors import BadInputError
    from engram_cli.models.loading import load_model

    tiny_reference_model().save_pretrained(str(tmp_path / "m"))
    loaded = load_model(str(tmp_path / "m"), device="cpu", device_map="auto")
    assert loaded.device == "cpu" and loaded.tokenizer is None
    with pytest.raises(BadInputError, match="model not found"):
        load_model(str(tmp_path / "nope"))
    (tmp_path / "x.bin").write_bytes(b"0")
    with pytest.raises(BadInputError, match="not a .gguf"):
        load_model(str(tmp_path / "x.bin"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="no config.json"):
        load_model(str(tmp_path / "empty"))
