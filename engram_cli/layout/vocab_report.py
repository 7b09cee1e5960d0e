"""`build-vocab`: derive a layout from a tokenizer plus a config or preset, and report it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engram_cli.errors import UsageError
from engram_cli.layout.layout import EngramLayout
from engram_cli.layout.resolve import DEFAULT_PRESET, TokenMapNeed, resolve_layout
from engram_cli.layout.tokenizer import MergeClass, TokenMap, resolve_tokenizer_file


@dataclass(frozen=True)
class VocabBuild:
    """What `engram build-vocab` computed."""

    layout: EngramLayout
    source: str  # "preset:NAME" or the config path
    tokenizer_path: str | None
    token_map: TokenMap | None
    largest: list[MergeClass] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def build_vocab(
    tokenizer: str | Path | None = None,
    *,
    config: str | Path | None = None,
    preset: str | None = None,
    top: int = 10,
) -> VocabBuild:
    """Compress the tokenizer, build the layout it implies, validate it against the config.

    The tokenizer defaults to the bundled DeepSeek one (Qwen4-Exp needs none: no compression)."""
    from engram_cli.layout.config import detect_variant, read_config

    if config is not None and preset is not None:
        raise UsageError("pass either --config or --preset, not both")
    tok = tokenizer
    if tok is None and (config is None or detect_variant(read_config(config)) != "qwen4-exp"):
        tok = resolve_tokenizer_file(None)
    res = resolve_layout(config=config, preset=None if config is not None else (preset or DEFAULT_PRESET),
                         tokenizer=tok, need=TokenMapNeed.need if tok is not None else TokenMapNeed.skip)
    largest = res.token_map.largest_classes(res.tokenizer, top=top) if res.token_map is not None else []
    source = str(config) if config is not None else f"preset:{preset or DEFAULT_PRESET}"
    return VocabBuild(layout=res.layout, source=source, tokenizer_path=res.tokenizer_path, token_map=res.token_map,
                      largest=largest, checks=list(res.checks), notes=padding_notes(res.layout))


def padding_notes(layout: EngramLayout) -> list[str]:
    """What the report says when the embedding is larger than the tokenizer (a padded vocabulary)."""
    pv = (layout.tokenizer or {}).get("padded_vocab")
    if not pv:
        return []
    extra = pv["embedding_ids"] - pv["tokenizer_ids"]
    return [f"padded vocabulary: the tokenizer has {pv['tokenizer_ids']:,} ids, the embedding {pv['embedding_ids']:,}; "
            f"the {extra:,} extra ids map to the compressed pad {pv['extra_ids_map_to']} (as Megatron's remap does)"]
