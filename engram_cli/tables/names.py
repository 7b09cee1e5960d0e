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
    "qwen4-exp": NameFamily(
        "qwen4-exp",
        weight=("{prefix}layers.{layer}.ple.ple_embedding.ngram_embedding.weight",),
        split_weight="{prefix}layers.{layer}.ple.ple_embedding.ngram_embedding.shard_{part}.weight",
        split_config_key="split_ngram_parts",
    ),
}

# Names this tool writes in its own per-rank / per-head / GGUF outputs.
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
