"""Sanity limits on the geometry a config declares, checked before any prime is searched.

Real models are far inside these bounds (DeepSeek-V4.1-Flash: 2 layers, n-gram 4, 8 heads,
head dim 256; Qwen4-Exp: n-gram 3, 8 heads); a config beyond them is a typo or hostile, and
would otherwise run for minutes or exhaust memory.
"""

from __future__ import annotations

from typing import Any

from engram_cli.errors import BadInputError

LIMITS = {
    "layers": 512,  # Engram layers per model
    "max_ngram_size": 16,
    "n_heads": 1024,  # hash heads per n-gram order
    "head_dim": 65536,
    "vocab_base": 2**40,  # per-order prime search base
}
_FIELDS = {
    "max_ngram_size": ("engram_max_ngram_size", "max_ngram_size", "ngram_size"),
    "n_heads": ("engram_n_heads", "n_head_per_ngram", "heads_per_ngram"),
    "head_dim": ("engram_head_dim", "n_embed_per_ngram", "ple_embed_dim"),
    "vocab_base": ("engram_vocab_size", "ngram_vocab_size_base"),
}
_LAYER_FIELDS = ("engram_layer_ids", "layer_ids", "ple_layer_ids")


def _ints(value: Any, field: str) -> list[int]:
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise BadInputError(f"config field {field!r} must be an integer or a list of integers, got {value!r}")
    return values


def check_config_geometry(c: dict[str, Any]) -> None:
    """Exit 3 naming the field and value when a declared size is absurd or inconsistent."""
    for key, names in _FIELDS.items():
        for name in names:
            if c.get(name) is None:
                continue
            for v in _ints(c[name], name):
                if not 1 <= v <= LIMITS[key]:
                    raise BadInputError(f"config field {name!r} = {v:,} is outside 1..{LIMITS[key]:,}",
                                        hint="check the config.json belongs to an Engram model")
    for name in _LAYER_FIELDS:
        if c.get(name) is None:
            continue
        ids = _ints(c[name], name)
        if len(ids) > LIMITS["layers"] or any(i < 0 for i in ids):
            raise BadInputError(f"config field {name!r} lists {len(ids)} layers or a negative id")
        if len(set(ids)) != len(ids):
            raise BadInputError(f"config field {name!r} repeats a layer id: {ids}")
        rows = c.get("engram_num_embeddings")
        if isinstance(rows, list) and len(rows) != len(ids):
            raise BadInputError(f"engram_num_embeddings has {len(rows)} entries but {name} lists {len(ids)} layers")
