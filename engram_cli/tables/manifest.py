"""``engram-shards.json``: what a conversion wrote, written last. The one module that reads
and writes it (typed: :class:`Manifest`).

It records the source fingerprint, the layout summary, the policy, every data file with its
byte size, checksum and tensors (layer, row pieces, head range, encoding, byte offset and row
stride, so the output can be read back as a source and verified), every side file the run
wrote (index, copied or rewritten files, layout, token map, ``engram-local.json``) with its
checksum, and what of the source the output does not hold (``omitted``). Schema
``engram.shards/1``; manifests of the older name ``engram-shards/1`` are read alike.
Loading validates every key and type and every file name (:mod:`engram_cli.pathguard`), so a
malformed manifest is one named exit 3, never a crash.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engram_cli import __version__
from engram_cli.errors import BadInputError
from engram_cli.fsutil import write_json_atomic
from engram_cli.pathguard import safe_join
from engram_cli.tables.checksums import DIGEST_KEY
from engram_cli.tables.model import Encoding, GlobalScale
from engram_cli.tables.plan import Omitted, ShardPlan
from engram_cli.tables.policies import Piece

MANIFEST = "engram-shards.json"
SCHEMA = "engram.shards/1"
READABLE_SCHEMAS = (SCHEMA, "engram-shards/1")


class ManifestError(BadInputError):
    """A manifest that cannot be read: missing, not JSON, a missing key or a wrong type (exit 3)."""


# ---------------------------------------------------------------- strict reading helpers
class _Doc:
    """A JSON object read with type checks; errors name the manifest and the key path."""

    def __init__(self, d: Any, where: str):
        if not isinstance(d, dict):
            raise ManifestError(f"{MANIFEST}: {where} is {type(d).__name__}, expected an object")
        self.d, self.where = d, where

    def _get(self, key: str, kinds: tuple, default: Any, required: bool) -> Any:
        if key not in self.d or (self.d[key] is None and not required):
            if required:
                raise ManifestError(f"{MANIFEST}: {self.where} has no {key!r}")
            return default
        v = self.d[key]
        if not isinstance(v, kinds) or (isinstance(v, bool) and bool not in kinds):
            want = "/".join(k.__name__ for k in kinds)
            raise ManifestError(f"{MANIFEST}: {self.where}.{key} is {type(v).__name__}, expected {want}")
        return v

    def int(self, key: str, default: Any = None, required: bool = True) -> Any:
        v = self._get(key, (int,), default, required)
        if isinstance(v, int) and v < 0:
            raise ManifestError(f"{MANIFEST}: {self.where}.{key} is negative ({v})")
        return v

    def str(self, key: str, default: Any = None, required: bool = True) -> Any:
        return self._get(key, (str,), default, required)

    def list(self, key: str, default: Any = None, required: bool = True) -> Any:
        return self._get(key, (list,), default, required)

    def obj(self, key: str, required: bool = False) -> _Doc | None:
        v = self._get(key, (dict,), None, required)
        return None if v is None else _Doc(v, f"{self.where}.{key}")

    def ints(self, key: str, n: int | None = None, required: bool = True) -> tuple[int, ...] | None:
        v = self.list(key, required=required)
        if v is None:
            return None
        if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v) or (n is not None and len(v) != n):
            raise ManifestError(f"{MANIFEST}: {self.where}.{key} must be a list of {n or 'some'} non-negative integers")
        return tuple(v)


def _encoding(d: _Doc | None, where: str) -> Encoding:
    if d is None:
        raise ManifestError(f"{MANIFEST}: {where} has no encoding")
    from engram_cli.tables.st_format import DTYPE_SIZE

    enc = Encoding(d.str("weight_dtype"), d.str("scale_dtype", required=False), d.int("group", 32, False), d.int("pack", 1, False))
    if enc.weight_dtype not in DTYPE_SIZE or (enc.scale_dtype is not None and enc.scale_dtype not in DTYPE_SIZE) \
            or enc.group < 1 or enc.pack < 1:
        raise ManifestError(f"{MANIFEST}: {d.where} is not a known encoding")
    return enc


# ---------------------------------------------------------------- records
@dataclass(frozen=True)
class TableRef:
    """What a table tensor of an output holds: rows of one layer's table, one part of them."""

    layer: int
    part: str  # weight | scale | rows | q8_0
    dim: int
    encoding: Encoding
    pieces: tuple[Piece, ...]
    pad_rows: int = 0
    heads: tuple[int, int] | None = None

    def to_dict(self) -> dict:
        d = {"layer": self.layer, "part": self.part, "dim": self.dim, "encoding": self.encoding.to_dict(),
             "pieces": [[p.start, p.stop, p.head] for p in self.pieces], "pad_rows": self.pad_rows,
             "heads": list(self.heads) if self.heads else None}
        if self.pieces and all(x.stop == y.start for x, y in zip(self.pieces, self.pieces[1:])):
            d["rows"] = [self.pieces[0].start, self.pieces[-1].stop]
        return d

    @classmethod
    def parse(cls, d: _Doc) -> TableRef:
        part = d.str("part")
        if part not in ("weight", "scale", "rows", "q8_0"):
            raise ManifestError(f"{MANIFEST}: {d.where}.part is {part!r}")
        pieces = []
        for i, p in enumerate(d.list("pieces")):
            ok = isinstance(p, list) and len(p) in (2, 3) and all(isinstance(x, int) and not isinstance(x, bool) for x in p[:2])
            if not ok or p[0] < 0 or p[1] < p[0] or (len(p) == 3 and p[2] is not None and not isinstance(p[2], int)):
                raise ManifestError(f"{MANIFEST}: {d.where}.pieces[{i}] is not [start, stop, head]")
            pieces.append(Piece(p[0], p[1], p[2] if len(p) == 3 else None))
        heads = d.ints("heads", 2, required=False)
        return cls(d.int("layer"), part, d.int("dim"), _encoding(d.obj("encoding"), d.where), tuple(pieces),
                   d.int("pad_rows", 0, False), heads)


