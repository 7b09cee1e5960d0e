"""`build-vocab`: derive a layout from a tokenizer plus a config or preset, and report it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engram_cli.errors import UsageError
from engram_cli.layout.config import PRESETS, detect_variant, layout_from_config, read_config
from engram_cli.layout.layout import EngramLayout
from engram_cli.layout.tokenizer import (
    MergeClass,
    TokenMap,
    build_token_map,
    load_tokenizer,
    resolve_tokenizer_file,
    tokenizer_summary,
)

DEFAULT_PRESET = "deepseek-v4.1-flash"


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
    """Compress the tokenizer, build the layout it implies, validate it against the config."""
    if config is not None and preset is not None:
        raise UsageError("pass either --config or --preset, not both")
    if config is not None:
        cfg = read_config(config)
        source = str(config)
    else:
        name = preset or DEFAULT_PRESET
        if name not in PRESETS:
            from engram_cli.errors import BadInputError

            raise BadInputError(f"unknown preset {name!r}", hint=f"presets: {', '.join(sorted(PRESETS))}")
        cfg = PRESETS[name]
        source = f"preset:{name}"
    variant = detect_variant(cfg)
    token_map = None
    tok_path = None
    info = None
    largest: list[MergeClass] = []
    if variant != "qwen4-exp" or tokenizer is not None:
        tok_path = str(resolve_tokenizer_file(tokenizer))
        tok = load_tokenizer(tok_path)
        info = tokenizer_summary(tok) | {"path": tok_path}
        if variant != "qwen4-exp":
            token_map = build_token_map(tok)
            largest = token_map.largest_classes(tok, top=top)
        else:
            vocab = tok.get_vocab_size(with_added_tokens=True)
            declared = int(cfg.get("text_config", cfg).get("vocab_size", vocab))
            if vocab > declared:
                from engram_cli.errors import LayoutMismatchError

                raise LayoutMismatchError(f"tokenizer has {vocab:,} ids but the config's vocab_size is {declared:,}")
    layout = layout_from_config(cfg, token_map, tokenizer_info=info)
    checks = layout.validate_against_config(cfg)
    return VocabBuild(layout=layout, source=source, tokenizer_path=tok_path, token_map=token_map, largest=largest, checks=checks)
