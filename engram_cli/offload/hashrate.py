"""Hashing throughput with the layout engine (compress + hash sits before the first fetch)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engram_cli.offload.stats import Dist, dist


@dataclass(frozen=True)
class HashRate:
    chunk_tokens: int
    tokens_per_s: Dist  # per prefill-sized chunk of real text
    decode_us: dict[int, Dist] = field(default_factory=dict)  # latency of one decode step's hashing, per batch


def run_hashing(layout: Any, stream: np.ndarray, *, chunk: int = 8192, decode_batches: tuple[int, ...] = (1, 64, 256),
                calls: int = 30, seed: int = 0) -> HashRate:
    """Time ``layout.hash`` on consecutive chunks of ``stream`` and on decode windows ``[B, max_ngram]``."""
    stream = np.asarray(stream, dtype=np.int64)
    chunk = int(min(chunk, max(1, stream.size)))
    starts = list(range(0, max(1, stream.size - chunk + 1), chunk))
    layout.hash(stream[None, :chunk])  # warm-up (token map, kernels)
    rates = []
    for s in starts:
        t0 = time.perf_counter()
        layout.hash(stream[None, s : s + chunk])
        rates.append(chunk / (time.perf_counter() - t0))
    rng = np.random.default_rng(seed)
    w = layout.max_ngram_size
    dec = {}
    for b in decode_batches:
        lat = []
        for _ in range(calls):
            pos = rng.integers(0, max(1, stream.size - w), size=b)
            win = stream[pos[:, None] + np.arange(w)]
            t0 = time.perf_counter()
            layout.hash(win)
            lat.append((time.perf_counter() - t0) * 1e6)
        dec[b] = dist(lat)
    return HashRate(chunk, dist(rates), dec)