@dataclass(frozen=True)
class DequantRef:
    """A projection written dequantised from a tile-scaled fp8 source tensor."""

    weight: str
    scale: str
    tile: int
    source_dtype: str = "F8_E4M3"

    def to_dict(self) -> dict:
        return {"dequantised_from": self.weight, "scale": self.scale, "tile": [self.tile, self.tile],
                "source_dtype": self.source_dtype}


@dataclass(frozen=True)
class ManifestTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    row_bytes: int
    table: TableRef | None = None
    dequant: DequantRef | None = None
    copy: bool = False  # copied unchanged from a tensor of the same name in the source

    def to_dict(self) -> dict:
        d = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "offset": self.offset,
             "nbytes": self.nbytes, "row_bytes": self.row_bytes}
        if self.copy:
            d["copy"] = True
        if self.table is not None:
            d.update(self.table.to_dict())
        if self.dequant is not None:
            d.update(self.dequant.to_dict())
        return d

    @classmethod
    def parse(cls, d: _Doc) -> ManifestTensor:
        table = TableRef.parse(d) if d.d.get("layer") is not None else None
        dq = None
        if d.d.get("dequantised_from") is not None:
            tile = d.ints("tile", 2)
            if tile[0] < 1:
                raise ManifestError(f"{MANIFEST}: {d.where}.tile must be positive")
            dq = DequantRef(d.str("dequantised_from"), d.str("scale"), tile[0], d.str("source_dtype", "F8_E4M3", False))
        return cls(d.str("name"), d.str("dtype"), d.ints("shape"), d.int("offset"), d.int("nbytes"),
                   d.int("row_bytes", 0, False), table, dq, d.d.get("copy") is True)


def _digest(d: _Doc) -> tuple[str, str | None]:
    algo = d.str("checksum", "xxh3-128", False)
    if algo not in DIGEST_KEY:
        raise ManifestError(f"{MANIFEST}: {d.where} has unknown checksum algorithm {algo!r}", hint="known: " + ", ".join(DIGEST_KEY))
    return algo, d.str(DIGEST_KEY[algo], None, False)


@dataclass(frozen=True)
class ManifestFile:
    """A data file (tables, tensors) the run wrote."""

    name: str
    format: str  # safetensors | raw | gguf | sparse
    bytes: int
    digest: str | None  # hex digest of the whole file, by ``checksum``
    tensors: tuple[ManifestTensor, ...] = ()
    info: dict = field(default_factory=dict)
    checksum: str = "xxh3-128"

    def checksum_doc(self) -> dict:
        return {"checksum": self.checksum, DIGEST_KEY[self.checksum]: self.digest}

    def to_dict(self) -> dict:
        return {"name": self.name, "format": self.format, "bytes": self.bytes, **self.checksum_doc(),
                **({"info": self.info} if self.info else {}), "tensors": [t.to_dict() for t in self.tensors]}

    @classmethod
    def parse(cls, d: _Doc, root: Path) -> ManifestFile:
        name = d.str("name")
        safe_join(root, name, f"{MANIFEST}: file")
        algo, digest = _digest(d)
        tensors = tuple(ManifestTensor.parse(_Doc(t, f"{d.where}.tensors[{i}]"))
                        for i, t in enumerate(d.list("tensors", [], False)))
        info = d.obj("info")
        return cls(name, d.str("format", "safetensors", False), d.int("bytes"), digest, tensors, dict(info.d) if info else {}, algo)


