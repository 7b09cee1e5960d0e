"""Read row blocks of a table part from its segments with ``os.preadv`` (read-only).

Memory is one block: the caller asks for at most ``block_rows`` rows at a time. No mmap, so
resident memory does not grow with the table (file-backed pages would count as RSS). Reads go
into caller-supplied buffers (a :class:`BufferPool` block, or the reader's own grow-only
scratch buffers), so a run allocates its few block buffers once instead of a fresh 64 MB
array per block (each fresh one is an ``mmap`` + 16k zero-filling page faults + ``munmap``).
"""

from __future__ import annotations

import os
import threading
from typing import Iterator

import numpy as np

from engram_cli.errors import BadInputError
from engram_cli.tables.model import Segment, TableInfo
from engram_cli.tables.units import DEFAULT_BLOCK_BYTES


def block_rows_for(row_bytes: int, block_bytes: int = DEFAULT_BLOCK_BYTES) -> int:
    return max(1, block_bytes // max(1, row_bytes))


def iter_blocks(start: int, stop: int, block_rows: int) -> Iterator[tuple[int, int]]:
    s = start
    while s < stop:
        e = min(stop, s + block_rows)
        yield s, e
        s = e


class Lease:
    """One buffer handed out by a :class:`BufferPool` (``array``: uint8, at least the asked size).

    ``release()`` gives it back exactly once; an unpooled lease (a request larger than the
    pool's buffers) is simply dropped."""

    __slots__ = ("pool", "array", "_released")

    def __init__(self, pool: BufferPool | None, array: np.ndarray) -> None:
        self.pool = pool
        self.array = array
        self._released = False

    def release(self) -> None:
        if self._released:
            raise RuntimeError("buffer released twice")
        self._released = True
        if self.pool is not None:
            self.pool._give_back(self.array)


class BufferPool:
    """At most ``count`` reusable ``size``-byte buffers, created on first use and recycled.

    ``acquire`` blocks while all of them are out (held by the producer, queued for or being
    written by the writer thread), so memory stays ``count * size`` however large the table,
    and a buffer is never handed out again before whoever holds it has released it."""

    def __init__(self, size: int, count: int) -> None:
        self.size = max(1, int(size))
        self.count = max(1, int(count))
        self._free: list[np.ndarray] = []
        self._out: set[int] = set()
        self._made = 0
        self._cv = threading.Condition()

    @property
    def created(self) -> int:
        return self._made

    @property
    def in_use(self) -> int:
        return len(self._out)

    def acquire(self, nbytes: int, timeout: float | None = None) -> Lease:
        if nbytes > self.size:  # a single row larger than a block: one-off buffer
            return Lease(None, np.empty(nbytes, np.uint8))
        with self._cv:
            while not self._free and self._made >= self.count:
                if not self._cv.wait(timeout):
                    raise TimeoutError("no block buffer was released in time")
            if self._free:
                buf = self._free.pop()
            else:
                buf = np.empty(self.size, np.uint8)
                self._made += 1
            self._out.add(id(buf))
        return Lease(self, buf)

    def _give_back(self, buf: np.ndarray) -> None:
        with self._cv:
            if id(buf) not in self._out:
                raise RuntimeError("buffer returned to a pool that did not hand it out")
            self._out.discard(id(buf))
            self._free.append(buf)
            self._cv.notify()


class RowReader:
    """Open files read-only once, read row ranges of table parts."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}
        self._scratch: dict[str, np.ndarray] = {}

    def scratch(self, key: str, nbytes: int) -> np.ndarray:
        """A grow-only uint8 buffer of at least ``nbytes`` owned by this reader (the caller must be
        done with the previous contents of ``key`` before asking again)."""
        buf = self._scratch.get(key)
        if buf is None or buf.nbytes < nbytes:
            buf = self._scratch[key] = np.empty(max(nbytes, 1), np.uint8)
        return buf[:nbytes]

    def fd(self, path: str) -> int:
        return self._fd(path)

    def __enter__(self) -> RowReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._scratch.clear()

    def _fd(self, path: str) -> int:
        fd = self._fds.get(path)
        if fd is None:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as exc:
                raise BadInputError(f"cannot open {path}: {exc.strerror}") from None
            self._fds[path] = fd
        return fd

    def read_bytes(self, path: str, offset: int, n: int, out: memoryview | None = None) -> memoryview:
        buf = out if out is not None else memoryview(bytearray(n))
        fd = self._fd(path)
        got = 0
        while got < n:
            k = os.preadv(fd, [buf[got:n]], offset + got)
            if k <= 0:
                raise BadInputError(f"{os.path.basename(path)}: unexpected end of file at byte {offset + got}",
                                    hint="the file is truncated")
            got += k
        return buf[:n]

    def read(self, segments: tuple[Segment, ...], start: int, stop: int, part_bytes: int,
             out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``[start, stop)`` of one part as ``uint8 [n, part_bytes]`` (into ``out`` when given:
        a uint8 array of at least ``n * part_bytes`` bytes, or an ``[n, part_bytes]`` view)."""
        n = stop - start
        if out is None:
            out = np.empty((n, part_bytes), dtype=np.uint8)
        elif out.ndim == 1:
            out = out[: n * part_bytes].reshape(n, part_bytes)
        if not out.flags.c_contiguous:  # e.g. the weight columns of a rows block: read whole, then place
            out[:] = self.read(segments, start, stop, part_bytes, self.scratch("strided", n * part_bytes))
            return out
        for seg, a, b in _spans(segments, start, stop):
            dst = out[a - start : b - start]
            off = seg.offset + (a - seg.start) * seg.stride
            if seg.stride == part_bytes and seg.col == 0:
                self.read_bytes(seg.path, off, (b - a) * part_bytes, memoryview(dst).cast("B"))
            else:
                raw = np.frombuffer(self.read_bytes(seg.path, off, (b - a) * seg.stride,
                                                    memoryview(self.scratch("raw", (b - a) * seg.stride))), dtype=np.uint8)
                dst[:] = raw.reshape(b - a, seg.stride)[:, seg.col : seg.col + part_bytes]
        return out

    def weight(self, t: TableInfo, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        return self.read(t.weight, start, stop, t.weight_row_bytes, out)

    def scale(self, t: TableInfo, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        return self.read(t.scale, start, stop, t.scale_row_bytes, out)

    def byte_ranges(self, segments: tuple[Segment, ...], start: int, stop: int, part_bytes: int) -> list[tuple[str, int, int]] | None:
        """Rows ``[start, stop)`` of one part as contiguous ``(path, offset, nbytes)`` source ranges
        (adjacent ones merged), or None when a segment stores them interleaved with other bytes."""
        out: list[tuple[str, int, int]] = []
        for seg, a, b in _spans(segments, start, stop):
            if seg.stride != part_bytes or seg.col != 0:
                return None
            off, n = seg.offset + (a - seg.start) * seg.stride, (b - a) * part_bytes
            if out and out[-1][0] == seg.path and out[-1][1] + out[-1][2] == off:
                out[-1] = (seg.path, out[-1][1], out[-1][2] + n)
            else:
                out.append((seg.path, off, n))
        return out


def _spans(segments: tuple[Segment, ...], start: int, stop: int) -> Iterator[tuple[Segment, int, int]]:
    """The rows ``[a, b)`` of ``[start, stop)`` that each segment stores, in order.

    Raises BadInputError when some rows are stored in no segment.
    """
    pos = start
    for seg in segments:
        if seg.stop <= pos or seg.start >= stop:
            continue
        a, b = max(pos, seg.start), min(stop, seg.stop)
        yield seg, a, b
        pos = b
        if pos >= stop:
            break
    if pos < stop:
        raise BadInputError(f"rows {pos}..{stop} are not stored in any source segment")
