"""Figures of the offload report (matplotlib ``Figure`` objects; no pyplot state). Each is drawn from
numbers that are also in offload.json."""

from __future__ import annotations

from typing import Any

COLORS = {"numpy": "#1f77b4", "torch": "#ff7f0e", "threads": "#2ca02c", "numba": "#d62728", "copy": "#000000",
          "uva-index_select": "#9467bd", "uva-triton": "#8c564b", "staging": "#e377c2", "hbm": "#7f7f7f",
          "hot-cache": "#bcbd22"}


def _fig(w: float = 6.4, h: float = 4.2):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=110)
    return fig, fig.add_subplot(111)


def gather_vs_row_size(host: Any, rows: int | None = None):
    """Host gather GB/s (p50) vs row bytes at one rows-per-call size, with the contiguous-copy ceiling."""
    fig, ax = _fig()
    uni = [c for c in host.cells if c.dist == "uniform"]
    if rows is None:  # the rows-per-call size measured at the most row sizes, preferring larger ones
        counts = {r: len({c.row_bytes for c in uni if c.rows == r}) for r in {c.rows for c in uni}}
        rows = max(counts, key=lambda r: (counts[r], r)) if counts else 0
    for method in dict.fromkeys(c.method for c in uni):
        pts = sorted((c.row_bytes, c.gbps.p50) for c in uni if c.method == method and c.rows == rows)
        if pts:
            ax.plot(*zip(*pts), marker="o", label=f"{method} gather", color=COLORS.get(method))
    for threads in sorted({c.threads for c in host.ceilings}):
        pts = sorted((c.row_bytes, c.gbps.p50) for c in host.ceilings if c.rows == rows and c.threads == threads)
        if pts:
            ax.plot(*zip(*pts), ls="--", color="black", alpha=0.4 + 0.3 * (threads > 1),
                    label=f"contiguous copy, {threads} thread{'s' if threads > 1 else ''} (ceiling)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("row bytes")
    ax.set_ylabel("useful GB/s (p50)")
    ax.set_title(f"Host row gather, {rows:,} fresh uniform rows per call")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return fig


def latency_vs_rows(host: Any, gpu: Any = None, row_bytes: int = 264):
    """Latency per call (p50) vs rows per call, log-log, host methods and GPU modes."""
    fig, ax = _fig()
    for method in dict.fromkeys(c.method for c in host.cells) if host else ():
        pts = sorted((c.rows, c.latency_us.p50) for c in host.cells
                     if c.method == method and c.dist == "uniform" and c.row_bytes == row_bytes)
        if pts:
            ax.plot(*zip(*pts), marker="o", label=f"host {method}", color=COLORS.get(method))
    if gpu is not None:
        for mode, grid in dict.fromkeys((c.mode, c.grid) for c in gpu.gathers):
            pts = sorted((c.rows, c.latency_us.p50) for c in gpu.gathers
                         if c.mode == mode and c.grid == grid and c.row_bytes == row_bytes)
            if pts:
                ax.plot(*zip(*pts), marker="s", ls=":", label=f"gpu {mode}{'/' + grid if grid else ''}", color=COLORS.get(mode))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("rows per call")
    ax.set_ylabel("latency per call, µs (p50)")
    ax.set_title(f"Gather latency vs rows ({row_bytes} B rows, fresh uniform indices)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    return fig


def hit_rate_vs_cache(loc: Any):
    """Hit rate vs cache GB per layer, one line per n-gram order and policy (first Engram layer)."""
    fig, ax = _fig()
    lid = loc.layer_ids[0]
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
    for i, s in enumerate(x for x in loc.stats if x.layer_id == lid):
        c = palette[i % len(palette)]
        ax.plot(loc.cache_gb_per_layer, [100 * v for v in s.static_hit], color=c, marker="o", ms=3,
                label=f"{s.order}-gram static top-k")
        ax.plot(loc.cache_gb_per_layer, [100 * v for v in s.lru_hit], color=c, ls="--", label=f"{s.order}-gram LRU")
        ax.axhline(100 * (1 - s.compulsory_miss), color=c, lw=0.6, alpha=0.5)
    ax.set_xscale("log")
    ax.set_ylim(0, 100)
    ax.set_xlabel(f"cache per layer, GB ({loc.n_columns} columns x {loc.row_bytes} B rows)")
    ax.set_ylabel("hit rate on the held-out half, %")
    ax.set_title(f"Layer {lid}: {loc.corpus} trace, {loc.n_tokens:,} tokens (thin lines: 1 - compulsory misses)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    return fig


def overhead_vs_batch(section: Any):
    """Projected overhead % vs decode batch, per geometry, with and without the hot cache."""
    fig, ax = _fig()
    for key, curve in section.batch_curve.items():
        for name, vals in curve.items():
            if name == "batch" or not vals:
                continue
            ax.plot(curve["batch"], vals, marker="o", ls="-" if name == "no_cache" else "--",
                    label=f"{section.geometries[key].name}, " + ("no cache" if name == "no_cache" else f"hot cache {name[6:-3]} GB"))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("decode batch B")
    ax.set_ylabel("projected overhead, % of the step")
    tag = "modelled" if section.fetch_p50.modelled else "measured fetch curve"
    ax.set_title(f"Projected overhead vs batch ({tag})")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    return fig


def figures(result: Any) -> dict[str, Any]:
    """Every figure the result has numbers for, by file name."""
    figs: dict[str, Any] = {}
    if result.host is not None and result.host.cells:
        figs["gather_gbps_vs_row_bytes"] = gather_vs_row_size(result.host)
    if (result.host is not None and result.host.cells) or result.gpu is not None:
        figs["latency_vs_rows"] = latency_vs_rows(result.host, result.gpu)
    if result.locality is not None and result.locality.stats:
        figs["hit_rate_vs_cache_gb"] = hit_rate_vs_cache(result.locality)
    if result.projection is not None:
        figs["overhead_vs_batch"] = overhead_vs_batch(result.projection)
    return figs
