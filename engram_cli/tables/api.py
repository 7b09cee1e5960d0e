"""One entry point for the CLI: :class:`ShardOptions` -> (source, layout, plan) -> result."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from engram_cli.progress import ProgressCallback
from engram_cli.tables import planners
from engram_cli.tables.geometry import resolve
from engram_cli.tables.options import ShardOptions, Target
from engram_cli.tables.plan import ShardPlan, TensorBytes, TileDequant
from engram_cli.tables.source import Source, open_source

LAYOUT_TARGETS = (Target.hf, Target.ranks, Target.heads, Target.packed)  # targets that save the layout beside them


@dataclass(frozen=True)
class Prepared:
    options: ShardOptions
    source: Source
    layout: Any | None  # EngramLayout
    layout_source: str  # where the layout came from ("" when none)
    plan: ShardPlan


def _layout(o: ShardOptions, src: Source):
    from engram_cli.layout.resolve import TokenMapNeed, resolve_layout

    need = TokenMapNeed.need if o.to is Target.gguf else TokenMapNeed.want
    near = src.path if src.path.is_dir() else None
    return resolve_layout(o.layout, o.config, o.preset, near=near, need=need)


def prepare(o: ShardOptions) -> Prepared:
    """Open the source, resolve the layout and build the plan (pure: writes nothing)."""
    src = open_source(o.source, o.from_.value, family=o.family.value if o.family else None, key=o.key, scale_key=o.scale_key)
    resolved = _layout(o, src)
    layout = resolved.layout if resolved.layout is not None else src.gguf_layout  # else a GGUF's own hash constants
    geos = resolve(src.tables, src.geometries, layout)
    dtype, policy = o.table_dtype.value, o.policy.value if o.policy else None
    if o.to is Target.hf:
        plan = planners.plan_hf(src, geos, dtype=dtype, max_shard_size=o.max_shard_size, engram_only=o.engram_only,
                                split_parts=o.split_parts, with_projections=o.with_projections)
    elif o.to is Target.ranks:
        plan = planners.plan_ranks(src, geos, policy=policy, world=o.ranks, edp=o.edp, dtype=dtype)
    elif o.to is Target.heads:
        plan = planners.plan_heads(src, geos, dtype=dtype, head_format=o.head_format.value)
    elif o.to is Target.packed:
        plan = planners.plan_packed(src, geos, packing=o.packing.value, dtype=dtype, policy=policy, world=o.ranks, edp=o.edp)
    elif o.to is Target.gguf:
        from engram_cli.tables.gguf_io import plan_gguf

        plan = plan_gguf(src, geos, layout, gguf_type=o.gguf_type.value, name=o.gguf_name, with_projections=o.with_projections,
                         dialect=o.gguf_dialect.value)
    else:
        from engram_cli.tables.local import plan_local

        plan = plan_local(src, geos, policy=policy, world=o.ranks, rank=o.rank, edp=o.edp)
    if layout is not None and o.to in LAYOUT_TARGETS:
        plan = plan.with_layout(layout)
    plan = replace(plan, omitted=planners.omitted(src, plan))
    return Prepared(o, src, layout, resolved.source, plan)


def convert(prep: Prepared, progress: ProgressCallback | None = None):
    """Execute a prepared plan into ``options.output`` (see :func:`engram_cli.tables.execute.execute`)."""
    from engram_cli.tables.execute import execute

    o = prep.options
    return execute(prep.plan, prep.source, o.output, force=o.force, block_bytes=o.block_bytes, progress=progress,
                   verify=o.verify.value, checksum=o.checksum.algorithm)


def plan_doc(plan: ShardPlan) -> dict:
    """The plan as a JSON-ready dict (the CLI adds the schema)."""
    return {
        "target": plan.target, "source": plan.source, "source_format": plan.source_format,
        "policy": plan.policy, "world": plan.world, "edp": plan.edp, "dtype": plan.dtype,
        "tables": [t.summary() for t in plan.tables],
        "ranges": plan.ranges.to_list() if plan.ranges else [],
        "files": [{"name": f.name, "format": f.format, "bytes": f.size,
                   "tensors": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape), **_source_doc(t.source)}
                               for t in f.tensors]}
                  for f in plan.files],
        "side_files": plan.side_names(),
        "omitted": plan.omitted.to_dict(),
        "total_bytes": plan.total_bytes,
    }


def _source_doc(src: Any) -> dict:
    if hasattr(src, "layer"):
        return {"layer": src.layer, "part": src.part, "pieces": [[p.start, p.stop, p.head] for p in src.pieces],
                "pad_rows": src.pad_rows, "heads": list(src.heads) if src.heads else None}
    if isinstance(src, TileDequant):
        return {"dequantise": {"from": src.weight, "scale": src.scale, "tile": [src.tile, src.tile], "dtype": src.dtype}}
    if isinstance(src, TensorBytes):
        return {"constant": src.origin}
    return {"copy": True}
