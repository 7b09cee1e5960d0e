"""Checkpoint key templates per format, as data.

Placeholders: ``{prefix}`` (any leading module path, may be empty), ``{layer}`` (decoder layer
id) and ``{part}`` (Qwen4-Exp ``shard_i`` index). The first template of a family's ``scale``
list is the one written; all are accepted when reading.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class NameFamily:
    name: str
    weight: tuple[str, ...]  # accepted weight templates; the first is written
    scale: tuple[str, ...] = ()  # accepted per-row-group scale templates; the first is written
    split_weight: str | None = None  # row-split pieces (Qwen4-Exp shard_i)
    split_config_key: str | None = None  # config.json key holding the number of pieces
    split_scale: str | None = None  # per-piece row-group scale (NVFP4 shard_i.weight_scale)
    global_scale: tuple[str, ...] = ()  # per-tensor scalar shared by all pieces (NVFP4 weight_scale_2);
    # whole-table template first, then the per-piece template (with {part})


FAMILIES: dict[str, NameFamily] = {
    "deepseek-v4.1": NameFamily(
        "deepseek-v4.1",
        weight=("{prefix}layers.{layer}.engram.embed.weight",),
        scale=(
            "{prefix}layers.{layer}.engram.embed.scale",
            "{prefix}layers.{layer}.engram.embed.weight_scale",
            "{prefix}layers.{layer}.engram.embed.weight_scale_inv",
        ),
    ),
    "deepseek-demo": NameFamily(
        "deepseek-demo",
        weight=("{prefix}{layer}.engram.multi_head_embedding.embedding.weight",),
    ),
    # NVFP4 repacks (formats.md 5.4): shard_i.weight U8 [rows, dim/2] (two e2m1 per byte),
    # shard_i.weight_scale F8_E4M3 [rows, dim/16], shard_i.weight_scale_2 F32 scalar, equal across i.
    # (In the FP8 release, ngram_embedding.weight_scale is a scalar global scale: a plain tensor.)
    "qwen4-exp": NameFamily(
        "qwen4-exp",
        weight=("{prefix}layers.{layer}.ple.ple_embedding.ngram_embedding.weight",),
        scale=("{prefix}layers.{layer}.ple.ple_embedding.ngram_embedding.weight_scale",),
        split_weight="{prefix}layers.{layer}.ple.ple_embedding.ngram_embedding.shard_{part}.weight",
        split_config_key="split_ngram_parts",
        split_scale="{prefix}layers.{layer}.ple.ple_embedding.ngram_embedding.shard_{part}.weight_scale",
        global_scale=("{prefix}layers.{layer}.ple.ple_embedding.ngram_embedding.weight_scale_2",
                      "{prefix}layers.{layer}.ple.ple_embedding.ngram_embedding.shard_{part}.weight_scale_2"),
    ),
}

# Names this tool writes in its own per-rank / per-head / GGUF outputs.
# Projections of a DeepSeek Engram module, relative to its prefix (re-exported by --with-projections).
PROJ_WEIGHT = "{prefix}layers.{layer}.engram.{key}"
PROJ_KEYS = ("q_weight", "k_weight", "wkv.weight")
TILE_SCALE_SUFFIXES = ("scale", "weight_scale", "weight_scale_inv")  # wkv.weight -> wkv.{suffix}
HEAD_WEIGHT = "engram.l{layer}.h{head}.weight"
HEAD_SCALE = "engram.l{layer}.h{head}.scale"
GGUF_TABLE = "blk.{layer}.engram_embd.weight"
GGUF_PROJ = {
    "q_weight": "blk.{layer}.engram_q.weight",
    "k_weight": "blk.{layer}.engram_k.weight",
    "wkv.weight": "blk.{layer}.engram_wkv.weight",
}


def template_regex(template: str) -> re.Pattern[str]:
    """Compile a template to a regex with named groups prefix/layer/part."""
    out = []
    for piece in re.split(r"(\{prefix\}|\{layer\}|\{part\})", template):
        if piece == "{prefix}":
            out.append(r"(?P<prefix>(?:[\w\-]+\.)*?)")
        elif piece == "{layer}":
            out.append(r"(?P<layer>\d+)")
        elif piece == "{part}":
            out.append(r"(?P<part>\d+)")
        else:
            out.append(re.escape(piece))
    return re.compile("^" + "".join(out) + "$")


def render(template: str, *, prefix: str = "", layer: int | None = None, part: int | None = None) -> str:
    return template.replace("{prefix}", prefix).replace("{layer}", str(layer)).replace("{part}", str(part))


def custom_family(key: str, scale_key: str | None = None) -> NameFamily:
    """A family from a user ``--key`` template such as ``decoder.layers_{layer}.engram.embedding``."""
    if "{layer}" not in key:
        from engram_cli.errors import UsageError

        raise UsageError(f"--key template {key!r} must contain {{layer}}")
    return NameFamily("custom", weight=(key,), scale=(scale_key,) if scale_key else ())
