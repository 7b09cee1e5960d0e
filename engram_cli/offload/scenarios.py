"""Turn measured sections into projection inputs: fetch curves, layer times, unique and hit rates.

The projection itself (``projection.py``) is pure; this module decides which measured figure
feeds which input and labels the choice (measured, or modelled from a cited reference).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from engram_cli.offload import projection
from engram_cli.offload.projection import FetchCurve, Geometry

#: the link stage for CPU-only what-if projections (PCIe 5.0 x16, H100; see shared/reference/offload.md)
REFERENCE_LINK = FetchCurve(5.0, 51.8, "reference link: CE H2D 51.8 GB/s on H100 PCIe 5.0 (vllm#42212); "
                            "alpha 5 µs assumed (offload.md worked sizing)", modelled=True)
DECODE_TABLE = (1, 8, 64, 256)
DECODE_CURVE = (1, 2, 4, 8, 16, 32, 64, 128, 256)
PREFILL = (2048, 8192)
PREFILL_QUICK_MEASURED = (512, 2048)  # --quick measures these and extrapolates 8k (log-log)


def _nearest(values: Sequence[int], target: int) -> int:
    return min(values, key=lambda v: (abs(v - target), v))


def _fit(cells: list[Any], rb: int, label: str, modelled: bool = False) -> tuple[FetchCurve, FetchCurve] | None:
    pts = sorted((c.rows, c.latency_us.p50, c.latency_us.p99) for c in cells if c.row_bytes == rb and c.latency_us.p50)
    if len({p[0] for p in pts}) < 2:
        return None
    p50 = projection.fit_fetch_curve([p[0] for p in pts], [p[1] for p in pts], rb, label + " (p50)", modelled)
    p99 = projection.fit_fetch_curve([p[0] for p in pts], [p[2] for p in pts], rb, label + " (p99)", modelled)
    return (p50, p99 or p50) if p50 else None


def gpu_fetch(gpu: Any, row_bytes: int) -> tuple[FetchCurve, FetchCurve] | None:
    """The UVA gather measured here: the Triton kernel at SM/2 (the engines' setting) or index_select."""
    for mode, grid in (("uva-triton", "sm/2"), ("uva-index_select", None)):
        cells = [c for c in gpu.gathers if c.mode == mode and c.grid == grid]
        if cells:
            rb = _nearest(sorted({c.row_bytes for c in cells}), row_bytes)
            fit = _fit(cells, rb, f"measured: {mode}{'/' + grid if grid else ''} gather of {rb} B rows over UVA")
            if fit:
                return fit
    return None


def best_host_method(host: Any) -> list[str]:
    """Host methods by their median GB/s at the largest rows-per-call they share, best first."""
    uni = [c for c in host.cells if c.dist == "uniform" and c.gbps.p50]
    if not uni:
        return []
    top = max(c.rows for c in uni)
    score = {c.method: c.gbps.p50 for c in uni if c.rows == top}
    return sorted(score, key=lambda m: -score[m])


def host_fetch(host: Any, row_bytes: int) -> tuple[FetchCurve, FetchCurve] | None:
    """Modelled: the fastest host gather measured here, then the reference link copy (the staging path)."""
    for method in best_host_method(host):
        cells = [c for c in host.cells if c.method == method and c.dist == "uniform"]
        if cells:
            rb = _nearest(sorted({c.row_bytes for c in cells}), row_bytes)
            fit = _fit(cells, rb, f"measured: host {method} gather of {rb} B rows", modelled=False)
            if fit:
                label = f"modelled: host {method} gather measured here ({rb} B rows), then {REFERENCE_LINK.label}"
                return (projection.series(fit[0], REFERENCE_LINK, label), projection.series(fit[1], REFERENCE_LINK, label))
    return None


@dataclass
class TimingModel:
    """Per-step backbone times at measured step sizes, interpolated log-log in tokens per kind."""

    source: str
    points: dict[tuple[str, int], tuple[float, float, float]] = field(default_factory=dict)  # (layer, embed, tail) µs
    constant_layer_us: float | None = None

    def at(self, kind: str, tokens: int) -> tuple[float, float, float]:
        """(layer, embed, tail) µs at ``tokens``: log-log interpolation, linear log-log extrapolation past the ends."""
        if self.constant_layer_us is not None:
            return self.constant_layer_us, 0.0, 0.0
        pts = sorted((t, v) for (k, t), v in self.points.items() if k == kind)
        if not pts:
            return 0.0, 0.0, 0.0
        return tuple(_loglog([t for t, _ in pts], [v[i] for _, v in pts], tokens) for i in range(3))  # type: ignore[return-value]


def _loglog(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    lx, ly = np.log(np.asarray(xs, dtype=np.float64)), np.log(np.maximum(np.asarray(ys, dtype=np.float64), 1e-3))
    if lx.size == 1:
        return float(np.exp(ly[0]))
    t = np.log(x)
    if t <= lx[0] or t >= lx[-1]:
        i = 0 if t <= lx[0] else lx.size - 2
        slope = (ly[i + 1] - ly[i]) / (lx[i + 1] - lx[i])
        return float(np.exp(ly[i] + slope * (t - lx[i])))
    return float(np.exp(np.interp(t, lx, ly)))


def hash_us(hashing: Any, kind: str, tokens: int) -> float:
    """Hashing time before the first fetch: decode-window latency at B, or chunk / (tokens per second)."""
    if hashing is None:
        return 0.0
    if kind == "prefill":
        rate = hashing.tokens_per_s.p50
        return tokens / rate * 1e6 if rate else 0.0
    pts = sorted((b, d.p50) for b, d in hashing.decode_us.items() if d.p50 is not None)
    if not pts:
        return 0.0
    return float(np.interp(np.log(tokens), np.log([b for b, _ in pts]), [v for _, v in pts]))


@dataclass
class ProjectionSection:
    fetch_p50: FetchCurve
    fetch_p99: FetchCurve
    timing_source: str
    kappa: float
    kappa_source: str
    cache_gb: float
    geometries: dict[str, Geometry] = field(default_factory=dict)
    projections: dict[str, list[projection.Projection]] = field(default_factory=dict)
    verdicts: dict[str, list[str]] = field(default_factory=dict)
    batch_curve: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def build_projection(geoms: dict[str, Geometry], fetch: tuple[FetchCurve, FetchCurve], timing: TimingModel,
                     hashing: Any, locality: Any, *, cache_gb: float, kappa: float, kappa_source: str) -> ProjectionSection:
    """Every scenario for every geometry, the verdict lines and the overhead-vs-batch curve."""
    from engram_cli.offload.locality import interpolate_hit, interpolate_unique

    sec = ProjectionSection(fetch[0], fetch[1], timing.source, kappa, kappa_source, cache_gb, dict(geoms))
    lid = locality.layer_ids[0] if locality is not None else None
    if locality is None:
        sec.notes.append("no locality trace: every row of a step is assumed unique and no cache hits")
    for key, g in geoms.items():
        def unique(tokens: int, kind: str) -> float:
            return interpolate_unique(locality, lid, tokens, kind) if locality is not None else 1.0

        def hit(gb: float, g: Geometry = g) -> float:
            return interpolate_hit(locality, lid, gb * 1e9 / (g.rows_per_token * g.row_bytes)) if locality is not None else 0.0

        caches = (0.0, cache_gb) if cache_gb > 0 else (0.0,)
        out = []
        for s in projection.build_scenarios(DECODE_CURVE, PREFILL, caches, unique, hit):
            lu, eu, tu = timing.at(s.kind, s.tokens)
            t = projection.Timing(lu, eu, hash_us(hashing, s.kind, s.tokens), tu, kappa)
            out.append(projection.project(g, s, t, fetch[0], fetch[1]))
        sec.projections[key] = [p for p in out if p.scenario.kind == "prefill" or p.scenario.tokens in DECODE_TABLE]
        sec.verdicts[key] = projection.verdicts(out, g)
        curve: dict[str, list[float]] = {"batch": [float(b) for b in DECODE_CURVE]}
        for gb in caches:
            name = "no_cache" if gb == 0 else f"cache_{gb:g}_gb"
            curve[name] = [p.overhead_pct for b in DECODE_CURVE for p in out
                           if p.scenario.kind == "decode" and p.scenario.tokens == b and p.scenario.cache_gb == gb]
        sec.batch_curve[key] = curve
    return sec
