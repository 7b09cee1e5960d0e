"""The projection model (pure): per Engram layer and scenario, window, fetch, slack, stall, overhead, break-evens.

Timeline of one step (``shared/reference/offload.md`` section e): hashing and index upload take
``hash_us``; the prefetch of every Engram layer's rows is then issued on one lane, in layer order.
Layer k needs its rows at ``D_k = embed_us + l_k * layer_us`` (zero-based layer ids, plus the stalls
already incurred); its fetch finishes at ``F_k = start + sum_{j<=k} t_f(M_j)`` with
``t_f(n) = alpha + n * row_bytes / R`` (0 for n = 0) and ``M_k = tokens * rows_per_token * unique * (1 - hit)``.
Stall ``S_k = max(0, F_k - D_k - sum_{j<k} S_j)``; interference ``kappa * sum_k t_f(M_k)``;
overhead = (stalls + interference + plumbing) / the step time without offload.
Everything is in µs and GB/s (1e9 B/s). No I/O, no globals: fixed inputs give fixed outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np


@dataclass(frozen=True)
class Geometry:
    """Where a model's Engram layers sit and how much each token fetches."""

    name: str
    layer_ids: tuple[int, ...]
    rows_per_token: int  # (max n-gram - 1) * heads per order
    row_bytes: int
    n_layers: int
    source: str = ""


GEOMETRIES: dict[str, Geometry] = {
    "v4.1-flash": Geometry("DeepSeek-V4.1-Flash", (1, 14), 24, 264, 43,
                           "layers 1, 14; 24 rows x 264 B (256 fp8 + 8 B scales); 43 layers (V4-Flash backbone)"),
    "paper-27b": Geometry("Engram-27B (paper)", (2, 15), 16, 128, 30,
                          "layers 2, 15; 2 orders x 8 heads of 64-d bf16 rows; 30 layers (paper appendix A)"),
}


@dataclass(frozen=True)
class FetchCurve:
    """``t_f(n) = alpha_us + n * row_bytes / gbps`` (µs); label says what it was fitted to."""

    alpha_us: float
    gbps: float
    label: str = ""
    modelled: bool = False

    def time_us(self, rows: float, row_bytes: int) -> float:
        if rows <= 0:
            return 0.0
        return self.alpha_us + rows * row_bytes / (self.gbps * 1e3)


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # decode | prefill
    tokens: int  # tokens per step (decode batch x (1 + draft), or the chunk)
    unique: float  # unique-row fraction at this step size
    hit: float = 0.0  # hot-cache hit rate
    cache_gb: float = 0.0
    prefetch_ahead_us: float = 0.0  # extra window from prefetching during the previous step


@dataclass(frozen=True)
class Timing:
    layer_us: float  # one backbone layer at this step size
    embed_us: float = 0.0
    hash_us: float = 0.0  # hashing + index upload before the first fetch
    tail_us: float = 0.0  # final norm + LM head
    kappa: float = 0.0  # compute slowdown per µs of concurrent fetch
    plumbing_us: float = 0.0


@dataclass(frozen=True)
class LayerProjection:
    layer_id: int
    rows: float
    window_us: float
    fetch_p50_us: float
    fetch_p99_us: float
    slack_us: float
    slack_p99_us: float
    stall_us: float
    stall_p99_us: float
    breakeven_hit: float
    breakeven_gbps: float | None


@dataclass(frozen=True)
class Projection:
    scenario: Scenario
    geometry: str
    base_step_us: float
    layers: list[LayerProjection] = field(default_factory=list)
    stall_us: float = 0.0
    stall_p99_us: float = 0.0
    interference_us: float = 0.0
    overhead_pct: float = 0.0
    overhead_p99_pct: float = 0.0


def _timeline(g: Geometry, s: Scenario, t: Timing, curve: FetchCurve) -> tuple[list[float], list[float], list[float], list[float]]:
    """Per layer: rows, fetch time, slack and stall under one fetch curve."""
    start = t.hash_us - s.prefetch_ahead_us
    rows = [s.tokens * g.rows_per_token * s.unique * (1.0 - s.hit) for _ in g.layer_ids]
    fetch = [curve.time_us(m, g.row_bytes) for m in rows]
    slack, stall, done, stalled = [], [], start, 0.0
    for lid, f in zip(g.layer_ids, fetch):
        done += f
        need = t.embed_us + lid * t.layer_us + stalled
        slack.append(need - done)
        st = max(0.0, done - need)
        stall.append(st)
        stalled += st
    return rows, fetch, slack, stall


def _breakevens(g: Geometry, s: Scenario, t: Timing, curve: FetchCurve, k: int, fetch: list[float],
                stall: list[float]) -> tuple[float, float | None]:
    """Smallest hit rate, and smallest link GB/s, at which layer k's fetch lands in time."""
    start = t.hash_us - s.prefetch_ahead_us
    need = t.embed_us + g.layer_ids[k] * t.layer_us + sum(stall[:k])
    avail = need - start - sum(fetch[:k]) - curve.alpha_us
    demand = s.tokens * g.rows_per_token * s.unique  # rows before the cache
    if demand <= 0:
        return 0.0, 0.0
    hit = 1.0 if avail <= 0 else float(np.clip(1.0 - avail * curve.gbps * 1e3 / (g.row_bytes * demand), 0.0, 1.0))
    rows_k = demand * (1.0 - s.hit)
    gbps = None if avail <= 0 else rows_k * g.row_bytes / (avail * 1e3)
    return hit, gbps


