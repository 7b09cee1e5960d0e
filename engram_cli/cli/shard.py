"""``engram shard``: stream, convert and shard Engram tables (Typer layer only).

``convert`` and ``plan`` take the same plan options, declared once (:func:`_plan_options`)
and merged into both signatures; every choice is an enum (help lists it, shells complete it).
The options become one :class:`~engram_cli.tables.options.ShardOptions`, built by keyword and
validated in the domain; rendering lives in :mod:`engram_cli.cli.shard_view`.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Optional

import typer

from engram_cli.cli.options import (
    ConfigOpt,
    ForceOpt,
    JsonOpt,
    LayoutOpt,
    OutAliasOpt,
    OutputOpt,
    PresetOpt,
    QuietOpt,
    TableDtype,
    TableDtypeAliasOpt,
    TableDtypeOpt,
    pick,
)
from engram_cli.cli.output import Output
from engram_cli.tables.checksums import Checksum
from engram_cli.tables.options import Family, GgufDialect, GgufType, HeadFormat, Packing, Policy, SourceFormat, Target, VerifyMode

DEFAULT_PRESET = "deepseek-v4.1-flash"
_SRC, _TGT, _POL = "Source", "Target", "Policy"

shard_app = typer.Typer(
    name="shard",
    help="Stream, convert and shard Engram tables between real formats and engine layouts.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

SourceArg = Annotated[Path, typer.Argument(help="Source: HF checkpoint dir, an engram shard output dir, or a .gguf file.")]
ToOpt = Annotated[Target, typer.Option("--to", help="Output format.", rich_help_panel=_TGT)]
FromOpt = Annotated[SourceFormat, typer.Option("--from", help="Source format (auto: detect).", rich_help_panel=_SRC)]
FamilyOpt = Annotated[Optional[Family], typer.Option("--family", help="Table key names (default: detect).", rich_help_panel=_SRC)]
KeyOpt = Annotated[Optional[str], typer.Option("--key", help="Table key template with {layer} (MaxText/other), e.g. "
                                               "'decoder.layers_{layer}.engram.embedding'.", rich_help_panel=_SRC)]
ScaleKeyOpt = Annotated[Optional[str], typer.Option("--scale-key", help="Scale key template for --key.", rich_help_panel=_SRC)]
MaxShardOpt = Annotated[str, typer.Option("--max-shard-size", help="hf: largest shard, decimal units (5GB = 5e9 bytes).",
                                          rich_help_panel=_TGT)]
RanksOpt = Annotated[Optional[int], typer.Option("--ranks", "-P", help="Number of ranks (TP size).", rich_help_panel=_POL)]
PolicyOpt = Annotated[Optional[Policy], typer.Option("--policy", help="Which rows each rank holds.", rich_help_panel=_POL)]
EdpOpt = Annotated[int, typer.Option("--edp", help="vllm-head: engram data-parallel size (shard = tp*edp + dp).",
                                     rich_help_panel=_POL)]
RankOpt = Annotated[Optional[int], typer.Option("--rank", help="local: the rank whose rows are copied.", rich_help_panel=_POL)]
HeadFmtOpt = Annotated[HeadFormat, typer.Option("--head-format", help="heads: safetensors, or rows (Mooncake "
                                                "engram:l{L}:h{h} objects as files).", rich_help_panel=_TGT)]
PackingOpt = Annotated[Packing, typer.Option("--packing", help="packed: rows (weight then scale bytes per row) or split "
                                             "(weights then scales).", rich_help_panel=_TGT)]
SplitOpt = Annotated[Optional[int], typer.Option("--split-parts", help="hf, Qwen4-Exp: re-partition ngram_embedding.shard_i "
                                                 "into this many pieces.", rich_help_panel=_TGT)]
EngramOnlyOpt = Annotated[bool, typer.Option("--engram-only", help="hf: write only the Engram tables.", rich_help_panel=_TGT)]
GgufTypeOpt = Annotated[GgufType, typer.Option("--gguf-type", help="gguf: raw (I8 264-byte rows) or q8_0.", rich_help_panel=_TGT)]
GgufNameOpt = Annotated[str, typer.Option("--gguf-name", help="gguf: output file name (inside --output).", rich_help_panel=_TGT)]
GgufDialectOpt = Annotated[GgufDialect, typer.Option("--gguf-dialect", help="gguf: whose keys and tensor names: llamacpp "
                                                    "(#28696, ik_llama.cpp), ds4 (antirez/ds4, strix), both.", rich_help_panel=_TGT)]
ProjOpt = Annotated[bool, typer.Option("--with-projections", help="gguf: also write engram_q/k/wkv; hf: write an fp8 "
                                       "engram.wkv (32x32 block scales) dequantised to BF16.", rich_help_panel=_TGT)]


def _plan_options(
    source: SourceArg,
    to: ToOpt = Target.hf,
    from_: FromOpt = SourceFormat.auto,
    family: FamilyOpt = None,
    key: KeyOpt = None,
    scale_key: ScaleKeyOpt = None,
    layout: LayoutOpt = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    table_dtype: TableDtypeOpt = TableDtype.keep,
    dtype: TableDtypeAliasOpt = None,
    max_shard_size: MaxShardOpt = "5GB",
    ranks: RanksOpt = None,
    policy: PolicyOpt = None,
    edp: EdpOpt = 1,
    rank: RankOpt = None,
    head_format: HeadFmtOpt = HeadFormat.safetensors,
    packing: PackingOpt = Packing.rows,
    split_parts: SplitOpt = None,
    engram_only: EngramOnlyOpt = False,
    gguf_type: GgufTypeOpt = GgufType.raw,
    gguf_name: GgufNameOpt = "engram.gguf",
    gguf_dialect: GgufDialectOpt = GgufDialect.llamacpp,
    with_projections: ProjOpt = False,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """The options ``convert`` and ``plan`` share (declared once; never called)."""


_PLAN_PARAMS = inspect.signature(_plan_options, eval_str=True).parameters
_NOT_OPTIONS = ("json_", "quiet", "dtype")


def _with_plan_options(func):
    """Give ``func`` (taking ``**plan``) the plan options as its own Typer parameters."""
    own = [p for p in inspect.signature(func, eval_str=True).parameters.values() if p.kind is not p.VAR_KEYWORD]
    params = list(_PLAN_PARAMS.values())
    func.__signature__ = inspect.Signature(params[:1] + own + params[1:])
    func.__annotations__ = {p.name: p.annotation for p in params + own}
    return func


def _options(plan: dict, **execution):
    """One :class:`ShardOptions` by keyword from the parsed plan options (and execution settings)."""
    from engram_cli.tables.options import ShardOptions

    kw = {k: v for k, v in plan.items() if k not in _NOT_OPTIONS}
    kw["table_dtype"] = pick(plan["table_dtype"], plan["dtype"], TableDtype.keep, "--table-dtype/--dtype")
    return ShardOptions(**kw, **execution)


@shard_app.command("convert")
@_with_plan_options
def convert(
    output: OutputOpt = None,
    out: OutAliasOpt = None,
    block_size: Annotated[str, typer.Option("--block-size", help="Rows are streamed in blocks of this many bytes.")] = "64MB",
    verify: Annotated[VerifyMode, typer.Option("--verify", help="After writing: quick (sizes, headers), full (checksums "
                                               "and rows against the source) or none.")] = VerifyMode.quick,
    force: ForceOpt = False,
    checksum: Annotated[Checksum, typer.Option("--checksum", help="Per-file checksum recorded in the manifest: xxh3 "
                                               "(xxh3-128) or sha256.")] = Checksum.xxh3,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and write nothing.")] = False,
    **plan,
) -> None:
    """Convert or shard the Engram tables of SOURCE into --output (plan, then write, manifest last)."""
    from engram_cli.cli.shard_view import convert_doc, render_convert, show_plan, warn_convert
    from engram_cli.tables.api import convert as run_convert
    from engram_cli.tables.api import prepare

    o = Output(plan["json_"], plan["quiet"])
    opts = _options(plan, output=pick(output, out, None, "--output/--out"), force=force, block_bytes=block_size,
                    verify=verify, checksum=checksum)
    if opts.output is None and not dry_run:
        from engram_cli.errors import UsageError

        raise UsageError("--output is required (or pass --dry-run)")
    prep = prepare(opts)
    if dry_run:
        show_plan(o, prep, plan["json_"])
        return
    with o.progress(f"shard → {opts.to.value}", unit="bytes") as cb:
        res = run_convert(prep, progress=cb)
    warn_convert(o, res)
    o.emit_json(convert_doc(res)) if plan["json_"] else render_convert(o, res)


@shard_app.command("plan")
@_with_plan_options
def plan_cmd(**plan) -> None:
    """Print the row/head ranges and files a conversion would write; writes nothing."""
    from engram_cli.cli.shard_view import show_plan
    from engram_cli.tables.api import prepare

    show_plan(Output(plan["json_"], plan["quiet"]), prepare(_options(plan)), plan["json_"])


@shard_app.command("ranges")
def ranges(
    policy: Annotated[Policy, typer.Option("--policy", help="Which rows each rank holds.")],
    ranks: Annotated[int, typer.Option("--ranks", "-P", min=1, help="Number of ranks (TP size).")],
    preset: PresetOpt = None,
    layout: LayoutOpt = None,
    config: ConfigOpt = None,
    edp: EdpOpt = 1,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Row ranges per rank from a layout alone (no checkpoint needed; default preset deepseek-v4.1-flash)."""
    from engram_cli.cli.shard_view import ranges_doc, render_ranges
    from engram_cli.layout.resolve import TokenMapNeed, resolve_layout
    from engram_cli.tables.policies import layout_ranges

    out = Output(json_, quiet)
    resolved = resolve_layout(layout, config, preset.value if preset else None, default_preset=DEFAULT_PRESET,
                              need=TokenMapNeed.skip)
    rs = layout_ranges(resolved.layout, policy.value, ranks, edp, resolved.source)
    out.emit_json(ranges_doc(rs)) if json_ else render_ranges(out, rs)


