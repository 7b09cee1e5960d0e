"""The table as a file: a position-keyed byte pattern, page-cache control, and the row readers.

Row bytes are a pure function of their position (splitmix64 of the word index), so any rows
can be re-derived in numpy to verify what a reader returned (``expected_rows``), whatever the
file size, without holding the table in memory.
"""

from __future__ import annotations

import mmap
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from engram_cli.errors import BadInputError

BLOCK = 4096
_CHUNK = 64 << 20
_M = np.uint64(0xFFFFFFFFFFFFFFFF)
TMPFS_TYPES = ("tmpfs", "ramfs", "devtmpfs", "hugetlbfs")


def pattern_words(start: np.ndarray | int, count: int | None = None, *, seed: int = 0) -> np.ndarray:
    """splitmix64(word index + seed) as uint64 for ``start + arange(count)`` (or an index array)."""
    x = np.asarray(start, dtype=np.uint64) if count is None else np.arange(start, start + count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = x + np.uint64(seed) * np.uint64(0x632BE59BD9B4E019) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def expected_rows(idx: np.ndarray, row_bytes: int, *, seed: int = 0) -> np.ndarray:
    """The numpy reference: the bytes rows ``idx`` of a ``row_bytes`` view must hold ``[n, row_bytes]``."""
    if row_bytes % 8:
        raise ValueError("file-tier row sizes must be multiples of 8 bytes")
    w = row_bytes // 8
    words = np.asarray(idx, dtype=np.uint64)[:, None] * np.uint64(w) + np.arange(w, dtype=np.uint64)
    return pattern_words(words.reshape(-1), seed=seed).view(np.uint8).reshape(len(idx), row_bytes)


def write_table_file(path: Path, nbytes: int, *, seed: int = 0, progress: Callable[[int], None] | None = None) -> None:
    """Write ``nbytes`` of the pattern to ``path`` and fsync it (so its pages can be dropped)."""
    nbytes -= nbytes % 8
    with open(path, "wb") as f:
        for s in range(0, nbytes, _CHUNK):
            e = min(nbytes, s + _CHUNK)
            f.write(pattern_words(s // 8, (e - s) // 8, seed=seed).tobytes())
            if progress is not None:
                progress(e)
        f.flush()
        os.fsync(f.fileno())


def filesystem_of(path: Path) -> tuple[str | None, str | None]:
    """(fstype, mountpoint) of the mount holding ``path`` (longest matching mount point)."""
    import psutil

    target = str(Path(path).resolve())
    best = (None, None)
    for part in psutil.disk_partitions(all=True):
        mp = part.mountpoint
        if (target == mp or target.startswith(mp.rstrip("/") + "/")) and len(mp) >= len(best[1] or ""):
            best = (part.fstype, mp)
    return best


def drop_cache(fd: int) -> None:
    """Evict the file's clean pages from the page cache (no root needed)."""
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def warm_cache(fd: int, nbytes: int) -> None:
    """Read the whole file once so every page is cached."""
    for s in range(0, nbytes, 8 << 20):
        os.pread(fd, min(8 << 20, nbytes - s), s)


def read_bytes_counter() -> int | None:
    """This process's bytes fetched from storage so far (``/proc/self/io`` read_bytes), None if unreadable."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def mmap_rows(fd: int, nbytes: int, row_bytes: int, idx: np.ndarray, out: np.ndarray, *, random_advice: bool) -> list[float]:
    """Read rows through a fresh read-only mapping, one at a time; per-row latencies in µs."""
    m = mmap.mmap(fd, nbytes, access=mmap.ACCESS_READ)
    try:
        m.madvise(mmap.MADV_RANDOM if random_advice else mmap.MADV_NORMAL)
        view = np.frombuffer(m, dtype=np.uint8, count=(nbytes // row_bytes) * row_bytes).reshape(-1, row_bytes)
        times = []
        for i, r in enumerate(idx):
            t0 = time.perf_counter_ns()
            out[i] = view[r]
            times.append((time.perf_counter_ns() - t0) / 1e3)
        del view
    finally:
        m.close()
    return times


def pread_rows(fd: int, row_bytes: int, idx: np.ndarray, out: np.ndarray, lo: int, hi: int, times: np.ndarray) -> None:
    """Buffered ``pread`` of rows ``idx[lo:hi]`` into ``out``; per-row µs into ``times``."""
    for i in range(lo, hi):
        t0 = time.perf_counter_ns()
        data = os.pread(fd, row_bytes, int(idx[i]) * row_bytes)
        times[i] = (time.perf_counter_ns() - t0) / 1e3
        out[i] = np.frombuffer(data, dtype=np.uint8)


def direct_rows(fd: int, row_bytes: int, idx: np.ndarray, out: np.ndarray, lo: int, hi: int, times: np.ndarray) -> int:
    """``O_DIRECT`` reads of the aligned blocks holding each row; returns the bytes read from the device."""
    buf = mmap.mmap(-1, 2 * BLOCK + row_bytes + BLOCK)  # page aligned
    arr = np.frombuffer(buf, dtype=np.uint8)
    total = 0
    try:
        for i in range(lo, hi):
            off = int(idx[i]) * row_bytes
            start = off - off % BLOCK
            length = -(-(off + row_bytes - start) // BLOCK) * BLOCK
            t0 = time.perf_counter_ns()
            got = os.preadv(fd, [memoryview(buf)[:length]], start)
            times[i] = (time.perf_counter_ns() - t0) / 1e3
            if got < off - start + row_bytes:
                raise BadInputError(f"short O_DIRECT read at offset {start}")
            out[i] = arr[off - start : off - start + row_bytes]
            total += length
        del arr
    finally:
        buf.close()
    return total


def open_direct(path: Path) -> int | None:
    """An ``O_DIRECT`` descriptor, or None when the filesystem refuses it."""
    flag = getattr(os, "O_DIRECT", None)
    if flag is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | flag)
    except OSError:
        return None
    try:  # some filesystems accept the flag at open and fail the first read
        buf = mmap.mmap(-1, BLOCK)
        os.preadv(fd, [buf], 0)
        buf.close()
    except OSError:
        os.close(fd)
        return None
    return fd


@dataclass(frozen=True)
class DataFile:
    path: Path
    nbytes: int
    seed: int
    fstype: str | None
    mountpoint: str | None

    @property
    def on_tmpfs(self) -> bool:
        return (self.fstype or "") in TMPFS_TYPES
