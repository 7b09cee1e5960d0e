"""Execute a plan: one output file at a time, temp name then rename, manifest last.

Memory is bounded by the block size (default 64 MiB of rows): row blocks are read with
``preadv`` into a small pool of reused block buffers, converted if needed, hashed (xxh3-128 or
sha256) and written; tables are never materialised. Writing runs in one background thread fed
through a queue of at most two blocks, so reading, converting and hashing the next block
overlap the (disk-bound) write of the previous one; memory stays four block buffers. Bytes
copied unchanged (same-dtype tables, other tensors) go source -> output with
``copy_file_range`` and are hashed through a read-only mapping of a 16 MiB window.
"""

from __future__ import annotations

import contextlib
import errno
import io
import mmap
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from engram_cli.errors import BadInputError, UsageError, VerificationError
from engram_cli.fsutil import atomic_path, write_json_atomic
from engram_cli.progress import ProgressCallback
from engram_cli.tables.codecs import codec_threads, convert, convert_scales, decode, dequant_tiles
from engram_cli.tables.manifest import (MANIFEST, WrittenFile, WrittenTensor, build_manifest, checksum_algorithm,
                                        new_hasher, write_manifest)
from engram_cli.tables.plan import OutFile, OutTensor, ShardPlan, TableSlice, TensorBytes, TensorCopy, TileDequant
from engram_cli.tables.rows import DEFAULT_BLOCK_BYTES, BufferPool, Lease, RowReader, block_rows_for, iter_blocks
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
_copy_file_range = getattr(os, "copy_file_range", None)  # module attribute: tests replace it
# errors after which copy_file_range is given up for a read + write of the same bytes
_CFR_FALLBACK_ERRNOS = {errno.ENOSYS, errno.EXDEV, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.EPERM,
                        errno.EBADF}
_MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


