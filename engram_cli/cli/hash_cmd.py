"""`engram hash`: show the compressed id and every Engram row id of each token."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from engram_cli.cli.options import ConfigOpt, JsonOpt, LayoutOpt, PresetOpt, QuietOpt, TokenizerOpt
from engram_cli.cli.output import Output, escape

SCHEMA = "engram.hash/1"
CHUNK_TOKENS = 1 << 16  # tokens hashed at once: memory is bounded by this, not by the input
TABLE_TOKENS = 4096  # tokens per printed table


class IdDtype(str, Enum):
    int64 = "int64"
    int32 = "int32"


def _parse_ids(text: str) -> list[int]:
    try:
        ids = [int(tok) for tok in text.replace(",", " ").split()]
    except ValueError:
        raise typer.BadParameter("expected integers separated by commas, e.g. 1,2,3", param_hint="--ids") from None
    if any(not 0 <= i < 2**63 for i in ids):
        raise typer.BadParameter("token ids must be between 0 and 2**63 - 1", param_hint="--ids")
    return ids


def _read_text(file: Path) -> str:
    from engram_cli.errors import BadInputError

    if not file.is_file():
        raise BadInputError(f"text file not found: {file}")
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise BadInputError(f"{file} is not UTF-8 text (byte {exc.start})") from None


def _check_ids(raw, vocab: int | None) -> None:
    from engram_cli.errors import BadInputError

    bad = raw[(raw < 0) | (raw >= vocab)] if vocab else raw[raw < 0]
    if bad.size:
        raise BadInputError(f"token id {int(bad[0])} is outside the tokenizer's {vocab} ids")


def hash_command(
    text: Annotated[Optional[str], typer.Option("--text", "-t", help="Text to tokenize and hash.")] = None,
    ids: Annotated[Optional[str], typer.Option("--ids", help="Raw token ids, e.g. 1,2,3.")] = None,
    file: Annotated[Optional[Path], typer.Option("--file", "-f", help="A UTF-8 text file to tokenize and hash.")] = None,
    layout_dir: LayoutOpt = None,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    tokenizer: TokenizerOpt = None,
    dead_token: Annotated[
        Optional[List[int]], typer.Option("--dead-token", help="Raw id treated as dead (image span); repeatable.")
    ] = None,
    seq_start: Annotated[
        Optional[List[int]], typer.Option("--seq-start", help="Position where a packed sequence starts; repeatable.")
    ] = None,
    local: Annotated[bool, typer.Option("--local", help="Show head-local ids instead of global row ids.")] = False,
    id_dtype: Annotated[IdDtype, typer.Option("--id-dtype", help="Row id type: int64, or int32 as vLLM and llama.cpp store "
                                              "them (refused when a layer's rows exceed int32).")] = IdDtype.int64,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Hash tokens: per token its compressed id and, per Engram layer, each (order, head) row id.

    Text is tokenised with the tokenizer the layout was built from (exit 3 when it cannot be found).

    Compare an engine's ids with ours; --json is the stable contract engram.hash/1 (ids shaped tokens x layers x columns).
    """
    import numpy as np

    from engram_cli.errors import UsageError
    from engram_cli.layout.chunked import hash_in_chunks
    from engram_cli.layout.resolve import DEFAULT_PRESET, TokenMapNeed, layout_tokenizer, resolve_layout

    out = Output(json_out, quiet)
    sources = [s for s in (text, ids, file) if s is not None]
    if len(sources) != 1:
        raise UsageError("pass exactly one of --text, --ids or --file")
    raw = _parse_ids(ids) if ids is not None else None
    content = _read_text(file) if file is not None else text
    resolved = resolve_layout(layout_dir, config, preset.value if preset else None, tokenizer=tokenizer,
                              default_preset=DEFAULT_PRESET, need=TokenMapNeed.need)
    layout = resolved.layout
    tok = None
    if raw is None or tokenizer is not None:
        tok = layout_tokenizer(resolved, tokenizer)
    if raw is None:
        raw = tok.encode(content or "", add_special_tokens=False).ids
    if not raw:
        raise UsageError("nothing to hash: no tokens")
    out.log(f"layout: {escape(resolved.source)}")
    raw_arr = np.asarray(raw, dtype=np.int64)
    _check_ids(raw_arr, layout.vocab_size)  # before any output: the JSON document is streamed
    from engram_cli.layout.hashing import check_id_dtype

    check_id_dtype(id_dtype.value, layout.num_embeddings)
    dead_mask = np.isin(raw_arr, np.asarray(dead_token, dtype=np.int64)) if dead_token else None
    if seq_start and max(seq_start) >= raw_arr.shape[0]:
        raise UsageError(f"--seq-start {max(seq_start)} is past the last token ({raw_arr.shape[0] - 1})",
                         hint="sequence start positions are token indices")

    def chunks(size: int = CHUNK_TOKENS):
        return hash_in_chunks(layout, raw_arr, seq_starts=seq_start, dead_mask=dead_mask, chunk=size, id_dtype=id_dtype.value)

    if json_out:
        _stream_json(layout, raw_arr, chunks, dead_token, seq_start)
        return
    for a, ids in chunks(TABLE_TOKENS):
        _render(out, layout, raw_arr, a, ids, tok, local)


