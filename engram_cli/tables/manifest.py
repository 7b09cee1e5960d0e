"""``engram-shards.json``: what a conversion wrote, written last.

Records the source fingerprint, layout summary, policy, every file with its byte size and
xxh3-128 checksum, and every table tensor with its layer, row pieces, head range, encoding,
byte offset and row stride, so that the output can be read back as a source and verified.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from engram_cli import __version__
from engram_cli.errors import BadInputError
from engram_cli.fsutil import write_json_atomic

MANIFEST = "engram-shards.json"
SCHEMA = "engram-shards/1"


@dataclass(frozen=True)
class WrittenTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    row_bytes: int
    table: dict | None  # layer, part, pieces, heads, pad_rows, encoding, dim (None for copied tensors)

    def to_dict(self) -> dict:
        d = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "offset": self.offset,
             "nbytes": self.nbytes, "row_bytes": self.row_bytes}
        if self.table:
            d.update(self.table)
        return d


@dataclass(frozen=True)
class WrittenFile:
    name: str
    format: str
    bytes: int
    xxh3_128: str
    tensors: tuple[WrittenTensor, ...]
    info: dict

    def to_dict(self) -> dict:
        return {"name": self.name, "format": self.format, "bytes": self.bytes, "xxh3_128": self.xxh3_128,
                **({"info": self.info} if self.info else {}), "tensors": [t.to_dict() for t in self.tensors]}


def build_manifest(plan, files: list[WrittenFile], fingerprint: dict, layout_summary: dict | None) -> dict:
    from engram_cli.tables.codecs import target_encoding

    tables = []
    geos = {g.layer_id: g for g in plan.geometries}
    for t in plan.tables:
        out_enc = target_encoding(t.encoding, plan.dtype)
        src_parts = len(t.weight) if plan.source_format == "hf" and len(t.weight) > 1 else None
        if plan.extra.get("split_parts"):
            src_parts = plan.extra["split_parts"]
        g = geos.get(t.layer_id)
        tables.append({
            "layer": t.layer_id, "rows": t.rows, "dim": t.dim, "family": t.family, "prefix": t.prefix,
            "source_encoding": t.encoding.to_dict(), "output_encoding": out_enc.to_dict(),
            "source_names": list(t.source_names), "source_parts": src_parts,
            "head_sizes": list(g.head_sizes) if g else None,
        })
    return {
        "schema": SCHEMA,
        "created_by": f"engram {__version__}",
        "target": plan.target,
        "family": plan.family,
        "source": fingerprint,
        "layout": layout_summary,
        "policy": plan.policy,
        "world": plan.world,
        "edp": plan.edp,
        "dtype": plan.dtype,
        "options": {k: v for k, v in plan.extra.items() if isinstance(v, (int, str, float, bool, type(None)))},
        "tables": tables,
        "ranges": [{"layer": l, "ranks": [r.to_dict() for r in rr]} for l, rr in plan.ranges],
        "files": [f.to_dict() for f in files],
        "total_bytes": sum(f.bytes for f in files),
    }


def write_manifest(out_dir: Path, doc: dict) -> Path:
    path = Path(out_dir) / MANIFEST
    write_json_atomic(path, doc)
    return path


def load_manifest(out_dir: str | Path) -> dict:
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise BadInputError(f"{out_dir}: no {MANIFEST} (not an engram shard output, or an incomplete one)",
                            hint="an interrupted conversion leaves no manifest; run it again")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise BadInputError(f"{path}: corrupt manifest") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise BadInputError(f"{path}: unknown manifest schema {doc.get('schema') if isinstance(doc, dict) else None!r}")
    return doc
