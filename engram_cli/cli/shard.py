"""``engram shard``: stream, convert and shard Engram tables (Typer layer only)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from engram_cli.cli.output import JsonOption, Output, QuietOption, escape, handle_errors

SCHEMA = "engram.shard/1"

shard_app = typer.Typer(
    name="shard",
    help="Stream, convert and shard Engram tables between real formats and engine layouts.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

SourceArg = Annotated[Path, typer.Argument(help="Source: HF checkpoint dir, an engram shard output dir, or a .gguf file.")]
ToOpt = Annotated[str, typer.Option("--to", help="Target: hf, ranks, heads, packed, gguf or local.", rich_help_panel="Target")]
FromOpt = Annotated[str, typer.Option("--from", help="Source format: auto, hf, engram or gguf.", rich_help_panel="Source")]
FamilyOpt = Annotated[Optional[str], typer.Option("--family", help="Name family: deepseek-v4.1, deepseek-demo, qwen4-exp (default: detect).", rich_help_panel="Source")]
KeyOpt = Annotated[Optional[str], typer.Option("--key", help="Table key template with {layer} (MaxText/other), e.g. 'decoder.layers_{layer}.engram.embedding'.", rich_help_panel="Source")]
ScaleKeyOpt = Annotated[Optional[str], typer.Option("--scale-key", help="Scale key template for --key.", rich_help_panel="Source")]
LayoutOpt = Annotated[Optional[str], typer.Option("--layout", help="Layout dir (engram_layout.json) for head sizes and GGUF keys.", rich_help_panel="Layout")]
ConfigOpt = Annotated[Optional[str], typer.Option("--config", help="Model config.json to derive the layout from.", rich_help_panel="Layout")]
PresetOpt = Annotated[Optional[str], typer.Option("--preset", help="Layout preset, e.g. deepseek-v4.1-flash.", rich_help_panel="Layout")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="keep, bf16, fp32, fp8-e4m3 (e8m0 row-group scales) or int8 (group-32 fp32 scales).", rich_help_panel="Target")]
MaxShardOpt = Annotated[str, typer.Option("--max-shard-size", help="hf: largest shard in bytes, decimal units (5GB = 5e9).", rich_help_panel="Target")]
RanksOpt = Annotated[Optional[int], typer.Option("--ranks", "-P", help="Number of ranks (TP size).", rich_help_panel="Policy")]
PolicyOpt = Annotated[Optional[str], typer.Option("--policy", help="vllm-head, sglang-floor, ref-ceil or megatron-ep.", rich_help_panel="Policy")]
EdpOpt = Annotated[int, typer.Option("--edp", help="vllm-head: engram data-parallel size (shard = tp*edp + dp).", rich_help_panel="Policy")]
RankOpt = Annotated[Optional[int], typer.Option("--rank", help="local: the rank whose rows are copied.", rich_help_panel="Policy")]
HeadFmtOpt = Annotated[str, typer.Option("--head-format", help="heads: safetensors, or rows (Mooncake engram:l{L}:h{h} objects as files).", rich_help_panel="Target")]
PackingOpt = Annotated[str, typer.Option("--packing", help="packed: rows (256 e4m3 + 8 e8m0 bytes per row) or split (weights then scales).", rich_help_panel="Target")]
SplitOpt = Annotated[Optional[int], typer.Option("--split-parts", help="hf, Qwen4-Exp: re-partition ngram_embedding.shard_i into this many pieces.", rich_help_panel="Target")]
EngramOnlyOpt = Annotated[bool, typer.Option("--engram-only", help="hf: write only the Engram tables.", rich_help_panel="Target")]
GgufTypeOpt = Annotated[str, typer.Option("--gguf-type", help="gguf: raw (I8 264-byte rows) or q8_0.", rich_help_panel="Target")]
GgufNameOpt = Annotated[str, typer.Option("--gguf-name", help="gguf: output file name.", rich_help_panel="Target")]
ProjOpt = Annotated[bool, typer.Option("--with-projections", help="gguf: also write engram_q/k/wkv; hf: write an fp8 engram.wkv (32x32 block scales) dequantised to BF16.", rich_help_panel="Target")]
ChecksumOpt = Annotated[str, typer.Option("--checksum", help="Per-file checksum recorded in the manifest: xxh3 (xxh3-128) or sha256.", rich_help_panel="Target")]


def _options(source, to, from_, family, key, scale_key, layout, config, preset, dtype, max_shard_size, ranks, policy,
             edp, rank, head_format, packing, split_parts, engram_only, gguf_type, gguf_name, with_projections):
    from engram_cli.tables.api import ShardOptions

    return ShardOptions(str(source), to, from_, family, key, scale_key, layout, config, preset, dtype, max_shard_size,
                        ranks, policy, edp, rank, head_format, packing, split_parts, engram_only, gguf_type, gguf_name,
                        with_projections)


def _fmt(n: float) -> str:
    from engram_cli.tables.units import format_bytes

    return format_bytes(n)


def _render_ranges(out: Output, plan) -> None:
    from rich.table import Table

    rt = Table(title=f"row ranges: {plan.policy}, P={plan.world}" + (f", EDP={plan.edp}" if plan.edp > 1 else ""))
    for c in ("layer", "rank", "rows [start, stop)", "n rows", "heads", "pad"):
        rt.add_column(c, justify="right" if c != "rows [start, stop)" else "left")
    for layer, rr in plan.ranges:
        for r in rr:
            rows = f"{r.start}–{r.stop}" if r.contiguous else f"{len(r.pieces)} pieces ({r.pieces[0].start}–{r.pieces[-1].stop})"
            heads = f"{r.heads[0]}–{r.heads[1]}" if r.heads else ("per head" if r.pieces and r.pieces[0].head is not None else "")
            rank = f"{r.rank}" + (f" (tp {r.tp_rank}, edp {r.edp_rank})" if r.tp_rank is not None else "")
            rt.add_row(str(layer), rank, rows, f"{r.rows:,}", heads, str(r.pad_rows or ""))
    out.print(rt)


def _show_plan(out: Output, plan, json_: bool) -> None:
    """The --dry-run / `plan` result: one JSON document or the rich tables."""
    from engram_cli.tables.api import plan_doc

    if json_:
        out.emit_json({"schema": SCHEMA, "dry_run": True, "plan": plan_doc(plan)})
    else:
        _render_plan(out, plan)


def _render_plan(out: Output, plan) -> None:
    from rich.table import Table

    if plan.ranges:
        _render_ranges(out, plan)
    ft = Table(title=f"plan: {plan.target} from {escape(plan.source)} ({plan.source_format}), dtype {plan.dtype}")
    ft.add_column("file")
    ft.add_column("format")
    ft.add_column("tensors", justify="right")
    ft.add_column("bytes", justify="right")
    shown = plan.files if len(plan.files) <= 40 else plan.files[:40]
    for f in shown:
        ft.add_row(escape(f.name), f.format, str(len(f.tensors)), _fmt(f.size))
    if len(plan.files) > 40:
        ft.add_row(f"… {len(plan.files) - 40} more", "", "", "")
    out.print(ft)
    out.print(f"{len(plan.files)} files, {_fmt(plan.total_bytes)} total; tables {_fmt(plan.table_bytes)}")


@shard_app.command("convert")
@handle_errors
def convert(
    source: SourceArg,
    out_dir: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output directory.")] = None,
    to: ToOpt = "hf",
    from_: FromOpt = "auto",
    family: FamilyOpt = None,
    key: KeyOpt = None,
    scale_key: ScaleKeyOpt = None,
    layout: LayoutOpt = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    dtype: DtypeOpt = "keep",
    max_shard_size: MaxShardOpt = "5GB",
    ranks: RanksOpt = None,
    policy: PolicyOpt = None,
    edp: EdpOpt = 1,
    rank: RankOpt = None,
    head_format: HeadFmtOpt = "safetensors",
    packing: PackingOpt = "rows",
    split_parts: SplitOpt = None,
    engram_only: EngramOnlyOpt = False,
    gguf_type: GgufTypeOpt = "raw",
    gguf_name: GgufNameOpt = "engram.gguf",
    with_projections: ProjOpt = False,
    block_size: Annotated[str, typer.Option("--block-size", help="Rows are streamed in blocks of this many bytes.")] = "64MB",
    verify: Annotated[str, typer.Option("--verify", help="quick (sizes, headers), full (checksums and rows against the source) or none.")] = "quick",
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output (stale files removed).")] = False,
    checksum: ChecksumOpt = "xxh3",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and write nothing.")] = False,
    json_: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Convert or shard the Engram tables of SOURCE into --out (plan, then write, manifest last)."""
    from engram_cli.errors import UsageError
    from engram_cli.tables.api import prepare
    from engram_cli.tables.manifest import checksum_algorithm
    from engram_cli.tables.units import parse_size

    out = Output(json_, quiet)
    if verify not in ("quick", "full", "none"):
        raise UsageError(f"unknown --verify {verify!r}", hint="quick, full or none")
    algo = checksum_algorithm(checksum) if checksum in ("xxh3", "sha256") else None
    if algo is None:
        raise UsageError(f"unknown --checksum {checksum!r}", hint="xxh3 (xxh3-128, the default) or sha256")
    opts = _options(source, to, from_, family, key, scale_key, layout, config, preset, dtype, max_shard_size, ranks,
                    policy, edp, rank, head_format, packing, split_parts, engram_only, gguf_type, gguf_name,
                    with_projections)
    prep = prepare(opts)
    if dry_run:
        _show_plan(out, prep.plan, json_)
        return
    if out_dir is None:
        raise UsageError("--out is required (or pass --dry-run)")
    block = parse_size(block_size)
    with out.progress(f"shard → {to}", unit="bytes") as cb:
        if to == "local":
            from engram_cli.tables.local import execute_local

            res = execute_local(prep.plan, prep.source, out_dir, force=force, block_bytes=block, progress=cb,
                                checksum=algo)
        else:
            from engram_cli.tables.execute import execute

            res = execute(prep.plan, prep.source, out_dir, force=force, block_bytes=block, progress=cb,
                          verify=verify, layout=prep.layout if to in ("hf", "ranks", "heads", "packed") else None,
                          checksum=algo)
    doc = {"schema": SCHEMA, "target": to, "out_dir": str(res.out_dir), "manifest": str(res.manifest_path),
           "checksum": algo,
           "files": [{"name": f.name, "bytes": f.bytes, **f.checksum_doc()} for f in res.files],
           "bytes_written": res.bytes_written, "seconds": round(res.seconds, 3),
           "throughput_bytes_per_s": round(res.throughput), "verified": res.verified, "removed_stale": res.removed}
    if json_:
        out.emit_json(doc)
        return
    from rich.table import Table

    t = Table(title=f"wrote {len(res.files)} files to {escape(res.out_dir)}")
    t.add_column("file")
    t.add_column("bytes", justify="right")
    t.add_column(algo)
    for f in res.files[:40]:
        t.add_row(escape(f.name), _fmt(f.bytes), f.digest)
    if len(res.files) > 40:
        t.add_row(f"… {len(res.files) - 40} more", "", "")
    out.print(t)
    out.print(f"{_fmt(res.bytes_written)} in {res.seconds:.2f} s ({_fmt(res.throughput)}/s); verify: {res.verified}; "
              f"manifest {escape(res.manifest_path.name)}")


