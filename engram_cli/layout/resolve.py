"""One layout resolver for every command: ``--layout DIR | --config FILE | --preset NAME``.

Resolution order: the one explicit source; else a layout or config found beside a checkpoint
(``near``); else the command's default preset. The token map (raw -> compressed id) is built
whenever a tokenizer is reachable: the ``--tokenizer`` given, a ``tokenizer.json`` beside the
config or checkpoint, or, for the DeepSeek presets, the bundled DeepSeek tokenizer. The result
says which sources were used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engram_cli.errors import BadInputError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    from tokenizers import Tokenizer

    from engram_cli.layout.layout import EngramLayout
    from engram_cli.layout.tokenizer import TokenMap

DEFAULT_PRESET = "deepseek-v4.1-flash"


class TokenMapNeed(str, Enum):
    """Whether the caller needs the token map: ``need`` (refuse without), ``want`` (build it
    when a tokenizer is reachable), ``skip`` (row geometry only; never tokenise)."""

    need = "need"
    want = "want"
    skip = "skip"


@dataclass(frozen=True)
class ResolvedLayout:
    """A layout and where it came from (``layout`` is None when nothing gave one)."""

    layout: EngramLayout | None
    source: str  # "layout DIR", "config FILE", "preset NAME", "checkpoint DIR", or ""
    tokenizer_path: str | None = None  # the tokenizer the token map was built from
    token_map: TokenMap | None = field(default=None, compare=False)
    tokenizer: Tokenizer | None = field(default=None, compare=False)
    checks: tuple[dict[str, Any], ...] = ()  # validation against the config's declared sizes


def _tokenizer_beside(*places: Path | None) -> Path | None:
    for place in places:
        if place is None:
            continue
        d = place if place.is_dir() else place.parent
        if (d / "tokenizer.json").is_file():
            return d / "tokenizer.json"
    return None


def _build(cfg: dict, tok_path: Path | None, source: str) -> ResolvedLayout:
    """The layout ``cfg`` describes, with the token map of ``tok_path`` when given, validated."""
    from engram_cli.layout.config import detect_variant, layout_from_config, validate_layout
    from engram_cli.layout.tokenizer import build_token_map, load_tokenizer, tokenizer_summary

    if tok_path is None:
        layout, tok, tmap = layout_from_config(cfg), None, None
    else:
        tok = load_tokenizer(tok_path)
        info = tokenizer_summary(tok) | {"path": str(tok_path)}
        if detect_variant(cfg) == "qwen4-exp":
            _check_vocab(cfg, info["vocab_size"])
            tmap = None
        else:
            tmap = build_token_map(tok)
        layout = layout_from_config(cfg, tmap, tokenizer_info=info)
    checks = tuple(validate_layout(layout, cfg))
    return ResolvedLayout(layout, source, str(tok_path) if tok_path else None, tmap, tok, checks)


def _check_vocab(cfg: dict, vocab: int) -> None:
    c = cfg.get("text_config", cfg)
    declared = int(c.get("vocab_size", vocab))
    if vocab > declared:
        from engram_cli.errors import LayoutMismatchError

        raise LayoutMismatchError(f"tokenizer has {vocab:,} ids but the config's vocab_size is {declared:,}")


def _from_config(cfg_path: Path, cfg: dict, tokenizer: Path | None, near: Path | None, need: TokenMapNeed,
                 source: str) -> ResolvedLayout:
    from engram_cli.layout.config import detect_variant

    tok_path = tokenizer
    if tok_path is None and detect_variant(cfg) != "qwen4-exp" and need is not TokenMapNeed.skip:
        tok_path = _tokenizer_beside(cfg_path, near)
        if tok_path is None and need is TokenMapNeed.need:
            raise BadInputError(f"no tokenizer.json beside {cfg_path} to build the token map: pass --layout DIR "
                                "(from `engram build-vocab`) or --tokenizer FILE",
                                hint="the hash keys and row ids need the tokenizer's compressed vocabulary")
    return _build(cfg, None if need is TokenMapNeed.skip else tok_path, source)


def _from_preset(name: str, tokenizer: Path | None, need: TokenMapNeed) -> ResolvedLayout:
    from engram_cli.layout.config import check_preset
    from engram_cli.layout.tokenizer import resolve_tokenizer_file

    cfg = check_preset(name)  # before the (slow) token map
    tok_path = None if need is TokenMapNeed.skip else resolve_tokenizer_file(tokenizer)
    return _build(cfg, tok_path, f"preset {name}")


def resolve_layout(layout: str | Path | None = None, config: str | Path | None = None, preset: str | None = None, *,
                   tokenizer: str | Path | None = None, near: str | Path | None = None,
                   default_preset: str | None = None, need: TokenMapNeed = TokenMapNeed.want) -> ResolvedLayout:
    """Resolve the layout options of any command (see the module docstring)."""
    from engram_cli.layout.config import read_config
    from engram_cli.layout.store import LAYOUT_FILE, load_layout

    given = [x for x in (layout, config, preset) if x is not None]
    if len(given) > 1:
        raise UsageError("pass at most one of --layout, --config or --preset")
    tok = Path(tokenizer) if tokenizer is not None else None
    near_dir = Path(near) if near is not None and Path(near).is_dir() else None
    if layout is not None:
        lay = load_layout(layout)
        return ResolvedLayout(lay, f"layout {layout}", _recorded_path(lay.tokenizer))
    if config is not None:
        cfg_path = Path(config)
        return _from_config(cfg_path, read_config(cfg_path), tok, near_dir, need, f"config {config}")
    if preset is not None:
        return _from_preset(str(preset), tok, need)
    if near_dir is not None:
        if (near_dir / LAYOUT_FILE).is_file():
            lay = load_layout(near_dir)
            return ResolvedLayout(lay, f"checkpoint {near_dir}", _recorded_path(lay.tokenizer))
        cfg_file = near_dir / "config.json"
        if cfg_file.is_file():
            cfg = read_config(cfg_file)
            if _has_engram_fields(cfg):
                return _from_config(cfg_file, cfg, tok, near_dir, need, f"checkpoint {near_dir}")
    if default_preset is not None:
        return _from_preset(default_preset, tok, need)
    return ResolvedLayout(None, "")


def _recorded_path(info: dict[str, Any] | None) -> str | None:
    return str(info["path"]) if info and info.get("path") else None


def _has_engram_fields(cfg: dict) -> bool:
    from engram_cli.layout.config import detect_variant

    try:
        detect_variant(cfg)
    except BadInputError:
        return False
    return True


def layout_tokenizer(resolved: ResolvedLayout, explicit: str | Path | None = None) -> Tokenizer:
    """The tokenizer text must be encoded with for ``resolved``: ``explicit``, else the one the
    layout was built from (its recorded path, a ``tokenizer.json`` beside the layout, or the
    bundled one) when its fingerprint matches; exit 3 when none can be found."""
    from engram_cli.layout.tokenizer import load_tokenizer, resolve_tokenizer_file, tokenizer_fingerprint

    if explicit is not None:
        return load_tokenizer(explicit)
    lay = resolved.layout
    want = (lay.tokenizer or {}).get("fingerprint") if lay is not None else None
    candidates: list[Path] = []
    if resolved.tokenizer_path:
        candidates.append(Path(resolved.tokenizer_path))
    src = resolved.source.split(" ", 1)[-1] if resolved.source.startswith(("layout ", "checkpoint ")) else None
    beside = _tokenizer_beside(Path(src)) if src else None
    if beside is not None:
        candidates.append(beside)
    candidates.append(resolve_tokenizer_file(None))
    for path in candidates:
        if not path.is_file():
            continue
        tok = load_tokenizer(path)
        if want is None or tokenizer_fingerprint(tok) == want:
            return tok
    raise BadInputError(f"the tokenizer this layout was built with (fingerprint {want}) cannot be found",
                        hint="pass --tokenizer FILE (the one given to `engram build-vocab`)")
