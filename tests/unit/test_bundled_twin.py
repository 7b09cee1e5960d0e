"""The bundled demo model v2 and its no-Engram twin: ``--compare twin`` resolves to them, and
they are what docs/demo-model.md says (same tokenizer, same backbone shape, Engram only in v2)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from engram_cli.cli.app import app
from engram_cli.errors import BadInputError, UsageError
from engram_cli.models import loading
from engram_cli.models.loading import demo_twin_dir, demo_v2_dir, twin_pair


def test_twin_pair_defaults_to_the_bundled_pair_and_keeps_an_explicit_model():
    assert twin_pair(None, None) == (str(demo_v2_dir()), str(demo_twin_dir()))
    assert twin_pair("some/model", None) == ("some/model", str(demo_twin_dir()))
    with pytest.raises(UsageError):
        twin_pair(None, "other")


def test_missing_twin_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(loading, "demo_twin_dir", lambda: tmp_path / "nowhere")
    with pytest.raises(BadInputError, match="bundled twin is missing"):
        twin_pair(None, None)
    r = CliRunner().invoke(app, ["analyze", "logit-lens", "--compare", "twin", "other-model"], catch_exceptions=False)
    assert r.exit_code == 3 and "bundled twin is missing" in r.output


def test_bundled_pair_shares_tokenizer_and_backbone_and_only_v2_has_engram():
    v2, twin = demo_v2_dir(), demo_twin_dir()
    a = json.loads((v2 / "config.json").read_text())
    b = json.loads((twin / "config.json").read_text())
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        assert a[key] == b[key], key
    assert a.get("engram_layout") and not b.get("engram_layout")
    assert (v2 / "tokenizer.json").read_bytes() == (twin / "tokenizer.json").read_bytes()
    ia = json.loads((v2 / "training_info.json").read_text())
    ib = json.loads((twin / "training_info.json").read_text())
    cfg_a, cfg_b = dict(ia["train_config"]), dict(ib["train_config"])
    assert cfg_a.pop("engram") and not cfg_b.pop("engram")
    assert cfg_a == cfg_b  # same data, steps, schedule and seed
    for d in (v2, twin):
        assert sum(f.stat().st_size for f in d.iterdir()) <= 30 * 10**6
