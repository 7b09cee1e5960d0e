"""Build layouts from model configs (DeepSeek-V4.1, reference demo, Qwen4-Exp) or presets."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from engram_cli.errors import BadInputError, LayoutMismatchError
from engram_cli.layout.layout import EngramLayout, exclusive_cumsum
from engram_cli.layout.limits import check_config_geometry
from engram_cli.layout.multipliers import splitmix64_multipliers
from engram_cli.layout.numbering import numbered_ids
from engram_cli.layout.primes import consecutive_primes_from
from engram_cli.layout.tokenizer import TokenMap, pad_token_map

DEEPSEEK_V41_FLASH = {
    "engram_layer_ids": [1, 14],
    "engram_num_embeddings": [384006168, 384016682],
    "engram_max_ngram_size": 4,
    "engram_n_heads": 8,
    "engram_head_dim": 256,
    "engram_vocab_size": 16000000,
    "engram_compressed_vocab_size": 99092,
    "engram_pad_token_id": 2,
    "vocab_size": 129280,
}

DEEPSEEK_DEMO = {
    "engram_variant": "deepseek-demo",
    "engram_vocab_size": [646400, 646400],
    "max_ngram_size": 3,
    "n_embed_per_ngram": 512,
    "n_head_per_ngram": 8,
    "layer_ids": [1, 15],
    "pad_id": 2,
    "seed": 0,
}

PRESETS: dict[str, dict[str, Any]] = {
    "deepseek-v4.1-flash": DEEPSEEK_V41_FLASH,
    "deepseek-demo": DEEPSEEK_DEMO,
}


def read_config(config: str | Path | dict[str, Any]) -> dict[str, Any]:
    """A config dict from a dict, a ``config.json`` path, or a model directory."""
    if isinstance(config, dict):
        return config
    p = Path(config)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise BadInputError(f"config not found: {p}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInputError(f"{p} is not a JSON config: {exc}") from None
    if not isinstance(data, dict):
        raise BadInputError(f"{p} is not a JSON object")
    return data


def _text_config(cfg: dict[str, Any]) -> dict[str, Any]:
    inner = cfg.get("text_config")
    if isinstance(inner, dict):
        merged = dict(cfg)
        merged.update(inner)
        return merged
    return cfg


def detect_variant(cfg: dict[str, Any]) -> str:
    c = _text_config(cfg)
    if c.get("engram_variant") in ("deepseek-v4.1", "deepseek-demo", "qwen4-exp"):
        return c["engram_variant"]
    if "engram_layer_ids" in c:
        return "deepseek-v4.1"
    if c.get("ple_layer_ids"):
        return "qwen4-exp"
    if "n_head_per_ngram" in c and "engram_vocab_size" in c:
        return "deepseek-demo"
    raise BadInputError(
        "config has no Engram fields (engram_layer_ids, ple_layer_ids or the demo's engram_vocab_size)",
        hint="pass the config.json of an Engram model, or use --preset",
    )


def validate_layout(layout: EngramLayout, config: dict[str, Any]) -> list[dict[str, Any]]:
    """Compare a layout with a config's declared sizes; LayoutMismatchError (exit 3) on a mismatch.

    Returns the checks made: ``{"check", "expected", "actual", "ok"}``.
    """
    declared = declared_sizes(config)
    checks = []
    if declared.get("compressed_vocab_size") is not None:
        checks.append({"check": "compressed vocab size", "expected": declared["compressed_vocab_size"],
                       "actual": layout.compressed_vocab_size})
    for i, rows in enumerate((declared.get("num_embeddings") or [])[: len(layout.layer_ids)]):
        checks.append({"check": f"sum of primes, layer {layout.layer_ids[i]}", "expected": int(rows),
                       "actual": int(sum(layout.primes[i]))})
    for c in checks:
        c["ok"] = c["expected"] == c["actual"]
    bad = [c for c in checks if not c["ok"]]
    if bad:
        c = bad[0]
        raise LayoutMismatchError(f"layout mismatch: {c['check']} is {c['actual']:,} but the config says {c['expected']:,}",
                                  hint="the tokenizer or config does not belong to this model")
    return checks


def declared_sizes(cfg: dict[str, Any]) -> dict[str, Any]:
    """Sizes a config declares, to validate a rebuilt layout against."""
    c = _text_config(cfg)
    return {
        "compressed_vocab_size": c.get("engram_compressed_vocab_size"),
        "num_embeddings": c.get("engram_num_embeddings"),
    }


def _need(c: dict[str, Any], *names: str) -> Any:
    for n in names:
        if n in c and c[n] is not None:
            return c[n]
    raise BadInputError(f"config lacks the Engram field {names[0]!r}")


def layout_from_config(
    config: str | Path | dict[str, Any],
    token_map: TokenMap | np.ndarray | None = None,
    *,
    tokenizer_info: dict[str, Any] | None = None,
) -> EngramLayout:
    """Build the layout a config describes; DeepSeek variants need the tokenizer's token map
    (without it the compressed size is taken from the config and hashing is unavailable)."""
    cfg = read_config(config)
    variant = detect_variant(cfg)
    c = _text_config(cfg)
    check_config_geometry(c)
    lookup = token_map.lookup if isinstance(token_map, TokenMap) else token_map
    if tokenizer_info is None and isinstance(token_map, TokenMap):
        tokenizer_info = {"fingerprint": token_map.fingerprint, "vocab_size": token_map.vocab_size}
    if lookup is not None and variant != "qwen4-exp":  # a padded embedding (Megatron): extra ids -> compressed pad
        raw_pad = c.get("engram_pad_token_id", c.get("engram_pad_id", 2)) if variant == "deepseek-v4.1" else c.get("pad_id", 2)
        lookup, tokenizer_info = pad_token_map(np.asarray(lookup, dtype=np.int64), c.get("vocab_size"), int(raw_pad), tokenizer_info)
    try:
        if variant == "qwen4-exp":
            return _qwen4_exp(c)
        if variant == "deepseek-v4.1":
            layer_ids = [int(x) for x in _need(c, "engram_layer_ids")]
            n = int(_need(c, "engram_max_ngram_size"))
            base = _need(c, "engram_vocab_size")
            pad = int(_need(c, "engram_pad_token_id", "engram_pad_id"))
            return EngramLayout.custom(
                variant="deepseek-v4.1",
                layer_ids=layer_ids,
                max_ngram_size=n,
                n_heads=int(_need(c, "engram_n_heads")),
                head_dim=int(_need(c, "engram_head_dim")),
                vocab_base=base if isinstance(base, int) else [int(b) for b in base],
                compressed_vocab_size=None if lookup is not None else int(_need(c, "engram_compressed_vocab_size")),
                vocab_size=None if lookup is not None else c.get("vocab_size"),
                pad_id=pad,
                compressed_pad_id=None if lookup is not None else pad,
                token_map=lookup,
                seed=int(c.get("engram_seed", 0)),
                tokenizer=tokenizer_info,
                layer_numbering=str(c.get("engram_layer_numbering", "deepseek")),
            )
        # deepseek-demo
        n = int(_need(c, "max_ngram_size", "engram_max_ngram_size"))
        heads = int(_need(c, "n_head_per_ngram"))
        if lookup is None:
            raise BadInputError("the demo layout needs a tokenizer (its compressed size is not in the config)")
        return EngramLayout.custom(
            variant="deepseek-demo",
            layer_ids=[int(x) for x in _need(c, "layer_ids", "engram_layer_ids")],
            max_ngram_size=n,
            n_heads=heads,
            head_dim=int(_need(c, "n_embed_per_ngram")) // heads,
            vocab_base=[int(b) for b in _need(c, "engram_vocab_size")],
            pad_id=int(c.get("pad_id", 2)),
            token_map=lookup,
            seed=int(c.get("seed", 0)),
            tokenizer=tokenizer_info,
            layer_numbering=str(c.get("engram_layer_numbering", "deepseek")),
        )
    except (TypeError, ValueError) as exc:
        raise BadInputError(f"invalid Engram config value: {exc}") from None


def _qwen4_exp(c: dict[str, Any]) -> EngramLayout:
    listed = [int(x) for x in _need(c, "ple_layer_ids")]
    layer_ids = sorted(set(listed))
    seed_ids, tensor_ids = numbered_ids("qwen4-exp", layer_ids, listed)  # 1-based ids, tensors layers.{id - 1}
    n = int(c.get("ngram_size", 3))
    heads = int(c.get("heads_per_ngram", 8))
    base = int(c.get("ngram_vocab_size_base", 20_000_000))
    divisor = int(c.get("make_ngram_vocab_size_divisible_by", 128))
    seed = int(c.get("seed", 1234))
    vocab = int(_need(c, "vocab_size"))
    eos = _need(c, "eos_token_id")
    eos = eos[0] if isinstance(eos, list) and eos else eos
    if not isinstance(eos, int) or isinstance(eos, bool) or eos < 0:
        raise BadInputError(f"config field 'eos_token_id' must be a token id or a non-empty list of them, got {c['eos_token_id']!r}")
    n_cols = (n - 1) * heads
    embed = int(c.get("ple_embed_dim") or _need(c, "hidden_size"))
    if embed % n_cols:
        raise BadInputError(f"ple_embed_dim {embed} is not divisible by the {n_cols} n-gram heads")
    primes, mults, rows = [], [], []
    for index in seed_ids:  # transformers: ple_layer_index = ple_layer_ids.index(layer_idx + 1)
        p = consecutive_primes_from(base, index * n_cols, n_cols)
        primes.append(p)
        mults.append(splitmix64_multipliers(index, n, vocab, seed))
        rows.append(math.ceil(sum(p) / divisor) * divisor)
    dtype = str(c.get("torch_dtype") or c.get("dtype") or "bfloat16")
    return EngramLayout(
        variant="qwen4-exp",
        layer_ids=tuple(layer_ids),
        seed_ids=seed_ids,
        tensor_ids=tensor_ids,
        max_ngram_size=n,
        n_heads=heads,
        head_dim=embed // n_cols,
        primes=tuple(tuple(p) for p in primes),
        offsets=tuple(exclusive_cumsum(p) for p in primes),
        multipliers=tuple(tuple(m) for m in mults),
        num_embeddings=tuple(rows),
        vocab_size=vocab,
        compressed_vocab_size=vocab,
        pad_id=eos,
        compressed_pad_id=eos,
        vocab_bases=(base,) * (n - 1),
        seed=seed,
        eos_token_id=eos,
        table_dtype={"float32": "fp32", "float16": "fp16"}.get(dtype, "bf16"),
    )


def check_preset(name: str) -> dict[str, Any]:
    """The config of a named layout, or exit 3 listing the known names."""
    if name not in PRESETS:
        raise BadInputError(f"unknown preset {name!r}", hint=f"presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


def layout_from_preset(name: str, token_map: TokenMap | np.ndarray | None = None) -> EngramLayout:
    """A named layout (``deepseek-v4.1-flash``, ``deepseek-demo``)."""
    return layout_from_config(check_preset(name), token_map)
