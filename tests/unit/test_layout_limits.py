"""Absurd or inconsistent config geometry is refused up front (exit 3), naming the field."""

from __future__ import annotations

import copy
import time

import pytest

from engram_cli.errors import BadInputError
from engram_cli.layout.config import PRESETS, layout_from_config


@pytest.mark.parametrize("change,needle", [
    ({"engram_n_heads": 10_000_000}, "engram_n_heads"),
    ({"engram_max_ngram_size": 0}, "engram_max_ngram_size"),
    ({"engram_head_dim": "256"}, "engram_head_dim"),
    ({"engram_layer_ids": [1, 1], "engram_num_embeddings": [384006168, 384006168]}, "repeats"),
    ({"engram_num_embeddings": [384006168]}, "1 entries"),
    ({"engram_layer_ids": [-1, 14]}, "negative"),
    ({"engram_vocab_size": 2**50}, "engram_vocab_size"),
])
def test_bad_geometry_is_refused_fast(change, needle):
    cfg = copy.deepcopy(PRESETS["deepseek-v4.1-flash"])
    cfg.update(change)
    t0 = time.perf_counter()
    with pytest.raises(BadInputError, match=needle):
        layout_from_config(cfg)
    assert time.perf_counter() - t0 < 5.0  # refused before any prime search


def test_real_presets_pass():
    for name, cfg in PRESETS.items():
        if name == "deepseek-v4.1-flash":
            assert sum(layout_from_config(cfg).primes[0]) == 384_006_168