@shard_app.command("plan")
@handle_errors
def plan(
    source: SourceArg,
    to: ToOpt = "ranks",
    from_: FromOpt = "auto",
    family: FamilyOpt = None,
    key: KeyOpt = None,
    scale_key: ScaleKeyOpt = None,
    layout: LayoutOpt = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    dtype: DtypeOpt = "keep",
    max_shard_size: MaxShardOpt = "5GB",
    ranks: RanksOpt = None,
    policy: PolicyOpt = None,
    edp: EdpOpt = 1,
    rank: RankOpt = None,
    head_format: HeadFmtOpt = "safetensors",
    packing: PackingOpt = "rows",
    split_parts: SplitOpt = None,
    engram_only: EngramOnlyOpt = False,
    gguf_type: GgufTypeOpt = "raw",
    gguf_name: GgufNameOpt = "engram.gguf",
    with_projections: ProjOpt = False,
    json_: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Print the row/head ranges and files a conversion would write; writes nothing."""
    from engram_cli.tables.api import prepare

    out = Output(json_, quiet)
    opts = _options(source, to, from_, family, key, scale_key, layout, config, preset, dtype, max_shard_size, ranks,
                    policy, edp, rank, head_format, packing, split_parts, engram_only, gguf_type, gguf_name,
                    with_projections)
    _show_plan(out, prepare(opts).plan, json_)


@shard_app.command("ranges")
@handle_errors
def ranges(
    policy: Annotated[str, typer.Option("--policy", help="vllm-head, sglang-floor, ref-ceil or megatron-ep.")],
    ranks: Annotated[int, typer.Option("--ranks", "-P", help="Number of ranks.")],
    preset: PresetOpt = None,
    layout: LayoutOpt = None,
    config: ConfigOpt = None,
    edp: EdpOpt = 1,
    json_: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Row ranges per rank from a layout alone (no checkpoint needed)."""
    from engram_cli.errors import UsageError
    from engram_cli.tables.geometry import load_layout_option
    from engram_cli.tables.model import Geometry
    from engram_cli.tables.plan import ShardPlan
    from engram_cli.tables.policies import ranks_for

    out = Output(json_, quiet)
    lay = load_layout_option(layout, config, preset, None)
    if lay is None:
        raise UsageError("pass --preset, --layout or --config")
    rr = []
    for i, lid in enumerate(lay.layer_ids):
        g = Geometry(lid, tuple(int(p) for p in lay.primes[i]), int(lay.num_embeddings[i]))
        rr.append((lid, tuple(ranks_for(policy, g, ranks, edp=edp))))
    if json_:
        out.emit_json({"schema": SCHEMA, "policy": policy, "world": ranks, "edp": edp,
                       "ranges": [{"layer": l, "ranks": [r.to_dict() for r in x]} for l, x in rr]})
        return
    p = ShardPlan("ranges", preset or layout or config or "", "layout", (), (), (), policy=policy, world=ranks, edp=edp,
                  ranges=tuple(rr))
    _render_ranges(out, p)


@shard_app.command("verify")
@handle_errors
def verify_cmd(
    out_dir: Annotated[Path, typer.Argument(help="An output directory of engram shard (with engram-shards.json).")],
    source: Annotated[Optional[Path], typer.Option("--source", help="Also compare every row with this source.")] = None,
    from_: FromOpt = "auto",
    json_: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Re-check checksums (and, given --source, row equality); exit 4 on any mismatch."""
    from engram_cli.tables.manifest import load_manifest
    from engram_cli.tables.source import open_source
    from engram_cli.tables.verify import verify_files

    out = Output(json_, quiet)
    man = load_manifest(out_dir)
    src = open_source(source, from_) if source else None
    with out.progress("verify", unit="bytes") as cb:
        rep = verify_files(out_dir, man, source=src, progress=cb, raise_on_error=not json_)
    if json_:
        out.emit_json({"schema": SCHEMA, "verify": rep.to_dict()})
        if not rep.ok:
            raise typer.Exit(4)
        return
    out.print(f"[green]ok[/green]: {rep.files} files, {_fmt(rep.bytes)} checked"
              + (f", {rep.rows_checked:,} rows equal to the source" if src else ""))


@shard_app.command("gguf-fix")
@handle_errors
def gguf_fix_cmd(
    file: Annotated[Path, typer.Argument(help="An existing GGUF file lacking the deepseek41.engram.* hash keys.")],
    layout: Annotated[Optional[str], typer.Option("--layout", help="Layout dir (engram_layout.json + token_map).")] = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    out_file: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the fixed file here.")] = None,
    in_place: Annotated[bool, typer.Option("--in-place", help="Replace FILE (atomically) instead of writing --out.")] = False,
    json_: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Add the missing Engram hash keys to a GGUF (KV-only rewrite, tensors copied through)."""
    from engram_cli.errors import BadInputError, UsageError
    from engram_cli.tables.geometry import load_layout_option
    from engram_cli.tables.gguf_io import gguf_fix

    out = Output(json_, quiet)
    if not file.is_file():
        raise BadInputError(f"{file} does not exist")
    if (out_file is None) == (not in_place):
        raise UsageError("pass either --out FILE or --in-place")
    lay = load_layout_option(layout, config, preset, None)
    if lay is None:
        raise UsageError("gguf-fix needs --layout, --config or --preset")
    target = file if in_place else out_file
    if not in_place and target.resolve() == file.resolve():
        raise UsageError("--out is the input file; use --in-place")
    with out.progress("gguf-fix", unit="bytes") as cb:
        res = gguf_fix(file, lay, target, progress=cb)
    if json_:
        out.emit_json({"schema": SCHEMA, "gguf_fix": res})
    else:
        out.print(f"wrote {escape(res['file'])}: added {', '.join(res['added_keys']) or 'no keys'}; "
                  f"{res['tensors']} tensors copied ({_fmt(res['bytes'])})")


def register(app: typer.Typer) -> None:
    app.add_typer(shard_app, name="shard")
