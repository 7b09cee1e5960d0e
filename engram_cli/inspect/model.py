"""The typed result of ``engram inspect``: tables, layout, checks and engine compatibility."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TableRow:
    """One Engram table as stored."""

    layer: int  # tensor-name index (layers.{i}, blk.{i})
    rows: int
    columns: int  # values per row
    encoding: str  # fp8-e4m3, bf16, nvfp4, e4m3_e8m0_32_row264, q8_0, ...
    scale: str  # how the scales are laid out ("none" without)
    bytes: int
    storage: str  # where and how the rows sit
    tensors: tuple[str, ...] = ()  # tensor (or file) names, first few
    config_id: int | None = None  # from the layout, when known
    seed_id: int | None = None

    def to_dict(self) -> dict:
        return {"layer": self.layer, "config_id": self.config_id, "seed_id": self.seed_id, "rows": self.rows,
                "columns": self.columns, "encoding": self.encoding, "scale": self.scale, "bytes": self.bytes,
                "storage": self.storage, "tensors": list(self.tensors)}


@dataclass(frozen=True)
class Check:
    """One consistency check; ``ok`` None when it could not be made (a note says why)."""

    name: str
    expected: Any
    actual: Any
    ok: bool | None
    note: str = ""

    def to_dict(self) -> dict:
        return {"check": self.name, "expected": self.expected, "actual": self.actual, "ok": self.ok, "note": self.note}


@dataclass(frozen=True)
class Compat:
    """Whether one engine loads the inspected files as they are, and the command that fixes a no."""

    engine: str
    reference: str
    loads: str  # yes | no | n/a
    reason: str
    fix: str | None = None

    def to_dict(self) -> dict:
        return {"engine": self.engine, "reference": self.reference, "loads": self.loads, "reason": self.reason,
                "fix": self.fix}


@dataclass(frozen=True)
class Found:
    """What was opened: the format facts compatibility and checks are judged on."""

    path: str
    format: str  # hf | engram | gguf | layout
    detail: str  # e.g. "target ranks, vllm-head P=4" or "dialect ds4"
    family: str | None
    tables: tuple[TableRow, ...]
    layout: Any | None  # EngramLayout
    layout_source: str
    gguf: Any | None = None  # GgufFile
    manifest: Any | None = None  # Manifest
    config: dict | None = None  # the config.json beside, when any
    notes: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class InspectReport:
    found: Found
    checks: tuple[Check, ...]
    compat: tuple[Compat, ...]

    @property
    def consistent(self) -> bool | None:
        made = [c.ok for c in self.checks if c.ok is not None]
        return all(made) if made else None