@dataclass(frozen=True)
class SideFile:
    """Any other file the run wrote: index, copied/rewritten files, layout, token map, local json."""

    name: str
    role: str  # index | copy | rewrite | layout | local
    bytes: int
    digest: str | None
    checksum: str = "xxh3-128"

    def to_dict(self) -> dict:
        return {"name": self.name, "role": self.role, "bytes": self.bytes, "checksum": self.checksum,
                DIGEST_KEY[self.checksum]: self.digest}

    @classmethod
    def parse(cls, d: _Doc, root: Path) -> SideFile:
        name = d.str("name")
        safe_join(root, name, f"{MANIFEST}: side file")
        algo, digest = _digest(d)
        return cls(name, d.str("role", "copy", False), d.int("bytes"), digest, algo)


@dataclass(frozen=True)
class ManifestTable:
    """One table of the conversion: its size, encodings and where it came from."""

    layer: int
    rows: int
    dim: int
    output_encoding: Encoding
    source_encoding: Encoding | None = None
    family: str = "deepseek-v4.1"
    prefix: str = ""
    source_names: tuple[str, ...] = ()
    source_parts: int | None = None
    head_sizes: tuple[int, ...] | None = None
    global_scale: GlobalScale | None = None
    padding: dict | None = None  # rows beyond the sum of primes: {"rows", "rule": kept|dropped, "by": policy or target}

    def to_dict(self) -> dict:
        d = {"layer": self.layer, "rows": self.rows, "dim": self.dim, "family": self.family, "prefix": self.prefix,
             "source_encoding": self.source_encoding.to_dict() if self.source_encoding else None,
             "output_encoding": self.output_encoding.to_dict(), "source_names": list(self.source_names),
             "source_parts": self.source_parts, "head_sizes": list(self.head_sizes) if self.head_sizes else None}
        if self.global_scale is not None:
            d["global_scale"] = self.global_scale.to_dict()
        if self.padding is not None:
            d["padding"] = self.padding
        return d

    @classmethod
    def parse(cls, d: _Doc) -> ManifestTable:
        names = d.list("source_names", [], False)
        if not all(isinstance(n, str) for n in names):
            raise ManifestError(f"{MANIFEST}: {d.where}.source_names must be strings")
        gs = d.obj("global_scale")
        try:
            gscale = GlobalScale.from_dict(gs.d) if gs else None
        except (KeyError, TypeError, ValueError):
            raise ManifestError(f"{MANIFEST}: {d.where}.global_scale is malformed") from None
        src = d.obj("source_encoding")
        return cls(d.int("layer"), d.int("rows"), d.int("dim"), _encoding(d.obj("output_encoding", True), d.where),
                   _encoding(src, d.where) if src else None, d.str("family", "deepseek-v4.1", False),
                   d.str("prefix", "", False), tuple(names), d.int("source_parts", None, False),
                   d.ints("head_sizes", required=False), gscale, dict(pad.d) if (pad := d.obj("padding")) else None)