class _Sink:
    """Ordered writer of one output file, computing its checksum on the way.

    The producer (the caller) reads or converts a block into a :class:`BufferPool` buffer,
    hashes it and hands it over (``put_lease``); with ``threaded`` a background thread does
    the ``write`` calls and gives the buffer back to the pool, while the caller produces the
    next block (``write``, ``copy_file_range`` and the hashers release the GIL). Byte ranges
    copied unchanged from the source (``copy``) never pass through user space: the caller
    hashes them through a short-lived read-only ``mmap`` window and the writer thread moves
    them with ``copy_file_range`` (what ``cp`` does), falling back to ``pread`` + ``write``
    where the kernel or filesystem does not support it. Hashing stays in output order because
    only the caller hashes. ``close()`` must be called (it joins the thread and re-raises its
    error)."""

    QUEUE_BLOCKS = 2
    POOL_BLOCKS = QUEUE_BLOCKS + 2  # one being filled, two queued, one being written
    WRITE_SLICE = 512 * 1024  # write(2) in cache-sized slices: kernel copy cost was 1.5-5x lower than 32 MiB writes
    COPY_WINDOW = 16 * 2**20  # bytes per mmap hashing window

    def __init__(self, fh, progress: Callable[[int], None], checksum: str = "xxh3-128", threaded: bool = True,
                 pool: BufferPool | None = None, block_bytes: int = DEFAULT_BLOCK_BYTES):
        self.fh = fh
        self.hash = new_hasher(checksum)
        self.pos = 0
        self._progress = progress
        self.pool = pool if pool is not None else BufferPool(block_bytes, self.POOL_BLOCKS)
        # test hook: slow writes down so a test can kill a conversion mid-file
        self._delay = float(os.environ.get("ENGRAM_TEST_WRITE_DELAY", "0") or 0)
        self._err: BaseException | None = None
        self._out_fd = self._fileno(fh)
        self.use_copy_file_range = (_copy_file_range is not None and self._out_fd is not None
                                    and not os.environ.get("ENGRAM_NO_COPY_FILE_RANGE"))
        self._fallback: memoryview | None = None
        self._hash_scratch: np.ndarray | None = None
        self._q: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        if threaded:
            self._q = queue.Queue(maxsize=self.QUEUE_BLOCKS)
            self._thread = threading.Thread(target=self._run, name="engram-shard-writer", daemon=True)
            self._thread.start()

    @staticmethod
    def _fileno(fh) -> int | None:
        """The fd behind an unbuffered file (whose position ``copy_file_range`` may move), else None."""
        if not isinstance(fh, io.FileIO):
            return None
        try:
            return fh.fileno()
        except (OSError, ValueError):
            return None

    # ---------------------------------------------------------------- writer side
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

    def _copy(self, fd: int, offset: int, n: int) -> None:
        """``n`` source bytes at ``offset`` appended to the output, in the kernel where possible."""
        done = 0
        while done < n:
            if self.use_copy_file_range:
                if done == 0:  # the source is read once, front to back (what cp tells the kernel too)
                    with contextlib.suppress(OSError, AttributeError):
                        os.posix_fadvise(fd, offset, n, os.POSIX_FADV_SEQUENTIAL)
                try:
                    k = _copy_file_range(fd, self._out_fd, n - done, offset + done)
                except OSError as exc:
                    if exc.errno not in _CFR_FALLBACK_ERRNOS:
                        raise
                    self.use_copy_file_range = False  # this and every later range: read + write
                    continue
            else:
                if self._fallback is None:
                    self._fallback = memoryview(bytearray(4 * 2**20))
                buf = self._fallback[: min(n - done, self._fallback.nbytes)]
                k = os.preadv(fd, [buf], offset + done)
                if k > 0:
                    self._write(buf[:k])
            if k <= 0:
                raise BadInputError(f"source ended at byte {offset + done} while copying it", hint="the file is truncated")
            done += k

    def _do(self, op: tuple) -> None:
        if op[0] == "w":
            _, mv, lease = op
            try:
                if self._err is None:
                    self._write(mv)
            finally:
                if lease is not None:
                    lease.release()
        elif self._err is None:
            self._copy(*op[1:])

    def _run(self) -> None:
        while True:
            op = self._q.get()
            if op is None:
                return
            try:
                self._do(op)  # after an error: only gives buffers back, so the producer never waits forever
            except BaseException as exc:  # noqa: BLE001 - re-raised in the producer
                if self._err is None:
                    self._err = exc

    # ---------------------------------------------------------------- producer side
    def _submit(self, op: tuple, nbytes: int) -> None:
        if self._q is not None:
            self._q.put(op)
        else:
            self._do(op)
        self.pos += nbytes
        self._progress(nbytes)

    def _check(self) -> None:
        if self._delay:
            time.sleep(self._delay)
        if self._err is not None:
            raise self._err

    def lease(self, nbytes: int) -> Lease:
        """A block buffer of at least ``nbytes`` from the pool (waits while the writer holds them all)."""
        self._check()
        return self.pool.acquire(nbytes)

    def put_lease(self, lease: Lease, nbytes: int) -> None:
        """Hash and queue the first ``nbytes`` of a leased buffer; the writer gives it back."""
        try:
            self._check()
            mv = memoryview(lease.array[:nbytes]).cast("B")
            self.hash.update(mv)
        except BaseException:
            lease.release()
            raise
        self._submit(("w", mv, lease), nbytes)

    def put(self, data) -> None:
        """Hash and queue bytes the caller will not modify again (headers, small tensors, zeros)."""
        self._check()
        mv = memoryview(np.ascontiguousarray(data) if isinstance(data, np.ndarray) else data).cast("B")
        self.hash.update(mv)
        self._submit(("w", mv, None), mv.nbytes)

    def copy(self, fd: int, offset: int, n: int) -> None:
        """Append ``n`` bytes of the (read-only) source ``fd`` at ``offset``, unchanged."""
        if not self.use_copy_file_range:
            for a in range(0, n, self.pool.size):
                k = min(self.pool.size, n - a)
                lease = self.lease(k)
                try:
                    _pread_exact(fd, memoryview(lease.array[:k]), offset + a)
                except BaseException:
                    lease.release()
                    raise
                self.put_lease(lease, k)
            return
        # one request for the whole range (the kernel moves up to ~2 GiB per call): 16 MiB requests
        # cost ~30% more system time than cp's 2 GiB ones; hashing runs meanwhile, window by window
        self._check()
        self._submit(("c", fd, offset, n), 0)
        for a in range(0, n, self.COPY_WINDOW):
            k = min(self.COPY_WINDOW, n - a)
            self._check()
            self._hash_source(fd, offset + a, k)
            self.pos += k
            self._progress(k)

    def _hash_source(self, fd: int, off: int, n: int) -> None:
        """Hash source bytes through a read-only mapping of just this window (no copy into user
        space; the mapping is dropped at once, so resident memory stays one window)."""
        if os.fstat(fd).st_size < off + n:  # a mapping past the end would fault (SIGBUS) on access
            raise BadInputError(f"source ends before byte {off + n}", hint="the file is truncated")
        start = off - off % mmap.ALLOCATIONGRANULARITY
        try:
            m = mmap.mmap(fd, off + n - start, flags=mmap.MAP_SHARED | _MAP_POPULATE, prot=mmap.PROT_READ, offset=start)
        except (OSError, ValueError):  # a file that cannot be mapped: read it into a scratch buffer instead
            if self._hash_scratch is None or self._hash_scratch.nbytes < n:
                self._hash_scratch = np.empty(max(n, self.COPY_WINDOW), np.uint8)
            mv = memoryview(self._hash_scratch[:n])
            _pread_exact(fd, mv, off)
            self.hash.update(mv)
            return
        try:
            with memoryview(m) as whole:
                with whole[off - start:] as mv:
                    self.hash.update(mv)
        finally:
            m.close()

    def zeros(self, n: int, block: int) -> None:
        z = _zeros(min(n, block)) if n > 0 else None
        while n > 0:
            k = min(n, block)
            self.put(z[:k])
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


