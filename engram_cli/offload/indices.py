"""Row-index streams for the gather benchmarks: uniform, Zipf and a replayed trace, always fresh.

Every timed call gets its own index array (no cache-warm repeats). Zipf ranks are scattered over
the table by a multiplicative bijection, so hot rows are not neighbours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DISTRIBUTIONS = ("uniform", "zipf", "trace")
_SCATTER = 2_654_435_761  # odd prime (Knuth's multiplicative hash constant)


def uniform(rng: np.random.Generator, n_rows: int, n: int) -> np.ndarray:
    return rng.integers(0, n_rows, size=n, dtype=np.int64)


def zipf_ranks(rng: np.random.Generator, n_rows: int, n: int, s: float) -> np.ndarray:
    """1-based ranks with P(rank = r) ~ r^-s over 1..n_rows (continuous inverse CDF, then floor)."""
    u = rng.random(n)
    if abs(s - 1.0) < 1e-9:
        x = np.exp(u * math.log(n_rows + 1.0))
    else:
        a = 1.0 - s
        x = (1.0 + u * ((n_rows + 1.0) ** a - 1.0)) ** (1.0 / a)
    return np.clip(np.floor(x).astype(np.int64), 1, n_rows)


def scatter(ranks: np.ndarray, n_rows: int) -> np.ndarray:
    """Map 1-based ranks to row ids by ``(rank - 1) * p mod n_rows`` (a bijection when gcd(p, n_rows) = 1)."""
    p = _SCATTER
    while math.gcd(p, n_rows) != 1:
        p += 2
    return ((ranks - 1) % n_rows) * (p % n_rows) % n_rows


def zipf(rng: np.random.Generator, n_rows: int, n: int, s: float) -> np.ndarray:
    return scatter(zipf_ranks(rng, n_rows, n, s), n_rows)


@dataclass
class TraceReplay:
    """Consecutive windows of a recorded row-id trace, folded into the table (``id mod n_rows``)."""

    ids: np.ndarray
    pos: int = 0

    def take(self, n_rows: int, n: int) -> np.ndarray:
        if self.ids.size == 0:
            raise ValueError("empty trace")
        idx = np.take(self.ids, np.arange(self.pos, self.pos + n), mode="wrap")
        self.pos = (self.pos + n) % self.ids.size
        return idx % n_rows


def index_stream(kind: str, n_rows: int, n: int, count: int, *, seed: int, zipf_s: float = 1.0,
                 trace: TraceReplay | None = None) -> list[np.ndarray]:
    """``count`` fresh index arrays of ``n`` rows each."""
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return [uniform(rng, n_rows, n) for _ in range(count)]
    if kind == "zipf":
        return [zipf(rng, n_rows, n, zipf_s) for _ in range(count)]
    if kind == "trace":
        if trace is None:
            raise ValueError("a trace replay needs a trace")
        return [trace.take(n_rows, n) for _ in range(count)]
    raise ValueError(f"unknown index distribution {kind!r}")
