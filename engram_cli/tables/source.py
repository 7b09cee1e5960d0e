"""Open a source of Engram tables: an HF checkpoint, an output of ``engram shard`` (its
manifest), or a GGUF file with raw 264-byte rows. Sources are only ever read."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import xxhash

from engram_cli.errors import BadInputError, UsageError
from engram_cli.tables.checkpoint import Checkpoint, is_hf_checkpoint, open_checkpoint
from engram_cli.tables.discover import discover
from engram_cli.tables.model import Encoding, GlobalScale, Geometry, Segment, TableInfo
from engram_cli.tables.names import custom_family

MANIFEST = "engram-shards.json"
SOURCE_FORMATS = ("auto", "hf", "engram", "gguf")


@dataclass(frozen=True)
class Source:
    path: Path
    format: str  # hf | engram | gguf
    tables: tuple[TableInfo, ...]
    family: str
    checkpoint: Checkpoint | None = None
    table_tensors: frozenset[str] = frozenset()
    manifest: dict | None = None
    geometries: tuple[Geometry, ...] = ()  # known without a layout (manifest, GGUF keys)
    gguf_layout: dict | None = None

    def fingerprint(self) -> dict:
        """Cheap identity of the source: file names, sizes and headers hashed (xxh3-128)."""
        h = xxhash.xxh3_128()
        files: list[Path] = []
        if self.checkpoint is not None:
            files = [self.checkpoint.root / f for f in self.checkpoint.files]
            for f in self.checkpoint.files:
                hd = self.checkpoint.headers[f]
                h.update(f.encode())
                h.update(str(hd.file_size).encode())
                with open(hd.path, "rb") as fh:
                    h.update(fh.read(hd.data_start))
        else:
            files = sorted({Path(s.path) for t in self.tables for s in t.weight + t.scale})
            for p in files:
                h.update(p.name.encode())
                h.update(str(p.stat().st_size).encode())
            if self.manifest:
                h.update(json.dumps(self.manifest.get("files", []), sort_keys=True).encode())
        return {"path": str(self.path), "format": self.format, "files": len(files),
                "bytes": sum(p.stat().st_size for p in files), "xxh3_128": h.hexdigest()}


def detect_format(path: Path) -> str:
    if path.is_file() and path.suffix == ".gguf":
        return "gguf"
    if path.is_dir() and (path / MANIFEST).is_file():
        return "engram"
    if path.is_dir() and not is_hf_checkpoint(path) and len(list(path.glob("*.gguf"))) == 1:
        return "gguf"
    if is_hf_checkpoint(path):
        return "hf"
    raise BadInputError(f"{path}: not a safetensors checkpoint, an engram shard output or a GGUF file",
                        hint="pass --from hf|engram|gguf")


def open_source(path: str | Path, fmt: str = "auto", *, family: str | None = None,
                key: str | None = None, scale_key: str | None = None) -> Source:
    path = Path(path)
    if not path.exists():
        raise BadInputError(f"source {path} does not exist")
    if fmt not in SOURCE_FORMATS:
        raise UsageError(f"unknown --from {fmt!r}", hint="choose one of " + ", ".join(SOURCE_FORMATS))
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt == "hf":
        ck = open_checkpoint(path)
        fam = custom_family(key, scale_key) if key else family
        found = discover(ck, fam)
        return Source(path, "hf", found.tables, found.family.name, ck, found.table_tensors)
    if fmt == "engram":
        return open_engram_output(path)
    from engram_cli.tables.gguf_io import open_gguf_source

    return open_gguf_source(path)


def open_engram_output(path: Path) -> Source:
    """Tables described by an ``engram-shards.json`` manifest (rows may sit in many files)."""
    mpath = path / MANIFEST
    try:
        man = json.loads(mpath.read_text(encoding="utf-8"))
        tables_doc = man["tables"]
        files_doc = man["files"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise BadInputError(f"{mpath}: corrupt manifest") from None
    if man.get("target") == "local":
        raise BadInputError(f"{path} is a node-local sparse copy; use its files as an hf checkpoint with --from hf")
    segs: dict[tuple[int, str], list[Segment]] = {}
    for f in files_doc:
        fpath = str(path / f["name"])
        if not Path(fpath).is_file():
            raise BadInputError(f"{path}: file {f['name']} listed in the manifest is missing")
        for t in f.get("tensors", []):
            if t.get("layer") is None:
                continue
            layer, part = int(t["layer"]), t["part"]
            enc = Encoding.from_dict(t["encoding"])
            dim = int(t["dim"])
            wb, sb = enc.weight_row_bytes(dim), enc.scale_row_bytes(dim)
            stride = int(t["row_bytes"])
            off = int(t["offset"])
            for a, b, *_ in t["pieces"]:
                if part == "weight":
                    segs.setdefault((layer, "weight"), []).append(Segment(fpath, a, b, off, stride, 0, t["name"]))
                elif part == "scale":
                    segs.setdefault((layer, "scale"), []).append(Segment(fpath, a, b, off, stride, 0, t["name"]))
                elif part == "rows":
                    segs.setdefault((layer, "weight"), []).append(Segment(fpath, a, b, off, stride, 0, t["name"]))
                    if sb:
                        segs.setdefault((layer, "scale"), []).append(Segment(fpath, a, b, off, stride, wb, t["name"]))
                off += (b - a) * stride
    tables, geos = [], []
    for td in tables_doc:
        layer = int(td["layer"])
        enc = Encoding.from_dict(td["output_encoding"])
        t = TableInfo(layer, int(td["rows"]), int(td["dim"]), enc,
                      _cover(path, layer, "weight", segs.get((layer, "weight"), []), int(td["rows"])),
                      _cover(path, layer, "scale", segs.get((layer, "scale"), []), int(td["rows"])) if enc.scale_dtype else (),
                      td.get("family", "deepseek-v4.1"), td.get("prefix", ""), (),
                      GlobalScale.from_dict(td["global_scale"]) if td.get("global_scale") else None)
        tables.append(t)
        if td.get("head_sizes"):
            geos.append(Geometry(layer, tuple(td["head_sizes"]), int(td["rows"])))
    return Source(path, "engram", tuple(tables), man.get("family", "deepseek-v4.1"), None, frozenset(), man, tuple(geos))


def _cover(root: Path, layer: int, part: str, segs: list[Segment], rows: int) -> tuple[Segment, ...]:
    segs = sorted(segs, key=lambda s: (s.start, -s.stop))
    out, pos = [], 0
    for s in segs:
        if s.stop <= pos:
            continue
        if s.start > pos:
            break
        out.append(s)
        pos = s.stop
    if pos < rows:
        raise BadInputError(f"{root}: layer {layer} {part} rows {pos}..{rows} are not in any file of this output",
                            hint="a partial output (one rank, local copy) cannot be converted back to a whole table")
    return tuple(out)
