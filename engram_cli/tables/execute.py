"""Execute a plan: one output file at a time, temp name then rename, manifest last.

Memory is bounded by the block size (default 64 MiB of rows): row blocks are read with
``pread``, converted if needed, hashed (xxh3-128 or sha256) and written; tables are never
materialised. Writing and hashing run in one background thread fed through a queue of at
most two blocks, so reading and converting the next block overlap the (disk-bound) write of
the previous one; memory stays a few blocks.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from engram_cli.errors import UsageError, VerificationError
from engram_cli.fsutil import atomic_path, write_json_atomic
from engram_cli.progress import ProgressCallback
from engram_cli.tables.codecs import codec_threads, convert, convert_scales, decode, dequant_tiles
from engram_cli.tables.manifest import (MANIFEST, WrittenFile, WrittenTensor, build_manifest, checksum_algorithm,
                                        new_hasher, write_manifest)
from engram_cli.tables.plan import OutFile, OutTensor, ShardPlan, TableSlice, TensorBytes, TensorCopy, TileDequant
from engram_cli.tables.rows import DEFAULT_BLOCK_BYTES, RowReader, block_rows_for, iter_blocks
from engram_cli.tables.source import Source
from engram_cli.tables.st_format import read_header

OUR_SUFFIXES = (".safetensors", ".bin", ".gguf", ".index.json")
OUR_NAMES = ("engram-local.json", "engram_layout.json", "token_map.safetensors")


@dataclass
class ShardResult:
    plan: ShardPlan
    out_dir: Path
    files: list[WrittenFile]
    manifest_path: Path
    seconds: float
    bytes_written: int
    verified: str
    removed: list[str] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        return self.bytes_written / self.seconds if self.seconds > 0 else 0.0


# ------------------------------------------------------------------ output directory
def _ours(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp") or name.endswith(OUR_SUFFIXES) or name in OUR_NAMES or name == MANIFEST


def prepare_out_dir(out: Path, source_path: Path, planned: set[str], force: bool) -> list[str]:
    """Refuse or clear an existing output; returns stale names to remove after writing."""
    out = Path(out)
    src = Path(source_path).resolve()
    o = out.resolve()
    if o == src or (src.is_dir() and src in o.parents) or (src.is_file() and o == src.parent):
        raise UsageError(f"output {out} is inside the source {source_path}", hint="write to another directory")
    if out.exists() and not out.is_dir():
        raise UsageError(f"output {out} exists and is not a directory")
    if not out.exists():
        out.mkdir(parents=True)
        return []
    entries = [p.name for p in out.iterdir()]
    if not entries:
        return []
    has_manifest = (out / MANIFEST).exists()
    if has_manifest and not force:
        raise UsageError(f"output {out} already holds a conversion", hint="pass --force to replace it")
    if not has_manifest and not force and not all(_ours(n) and (n in planned or n.endswith(".tmp")) for n in entries):
        raise UsageError(f"output directory {out} is not empty", hint="pass --force to replace it")
    if has_manifest:
        (out / MANIFEST).unlink()  # from now on the directory is visibly incomplete
    for n in entries:  # leftovers of an interrupted run
        if n.startswith(".") and n.endswith(".tmp"):
            (out / n).unlink(missing_ok=True)
    return [n for n in entries if n not in planned and n != MANIFEST and (force or _ours(n))]


# ------------------------------------------------------------------ streaming
class _Sink:
    """Ordered writer + hasher of one output file; with ``threaded`` a background thread does
    the ``write`` and ``update`` calls (both release the GIL) while the caller produces the
    next block. ``close()`` must be called (it joins the thread and re-raises its error)."""

    QUEUE_BLOCKS = 2

    def __init__(self, fh, progress: Callable[[int], None], checksum: str = "xxh3-128", threaded: bool = True):
        self.fh = fh
        self.hash = new_hasher(checksum)
        self.pos = 0
        self._progress = progress
        # test hook: slow writes down so a test can kill a conversion mid-file
        self._delay = float(os.environ.get("ENGRAM_TEST_WRITE_DELAY", "0") or 0)
        self._err: BaseException | None = None
        self._q: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        if threaded:
            self._q = queue.Queue(maxsize=self.QUEUE_BLOCKS)
            self._thread = threading.Thread(target=self._run, name="engram-shard-writer", daemon=True)
            self._thread.start()

    WRITE_SLICE = 512 * 1024  # write(2) and hash in cache-sized slices: kernel copy cost was 1.5-5x lower than 32 MiB writes

    def _write(self, mv: memoryview) -> None:
        n = mv.nbytes
        for a in range(0, n, self.WRITE_SLICE):
            piece = mv[a:a + self.WRITE_SLICE]
            done = 0
            while done < piece.nbytes:
                k = self.fh.write(piece[done:])
                if not k:
                    raise OSError("short write")
                done += k
            self.hash.update(piece)

    def _run(self) -> None:
        while True:
            mv = self._q.get()
            if mv is None:
                return
            if self._err is None:
                try:
                    self._write(mv)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the producer
                    self._err = exc

    def put(self, data) -> None:
        if self._delay:
            time.sleep(self._delay)
        if self._err is not None:
            raise self._err
        mv = memoryview(np.ascontiguousarray(data) if isinstance(data, np.ndarray) else data).cast("B")
        if self._q is not None:
            self._q.put(mv)
        else:
            self._write(mv)
        self.pos += mv.nbytes
        self._progress(mv.nbytes)

    def zeros(self, n: int, block: int) -> None:
        while n > 0:
            k = min(n, block)
            self.put(bytes(k))
            n -= k

    def close(self, raise_error: bool = True) -> None:
        """Wait until every block is written; re-raise a write error (unless another is propagating)."""
        if self._thread is not None:
            self._q.put(None)
            self._thread.join()
            self._thread = None
        if self._err is not None and raise_error:
            raise self._err

    def hexdigest(self) -> str:
        return self.hash.hexdigest()


def table_block(reader: RowReader, t, sl: TableSlice, a: int, b: int) -> np.ndarray:
    """Rows ``[a, b)`` of table ``t`` encoded as ``sl`` asks, as ``uint8 [n, row_bytes]``."""
    same = sl.encoding == t.encoding
    part = sl.part
    if part == "q8_0":
        from engram_cli.tables.gguf_io import quantize_q8_0

        x = decode(t.encoding, t.dim, reader.weight(t, a, b), reader.scale(t, a, b) if t.scale else None, "F32")
        return quantize_q8_0(x.numpy())
    if same:
        if part == "weight":
            return reader.weight(t, a, b)
        if part == "scale":
            return reader.scale(t, a, b)
        w = reader.weight(t, a, b)
        return np.concatenate([w, reader.scale(t, a, b)], axis=1) if t.scale else w
    if part == "scale":  # the scale tensor of a converted table: scales only, weights not re-quantised
        return convert_scales(t.encoding, sl.encoding, t.dim, reader.weight(t, a, b), reader.scale(t, a, b) if t.scale else None)
    w, s = convert(t.encoding, sl.encoding, t.dim, reader.weight(t, a, b), reader.scale(t, a, b) if t.scale else None)
    if part == "weight":
        return w
    if part == "scale":
        return s
    return np.concatenate([w, s], axis=1) if s is not None else w


def stream_tensor(sink: _Sink, reader: RowReader, tables: dict, source: Source, ot: OutTensor, block_bytes: int) -> None:
    src = ot.source
    if isinstance(src, TensorCopy):
        e = source.checkpoint.entry(src.name)
        path = str(source.checkpoint.file_of(src.name))
        for a, b in iter_blocks(0, e.nbytes, block_bytes):
            sink.put(reader.read_bytes(path, e.offset + a, b - a))
        return
    if isinstance(src, TensorBytes):
        sink.put(src.data)
        return
    if isinstance(src, TileDequant):
        for blk in tile_dequant_blocks(reader, source, src, block_bytes):
            sink.put(blk)
        return
    t = tables[src.layer]
    rb = block_rows_for(max(ot.row_bytes, t.row_bytes * (1 if src.encoding == t.encoding else 4)), block_bytes)
    for p in src.pieces:
        for a, b in iter_blocks(p.start, p.stop, rb):
            sink.put(table_block(reader, t, src, a, b))
    if src.pad_rows:
        sink.zeros(src.pad_rows * ot.row_bytes, block_bytes)


def tile_dequant_blocks(reader: RowReader, source: Source, td: TileDequant, block_bytes: int):
    """Dequantised rows of a tile-scaled fp8 tensor, whole tile rows per block (uint8 views)."""
    ck = source.checkpoint
    e, se = ck.entry(td.weight), ck.entry(td.scale)
    rows, cols = e.shape
    out_size = 2 if td.dtype == "BF16" else 4
    step = max(td.tile, block_rows_for(cols * (1 + out_size) * 2, block_bytes) // td.tile * td.tile)
    wpath, spath = str(ck.file_of(td.weight)), str(ck.file_of(td.scale))
    srow = se.shape[1]
    for a, b in iter_blocks(0, rows, step):
        w = np.frombuffer(reader.read_bytes(wpath, e.offset + a * cols, (b - a) * cols), np.uint8).reshape(b - a, cols)
        t0, t1 = a // td.tile, -(-b // td.tile)
        s = np.frombuffer(reader.read_bytes(spath, se.offset + t0 * srow, (t1 - t0) * srow), np.uint8).reshape(t1 - t0, srow)
        yield dequant_tiles(w, s, a, td.tile, td.dtype).view(np.uint8)


def _table_doc(ot: OutTensor, t) -> dict | None:
    if isinstance(ot.source, TileDequant):
        d = ot.source
        return {"dequantised_from": d.weight, "scale": d.scale, "tile": [d.tile, d.tile], "source_dtype": "F8_E4M3"}
    if not isinstance(ot.source, TableSlice):
        return None
    s = ot.source
    d = {"layer": s.layer, "part": s.part, "dim": t.dim, "encoding": s.encoding.to_dict(),
         "pieces": [[p.start, p.stop, p.head] for p in s.pieces], "pad_rows": s.pad_rows,
         "heads": list(s.heads) if s.heads else None}
    if all(x.stop == y.start for x, y in zip(s.pieces, s.pieces[1:])) and s.pieces:
        d["rows"] = [s.pieces[0].start, s.pieces[-1].stop]
    return d


def write_file(out_dir: Path, f: OutFile, source: Source, reader: RowReader, tables: dict, block_bytes: int,
               progress: Callable[[int], None], checksum: str = "xxh3-128", threaded: bool = True) -> WrittenFile:
    with atomic_path(out_dir / f.name) as tmp:
        with open(tmp, "wb", buffering=0) as fh:
            sink = _Sink(fh, progress, checksum, threaded)
            try:
                offsets = _write_body(f, sink, source, reader, tables, block_bytes)
            except BaseException:
                sink.close(raise_error=False)  # join the writer before the temporary file is closed and removed
                raise
            sink.close()
            os.fsync(fh.fileno()) if os.environ.get("ENGRAM_FSYNC") else None
            size, digest = sink.pos, sink.hexdigest()
    tensors = tuple(WrittenTensor(ot.name, ot.dtype, ot.shape, off, ot.nbytes, ot.row_bytes,
                                  _table_doc(ot, tables.get(getattr(ot.source, "layer", None))))
                    for ot, off in zip(f.tensors, offsets))
    return WrittenFile(f.name, f.format, size, digest, tensors, {k: v for k, v in f.info}, checksum)


def _write_body(f: OutFile, sink: _Sink, source: Source, reader: RowReader, tables: dict, block_bytes: int) -> list[int]:
    """Header, then every tensor at its planned offset; returns the offsets."""
    if f.format == "safetensors":
        head, offsets = f.header()
        sink.put(head)
    elif f.format == "gguf":
        from engram_cli.tables.gguf_io import write_gguf_header

        offsets = write_gguf_header(f, sink)
    else:
        offsets, pos = [], 0
        for ot in f.tensors:
            offsets.append(pos)
            pos += ot.nbytes
    for i, ot in enumerate(f.tensors):
        if f.format == "gguf":
            sink.zeros(offsets[i] - sink.pos, block_bytes)
        if sink.pos != offsets[i]:
            raise VerificationError(f"{f.name}: tensor {ot.name} starts at {sink.pos}, planned {offsets[i]}")
        stream_tensor(sink, reader, tables, source, ot, block_bytes)
        if sink.pos != offsets[i] + ot.nbytes:
            raise VerificationError(f"{f.name}: tensor {ot.name} wrote {sink.pos - offsets[i]} bytes, planned {ot.nbytes}")
    if f.format == "gguf":
        from engram_cli.tables.gguf_io import ALIGN

        sink.zeros((-sink.pos) % ALIGN, block_bytes)
    return offsets


def quick_check(out_dir: Path, f: OutFile, w: WrittenFile) -> None:
    """Re-open what was written: size, and the safetensors header against the plan."""
    p = out_dir / f.name
    if p.stat().st_size != w.bytes:
        raise VerificationError(f"{f.name}: {p.stat().st_size} bytes on disk, {w.bytes} written")
    if f.format == "safetensors":
        h = read_header(p)
        for ot in f.tensors:
            e = h.tensors.get(ot.name)
            if e is None or e.dtype != ot.dtype or e.shape != tuple(ot.shape):
                raise VerificationError(f"{f.name}: tensor {ot.name} does not match the plan after writing")


def execute(plan: ShardPlan, source: Source, out_dir: str | Path, *, force: bool = False,
            block_bytes: int = DEFAULT_BLOCK_BYTES, progress: ProgressCallback | None = None,
            verify: str = "quick", layout: object | None = None, checksum: str = "xxh3") -> ShardResult:
    algo = checksum_algorithm(checksum)
    out = Path(out_dir)
    planned = {f.name for f in plan.files} | {n for _, n in plan.copies} | {n for _, n, _ in plan.rewrites}
    if plan.index is not None:
        planned.add("model.safetensors.index.json")
    if layout is not None:
        planned |= {"engram_layout.json", "token_map.safetensors"}
    stale = prepare_out_dir(out, source.path, planned, force)
    total = plan.total_bytes
    done = 0
    t0 = time.perf_counter()
    tables = {t.layer_id: t for t in source.tables}

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total, "writing")

    written: list[WrittenFile] = []
    with RowReader() as reader, codec_threads(1):
        for f in plan.files:
            w = write_file(out, f, source, reader, tables, block_bytes, tick, algo)
            if verify != "none":
                quick_check(out, f, w)
            written.append(w)
    import shutil

    for src, name in plan.copies:
        with atomic_path(out / name) as tmp:
            shutil.copyfile(src, tmp)
    for _src, name, content in plan.rewrites:
        with atomic_path(out / name) as tmp:
            tmp.write_bytes(content)
    if layout is not None:
        layout.save(out)
    if plan.index is not None:
        write_json_atomic(out / "model.safetensors.index.json", plan.index)
    for n in stale:
        p = out / n
        if p.is_file():
            p.unlink()
    seconds = time.perf_counter() - t0
    fp = source.fingerprint()
    doc = build_manifest(plan, written, fp, layout.to_dict() if layout is not None else None)
    if verify == "full":
        from engram_cli.tables.verify import verify_files

        verify_files(out, doc, source=source)
    mpath = write_manifest(out, doc)
    return ShardResult(plan, out, written, mpath, seconds, sum(w.bytes for w in written), verify, stale)
