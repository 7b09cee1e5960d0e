"""The layer-id triple of a layout: config id, hash-seed id, tensor-name index (formats.md 7.2)."""

from __future__ import annotations

import json

import pytest

from engram_cli.errors import LayoutMismatchError
from engram_cli.layout import EngramLayout, layout_from_config
from engram_cli.layout.multipliers import pcg64_multipliers
from engram_cli.tables.geometry import geometries_from_layout
from engram_cli.tables.model import Encoding, TableInfo

QWEN = {"ple_layer_ids": [3, 2], "vocab_size": 128, "eos_token_id": 1, "ple_embed_dim": 32, "ngram_size": 3,
        "heads_per_ngram": 2, "ngram_vocab_size_base": 50, "make_ngram_vocab_size_divisible_by": 16}


def test_qwen_seed_is_the_position_in_ple_layer_ids():
    lay = layout_from_config(QWEN)
    assert lay.layer_ids == (2, 3) and lay.tensor_ids == (1, 2)
    assert lay.seed_ids == (1, 0)  # config order [3, 2]: layer 3 is ple_layer_index 0
    assert lay.numbering == "qwen4-exp"
    assert lay.primes[1] == layout_from_config({**QWEN, "ple_layer_ids": [3]}).primes[0]


def test_megatron_numbering_seeds_with_the_1_based_id():
    cfg = {"engram_layer_ids": [2, 5], "engram_max_ngram_size": 3, "engram_n_heads": 2, "engram_head_dim": 8,
           "engram_vocab_size": 100, "engram_compressed_vocab_size": 50, "engram_pad_token_id": 2,
           "engram_layer_numbering": "megatron"}
    lay = layout_from_config(cfg)
    assert lay.layer_ids == (2, 5) and lay.seed_ids == (2, 5) and lay.tensor_ids == (1, 4) and lay.numbering == "megatron"
    assert list(lay.multipliers[0]) == pcg64_multipliers(2, 3, 50)
    plain = layout_from_config({**cfg, "engram_layer_numbering": "deepseek"})
    assert plain.tensor_ids == (2, 5) and plain.multipliers == lay.multipliers


def test_old_layout_files_load_with_their_variants_numbering(tmp_path):
    for cfg in (QWEN,):
        lay = layout_from_config(cfg)
        doc = lay.to_dict()
        assert [(x["layer_id"], x["seed_id"], x["tensor_index"]) for x in doc["layers"]] == [(2, 1, 1), (3, 0, 2)]
        for x in doc["layers"]:
            del x["seed_id"], x["tensor_index"]
        old = EngramLayout.from_dict(json.loads(json.dumps(doc)))
        assert old.tensor_ids == (1, 2)  # tensors layers.{id - 1}
        assert old.seed_ids == (0, 1)  # an older file cannot know the config's order: list order is assumed


def test_tables_match_by_tensor_index_never_by_position():
    lay = layout_from_config(QWEN)
    enc = Encoding("BF16")
    tables = tuple(TableInfo(tid, rows, 16, enc, ()) for tid, rows in zip(lay.tensor_ids, lay.num_embeddings))
    geos = geometries_from_layout(lay, tables)
    assert [g.layer_id for g in geos] == [1, 2] and [g.head_sizes for g in geos] == list(lay.primes)
    shifted = tuple(TableInfo(tid + 5, t.rows, 16, enc, ()) for tid, t in zip(lay.tensor_ids, tables))  # layers.6, layers.7
    with pytest.raises(LayoutMismatchError, match="tensor indices"):
        geometries_from_layout(lay, shifted)
