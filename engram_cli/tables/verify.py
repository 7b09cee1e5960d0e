"""``engram shard verify``: every file a conversion wrote against its manifest, and given the
source, every row. Returns a typed :class:`VerifyReport`; the caller decides what a failure
means (the CLI exits 4).

- Data files and side files (index, copied files, layout, token map, ``engram-local.json``):
  size and checksum, each by the algorithm its entry records (xxh3-128 or sha256).
- A manifest that cannot be read is a failed verification with the reason.
- With ``source``: table rows are recomputed from the source in the output's encoding and
  compared byte for byte. Where the output encoding admits several byte forms for the same
  values (fp8-e4m3 with e8m0 scales, int8 with fp32 scales: an fp8 -> bf16 -> fp8 round trip
  may pick a smaller scale exponent), a layer whose bytes differ is compared by decoded
  values instead, and the report says which comparison each layer got. Projections written
  dequantised are recomputed and compared. Tensors of an HF source that the output neither
  holds nor records as omitted are reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engram_cli.errors import BadInputError
from engram_cli.progress import ProgressCallback
from engram_cli.tables.blocks import table_block
from engram_cli.tables.checksums import file_digest
from engram_cli.tables.manifest import MANIFEST, Manifest, ManifestTensor
from engram_cli.tables.model import Encoding, TableInfo
from engram_cli.tables.plan import Omitted, TableSlice, TileDequant
from engram_cli.tables.rows import DEFAULT_BLOCK_BYTES, RowReader, block_rows_for, iter_blocks
from engram_cli.tables.source_info import Source
from engram_cli.tables.tiles import tile_dequant_blocks

BYTES, DECODED = "bytes", "decoded values"


@dataclass
class VerifyReport:
    out_dir: Path
    files: int = 0
    side_files: int = 0
    bytes: int = 0
    rows_checked: int = 0
    mismatches: list[str] = field(default_factory=list)
    comparison: dict[int, str] = field(default_factory=dict)  # layer -> "bytes" | "decoded values"
    omitted: Omitted | None = None  # what the output records it does not hold of its source (None: not recorded)
    source_checked: bool = False

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def summary(self) -> str:
        more = f" (+{len(self.mismatches) - 1} more)" if len(self.mismatches) > 1 else ""
        return f"{self.mismatches[0]}{more}" if self.mismatches else "ok"

    def to_dict(self) -> dict:
        return {"out_dir": str(self.out_dir), "files": self.files, "side_files": self.side_files, "bytes": self.bytes,
                "rows_checked": self.rows_checked, "ok": self.ok, "mismatches": self.mismatches,
                "source_checked": self.source_checked,
                "comparison": {str(k): v for k, v in sorted(self.comparison.items())},
                "omitted": self.omitted.to_dict() if self.omitted is not None else None}


def verify_output(out_dir: str | Path, *, source: Source | None = None, progress: ProgressCallback | None = None,
                  block_bytes: int = DEFAULT_BLOCK_BYTES) -> VerifyReport:
    """Check the output in ``out_dir`` (see the module docstring). A folder without a manifest
    is bad input (exit 3); a manifest that cannot be read is a failed check."""
    out = Path(out_dir)
    rep = VerifyReport(out)
    if not (out / MANIFEST).exists():
        raise BadInputError(f"{out}: no {MANIFEST} (not an engram shard output, or an incomplete one)",
                            hint="an interrupted conversion leaves no manifest; run it again")
    try:
        man = Manifest.load(out)
    except BadInputError as exc:  # ManifestError, or a file name the path guard refuses
        rep.mismatches.append(f"{MANIFEST} cannot be read: {exc.message}")
        return rep
    rep.omitted = man.omitted
    total = (sum(f.bytes for f in man.files) * (2 if source else 1)) + sum(f.bytes for f in man.side_files)
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total, "verifying")

    for entry in list(man.files) + list(man.side_files):
        _check_file(out, entry, rep, block_bytes, tick)
    rep.files, rep.side_files = len(man.files), len(man.side_files)
    if source is not None and rep.ok:
        rep.source_checked = True
        _compare_rows(out, man, source, rep, block_bytes, tick)
        if rep.ok:
            _check_names(man, source, rep)
    return rep


def _check_file(out: Path, entry, rep: VerifyReport, block_bytes: int, tick) -> None:
    p = out / entry.name
    if not p.is_file():
        rep.mismatches.append(f"{entry.name}: missing")
        return
    size = p.stat().st_size
    if size != entry.bytes:
        rep.mismatches.append(f"{entry.name}: {size} bytes, manifest says {entry.bytes}")
        return
    if entry.digest is None:
        rep.mismatches.append(f"{entry.name}: manifest has no {entry.checksum} digest")
    elif file_digest(p, min(block_bytes, 16 * 2**20), tick, entry.checksum) != entry.digest:
        rep.mismatches.append(f"{entry.name}: checksum mismatch ({entry.checksum})")
    rep.bytes += size


def _several_forms(enc: Encoding) -> bool:
    """Encodings whose values have several byte forms (the group scale is a choice)."""
    return enc.scale_dtype is not None and enc.pack == 1 and enc.weight_dtype in ("F8_E4M3", "I8")


def _compare_rows(out: Path, man: Manifest, source: Source, rep: VerifyReport, block_bytes: int, tick) -> None:
    from engram_cli.tables.codecs import codec_threads

    tables = {t.layer_id: t for t in source.tables}
    with RowReader() as src_reader, RowReader() as out_reader, codec_threads(1):
        for f in man.files:
            path = str(out / f.name)
            for t in f.tensors:
                if t.dequant is not None:
                    ok = _compare_dequant(path, t, source, src_reader, out_reader, rep, block_bytes, tick, f.name)
                elif t.table is not None:
                    ok = _compare_table(path, t, tables, src_reader, out_reader, rep, block_bytes, tick, f.name, out)
                else:
                    continue
                if not ok:
                    return


def _compare_table(path: str, t: ManifestTensor, tables: dict, src_reader: RowReader, out_reader: RowReader,
                   rep: VerifyReport, block_bytes: int, tick, fname: str, out: Path) -> bool:
    tr = t.table
    st = tables.get(tr.layer)
    if st is None:
        rep.mismatches.append(f"{fname}: layer {tr.layer} is not in the source")
        return False
    if rep.comparison.get(tr.layer) == DECODED:
        return True  # this layer's values were already compared whole
    sl = TableSlice(st.layer_id, tr.pieces, tr.part, tr.encoding, tr.pad_rows)
    stride, off = t.row_bytes, t.offset
    rb = block_rows_for(max(stride, st.row_bytes) * 4, block_bytes)
    for p in sl.pieces:
        for a, b in iter_blocks(p.start, p.stop, rb):
            want = table_block(src_reader, st, sl, a, b)
            got = np.frombuffer(out_reader.read_bytes(path, off, (b - a) * stride), np.uint8).reshape(b - a, stride)
            off += (b - a) * stride
            tick((b - a) * stride)
            if not np.array_equal(want, got):
                if _several_forms(tr.encoding) and tr.part != "q8_0":
                    return _compare_decoded(out, st, src_reader, rep, block_bytes, fname, t.name)
                bad = a + int(np.nonzero((want != got).any(axis=1))[0][0])
                rep.mismatches.append(f"{fname}: tensor {t.name} differs from the source at layer {st.layer_id} row {bad}")
                return False
            rep.rows_checked += b - a
    rep.comparison.setdefault(tr.layer, BYTES)
    if sl.pad_rows and np.frombuffer(out_reader.read_bytes(path, off, sl.pad_rows * stride), np.uint8).any():
        rep.mismatches.append(f"{fname}: tensor {t.name} padding rows are not zero")
        return False
    return True


def _compare_decoded(out: Path, st: TableInfo, src_reader: RowReader, rep: VerifyReport, block_bytes: int,
                     fname: str, tname: str) -> bool:
    """Every row of the output's table of this layer decodes to the same values as the source's."""
    from engram_cli.tables.codecs import decode
    from engram_cli.tables.source import open_engram_output

    try:
        ot = next((t for t in open_engram_output(out).tables if t.layer_id == st.layer_id), None)
    except BadInputError as exc:
        rep.mismatches.append(f"{fname}: tensor {tname} differs in bytes and cannot be decoded for comparison ({exc.message})")
        return False
    if ot is None or ot.rows != st.rows or ot.dim != st.dim:
        rep.mismatches.append(f"{fname}: tensor {tname} differs from the source (layer {st.layer_id} has another shape)")
        return False
    rb = block_rows_for(st.dim * 4 * 2, block_bytes)
    with RowReader() as out_reader:
        for a, b in iter_blocks(0, st.rows, rb):
            x = decode(st.encoding, st.dim, src_reader.weight(st, a, b), src_reader.scale(st, a, b) if st.scale else None).numpy()
            y = decode(ot.encoding, ot.dim, out_reader.weight(ot, a, b), out_reader.scale(ot, a, b) if ot.scale else None).numpy()
            same = (x == y) | (np.isnan(x) & np.isnan(y))
            if not same.all():
                bad = a + int(np.nonzero(~same.all(axis=1))[0][0])
                rep.mismatches.append(f"{fname}: tensor {tname} decodes to other values than the source at layer "
                                      f"{st.layer_id} row {bad}")
                return False
    rep.comparison[st.layer_id] = DECODED
    rep.rows_checked += st.rows
    return True


def _compare_dequant(path: str, t: ManifestTensor, source: Source, src_reader: RowReader, out_reader: RowReader,
                     rep: VerifyReport, block_bytes: int, tick, fname: str) -> bool:
    """A projection written dequantised: recompute it from the source, block by block."""
    ck = source.checkpoint
    dq = t.dequant
    if ck is None or dq.weight not in ck.weight_map or dq.scale not in ck.weight_map:
        rep.mismatches.append(f"{fname}: tensor {t.name} was dequantised from {dq.weight}, which the source does not hold")
        return False
    off = t.offset
    for blk in tile_dequant_blocks(src_reader, source, TileDequant(dq.weight, dq.scale, dq.tile, t.dtype), block_bytes):
        got = np.frombuffer(out_reader.read_bytes(path, off, blk.nbytes), np.uint8).reshape(blk.shape)
        tick(blk.nbytes)
        if not np.array_equal(blk, got):
            row = (off - t.offset) // blk.shape[1] + int(np.nonzero((blk != got).any(axis=1))[0][0])
            rep.mismatches.append(f"{fname}: tensor {t.name} differs from the dequantised source at row {row}")
            return False
        off += blk.nbytes
    rep.rows_checked += int(t.shape[0]) if t.shape else 0
    return True


def _check_names(man: Manifest, source: Source, rep: VerifyReport) -> None:
    """Tensors of an HF source that the output neither holds nor records as omitted."""
    ck = source.checkpoint
    if ck is None or man.omitted is None:  # an older manifest does not record omissions
        return
    held = {t.name for f in man.files for t in f.tensors} | {t.dequant.scale for f in man.files for t in f.tensors if t.dequant}
    missing = [n for n in ck.names() if n not in source.table_tensors and n not in held and n not in man.omitted.tensors]
    if missing:
        rep.mismatches.append(f"{len(missing)} tensors of the source are neither in the output nor recorded as omitted "
                              f"(first: {missing[0]})")
