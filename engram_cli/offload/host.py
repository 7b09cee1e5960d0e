"""Host-memory tables and row gathers: numpy, torch, a thread pool, numba, and the contiguous copy.

``gather_numpy`` (numpy fancy indexing) is the reference every other path is tested against.
All gathers write into a caller-owned ``out`` so timing excludes allocation.
"""

from __future__ import annotations

import mmap
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

GatherFn = Callable[[np.ndarray, np.ndarray], None]  # (idx, out) -> None
_FILL_CHUNK = 64 << 20


@dataclass
class HostTable:
    """One anonymous mapping of random bytes, viewed as ``[rows, row_bytes]`` for any row size."""

    buf: np.ndarray  # uint8, flat
    huge_pages: bool | None  # True: MADV_HUGEPAGE, False: MADV_NOHUGEPAGE, None: kernel default
    _map: mmap.mmap | None = None

    @property
    def nbytes(self) -> int:
        return int(self.buf.size)

    def view(self, row_bytes: int) -> np.ndarray:
        n = self.nbytes // row_bytes
        return self.buf[: n * row_bytes].reshape(n, row_bytes)

    def close(self) -> None:
        self.buf = np.empty(0, dtype=np.uint8)
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a view is still alive; the mapping goes with it
                pass
            self._map = None


def make_table(nbytes: int, *, seed: int = 0, huge_pages: bool | None = None,
               progress: Callable[[int], None] | None = None) -> HostTable:
    """Allocate ``nbytes`` (anonymous mmap, THP advice applied before first touch) and fill with seeded bytes."""
    m = mmap.mmap(-1, max(nbytes, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    advice = {True: getattr(mmap, "MADV_HUGEPAGE", None), False: getattr(mmap, "MADV_NOHUGEPAGE", None)}.get(huge_pages)
    if advice is not None:
        try:
            m.madvise(advice)
        except OSError:
            pass
    buf = np.frombuffer(m, dtype=np.uint8, count=nbytes)
    rng = np.random.default_rng(seed)
    for s in range(0, nbytes, _FILL_CHUNK):
        e = min(nbytes, s + _FILL_CHUNK)
        buf[s:e] = np.frombuffer(rng.bytes(e - s), dtype=np.uint8)
        if progress is not None:
            progress(e)
    return HostTable(buf=buf, huge_pages=huge_pages, _map=m)


def anon_huge_bytes(addr: int, smaps: Path = Path("/proc/self/smaps")) -> int | None:
    """AnonHugePages (bytes) of the mapping that contains ``addr``; None when smaps is unreadable."""
    try:
        text = smaps.read_text()
    except OSError:
        return None
    inside = False
    for line in text.splitlines():
        head = line.split(" ", 1)[0]
        if "-" in head and ":" not in head:
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= addr < hi
        elif inside and line.startswith("AnonHugePages:"):
            return int(line.split()[1]) * 1024
    return None


def thp_mode(path: Path = Path("/sys/kernel/mm/transparent_hugepage/enabled")) -> str | None:
    """The bracketed THP mode (always/madvise/never), or None when the kernel has no THP."""
    try:
        text = path.read_text()
    except OSError:
        return None
    for word in text.split():
        if word.startswith("["):
            return word.strip("[]")
    return None


def gather_numpy(table: np.ndarray) -> GatherFn:
    """Single-thread numpy fancy indexing (``np.take`` into ``out``): the reference."""
    def run(idx: np.ndarray, out: np.ndarray) -> None:
        np.take(table, idx, axis=0, out=out)
    return run


def gather_torch(table: np.ndarray) -> GatherFn:
    """``torch.index_select`` on a zero-copy tensor view (torch's intra-op threads)."""
    import torch

    t_table = torch.from_numpy(table)

    def run(idx: np.ndarray, out: np.ndarray) -> None:
        torch.index_select(t_table, 0, torch.from_numpy(idx), out=torch.from_numpy(out))
    return run


def split(n: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` near-equal [lo, hi) ranges covering 0..n (empty ranges dropped)."""
    bounds = np.linspace(0, n, parts + 1).astype(np.int64)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def gather_threads(table: np.ndarray, pool: ThreadPoolExecutor, threads: int, min_rows: int = 512) -> GatherFn:
    """Split the indices over ``threads`` workers, each an ``np.take`` (numpy releases the GIL)."""
    def run(idx: np.ndarray, out: np.ndarray) -> None:
        n_parts = min(threads, idx.size // min_rows)
        if n_parts <= 1:
            np.take(table, idx, axis=0, out=out)
            return
        parts = split(idx.size, n_parts)
        futs = [pool.submit(np.take, table, idx[lo:hi], 0, out[lo:hi]) for lo, hi in parts]
        for f in futs:
            f.result()
    return run


def numba_available() -> bool:
    """numba importable and not switched off (``ENGRAM_NO_NUMBA``)."""
    from engram_cli.compiled import numba_enabled

    return numba_enabled()


_NUMBA_KERNELS: tuple | None = None


def _numba_kernels():
    """(parallel, serial) row-copy kernels, compiled once per process."""
    global _NUMBA_KERNELS
    if _NUMBA_KERNELS is None:
        from engram_cli.compiled import prepare_numba

        prepare_numba()
        from numba import njit, prange

        def body(table, idx, out):  # pragma: no cover - compiled
            w = table.shape[1]
            for i in prange(idx.shape[0]):  # an explicit byte loop: slice assignment is ~5x slower here
                r = idx[i]
                for j in range(w):
                    out[i, j] = table[r, j]

        _NUMBA_KERNELS = (njit(parallel=True, nogil=True)(body), njit(nogil=True)(body))
    return _NUMBA_KERNELS


def gather_numba(table: np.ndarray, threads: int, min_rows: int = 512) -> GatherFn:
    """A numba ``prange`` row copy (compiled on first use); serial below ``min_rows`` rows per thread."""
    import numba

    parallel, serial = _numba_kernels()
    n_threads = max(1, min(threads, numba.config.NUMBA_NUM_THREADS))

    def run(idx: np.ndarray, out: np.ndarray) -> None:
        if n_threads > 1 and idx.size >= 2 * min_rows:
            numba.set_num_threads(n_threads)
            parallel(table, idx, out)
        else:
            serial(table, idx, out)
    return run


def copy_contiguous(src_flat: np.ndarray, pool: ThreadPoolExecutor | None, threads: int) -> Callable[[int, np.ndarray], None]:
    """The ceiling: copy ``out.nbytes`` contiguous bytes starting at ``offset`` (split over threads)."""
    def run(offset: int, out: np.ndarray) -> None:
        flat = out.reshape(-1)
        n = flat.size
        src = src_flat[offset : offset + n]
        parts = split(n, threads) if pool is not None and n >= (1 << 20) else [(0, n)]
        if len(parts) <= 1:
            np.copyto(flat, src)
            return
        futs = [pool.submit(np.copyto, flat[lo:hi], src[lo:hi]) for lo, hi in parts]
        for f in futs:
            f.result()
    return run


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
