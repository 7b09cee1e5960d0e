"""A padded embedding (Megatron pads the vocabulary): the ids the tokenizer lacks map to the
compressed pad, as Megatron's remap does, and build-vocab says so instead of refusing."""

from __future__ import annotations

import json

import numpy as np
import pytest

tokenizers = pytest.importorskip("tokenizers")


def _tokenizer(path, n: int = 40):
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<pad>", "<s>", "</s>"] + [f"w{i}" if i % 2 else f"W{i - 1}" for i in range(1, n - 2)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))
    return len(words)


def test_padded_vocab_maps_extra_ids_to_the_compressed_pad(cli, tmp_path):
    n = _tokenizer(tmp_path / "tokenizer.json")
    cfg = {"engram_variant": "deepseek-demo", "engram_vocab_size": [61, 61], "max_ngram_size": 3, "n_embed_per_ngram": 16,
           "n_head_per_ngram": 2, "layer_ids": [1], "pad_id": 2, "seed": 0, "vocab_size": n + 8}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    r = cli("build-vocab", str(tmp_path / "tokenizer.json"), "--config", str(tmp_path / "config.json"),
            "-o", str(tmp_path / "lay"), "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["vocab_size"] == n + 8 and len(doc["notes"]) == 1 and "8 extra ids map to the compressed pad" in doc["notes"][0]
    from engram_cli.layout import load_layout

    lay = load_layout(tmp_path / "lay")
    assert lay.token_map.shape == (n + 8,)
    assert (lay.token_map[n:] == lay.compressed_pad_id).all() and lay.token_map[2] == lay.compressed_pad_id
    assert lay.compressed_vocab_size == int(lay.token_map[:n].max()) + 1  # padding adds no class
    ids = np.array([5, 7, n + 3, n + 7, 9])
    h = lay.hash(ids)  # ids of the padded embedding hash like the pad
    assert (h.compressed[2:4] == lay.compressed_pad_id).all()
    r = cli("build-vocab", str(tmp_path / "tokenizer.json"), "--config", str(tmp_path / "config.json"))
    assert r.exit_code == 0 and "padded vocabulary" in r.stdout


def test_unpadded_vocab_has_no_note(cli, tmp_path):
    n = _tokenizer(tmp_path / "tokenizer.json")
    cfg = {"engram_variant": "deepseek-demo", "engram_vocab_size": [61, 61], "max_ngram_size": 3, "n_embed_per_ngram": 16,
           "n_head_per_ngram": 2, "layer_ids": [1], "pad_id": 2, "seed": 0, "vocab_size": n}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    r = cli("build-vocab", str(tmp_path / "tokenizer.json"), "--config", str(tmp_path / "config.json"), "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["notes"] == [] and doc["vocab_size"] == n
