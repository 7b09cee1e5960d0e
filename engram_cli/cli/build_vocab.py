"""`engram build-vocab`: compressed-vocabulary map and hash layout from a tokenizer."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from engram_cli.cli.options import ConfigOpt, ForceOpt, JsonOpt, OutputOpt, PresetOpt, QuietOpt
from engram_cli.cli.output import Output, escape

SCHEMA = "engram.build-vocab/1"


class TokenMapFormat(str, Enum):
    safetensors = "safetensors"
    npy = "npy"
    json = "json"


def _size(n: int) -> str:
    from rich.filesize import decimal

    return decimal(n)


def build_vocab(
    tokenizer: Annotated[
        Optional[Path],
        typer.Argument(help="tokenizer.json or a directory holding one (default: the bundled DeepSeek V4 tokenizer)."),
    ] = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    output: OutputOpt = None,
    fmt: Annotated[TokenMapFormat, typer.Option("--format", help="Token map file format.")] = TokenMapFormat.safetensors,
    force: ForceOpt = False,
    top: Annotated[int, typer.Option("--top", min=0, help="How many of the largest merge classes to show.")] = 10,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Build the compressed-vocabulary map and the Engram hash layout from a tokenizer.

    With -o writes engram_layout.json and token_map.safetensors (int32 raw -> compressed id).

    The result is validated against the config's declared sizes (exit 3 on a mismatch).
    """
    from engram_cli.fsutil import atomic_dir
    from engram_cli.layout.store import save_layout
    from engram_cli.layout.vocab_report import build_vocab as run
    from engram_cli.reports import check_output_dir

    out = Output(json_out, quiet)
    check_output_dir(output, force)
    out.log("building the compressed vocabulary and layout ...")
    result = run(tokenizer, config=config, preset=preset.value if preset else None, top=top)
    layout = result.layout
    files: list[str] = []
    if output is not None:
        with atomic_dir(output, force=force) as tmp:
            files = save_layout(layout, tmp, token_map_format=fmt.value)
    doc = _document(result, output, files)
    if json_out:
        out.emit_json(doc)
        return
    _render(out, doc)


def _document(result, output: Path | None, files: list[str]) -> dict:
    layout = result.layout
    tm = result.token_map
    return {
        "schema": SCHEMA,
        "source": result.source,
        "variant": layout.variant,
        "tokenizer": layout.tokenizer,
        "vocab_size": layout.vocab_size,
        "compressed_vocab_size": layout.compressed_vocab_size,
        "reduction_pct": round(100.0 * tm.reduction, 2) if tm is not None else 0.0,
        "merged_classes": tm.merged_class_count() if tm is not None else 0,
        "largest_classes": [
            {
                "compressed_id": c.compressed_id,
                "key": c.key,
                "size": int(tm.class_sizes()[c.compressed_id]),
                "examples": [{"id": i, "token": t, "text": x} for i, t, x in zip(c.raw_ids, c.raw_tokens, c.texts)],
            }
            for c in result.largest
        ],
        "pad_id": layout.pad_id,
        "compressed_pad_id": layout.compressed_pad_id,
        "table_dtype": layout.table_dtype,
        "layers": [
            {
                "layer_id": lid,
                "rows": layout.num_embeddings[i],
                "primes_sum": int(sum(layout.primes[i])),
                "table_bytes": layout.num_embeddings[i] * layout.bytes_per_row(),
                "multipliers": [str(m) for m in layout.multipliers[i]],
            }
            for i, lid in enumerate(layout.layer_ids)
        ],
        "validation": result.checks,
        "notes": list(getattr(result, "notes", [])),
        "output": None if output is None else {"dir": str(output), "files": files},
        "layout": layout.to_dict(),
    }


def _render(out: Output, doc: dict) -> None:
    from rich.table import Table

    summary = Table(title="Compressed vocabulary", show_header=False, title_justify="left")
    summary.add_column(style="bold")
    summary.add_column()
    tok = doc["tokenizer"] or {}
    summary.add_row("source", escape(doc["source"]))
    summary.add_row("variant", doc["variant"])
    summary.add_row("tokenizer", escape(tok.get("path", "-")) + (f"  [dim]{tok.get('fingerprint')}[/dim]" if tok else ""))
    summary.add_row("vocab", f"{doc['vocab_size']:,}")
    summary.add_row("compressed", f"{doc['compressed_vocab_size']:,}  ({doc['reduction_pct']:.2f} % fewer)")
    summary.add_row("merged classes", f"{doc['merged_classes']:,}")
    summary.add_row("pad id", f"{doc['pad_id']} -> {doc['compressed_pad_id']}")
    out.print(summary)

    if doc["largest_classes"]:
        merges = Table(title="Largest merge classes", title_justify="left")
        for col in ("compressed id", "key", "raw ids", "examples"):
            merges.add_column(col)
        for c in doc["largest_classes"]:
            ex = " ".join(repr(e["text"]) for e in c["examples"][:6])
            merges.add_row(str(c["compressed_id"]), escape(repr(c["key"])), f"{c['size']:,}", escape(ex))
        out.print(merges)

    layers = Table(title=f"Engram tables ({doc['table_dtype']})", title_justify="left")
    for col in ("layer", "rows", "size", "multipliers"):
        layers.add_column(col, justify="right" if col in ("rows", "size") else "left")
    for layer in doc["layers"]:
        layers.add_row(
            str(layer["layer_id"]), f"{layer['rows']:,}", _size(layer["table_bytes"]), ", ".join(layer["multipliers"])
        )
    out.print(layers)

    if doc["validation"]:
        checks = Table(title="Validation against the config", title_justify="left")
        for col in ("check", "config", "built", ""):
            checks.add_column(col)
        for c in doc["validation"]:
            checks.add_row(c["check"], f"{c['expected']:,}", f"{c['actual']:,}", "[green]ok[/green]" if c["ok"] else "[red]MISMATCH[/red]")
        out.print(checks)
    for note in doc["notes"]:
        out.print(f"[yellow]note[/yellow]: {escape(note)}")
    if doc["output"]:
        out.print(f"wrote {', '.join(doc['output']['files'])} to {escape(doc['output']['dir'])}")


def register(app: typer.Typer) -> None:
    app.command("build-vocab")(build_vocab)