_ZEROS: list[memoryview] = []


def _zeros(n: int) -> memoryview:
    """A shared read-only block of zero bytes (padding), at least ``n`` long."""
    if not _ZEROS or _ZEROS[0].nbytes < n:
        _ZEROS[:] = [memoryview(bytes(n))]
    return _ZEROS[0][:n]


def _pread_exact(fd: int, mv: memoryview, offset: int) -> None:
    got = 0
    while got < mv.nbytes:
        k = os.preadv(fd, [mv[got:]], offset + got)
        if k <= 0:
            raise BadInputError(f"source ends at byte {offset + got}", hint="the file is truncated")
        got += k


def table_block(reader: RowReader, t, sl: TableSlice, a: int, b: int, out: np.ndarray | None = None) -> np.ndarray:
    """Rows ``[a, b)`` of table ``t`` encoded as ``sl`` asks, as ``uint8 [n, row_bytes]``.

    With ``out`` (a uint8 buffer of at least the block's bytes, e.g. a pooled one) the result
    is always placed in it; source rows that feed a conversion go to the reader's scratch
    buffers, so a block allocates nothing but what a codec needs internally."""
    if out is None:
        return _table_block(reader, t, sl, a, b, None)
    res = _table_block(reader, t, sl, a, b, out)
    if not np.may_share_memory(res, out):
        if res.nbytes > out.nbytes:
            raise VerificationError(f"layer {t.layer_id}: block of {res.nbytes} bytes exceeds its buffer")
        dst = out[: res.nbytes].reshape(res.shape)
        dst[:] = res
        res = dst
    return res


def _table_block(reader: RowReader, t, sl: TableSlice, a: int, b: int, out: np.ndarray | None) -> np.ndarray:
    same = sl.encoding == t.encoding
    part = sl.part
    n = b - a
    pooled = out is not None

    def w_in():  # source rows that feed a codec: the reader's scratch when the result has a buffer of its own
        return reader.weight(t, a, b, reader.scratch("w", n * t.weight_row_bytes) if pooled else None)

    def s_in():
        if not t.scale:
            return None
        return reader.scale(t, a, b, reader.scratch("s", n * t.scale_row_bytes) if pooled else None)

    if part == "q8_0":
        from engram_cli.tables.gguf_io import quantize_q8_0

        x = decode(t.encoding, t.dim, w_in(), s_in(), "F32")
        return quantize_q8_0(x.numpy())
    if same:
        if part == "weight":
            return reader.weight(t, a, b, out)
        if part == "scale":
            return reader.scale(t, a, b, out)
        if not t.scale:
            return reader.weight(t, a, b, out)
        if out is None:
            return np.concatenate([reader.weight(t, a, b), reader.scale(t, a, b)], axis=1)
        wrb, srb = t.weight_row_bytes, t.scale_row_bytes
        o = out[: n * (wrb + srb)].reshape(n, wrb + srb)
        reader.weight(t, a, b, o[:, :wrb])
        reader.scale(t, a, b, o[:, wrb:])
        return o
    if part == "scale":  # the scale tensor of a converted table: scales only, weights not re-quantised
        return convert_scales(t.encoding, sl.encoding, t.dim, w_in(), s_in())
    w, s = convert(t.encoding, sl.encoding, t.dim, w_in(), s_in(), out if part == "weight" else None)
    if part == "weight":
        return w
    if s is None:
        return w
    if out is None:
        return np.concatenate([w, s], axis=1)
    o = out[: n * (w.shape[1] + s.shape[1])].reshape(n, w.shape[1] + s.shape[1])
    np.concatenate([w, s], axis=1, out=o)
    return o


def copy_ranges(reader: RowReader, t, sl: TableSlice) -> list[tuple[str, int, int]] | None:
    """The source byte ranges an output table tensor consists of when it is a pure byte copy
    (same encoding, a weight or scale part, or rows of a table without scales, stored
    contiguously), else None."""
    if sl.encoding != t.encoding:
        return None
    if sl.part == "weight" or (sl.part == "rows" and not t.scale):
        segs, rb = t.weight, t.weight_row_bytes
    elif sl.part == "scale" and t.scale:
        segs, rb = t.scale, t.scale_row_bytes
    else:
        return None
    out: list[tuple[str, int, int]] = []
    for p in sl.pieces:
        r = reader.byte_ranges(segs, p.start, p.stop, rb)
        if r is None:
            return None
        for path, off, n in r:
            if out and out[-1][0] == path and out[-1][1] + out[-1][2] == off:
                out[-1] = (path, out[-1][1], out[-1][2] + n)
            else:
                out.append((path, off, n))
    return out


