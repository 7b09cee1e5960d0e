"""Row locality with the model's real tokenizer and hash: unique fractions, Zipf slope, cache hit rates.

Everything is per Engram layer and n-gram order. Caches are per hash column (order, head) with
``k`` rows each, so a layer's cache holds ``k * columns`` rows. The static top-k cache is built
on the first half of the documents and scored on the second; LRU is warmed on the first half.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engram_cli.offload.corpus import Corpus
from engram_cli.offload.lru import lru_hit_rates, stack_distances
from engram_cli.progress import ProgressCallback


@dataclass(frozen=True)
class LocalityPlan:
    decode_batches: tuple[int, ...] = (1, 8, 64, 256)
    prefill_chunks: tuple[int, ...] = (512, 2048, 8192)
    cache_rows: tuple[int, ...] = (64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)
    samples: int = 64  # decode batches / prefill chunks drawn per size
    zipf_max_rank: int = 100_000


@dataclass
class HashedTrace:
    """Global row ids ``[tokens, layers, columns]`` of a corpus, and its build/score split."""

    ids: np.ndarray
    doc_starts: np.ndarray
    split: int  # first token of the score half
    layer_ids: tuple[int, ...]
    orders: tuple[int, ...]
    n_heads: int

    def columns(self, order: int) -> slice:
        o = self.orders.index(order)
        return slice(o * self.n_heads, (o + 1) * self.n_heads)


@dataclass(frozen=True)
class OrderStats:
    layer_id: int
    order: int
    zipf_slope: float | None
    zipf_ranks: tuple[int, int]
    compulsory_miss: float
    top1pct_share: float
    unique_decode: dict[int, float]
    unique_prefill: dict[int, float]
    static_hit: list[float]
    lru_hit: list[float]


@dataclass
class LocalityResult:
    corpus: str
    source: str
    n_docs: int
    n_tokens: int
    build_tokens: int
    score_tokens: int
    layer_ids: tuple[int, ...]
    orders: tuple[int, ...]
    n_columns: int
    row_bytes: int
    cache_rows: list[int]
    cache_gb_per_layer: list[float]
    stats: list[OrderStats] = field(default_factory=list)
    hot_rows: dict[str, np.ndarray] = field(default_factory=dict)

    def get(self, layer_id: int, order: int) -> OrderStats:
        return next(s for s in self.stats if s.layer_id == layer_id and s.order == order)

    def mean_curve(self, layer_id: int, policy: str) -> list[float]:
        """Hit rate per cache size averaged over orders (each order has the same number of heads)."""
        rows = [getattr(s, f"{policy}_hit") for s in self.stats if s.layer_id == layer_id]
        return list(np.mean(np.asarray(rows, dtype=np.float64), axis=0))


def hash_corpus(layout: Any, corpus: Corpus) -> HashedTrace:
    """Hash the corpus as one packed stream (sequence starts at document boundaries)."""
    lens = np.asarray([d.size for d in corpus.docs], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    stream = np.concatenate(corpus.docs)
    ids = layout.hash(stream[None, :], seq_starts=starts).global_[0]
    half = stream.size // 2
    split = int(starts[np.searchsorted(starts, half)]) if (starts >= half).any() else half
    split = split if 0 < split < stream.size else half
    orders = tuple(range(2, layout.max_ngram_size + 1))
    return HashedTrace(np.ascontiguousarray(ids), starts, split, tuple(layout.layer_ids), orders, layout.n_heads)


def sorted_counts(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct values ascending, their counts) by one sort (faster than np.unique's hash path here)."""
    s = np.sort(np.asarray(x).reshape(-1))
    if s.size == 0:
        return s, np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.concatenate(([True], s[1:] != s[:-1])))
    return s[starts], np.diff(np.append(starts, s.size))


def unique_fraction(block: np.ndarray) -> float:
    """Distinct rows / accesses in one step's ``[tokens, columns]`` ids."""
    if not block.size:
        return float("nan")
    s = np.sort(block.reshape(-1))
    return (1 + int(np.count_nonzero(s[1:] != s[:-1]))) / s.size


def zipf_slope(counts: np.ndarray, max_rank: int) -> tuple[float | None, tuple[int, int]]:
    """Least-squares slope of log count vs log rank over ranks with count >= 2 (log-spaced points)."""
    c = np.sort(counts)[::-1]
    hi = int(min(max_rank, np.count_nonzero(c >= 2)))
    if hi < 10:
        return None, (1, hi)
    ranks = np.unique(np.geomspace(1, hi, num=min(hi, 200)).astype(np.int64))
    slope = np.polyfit(np.log10(ranks), np.log10(c[ranks - 1]), 1)[0]
    return float(slope), (1, hi)


def static_hit_curve(build: np.ndarray, score: np.ndarray, capacities: np.ndarray) -> tuple[np.ndarray, float]:
    """Hit rate on ``score`` of a cache holding the ``k`` rows most frequent in ``build``, for every k, and the
    compulsory-miss rate (accesses to rows never seen in ``build``)."""
    if score.size == 0:
        return np.full(capacities.size, np.nan), float("nan")
    uniq, counts = sorted_counts(build)
    order = np.lexsort((uniq, -counts))  # by count desc, then id
    rank_of = np.empty(uniq.size, dtype=np.int64)
    rank_of[order] = np.arange(uniq.size)
    pos = np.searchsorted(uniq, score)
    pos_c = np.minimum(pos, max(uniq.size - 1, 0))
    seen = (pos < uniq.size) & (uniq[pos_c] == score) if uniq.size else np.zeros(score.size, bool)
    ranks = np.sort(rank_of[pos_c[seen]])
    return np.searchsorted(ranks, capacities, side="left") / score.size, float(1.0 - seen.mean())


