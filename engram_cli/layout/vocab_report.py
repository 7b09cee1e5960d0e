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
                      largest=largest, checks=list(res.checks))