def stream_tensor(sink: _Sink, reader: RowReader, tables: dict, source: Source, ot: OutTensor, block_bytes: int) -> None:
    src = ot.source
    if isinstance(src, TensorCopy):
        e = source.checkpoint.entry(src.name)
        sink.copy(reader.fd(str(source.checkpoint.file_of(src.name))), e.offset, e.nbytes)
        return
    if isinstance(src, TensorBytes):
        sink.put(src.data)
        return
    if isinstance(src, TileDequant):
        for lease, nbytes in _tile_dequant(reader, source, src, block_bytes, sink.lease):
            sink.put_lease(lease, nbytes)
        return
    t = tables[src.layer]
    ranges = copy_ranges(reader, t, src)
    if ranges is not None:
        for path, off, n in ranges:
            sink.copy(reader.fd(path), off, n)
    else:
        rb = block_rows_for(max(ot.row_bytes, t.row_bytes * (1 if src.encoding == t.encoding else 4)), block_bytes)
        for p in src.pieces:
            for a, b in iter_blocks(p.start, p.stop, rb):
                nbytes = (b - a) * ot.row_bytes
                lease = sink.lease(nbytes)
                try:
                    blk = table_block(reader, t, src, a, b, lease.array)
                    if blk.nbytes != nbytes:
                        raise VerificationError(f"layer {t.layer_id}: rows {a}..{b} gave {blk.nbytes} bytes, planned {nbytes}")
                except BaseException:
                    lease.release()
                    raise
                sink.put_lease(lease, nbytes)
    if src.pad_rows:
        sink.zeros(src.pad_rows * ot.row_bytes, block_bytes)


def _tile_dequant(reader: RowReader, source: Source, td: TileDequant, block_bytes: int, lease_fn=None):
    """Dequantised rows of a tile-scaled fp8 tensor, whole tile rows per block: ``(lease,
    nbytes)`` pairs with ``lease_fn``, else ``(uint8 array, None)``."""
    ck = source.checkpoint
    e, se = ck.entry(td.weight), ck.entry(td.scale)
    rows, cols = e.shape
    out_size = 2 if td.dtype == "BF16" else 4
    step = max(td.tile, block_rows_for(cols * (1 + out_size) * 2, block_bytes) // td.tile * td.tile)
    wpath, spath = str(ck.file_of(td.weight)), str(ck.file_of(td.scale))
    srow = se.shape[1]
    for a, b in iter_blocks(0, rows, step):
        n = (b - a) * cols
        w = np.frombuffer(reader.read_bytes(wpath, e.offset + a * cols, n, memoryview(reader.scratch("tw", n))),
                          np.uint8).reshape(b - a, cols)
        t0, t1 = a // td.tile, -(-b // td.tile)
        ns = (t1 - t0) * srow
        s = np.frombuffer(reader.read_bytes(spath, se.offset + t0 * srow, ns, memoryview(reader.scratch("ts", ns))),
                          np.uint8).reshape(t1 - t0, srow)
        if lease_fn is None:
            yield dequant_tiles(w, s, a, td.tile, td.dtype).view(np.uint8), None
            continue
        lease = lease_fn(n * out_size)
        try:
            dequant_tiles(w, s, a, td.tile, td.dtype, lease.array)
        except BaseException:
            lease.release()
            raise
        yield lease, n * out_size


def tile_dequant_blocks(reader: RowReader, source: Source, td: TileDequant, block_bytes: int):
    """Dequantised rows of a tile-scaled fp8 tensor, whole tile rows per block (uint8 views)."""
    for blk, _ in _tile_dequant(reader, source, td, block_bytes):
        yield blk


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
               progress: Callable[[int], None], checksum: str = "xxh3-128", threaded: bool = True,
               pool: BufferPool | None = None) -> WrittenFile:
    with atomic_path(out_dir / f.name) as tmp:
        with open(tmp, "wb", buffering=0) as fh:
            sink = _Sink(fh, progress, checksum, threaded, pool, block_bytes)
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
    pool = BufferPool(block_bytes, _Sink.POOL_BLOCKS)  # shared by every file: buffers allocated once per run
    with RowReader() as reader, codec_threads(1):
        for f in plan.files:
            w = write_file(out, f, source, reader, tables, block_bytes, tick, algo, pool=pool)
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