def project(g: Geometry, s: Scenario, t: Timing, p50: FetchCurve, p99: FetchCurve | None = None) -> Projection:
    """Project one scenario; ``p99`` (the slow-tail curve) defaults to ``p50``."""
    p99 = p99 or p50
    rows, f50, sl50, st50 = _timeline(g, s, t, p50)
    _, f99, sl99, st99 = _timeline(g, s, t, p99)
    base = t.embed_us + g.n_layers * t.layer_us + t.tail_us
    layers = []
    for k, lid in enumerate(g.layer_ids):
        hit, gbps = _breakevens(g, s, t, p50, k, f50, st50)
        window = t.embed_us + lid * t.layer_us - (t.hash_us - s.prefetch_ahead_us)
        layers.append(LayerProjection(lid, rows[k], window, f50[k], f99[k], sl50[k], sl99[k], st50[k], st99[k], hit, gbps))
    inter = t.kappa * sum(f50)
    extra50 = sum(st50) + inter + t.plumbing_us
    extra99 = sum(st99) + t.kappa * sum(f99) + t.plumbing_us
    return Projection(s, g.name, base, layers, sum(st50), sum(st99), inter,
                      100.0 * extra50 / base if base > 0 else float("inf"),
                      100.0 * extra99 / base if base > 0 else float("inf"))


def fit_fetch_curve(rows: Sequence[float], lat_us: Sequence[float], row_bytes: int, label: str = "",
                    modelled: bool = False) -> FetchCurve | None:
    """Least-squares ``t = alpha + n * row_bytes / R`` over (rows, latency) points; None if it cannot be fitted."""
    x, y = np.asarray(rows, dtype=np.float64), np.asarray(lat_us, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if np.unique(x).size < 2:
        return None
    slope, icept = np.polyfit(x, y, 1)
    if slope <= 0:
        return None
    return FetchCurve(max(0.0, float(icept)), row_bytes / (float(slope) * 1e3), label, modelled)


def series(a: FetchCurve, b: FetchCurve, label: str) -> FetchCurve:
    """Two stages one after the other (e.g. CPU gather, then the link copy): latencies and 1/R add."""
    return FetchCurve(a.alpha_us + b.alpha_us, 1.0 / (1.0 / a.gbps + 1.0 / b.gbps), label, a.modelled or b.modelled)


def build_scenarios(decode_batches: Sequence[int], prefill_chunks: Sequence[int], cache_gbs: Sequence[float],
                    unique: Callable[[int, str], float], hit: Callable[[float], float]) -> list[Scenario]:
    """Decode B and prefill chunk scenarios, each with and without every cache size."""
    out = []
    for gb in cache_gbs:
        h = hit(gb) if gb > 0 else 0.0
        tag = f", cache {gb:g} GB" if gb > 0 else ""
        out += [Scenario(f"decode B={b}{tag}", "decode", b, unique(b, "decode"), h, gb) for b in decode_batches]
        out += [Scenario(f"prefill {c // 1024}k{tag}", "prefill", c, unique(c, "prefill"), h, gb) for c in prefill_chunks]
    return out


def _chunk(tokens: int) -> str:
    return f"{tokens // 1024}k" if tokens % 1024 == 0 else str(tokens)


def _needs(lp: LayerProjection) -> str:
    hit = f">= {100 * lp.breakeven_hit:.0f} % hits" if lp.breakeven_hit < 1 else "every row cached"
    bw = f">= {lp.breakeven_gbps:.1f} GB/s" if lp.breakeven_gbps is not None else "a lower latency floor (no bandwidth suffices)"
    return f"needs {hit} or {bw}"


def verdicts(projections: Sequence[Projection], g: Geometry) -> list[str]:
    """One line per Engram layer for decode and for the largest prefill chunk (scenarios without a cache)."""
    lines = []
    plain = [p for p in projections if p.scenario.cache_gb == 0]
    for k, lid in enumerate(g.layer_ids):
        dec = sorted((p for p in plain if p.scenario.kind == "decode"), key=lambda p: p.scenario.tokens)
        exposed = [p for p in dec if p.layers[k].stall_us > 0]
        if dec and not exposed:
            slack = min(p.layers[k].slack_us for p in dec)
            lines.append(f"layer {lid} hidden at decode B <= {dec[-1].scenario.tokens} (min slack {slack:.0f} µs)")
        elif exposed:
            p = exposed[0]
            lp = p.layers[k]
            lines.append(f"layer {lid} exposed from decode B = {p.scenario.tokens}: +{lp.stall_us:.0f} µs per step "
                         f"({100 * lp.stall_us / p.base_step_us:.1f} %); {_needs(lp)}")
        pre = sorted((p for p in plain if p.scenario.kind == "prefill"), key=lambda p: p.scenario.tokens)
        if pre:
            p = pre[-1]
            lp = p.layers[k]
            name = _chunk(p.scenario.tokens)
            if lp.stall_us > 0:
                lines.append(f"layer {lid} exposed at {name} prefill: +{lp.stall_us / 1e3:.2f} ms per chunk "
                             f"({100 * lp.stall_us / p.base_step_us:.1f} %); {_needs(lp)}")
            else:
                lines.append(f"layer {lid} hidden at {name} prefill (slack {lp.slack_us / 1e3:.2f} ms)")
    return lines
