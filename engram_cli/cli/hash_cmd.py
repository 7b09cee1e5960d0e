"""`engram hash`: show the compressed id and every Engram row id of each token."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from engram_cli.cli.output import JsonOption, Output, QuietOption, escape, handle_errors

SCHEMA = "engram.hash/1"


def _parse_ids(text: str) -> list[int]:
    try:
        return [int(tok) for tok in text.replace(",", " ").split()]
    except ValueError:
        raise typer.BadParameter("expected integers separated by commas, e.g. 1,2,3", param_hint="--ids") from None


@handle_errors
def hash_command(
    text: Annotated[Optional[str], typer.Option("--text", "-t", help="Text to tokenize and hash.")] = None,
    ids: Annotated[Optional[str], typer.Option("--ids", help="Raw token ids, e.g. 1,2,3.")] = None,
    file: Annotated[Optional[Path], typer.Option("--file", "-f", help="A UTF-8 text file to tokenize and hash.")] = None,
    layout_dir: Annotated[Optional[Path], typer.Option("--layout", "-l", help="Layout directory from build-vocab.")] = None,
    preset: Annotated[Optional[str], typer.Option("--preset", "-p", help="Named layout (default deepseek-v4.1-flash).")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="Model config.json to build the layout from.")] = None,
    tokenizer: Annotated[
        Optional[Path], typer.Option("--tokenizer", help="tokenizer.json for --text/--file (default: bundled DeepSeek).")
    ] = None,
    dead_token: Annotated[
        Optional[List[int]], typer.Option("--dead-token", help="Raw id treated as dead (image span); repeatable.")
    ] = None,
    seq_start: Annotated[
        Optional[List[int]], typer.Option("--seq-start", help="Position where a packed sequence starts; repeatable.")
    ] = None,
    local: Annotated[bool, typer.Option("--local", help="Show head-local ids instead of global row ids.")] = False,
    json_out: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Hash tokens: per token its compressed id and, per Engram layer, each (order, head) row id.

    Use it to check an engine's ids against ours; --json output is the stable contract engram.hash/1 (id arrays shaped tokens x layers x columns).
    """
    import numpy as np

    from engram_cli.errors import UsageError
    from engram_cli.layout import build_token_map, layout_from_config, layout_from_preset, load_layout, load_tokenizer
    from engram_cli.layout.config import detect_variant, read_config

    out = Output(json_out, quiet)
    sources = [s for s in (text, ids, file) if s is not None]
    if len(sources) != 1:
        raise UsageError("pass exactly one of --text, --ids or --file")
    if sum(x is not None for x in (layout_dir, preset, config)) > 1:
        raise UsageError("pass at most one of --layout, --preset or --config")

    tok_cache: dict = {}

    def get_tokenizer():
        if "tok" not in tok_cache:
            tok_cache["tok"] = load_tokenizer(tokenizer)
        return tok_cache["tok"]

    if layout_dir is not None:
        layout = load_layout(layout_dir)
    elif config is not None:
        cfg = read_config(config)
        tm = None if detect_variant(cfg) == "qwen4-exp" else build_token_map(get_tokenizer())
        layout = layout_from_config(cfg, tm)
        layout.validate_against_config(cfg)
    else:
        layout = layout_from_preset(preset or "deepseek-v4.1-flash", build_token_map(get_tokenizer()))

    if ids is not None:
        raw = _parse_ids(ids)
    else:
        if file is not None:
            if not file.is_file():
                from engram_cli.errors import BadInputError

                raise BadInputError(f"text file not found: {file}")
            try:
                content = file.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                from engram_cli.errors import BadInputError

                raise BadInputError(f"{file} is not UTF-8 text") from None
        else:
            content = text or ""
        tok = get_tokenizer()
        fp = (layout.tokenizer or {}).get("fingerprint")
        from engram_cli.layout.tokenizer import tokenizer_fingerprint

        if fp and fp != tokenizer_fingerprint(tok):
            out.warn("the tokenizer's fingerprint differs from the one the layout was built with")
        raw = tok.encode(content, add_special_tokens=False).ids
    if not raw:
        raise UsageError("nothing to hash: no tokens")
    raw_arr = np.asarray(raw, dtype=np.int64)
    dead_mask = None
    if dead_token:
        dead_mask = np.isin(raw_arr, np.asarray(dead_token, dtype=np.int64))
    result = layout.hash(raw_arr, seq_starts=seq_start or None, dead_mask=dead_mask)

    doc = {
        "schema": SCHEMA,
        "variant": layout.variant,
        "layer_ids": list(layout.layer_ids),
        "columns": [{"order": n, "head": h} for n, h in layout.columns],
        "tokens": [int(x) for x in raw_arr],
        "compressed": [int(x) for x in result.compressed],
        "local_ids": result.local.tolist(),
        "global_ids": result.global_.tolist(),
    }
    if dead_token:
        doc["dead_tokens"] = sorted(set(int(d) for d in dead_token))
    if seq_start:
        doc["seq_starts"] = sorted(set(int(s) for s in seq_start))
    if json_out:
        out.emit_json(doc)
        return
    _render(out, layout, raw_arr, result, get_tokenizer() if (text is not None or file is not None or tokenizer) else None, local)


def _render(out: Output, layout, raw, result, tok, local: bool) -> None:
    from rich.table import Table

    ids = result.local if local else result.global_
    kind = "head-local" if local else "global row"
    for li, lid in enumerate(layout.layer_ids):
        table = Table(title=f"layer {lid}: {kind} ids ({layout.variant})", title_justify="left")
        table.add_column("pos", justify="right")
        table.add_column("token")
        table.add_column("raw", justify="right")
        table.add_column("comp", justify="right")
        for n in range(2, layout.max_ngram_size + 1):
            table.add_column(f"{n}-gram heads 0..{layout.n_heads - 1}")
        for t in range(raw.shape[0]):
            piece = tok.id_to_token(int(raw[t])) if tok is not None else ""
            cells = []
            for n in range(2, layout.max_ngram_size + 1):
                cols = slice((n - 2) * layout.n_heads, (n - 1) * layout.n_heads)
                cells.append(" ".join(str(int(v)) for v in ids[t, li, cols]))
            table.add_row(str(t), escape(repr(piece or "")), str(int(raw[t])), str(int(result.compressed[t])), *cells)
        out.print(table)
