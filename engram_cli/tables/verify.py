"""``engram shard verify``: checksums of every file (each by the algorithm its manifest entry
records: xxh3-128 or sha256), and given the source, row equality (tables, and projections
written dequantised)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engram_cli.errors import VerificationError
from engram_cli.tables.manifest import file_checksum, new_hasher
from engram_cli.progress import ProgressCallback
from engram_cli.tables.model import Encoding
from engram_cli.tables.plan import TableSlice
from engram_cli.tables.policies import Piece
from engram_cli.tables.rows import DEFAULT_BLOCK_BYTES, RowReader, block_rows_for, iter_blocks
from engram_cli.tables.source import Source


@dataclass
class VerifyReport:
    out_dir: Path
    files: int = 0
    bytes: int = 0
    rows_checked: int = 0
    mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def to_dict(self) -> dict:
        return {"out_dir": str(self.out_dir), "files": self.files, "bytes": self.bytes,
                "rows_checked": self.rows_checked, "ok": self.ok, "mismatches": self.mismatches}


def file_digest(path: Path, block: int = DEFAULT_BLOCK_BYTES, tick=None, algorithm: str = "xxh3-128") -> str:
    h = new_hasher(algorithm)
    buf = bytearray(block)
    mv = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while True:
            n = fh.readinto(mv)
            if not n:
                break
            h.update(mv[:n])
            if tick:
                tick(n)
    return h.hexdigest()


def verify_files(out_dir: str | Path, manifest: dict, *, source: Source | None = None,
                 progress: ProgressCallback | None = None, block_bytes: int = DEFAULT_BLOCK_BYTES,
                 raise_on_error: bool = True) -> VerifyReport:
    out = Path(out_dir)
    rep = VerifyReport(out)
    total = sum(f["bytes"] for f in manifest["files"]) * (2 if source else 1)
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total, "verifying")

    for f in manifest["files"]:
        p = out / f["name"]
        if not p.is_file():
            rep.mismatches.append(f"{f['name']}: missing")
            continue
        size = p.stat().st_size
        if size != f["bytes"]:
            rep.mismatches.append(f"{f['name']}: {size} bytes, manifest says {f['bytes']}")
            continue
        algo, want = file_checksum(f)
        if want is None:
            rep.mismatches.append(f"{f['name']}: manifest has no {algo} digest")
        elif file_digest(p, block_bytes, tick, algo) != want:
            rep.mismatches.append(f"{f['name']}: checksum mismatch ({algo})")
        rep.files += 1
        rep.bytes += size
    if source is not None and not rep.mismatches:
        from engram_cli.tables.codecs import codec_threads

        with codec_threads(1):
            _compare_rows(out, manifest, source, rep, block_bytes, tick)
    if rep.mismatches and raise_on_error:
        more = f" (+{len(rep.mismatches) - 1} more)" if len(rep.mismatches) > 1 else ""
        raise VerificationError(f"verification failed: {rep.mismatches[0]}{more}", hint="re-run the conversion with --force")
    return rep


def _compare_rows(out: Path, manifest: dict, source: Source, rep: VerifyReport, block_bytes: int, tick) -> None:
    from engram_cli.tables.execute import table_block

    tables = {t.layer_id: t for t in source.tables}
    with RowReader() as src_reader, RowReader() as out_reader:
        for f in manifest["files"]:
            path = str(out / f["name"])
            for td in f["tensors"]:
                if td.get("dequantised_from"):
                    if not _compare_dequant(path, td, source, src_reader, out_reader, rep, block_bytes, tick, f["name"]):
                        return
                    continue
                if td.get("layer") is None:
                    continue
                t = tables.get(int(td["layer"]))
                if t is None:
                    rep.mismatches.append(f"{f['name']}: layer {td['layer']} is not in the source")
                    return
                sl = TableSlice(t.layer_id, tuple(Piece(a, b, h) for a, b, h in td["pieces"]), td["part"],
                                Encoding.from_dict(td["encoding"]), int(td["pad_rows"]))
                stride = int(td["row_bytes"])
                off = int(td["offset"])
                rb = block_rows_for(max(stride, t.row_bytes) * 4, block_bytes)
                for p in sl.pieces:
                    for a, b in iter_blocks(p.start, p.stop, rb):
                        want = table_block(src_reader, t, sl, a, b)
                        got = np.frombuffer(out_reader.read_bytes(path, off, (b - a) * stride), np.uint8).reshape(b - a, stride)
                        off += (b - a) * stride
                        tick((b - a) * stride)
                        if not np.array_equal(want, got):
                            bad = a + int(np.nonzero((want != got).any(axis=1))[0][0])
                            rep.mismatches.append(f"{f['name']}: tensor {td['name']} differs from the source at layer {t.layer_id} row {bad}")
                            return
                        rep.rows_checked += b - a
                if sl.pad_rows:
                    got = np.frombuffer(out_reader.read_bytes(path, off, sl.pad_rows * stride), np.uint8)
                    if got.any():
                        rep.mismatches.append(f"{f['name']}: tensor {td['name']} padding rows are not zero")
                        return


def _compare_dequant(path: str, td: dict, source: Source, src_reader: RowReader, out_reader: RowReader,
                     rep: VerifyReport, block_bytes: int, tick, fname: str) -> bool:
    """A projection written dequantised: recompute it from the source, block by block."""
    from engram_cli.tables.execute import tile_dequant_blocks
    from engram_cli.tables.plan import TileDequant

    ck = source.checkpoint
    if ck is None or td["dequantised_from"] not in ck.weight_map or td["scale"] not in ck.weight_map:
        rep.mismatches.append(f"{fname}: tensor {td['name']} was dequantised from {td['dequantised_from']}, "
                              f"which the source does not hold")
        return False
    dq = TileDequant(td["dequantised_from"], td["scale"], int(td["tile"][0]), td["dtype"])
    off = int(td["offset"])
    for blk in tile_dequant_blocks(src_reader, source, dq, block_bytes):
        got = np.frombuffer(out_reader.read_bytes(path, off, blk.nbytes), np.uint8).reshape(blk.shape)
        tick(blk.nbytes)
        if not np.array_equal(blk, got):
            row = (off - int(td["offset"])) // blk.shape[1] + int(np.nonzero((blk != got).any(axis=1))[0][0])
            rep.mismatches.append(f"{fname}: tensor {td['name']} differs from the dequantised source at row {row}")
            return False
        off += blk.nbytes
    rep.rows_checked += int(td["shape"][0])
    return True