def _stream_json(layout, raw, chunks, dead_token, seq_start) -> None:
    """Write the engram.hash/1 document piece by piece: memory stays one chunk of ids."""
    import json
    import sys

    w = sys.stdout.write
    head = {"schema": SCHEMA, "variant": layout.variant, "layer_ids": list(layout.layer_ids),
            "columns": [{"order": n, "head": h} for n, h in layout.columns], "layers": [i.to_dict() for i in layout.layers]}
    w(json.dumps(head)[:-1])
    w(', "tokens": ' + json.dumps(raw.tolist()))
    for key in ("compressed", "local_ids", "global_ids"):
        w(f', "{key}": [')
        for a, ids in chunks():
            part = ids.compressed if key == "compressed" else (ids.local if key == "local_ids" else ids.global_)
            w((", " if a else "") + json.dumps(part.tolist())[1:-1])
        w("]")
    if dead_token:
        w(', "dead_tokens": ' + json.dumps(sorted(set(int(d) for d in dead_token))))
    if seq_start:
        w(', "seq_starts": ' + json.dumps(sorted(set(int(s) for s in seq_start))))
    w("}\n")
    sys.stdout.flush()


def _render(out: Output, layout, raw, start: int, result, tok, local: bool) -> None:
    from rich.table import Table

    ids = result.local if local else result.global_
    kind = "head-local" if local else "global row"
    n_tok = ids.shape[0]
    span = f", tokens {start}..{start + n_tok - 1}" if start or n_tok < raw.shape[0] else ""
    for li, lay_ids in enumerate(layout.layers):
        table = Table(title=f"layer {lay_ids.label()}: {kind} ids ({layout.variant}{span})", title_justify="left")
        table.add_column("pos", justify="right")
        table.add_column("token")
        table.add_column("raw", justify="right")
        table.add_column("comp", justify="right")
        for n in range(2, layout.max_ngram_size + 1):
            table.add_column(f"{n}-gram heads 0..{layout.n_heads - 1}")
        for k in range(n_tok):
            t = start + k
            piece = tok.decode([int(raw[t])], skip_special_tokens=False) if tok is not None else ""
            cells = []
            for n in range(2, layout.max_ngram_size + 1):
                cols = slice((n - 2) * layout.n_heads, (n - 1) * layout.n_heads)
                cells.append(" ".join(str(int(v)) for v in ids[k, li, cols]))
            table.add_row(str(t), escape(repr(piece or "")), str(int(raw[t])), str(int(result.compressed[k])), *cells)
        out.print(table)


def register(app: typer.Typer) -> None:
    app.command("hash")(hash_command)
