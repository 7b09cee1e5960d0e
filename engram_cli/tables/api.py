"""One entry point for the CLI: options -> (source, layout, geometry, plan)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engram_cli.errors import UsageError
from engram_cli.tables import planners
from engram_cli.tables.geometry import load_layout_option, resolve
from engram_cli.tables.plan import ShardPlan
from engram_cli.tables.policies import POLICIES
from engram_cli.tables.source import Source, open_source
from engram_cli.tables.units import parse_size

TARGETS = ("hf", "ranks", "heads", "packed", "gguf", "local")


@dataclass(frozen=True)
class ShardOptions:
    source: str
    to: str = "hf"
    from_: str = "auto"
    family: str | None = None
    key: str | None = None
    scale_key: str | None = None
    layout: str | None = None
    config: str | None = None
    preset: str | None = None
    dtype: str = "keep"
    max_shard_size: str = "5GB"
    ranks: int | None = None
    policy: str | None = None
    edp: int = 1
    rank: int | None = None
    head_format: str = "safetensors"
    packing: str = "rows"
    split_parts: int | None = None
    engram_only: bool = False
    gguf_type: str = "raw"
    gguf_name: str = "engram.gguf"
    with_projections: bool = False


@dataclass(frozen=True)
class Prepared:
    source: Source
    layout: Any | None
    plan: ShardPlan


def prepare(o: ShardOptions) -> Prepared:
    if o.to not in TARGETS:
        raise UsageError(f"unknown --to {o.to!r}", hint="choose one of " + ", ".join(TARGETS))
    if o.policy is not None and o.policy not in POLICIES:
        raise UsageError(f"unknown --policy {o.policy!r}", hint="choose one of " + ", ".join(POLICIES))
    src = open_source(o.source, o.from_, family=o.family, key=o.key, scale_key=o.scale_key)
    layout = load_layout_option(o.layout, o.config, o.preset, src.path if src.path.is_dir() else None)
    if layout is None and src.gguf_layout is not None:
        layout = None  # GGUF sources carry geometry in src.geometries
    geos = resolve(src.tables, src.geometries, layout)
    if o.to == "hf":
        plan = planners.plan_hf(src, geos, dtype=o.dtype, max_shard_size=parse_size(o.max_shard_size),
                                engram_only=o.engram_only, split_parts=o.split_parts,
                                with_projections=o.with_projections)
    elif o.to == "ranks":
        if not o.ranks or not o.policy:
            raise UsageError("--to ranks needs --ranks P and --policy", hint="policies: " + ", ".join(POLICIES))
        plan = planners.plan_ranks(src, geos, policy=o.policy, world=o.ranks, edp=o.edp, dtype=o.dtype)
    elif o.to == "heads":
        plan = planners.plan_heads(src, geos, dtype=o.dtype, head_format=o.head_format)
    elif o.to == "packed":
        plan = planners.plan_packed(src, geos, packing=o.packing, dtype=o.dtype, policy=o.policy,
                                    world=o.ranks, edp=o.edp)
    elif o.to == "gguf":
        from engram_cli.tables.gguf_io import plan_gguf

        plan = plan_gguf(src, geos, layout, gguf_type=o.gguf_type, name=o.gguf_name,
                         with_projections=o.with_projections)
    else:
        from engram_cli.tables.local import plan_local

        plan = plan_local(src, geos, policy=o.policy, world=o.ranks, rank=o.rank, edp=o.edp)
    return Prepared(src, layout, plan)


def plan_ranges_doc(plan: ShardPlan) -> list[dict]:
    return [{"layer": l, "ranks": [r.to_dict() for r in rr]} for l, rr in plan.ranges]


def plan_doc(plan: ShardPlan) -> dict:
    return {
        "target": plan.target, "source": plan.source, "source_format": plan.source_format,
        "policy": plan.policy, "world": plan.world, "edp": plan.edp, "dtype": plan.dtype,
        "tables": [t.summary() for t in plan.tables],
        "ranges": plan_ranges_doc(plan),
        "files": [{"name": f.name, "format": f.format, "bytes": f.size,
                   "tensors": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape),
                                **({"layer": t.source.layer, "part": t.source.part,
                                    "pieces": [[p.start, p.stop, p.head] for p in t.source.pieces],
                                    "pad_rows": t.source.pad_rows,
                                    "heads": list(t.source.heads) if t.source.heads else None}
                                   if hasattr(t.source, "layer") else _source_doc(t.source))} for t in f.tensors]}
                  for f in plan.files],
        "total_bytes": plan.total_bytes,
    }


def _source_doc(src: Any) -> dict:
    from engram_cli.tables.plan import TensorBytes, TileDequant

    if isinstance(src, TileDequant):
        return {"dequantise": {"from": src.weight, "scale": src.scale, "tile": [src.tile, src.tile], "dtype": src.dtype}}
    if isinstance(src, TensorBytes):
        return {"constant": src.origin}
    return {"copy": True}


def out_path(p: str | Path) -> Path:
    return Path(p)
