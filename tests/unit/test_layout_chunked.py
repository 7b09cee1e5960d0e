"""Chunked hashing equals hashing the whole stream, whatever the chunk size."""

from __future__ import annotations

import numpy as np
import pytest

from engram_cli.layout.chunked import hash_in_chunks
from engram_cli.layout.store import save_layout


def _whole_vs_chunks(layout, raw, chunk, **kw):
    whole = layout.hash(raw, **kw)
    parts = list(hash_in_chunks(layout, raw, chunk=chunk, **kw))
    assert [a for a, _ in parts] == list(range(0, raw.shape[0], chunk))
    comp = np.concatenate([p.compressed for _, p in parts], axis=0)
    glob = np.concatenate([p.global_ for _, p in parts], axis=0)
    assert np.array_equal(comp, whole.compressed) and np.array_equal(glob, whole.global_)


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 64])
def test_v41_chunks_with_starts_and_dead_tokens(v41_layout, chunk):
    rng = np.random.default_rng(chunk)
    raw = rng.integers(0, 129280, size=97)
    dead = rng.random(97) < 0.1
    _whole_vs_chunks(v41_layout, raw, chunk, seq_starts=[0, 3, 40, 41, 96], dead_mask=dead)


@pytest.mark.parametrize("chunk", [1, 4, 16])
def test_qwen_chunks_with_eos_resets(chunk):
    from engram_cli.layout.config import layout_from_config

    cfg = {"ple_layer_ids": [1, 3], "vocab_size": 500, "eos_token_id": 7, "hidden_size": 64, "ngram_size": 3,
           "heads_per_ngram": 4, "ngram_vocab_size_base": 1000}
    layout = layout_from_config(cfg)
    raw = np.random.default_rng(0).integers(0, 500, size=61)
    raw[[5, 6, 30]] = 7
    _whole_vs_chunks(layout, raw, chunk, seq_starts=[20])


def test_hash_json_is_streamed_in_chunks_and_equal(cli, v41_layout, tmp_path, monkeypatch):
    import json

    import engram_cli.cli.hash_cmd as hash_cmd

    save_layout(v41_layout, tmp_path / "lay")
    raw = np.random.default_rng(3).integers(0, 129280, size=50).tolist()
    monkeypatch.setattr(hash_cmd, "CHUNK_TOKENS", 7)
    res = cli("hash", "--ids", ",".join(map(str, raw)), "--layout", str(tmp_path / "lay"), "--seq-start", "9",
              "--dead-token", str(raw[20]), "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    whole = v41_layout.hash(np.asarray(raw), seq_starts=[9], dead_mask=np.isin(raw, [raw[20]]))
    assert doc["global_ids"] == whole.global_.tolist() and doc["local_ids"] == whole.local.tolist()
    assert doc["compressed"] == whole.compressed.tolist() and doc["tokens"] == raw