@dataclass(frozen=True)
class Manifest:
    target: str
    files: tuple[ManifestFile, ...]
    tables: tuple[ManifestTable, ...]
    source: dict = field(default_factory=dict)
    family: str = "deepseek-v4.1"
    layout: dict | None = None
    policy: str | None = None
    world: int | None = None
    edp: int = 1
    dtype: str = "keep"
    options: dict = field(default_factory=dict)
    ranges: tuple[dict, ...] = ()
    checksum: str | None = None
    side_files: tuple[SideFile, ...] = ()
    omitted: Omitted | None = Omitted()  # None: not recorded (manifests written before it was)
    local: dict | None = None
    created_by: str = f"engram {__version__}"
    schema: str = SCHEMA

    @property
    def total_bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    def names(self) -> list[str]:
        """Every file the manifest lists (data files, then side files)."""
        return [f.name for f in self.files] + [f.name for f in self.side_files]

    def to_dict(self) -> dict:
        d = {"schema": SCHEMA, "created_by": self.created_by, "target": self.target, "family": self.family,
             "source": self.source, "layout": self.layout, "policy": self.policy, "world": self.world, "edp": self.edp,
             "dtype": self.dtype, "options": self.options, "tables": [t.to_dict() for t in self.tables],
             "ranges": list(self.ranges), "checksum": self.checksum, "files": [f.to_dict() for f in self.files],
             "side_files": [f.to_dict() for f in self.side_files], "omitted": self.omitted.to_dict() if self.omitted is not None else None,
             "total_bytes": self.total_bytes}
        if self.local is not None:
            d["local"] = self.local
        return d

    def write(self, out_dir: Path) -> Path:
        path = Path(out_dir) / MANIFEST
        write_json_atomic(path, self.to_dict())
        return path

    @classmethod
    def load(cls, out_dir: str | Path) -> Manifest:
        """Read and validate ``out_dir/engram-shards.json`` (exit 3 on anything malformed)."""
        root = Path(out_dir)
        path = root / MANIFEST
        if not path.is_file():
            raise ManifestError(f"{out_dir}: no {MANIFEST} (not an engram shard output, or an incomplete one)",
                                hint="an interrupted conversion leaves no manifest; run it again")
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise ManifestError(f"{path}: corrupt manifest ({type(exc).__name__})") from None
        return cls.from_dict(doc, root)

    @classmethod
    def from_dict(cls, doc: Any, root: Path) -> Manifest:
        d = _Doc(doc, "manifest")
        schema = d.str("schema", None, False)
        if schema not in READABLE_SCHEMAS:
            raise ManifestError(f"{MANIFEST}: unknown manifest schema {schema!r}", hint="expected " + SCHEMA)
        files = tuple(ManifestFile.parse(_Doc(f, f"files[{i}]"), root) for i, f in enumerate(d.list("files")))
        tables = tuple(ManifestTable.parse(_Doc(t, f"tables[{i}]")) for i, t in enumerate(d.list("tables")))
        sides = tuple(SideFile.parse(_Doc(f, f"side_files[{i}]"), root) for i, f in enumerate(d.list("side_files", [], False)))
        names = [f.name for f in files] + [f.name for f in sides]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup is not None:
            raise ManifestError(f"{MANIFEST}: file {dup!r} is listed twice")
        om = d.obj("omitted")
        omitted = None if om is None else Omitted(*(tuple(x for x in om.list(k, [], False) if isinstance(x, str))
                            for k in ("tensors", "files")))
        src, lay, opts, loc = (d.obj(k) for k in ("source", "layout", "options", "local"))
        ranges = d.list("ranges", [], False)
        return cls(d.str("target", "unknown", False), files, tables, dict(src.d) if src else {},
                   d.str("family", "deepseek-v4.1", False), dict(lay.d) if lay else None, d.str("policy", None, False),
                   d.int("world", None, False), d.int("edp", 1, False), d.str("dtype", "keep", False),
                   dict(opts.d) if opts else {}, tuple(r for r in ranges if isinstance(r, dict)),
                   d.str("checksum", None, False), sides, omitted, dict(loc.d) if loc else None,
                   d.str("created_by", "", False), SCHEMA)


def build_manifest(plan: ShardPlan, files: list[ManifestFile], side_files: list[SideFile], fingerprint: dict,
                   layout_summary: dict | None) -> Manifest:
    """The manifest of a finished run of ``plan``."""
    from engram_cli.tables.codecs import target_encoding

    geos = {g.layer_id: g for g in plan.geometries}
    tables = []
    for t in plan.tables:
        parts = plan.split_parts or (len(t.weight) if plan.source_format == "hf" and len(t.weight) > 1 else None)
        g = geos.get(t.layer_id)
        tables.append(ManifestTable(t.layer_id, t.rows, t.dim, target_encoding(t.encoding, plan.dtype), t.encoding,
                                    t.family, t.prefix, t.source_names, parts, g.head_sizes if g else None, t.global_scale,
                                    _padding(plan, g)))
    return Manifest(target=plan.target, files=tuple(files), tables=tuple(tables), source=fingerprint, family=plan.family,
                    layout=layout_summary, policy=plan.policy, world=plan.world, edp=plan.edp, dtype=plan.dtype,
                    options=dict(plan.settings), ranges=tuple(plan.ranges.to_list()) if plan.ranges else (),
                    checksum=files[0].checksum if files else None, side_files=tuple(side_files), omitted=plan.omitted,
                    local=plan.local_json.document if plan.local_json else None)


def _padding(plan: ShardPlan, g) -> dict | None:
    """Rows beyond the sum of primes (Qwen4-Exp) and what the plan did with them: each engine's
    rule for its policy (policies.PADDING), kept by every other target."""
    from engram_cli.tables.policies import PADDING

    if g is None or g.pad_rows <= 0:
        return None
    rule = PADDING.get(plan.policy, "kept") if plan.policy else "kept"
    return {"rows": g.pad_rows, "rule": rule, "by": plan.policy or plan.target}
