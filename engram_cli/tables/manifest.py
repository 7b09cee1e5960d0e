"""``engram-shards.json``: what a conversion wrote, written last.

Records the source fingerprint, layout summary, policy, every file with its byte size and
checksum (``"checksum": "xxh3-128"`` with the digest under ``"xxh3_128"``, the default, or
``"checksum": "sha256"`` with ``"sha256"``; a file without ``"checksum"`` is xxh3-128), and
every table tensor with its layer, row pieces, head range, encoding,
byte offset and row stride, so that the output can be read back as a source and verified.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import xxhash

from engram_cli import __version__
from engram_cli.errors import BadInputError, UsageError
from engram_cli.fsutil import write_json_atomic

MANIFEST = "engram-shards.json"
SCHEMA = "engram-shards/1"

# --checksum choice -> (algorithm name recorded per file, manifest key of the hex digest)
CHECKSUMS = {"xxh3": ("xxh3-128", "xxh3_128"), "sha256": ("sha256", "sha256")}
_BY_ALGO = {algo: key for algo, key in CHECKSUMS.values()}


def checksum_algorithm(choice: str) -> str:
    """``xxh3``/``sha256`` (the CLI choice) or an algorithm name -> the recorded algorithm name."""
    if choice in CHECKSUMS:
        return CHECKSUMS[choice][0]
    if choice in _BY_ALGO:
        return choice
    raise UsageError(f"unknown --checksum {choice!r}", hint="xxh3 (xxh3-128, the default) or sha256")


def new_hasher(algorithm: str):
    """A streaming hasher (``update``/``hexdigest``) for a recorded algorithm name."""
    algorithm = checksum_algorithm(algorithm)
    return xxhash.xxh3_128() if algorithm == "xxh3-128" else hashlib.sha256()


def file_checksum(doc: dict) -> tuple[str, str | None]:
    """(algorithm, expected hex digest) of one manifest file entry."""
    algo = doc.get("checksum", "xxh3-128")
    if algo not in _BY_ALGO:
        raise BadInputError(f"{MANIFEST}: file {doc.get('name')!r} has unknown checksum algorithm {algo!r}",
                            hint="known: " + ", ".join(_BY_ALGO))
    return algo, doc.get(_BY_ALGO[algo])


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
    digest: str  # hex digest of the whole file, by ``checksum``
    tensors: tuple[WrittenTensor, ...]
    info: dict
    checksum: str = "xxh3-128"  # algorithm: xxh3-128 or sha256

    @property
    def xxh3_128(self) -> str | None:
        return self.digest if self.checksum == "xxh3-128" else None

    def checksum_doc(self) -> dict:
        return {"checksum": self.checksum, _BY_ALGO[self.checksum]: self.digest}

    def to_dict(self) -> dict:
        return {"name": self.name, "format": self.format, "bytes": self.bytes, **self.checksum_doc(),
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
        td = {
            "layer": t.layer_id, "rows": t.rows, "dim": t.dim, "family": t.family, "prefix": t.prefix,
            "source_encoding": t.encoding.to_dict(), "output_encoding": out_enc.to_dict(),
            "source_names": list(t.source_names), "source_parts": src_parts,
            "head_sizes": list(g.head_sizes) if g else None,
        }
        if t.global_scale is not None:
            td["global_scale"] = t.global_scale.to_dict()
        tables.append(td)
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
        "checksum": files[0].checksum if files else None,
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