@shard_app.command("verify")
def verify_cmd(
    out_dir: Annotated[Path, typer.Argument(help="An output directory of engram shard (with engram-shards.json).")],
    source: Annotated[Optional[Path], typer.Option("--source", help="Also compare every row with this source.")] = None,
    from_: FromOpt = SourceFormat.auto,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Re-check every file the conversion wrote (and, given --source, every row); exit 4 on any mismatch."""
    from engram_cli.cli.shard_view import render_verify, verify_doc
    from engram_cli.errors import VerificationError
    from engram_cli.tables.source import open_source
    from engram_cli.tables.verify import verify_output

    out = Output(json_, quiet)
    src = open_source(source, from_.value) if source else None
    with out.progress("verify", unit="bytes") as cb:
        rep = verify_output(out_dir, source=src, progress=cb)
    if json_:
        out.emit_json(verify_doc(rep))
        if not rep.ok:
            raise typer.Exit(4)
        return
    if not rep.ok:
        raise VerificationError(f"verification failed: {rep.summary()}", hint="re-run the conversion with --force")
    render_verify(out, rep)


@shard_app.command("gguf-fix")
def gguf_fix_cmd(
    file: Annotated[Path, typer.Argument(help="An existing GGUF file whose Engram hash keys are missing or wrong.")],
    layout: LayoutOpt = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    output: OutputOpt = None,
    out: OutAliasOpt = None,
    in_place: Annotated[bool, typer.Option("--in-place", help="Replace FILE (atomically) instead of writing --output.")] = False,
    force: ForceOpt = False,
    dialect: Annotated[Optional[GgufDialect], typer.Option("--dialect", help="Write the keys and names of this dialect "
                                                           "(default: the file's own, else llamacpp).")] = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write the Engram hash keys into a GGUF, or convert its metadata to another dialect
    (KV-only rewrite: table bytes copied through; hash constants from the file or --layout)."""
    from engram_cli.cli.shard_view import gguf_fix_doc, render_gguf_fix
    from engram_cli.errors import BadInputError, UsageError
    from engram_cli.layout.resolve import TokenMapNeed, resolve_layout
    from engram_cli.tables.gguf_fix import gguf_fix

    o = Output(json_, quiet)
    target = pick(output, out, None, "--output/--out")
    if not file.is_file():
        raise BadInputError(f"{file} does not exist")
    if (target is None) == (not in_place):
        raise UsageError("pass either --output FILE or --in-place")
    target = file if in_place else target
    if not in_place and target.resolve() == file.resolve():
        raise UsageError("--output is the input file; use --in-place")
    if not in_place and target.exists() and not force:
        raise UsageError(f"{target} already exists", hint="pass --force to replace it")
    lay = None
    if layout or config or preset:
        lay = resolve_layout(layout, config, preset.value if preset else None, need=TokenMapNeed.need).layout
    with o.progress("gguf-fix", unit="bytes") as cb:
        res = gguf_fix(file, lay, target, dialect=dialect.value if dialect else None, progress=cb)
    o.emit_json(gguf_fix_doc(res)) if json_ else render_gguf_fix(o, res)


def register(app: typer.Typer) -> None:
    app.add_typer(shard_app, name="shard")
