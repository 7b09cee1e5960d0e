"""Open a source of Engram tables: an HF checkpoint, an output of ``engram shard`` (its
manifest), or a GGUF file with raw 264-byte rows. Sources are only ever read."""

from __future__ import annotations

from pathlib import Path

from engram_cli.errors import BadInputError, UsageError
from engram_cli.tables.checkpoint import is_hf_checkpoint, open_checkpoint
from engram_cli.tables.discover import discover
from engram_cli.tables.manifest import MANIFEST, Manifest
from engram_cli.tables.model import Geometry, Segment, TableInfo
from engram_cli.tables.names import custom_family
from engram_cli.tables.source_info import Source

SOURCE_FORMATS = ("auto", "hf", "engram", "gguf")


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
    if path.is_dir() and len(list(path.glob("*.gguf"))) != 1:
        n = len(list(path.glob("*.gguf")))
        raise BadInputError(f"--from gguf: {path} holds {n} .gguf files, expected one", hint="pass the .gguf file itself")
    from engram_cli.tables.gguf_io import open_gguf_source

    return open_gguf_source(path)


def open_engram_output(path: Path) -> Source:
    """Tables described by an ``engram-shards.json`` manifest (rows may sit in many files)."""
    man = Manifest.load(path)
    if man.target == "local":
        raise BadInputError(f"{path} is a node-local sparse copy; use its files as an hf checkpoint with --from hf")
    segs: dict[tuple[int, str], list[Segment]] = {}
    by_layer = {mt.layer: mt for mt in man.tables}
    for f in man.files:
        fpath = str(path / f.name)
        if not Path(fpath).is_file():
            raise BadInputError(f"{path}: file {f.name} listed in the manifest is missing")
        size = Path(fpath).stat().st_size
        for t in f.tensors:
            if t.table is None:
                continue
            tr = t.table
            _check_tensor(f.name, t, by_layer.get(tr.layer))
            wb = tr.encoding.weight_row_bytes(tr.dim)
            sb = tr.encoding.scale_row_bytes(tr.dim)
            off = t.offset
            if t.offset + sum(p.rows for p in tr.pieces) * t.row_bytes > size:
                raise BadInputError(f"{path}: {f.name} is truncated: tensor {t.name} ends past its end ({size} bytes)",
                                    hint="re-run the conversion, or the manifest belongs to another output")
            for p in tr.pieces:
                seg = Segment(fpath, p.start, p.stop, off, t.row_bytes, 0, t.name)
                if tr.part in ("weight", "rows"):
                    segs.setdefault((tr.layer, "weight"), []).append(seg)
                if tr.part == "scale":
                    segs.setdefault((tr.layer, "scale"), []).append(seg)
                elif tr.part == "rows" and sb:
                    segs.setdefault((tr.layer, "scale"), []).append(Segment(fpath, p.start, p.stop, off, t.row_bytes, wb, t.name))
                off += p.rows * t.row_bytes
    tables, geos = [], []
    for mt in man.tables:
        enc = mt.output_encoding
        t = TableInfo(mt.layer, mt.rows, mt.dim, enc, _cover(path, mt.layer, "weight", segs.get((mt.layer, "weight"), []), mt.rows),
                      _cover(path, mt.layer, "scale", segs.get((mt.layer, "scale"), []), mt.rows) if enc.scale_dtype else (),
                      mt.family, mt.prefix, (), mt.global_scale)
        tables.append(t)
        if mt.head_sizes:
            geos.append(Geometry(mt.layer, tuple(mt.head_sizes), mt.rows))
    if not tables:
        raise BadInputError(f"{path}: the manifest lists no table")
    ck, held = None, frozenset()
    if man.target == "hf":  # an HF output: its other tensors and files carry through further conversions
        ck = open_checkpoint(path)
        held = frozenset(t.name for f in man.files for t in f.tensors if t.table is not None or not (t.copy or t.dequant))
    return Source(path, "engram", tuple(tables), man.family, ck, held, man, tuple(geos))


def _check_tensor(fname: str, t, mt) -> None:
    """A table tensor of a manifest agrees with its table: known layer, same encoding and
    width, rows inside the table, and the row stride its part needs."""
    tr = t.table
    where = f"{MANIFEST}: {fname}: tensor {t.name!r}"
    if mt is None:
        raise BadInputError(f"{where} holds layer {tr.layer}, which the manifest's tables do not list")
    if tr.encoding != mt.output_encoding or tr.dim != mt.dim or tr.dim < 1:
        raise BadInputError(f"{where} is {tr.encoding.name}[*, {tr.dim}], its table {mt.output_encoding.name}[*, {mt.dim}]")
    wb, sb = tr.encoding.weight_row_bytes(tr.dim), tr.encoding.scale_row_bytes(tr.dim)
    want = {"weight": wb, "scale": sb, "rows": wb + sb}.get(tr.part)
    if want is None or t.row_bytes != want:
        raise BadInputError(f"{where}: part {tr.part!r} with rows of {t.row_bytes} bytes cannot be read back"
                            + (f" (expected {want})" if want is not None else " (lossy)"))
    if any(p.stop > mt.rows for p in tr.pieces):
        raise BadInputError(f"{where} lists rows past the {mt.rows} rows of layer {tr.layer}")


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
