"""LRU hit rates for every cache size at once, from stack (reuse) distances.

``stack_distances(seq)[t]`` is the number of distinct other items touched since the previous
access to ``seq[t]`` (-1 for a first access); an LRU cache of ``k`` items hits exactly when it is
``< k`` (Mattson et al., 1970). The kernel is a Fenwick tree over time, compiled with numba when
it is installed; ``lru_hits_reference`` simulates one cache with an OrderedDict and is the
straightforward reference the tests hold it to.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import numpy as np


def _distances_py(codes: np.ndarray, n_items: int) -> np.ndarray:
    n = codes.shape[0]
    tree = np.zeros(n + 1, dtype=np.int64)
    last = np.full(n_items, -1, dtype=np.int64)
    out = np.empty(n, dtype=np.int64)

    def add(i: int, v: int) -> None:
        i += 1
        while i <= n:
            tree[i] += v
            i += i & (-i)

    def prefix(i: int) -> int:  # sum of positions [0, i)
        s = 0
        while i > 0:
            s += tree[i]
            i -= i & (-i)
        return s

    for t in range(n):
        x = codes[t]
        p = last[x]
        if p >= 0:
            out[t] = prefix(t) - prefix(p + 1)
            add(p, -1)
        else:
            out[t] = -1
        add(t, 1)
        last[x] = t
    return out


_KERNEL = None


def _compile():
    from engram_cli.compiled import prepare_numba

    prepare_numba()
    from numba import njit

    @njit(cache=False, nogil=True)
    def kernel(codes, n_items):  # pragma: no cover - compiled; the same algorithm as _distances_py
        n = codes.shape[0]
        tree = np.zeros(n + 1, dtype=np.int64)
        last = np.full(n_items, -1, dtype=np.int64)
        out = np.empty(n, dtype=np.int64)
        for t in range(n):
            x = codes[t]
            p = last[x]
            if p >= 0:
                s = 0
                i = t
                while i > 0:
                    s += tree[i]
                    i -= i & (-i)
                i = p + 1
                while i > 0:
                    s -= tree[i]
                    i -= i & (-i)
                out[t] = s
                i = p + 1
                while i <= n:
                    tree[i] -= 1
                    i += i & (-i)
            else:
                out[t] = -1
            i = t + 1
            while i <= n:
                tree[i] += 1
                i += i & (-i)
            last[x] = t
        return out

    return kernel


def _kernel():
    """The compiled kernel (once per process), or the Python one when numba is off or missing."""
    global _KERNEL
    from engram_cli.compiled import numba_enabled

    if not numba_enabled():
        return _distances_py
    if _KERNEL is None:
        _KERNEL = _compile()
    return _KERNEL


def stack_distances(seq: np.ndarray, *, fast: bool = True) -> np.ndarray:
    """LRU stack distance of every access in ``seq`` (-1 for first accesses)."""
    seq = np.asarray(seq).reshape(-1)
    if seq.size == 0:
        return np.empty(0, dtype=np.int64)
    order = np.argsort(seq, kind="stable")
    s = seq[order]
    new = np.concatenate(([True], s[1:] != s[:-1]))
    codes = np.empty(seq.size, dtype=np.int64)
    codes[order] = np.cumsum(new) - 1
    n_items = int(new.sum())
    fn = _kernel() if fast else _distances_py
    return fn(codes, n_items)


def lru_hit_rates(distances: np.ndarray, capacities: Sequence[int], start: int = 0) -> np.ndarray:
    """Hit rate of accesses ``[start:]`` for each LRU capacity (earlier accesses only warm the cache)."""
    d = np.asarray(distances)[start:]
    if d.size == 0:
        return np.full(len(capacities), np.nan)
    reused = np.sort(d[d >= 0])
    return np.searchsorted(reused, np.asarray(capacities), side="left") / d.size


def lru_hits_reference(seq: Sequence[int], capacity: int, start: int = 0) -> float:
    """Simulate one LRU cache of ``capacity`` items; hit rate over accesses ``[start:]``."""
    cache: OrderedDict = OrderedDict()
    hits = total = 0
    for t, x in enumerate(seq):
        hit = x in cache
        if hit:
            cache.move_to_end(x)
        else:
            cache[x] = True
            if len(cache) > capacity:
                cache.popitem(last=False)
        if t >= start:
            total += 1
            hits += hit
    return hits / total if total else float("nan")
