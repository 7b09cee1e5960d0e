"""Read row blocks of a table part from its segments with ``os.pread`` (read-only).

Memory is one block: the caller asks for at most ``block_rows`` rows at a time. No mmap, so
resident memory does not grow with the table (file-backed pages would count as RSS).
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from engram_cli.errors import BadInputError
from engram_cli.tables.model import Segment, TableInfo

DEFAULT_BLOCK_BYTES = 64 * 2**20


def block_rows_for(row_bytes: int, block_bytes: int = DEFAULT_BLOCK_BYTES) -> int:
    return max(1, block_bytes // max(1, row_bytes))


def iter_blocks(start: int, stop: int, block_rows: int) -> Iterator[tuple[int, int]]:
    s = start
    while s < stop:
        e = min(stop, s + block_rows)
        yield s, e
        s = e


class RowReader:
    """Open files read-only once, read row ranges of table parts."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}

    def __enter__(self) -> "RowReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

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

    def read(self, segments: tuple[Segment, ...], start: int, stop: int, part_bytes: int) -> np.ndarray:
        """Rows ``[start, stop)`` of one part as ``uint8 [n, part_bytes]``."""
        n = stop - start
        out = np.empty((n, part_bytes), dtype=np.uint8)
        pos = start
        for seg in segments:
            if seg.stop <= pos or seg.start >= stop:
                continue
            a, b = max(pos, seg.start), min(stop, seg.stop)
            dst = out[a - start : b - start]
            off = seg.offset + (a - seg.start) * seg.stride
            if seg.stride == part_bytes and seg.col == 0:
                self.read_bytes(seg.path, off, (b - a) * part_bytes, memoryview(dst).cast("B"))
            else:
                raw = np.frombuffer(self.read_bytes(seg.path, off, (b - a) * seg.stride), dtype=np.uint8)
                dst[:] = raw.reshape(b - a, seg.stride)[:, seg.col : seg.col + part_bytes]
            pos = b
            if pos >= stop:
                break
        if pos < stop:
            raise BadInputError(f"rows {pos}..{stop} are not stored in any source segment")
        return out

    def weight(self, t: TableInfo, start: int, stop: int) -> np.ndarray:
        return self.read(t.weight, start, stop, t.weight_row_bytes)

    def scale(self, t: TableInfo, start: int, stop: int) -> np.ndarray:
        return self.read(t.scale, start, stop, t.scale_row_bytes)
