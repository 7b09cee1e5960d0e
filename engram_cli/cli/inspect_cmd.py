"""``engram inspect PATH``: format, tables, layout, consistency and engine compatibility (Typer layer)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from engram_cli.cli.options import JsonOpt, QuietOpt
from engram_cli.cli.output import Output, escape

SCHEMA = "engram.inspect/1"


def inspect_command(
    path: Annotated[Path, typer.Argument(help="HF checkpoint, engram shard output, GGUF file or layout folder.")],
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Show what an Engram file or folder holds, whether its layout is consistent, and which
    engines load it as is (with the command that fixes each no). Reads headers only."""
    from engram_cli.inspect.api import inspect_path

    out = Output(json_, quiet)
    with out.progress("inspect") as cb:
        rep = inspect_path(path, progress=cb)
    if json_:
        out.emit_json(inspect_doc(rep))
        return
    render(out, rep)


def _layout_doc(lay: Any) -> dict | None:
    if lay is None:
        return None
    return {
        "variant": lay.variant, "layer_numbering": lay.numbering, "layers": [i.to_dict() for i in lay.layers],
        "max_ngram_size": lay.max_ngram_size, "n_heads": lay.n_heads, "head_dim": lay.head_dim,
        "num_embeddings": list(lay.num_embeddings), "primes_sum": [int(sum(p)) for p in lay.primes],
        "multipliers": [[str(m) for m in ms] for ms in lay.multipliers], "vocab_size": lay.vocab_size,
        "compressed_vocab_size": lay.compressed_vocab_size, "pad_id": lay.pad_id, "compressed_pad_id": lay.compressed_pad_id,
        "token_map": lay.token_map is not None, "seed": lay.seed,
    }


def inspect_doc(rep: Any) -> dict:
    f = rep.found
    return {
        "schema": SCHEMA, "path": f.path, "format": f.format, "detail": f.detail, "family": f.family,
        "dialect": f.gguf.dialect if f.gguf is not None else None,
        "tables": [t.to_dict() for t in f.tables],
        "layout": _layout_doc(f.layout), "layout_source": f.layout_source,
        "consistent": rep.consistent, "checks": [c.to_dict() for c in rep.checks],
        "engines": [c.to_dict() for c in rep.compat], "notes": list(f.notes),
    }


def _fmt(n: int) -> str:
    from engram_cli.tables.units import format_bytes

    return format_bytes(n)


def render(out: Output, rep: Any) -> None:
    from rich.table import Table

    f = rep.found
    out.print(f"[bold]{escape(f.path)}[/bold]: {escape(f.detail)}" + (f" ({escape(f.family)})" if f.family else ""))
    if f.tables:
        t = Table(title="Engram tables", title_justify="left")
        for c in ("layer", "ids (config/seed)", "rows", "cols", "encoding", "scales", "bytes", "storage"):
            t.add_column(c, justify="right" if c in ("layer", "rows", "cols", "bytes") else "left")
        for r in f.tables:
            ids = f"{r.config_id}/{r.seed_id}" if r.config_id is not None else "?"
            t.add_row(str(r.layer), ids, f"{r.rows:,}", str(r.columns), escape(r.encoding), escape(r.scale), _fmt(r.bytes),
                      escape(r.storage))
        out.print(t)
    lay = f.layout
    if lay is not None:
        ids = ", ".join(i.label() for i in lay.layers)
        out.print(f"layout ({escape(f.layout_source)}): {lay.variant}, layers {escape(ids)} ({lay.numbering} numbering), "
                  f"{lay.max_ngram_size - 1} orders x {lay.n_heads} heads, dim {lay.head_dim}, compressed vocab "
                  f"{lay.compressed_vocab_size:,}, pad {lay.compressed_pad_id}, token map "
                  f"{'yes' if lay.token_map is not None else 'no'}")
    bad = [c for c in rep.checks if c.ok is not True]
    n_ok = len(rep.checks) - len(bad)
    out.print(f"consistency: {n_ok} of {len(rep.checks)} checks ok" + (" (--json lists them all)" if rep.checks else ""))
    if bad:
        checks = Table(title="checks not passed", title_justify="left")
        for c in ("check", "expected", "actual", "note"):
            checks.add_column(c)
        for c in bad:
            mark = "[red]NO[/red] " if c.ok is False else "[yellow]?[/yellow] "
            checks.add_row(mark + escape(c.name), escape(_short(c.expected)), escape(_short(c.actual)), escape(c.note))
        out.print(checks)
    eng = Table(title="engines: loads as is?", title_justify="left")
    for c in ("engine", "loads", "why", "fix"):
        eng.add_column(c)
    for c in rep.compat:
        mark = {"yes": "[green]yes[/green]", "no": "[red]no[/red]"}.get(c.loads, c.loads)
        eng.add_row(escape(c.engine), mark, escape(c.reason), escape(c.fix or ""))
    out.print(eng)
    for n in f.notes:
        out.log(escape(n))


def _short(v: Any) -> str:
    s = str(v)
    return s if len(s) <= 60 else s[:57] + "..."


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect_command)