def top_share(counts: np.ndarray, frac: float = 0.01) -> float:
    """Share of accesses served by the top ``frac`` of touched rows."""
    c = np.sort(counts)[::-1]
    k = max(1, int(np.ceil(frac * c.size)))
    return float(c[:k].sum() / c.sum()) if c.size else float("nan")


def _sample_positions(rng: np.random.Generator, n_tokens: int, b: int, samples: int) -> list[np.ndarray]:
    return [rng.choice(n_tokens, size=b, replace=False) for _ in range(samples)] if b <= n_tokens else []


def _unique_stats(tr: HashedTrace, li: int, cols: slice, plan: LocalityPlan, seed: int) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    n = tr.ids.shape[0]
    dec = {}
    for b in plan.decode_batches:
        pos = _sample_positions(rng, n, b, plan.samples)
        if pos:
            dec[b] = float(np.mean([unique_fraction(tr.ids[p, li, cols]) for p in pos]))
    pre = {}
    for t in plan.prefill_chunks:
        n_chunks = n // t
        if n_chunks:
            picks = rng.choice(n_chunks, size=min(n_chunks, plan.samples), replace=False)
            pre[t] = float(np.mean([unique_fraction(tr.ids[c * t:(c + 1) * t, li, cols]) for c in picks]))
    return dec, pre


def _order_stats(tr: HashedTrace, li: int, order: int, plan: LocalityPlan, caps: np.ndarray, seed: int) -> OrderStats:
    cols = tr.columns(order)
    static, lru, comp = [], [], []
    for c in range(cols.start, cols.stop):
        col = tr.ids[:, li, c]
        build, score = col[: tr.split], col[tr.split:]
        curve, miss = static_hit_curve(build, score, caps)
        static.append(curve)
        comp.append(miss)
        lru.append(lru_hit_rates(stack_distances(col), caps, start=tr.split))
    _, counts0 = sorted_counts(tr.ids[:, li, cols.start])
    slope, fit = zipf_slope(counts0, plan.zipf_max_rank)
    dec, pre = _unique_stats(tr, li, cols, plan, seed)
    return OrderStats(tr.layer_ids[li], order, slope, fit, float(np.mean(comp)), top_share(counts0), dec, pre,
                      [float(x) for x in np.mean(static, axis=0)], [float(x) for x in np.mean(lru, axis=0)])


def hottest_rows(tr: HashedTrace, n: int) -> dict[str, np.ndarray]:
    """Per layer ``[columns, n]`` global row ids by descending count over the whole trace (-1 pads), and counts."""
    out: dict[str, np.ndarray] = {}
    n_cols = tr.ids.shape[2]
    for li, lid in enumerate(tr.layer_ids):
        rows = np.full((n_cols, n), -1, dtype=np.int64)
        cnts = np.zeros((n_cols, n), dtype=np.int64)
        for c in range(n_cols):
            uniq, counts = sorted_counts(tr.ids[:, li, c])
            top = np.lexsort((uniq, -counts))[:n]
            rows[c, : top.size], cnts[c, : top.size] = uniq[top], counts[top]
        out[f"layer{lid}_rows"], out[f"layer{lid}_counts"] = rows, cnts
    return out


def analyze(tr: HashedTrace, corpus: Corpus, plan: LocalityPlan, *, row_bytes: int, export_hot_rows: int = 0,
            seed: int = 0, progress: ProgressCallback | None = None) -> LocalityResult:
    """All locality statistics of a hashed corpus."""
    report = progress or (lambda *a: None)
    caps = np.asarray(plan.cache_rows, dtype=np.int64)
    n_cols = tr.ids.shape[2]
    res = LocalityResult(corpus.name, corpus.source, len(corpus.docs), int(tr.ids.shape[0]), tr.split,
                         int(tr.ids.shape[0] - tr.split), tr.layer_ids, tr.orders, n_cols, row_bytes,
                         [int(k) for k in caps], [float(k * n_cols * row_bytes / 1e9) for k in caps])
    total, done = len(tr.layer_ids) * len(tr.orders), 0
    for li in range(len(tr.layer_ids)):
        for order in tr.orders:
            report(done, total, f"locality: layer {tr.layer_ids[li]}, {order}-grams")
            res.stats.append(_order_stats(tr, li, order, plan, caps, seed))  # same sampled steps for every layer and order
            done += 1
    if export_hot_rows > 0:
        res.hot_rows = hottest_rows(tr, export_hot_rows)
    return res


def interpolate_hit(res: LocalityResult, layer_id: int, rows_per_column: float, policy: str = "static") -> float:
    """Hit rate of a cache of ``rows_per_column`` rows per (order, head), log-linear between measured sizes; 0 for none."""
    if rows_per_column < 1:
        return 0.0
    x, y = np.log(np.asarray(res.cache_rows, dtype=np.float64)), np.asarray(res.mean_curve(layer_id, policy))
    return float(np.interp(np.log(rows_per_column), x, y, left=0.0, right=float(y[-1])))


def interpolate_unique(res: LocalityResult, layer_id: int, tokens: int, kind: str) -> float:
    """Unique-row fraction for a step of ``tokens`` (decode batch or prefill chunk), averaged over orders."""
    key = "unique_decode" if kind == "decode" else "unique_prefill"
    per = [getattr(s, key) for s in res.stats if s.layer_id == layer_id]
    sizes = sorted(set.intersection(*(set(p) for p in per))) if per else []
    if not sizes:
        return 1.0
    vals = [float(np.mean([p[s] for p in per])) for s in sizes]
    return float(np.interp(np.log(tokens), np.log(sizes), vals))
