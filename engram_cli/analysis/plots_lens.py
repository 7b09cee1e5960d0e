"""Figures of the logit lens (matplotlib Figure builders, no pyplot state; numbers in logit_lens.json)."""

from __future__ import annotations

from typing import Any, Sequence

from engram_cli.analysis.logit_lens import LABELS, NATS_METRICS

COLORS = ("#1f77b4", "#d62728")
MAX_HEATMAP_ROWS = 40


def _unit(metric: str, bits: bool) -> str:
    return f" ({'bits' if bits else 'nats'})" if metric in NATS_METRICS else ""


def _band(ax: Any, xs: Sequence[float], mean, lo, hi, color: str, label: str) -> None:
    import numpy as np

    f = lambda v: np.array([np.nan if x is None else x for x in v], dtype=float)  # noqa: E731
    ax.plot(xs, f(mean), marker="o", markersize=3, color=color, label=label)
    ax.fill_between(xs, f(lo), f(hi), color=color, alpha=0.2, linewidth=0)


def _short(name: str, n: int = 48) -> str:
    return name if len(name) <= n else "…" + name[-(n - 1):]


def _ticks(ax: Any, depths: Sequence[float], labels: Sequence[str]) -> None:
    """One tick per depth; read-outs of the same state (block i-1 and pre-Engram i) share it."""
    by_depth: dict[float, list[str]] = {}
    for d, label in zip(depths, labels):
        by_depth.setdefault(d, []).append(label)
    ax.set_xticks(list(by_depth))
    ax.set_xticklabels(["\n".join(v) for v in by_depth.values()], rotation=45, ha="right", fontsize=7)


def lens_figure(result: Any, metric: str = "kl_final_layer"):
    """Per-read-out curves with 95 % CI bands for every model; the paired delta (A - B) beside them."""
    from matplotlib.figure import Figure

    s = result.settings
    paired = result.paired
    fig = Figure(figsize=(11.5 if paired else 6.5, 4.2), dpi=120)
    ax = fig.add_subplot(1, 2 if paired else 1, 1)
    for k, m in enumerate(result.models):
        c = m.curves[metric]
        xs = [r.depth for r in m.readouts]
        _band(ax, xs, c.mean, c.lo, c.hi, COLORS[k % 2], _short(m.name))
    ref = result.models[0].readouts
    _ticks(ax, [r.depth for r in ref], [r.label for r in ref])
    ax.set_xlabel("read-out (depth = decoder layers applied)")
    ax.set_ylabel(LABELS[metric] + _unit(metric, s.bits))
    ax.set_title(f"Logit lens: {LABELS[metric]} per layer (positions: {s.positions})", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    if paired:
        pc = paired.curves[metric]
        depth = {r.label: r.depth for r in ref}
        xs = [depth[x] for x in pc.labels]
        ax2 = fig.add_subplot(1, 2, 2)
        _band(ax2, xs, pc.delta, pc.lo, pc.hi, "#2ca02c", "A - B (paired 95% CI)")
        ax2.axhline(0, color="black", linewidth=0.6, linestyle=":")
        _ticks(ax2, xs, pc.labels)
        area = "-" if pc.area is None else f"{pc.area:.4g}"
        ax2.set_title(f"Δ {LABELS[metric]}: A - B; area between curves {area}", fontsize=9)
        ax2.set_ylabel("Δ" + _unit(metric, s.bits))
        ax2.legend(fontsize=7)
        ax2.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def heatmap_rows(n: int, max_rows: int = MAX_HEATMAP_ROWS) -> list[int]:
    """Row indices to draw: all when they fit, else an even stride that always keeps the last row."""
    if n <= max_rows:
        return list(range(n))
    step = -(-n // (max_rows - 1))
    rows = list(range(0, n - 1, step))
    return rows + [n - 1]


def _cell(text: str, n: int = 7) -> str:
    text = text.replace("\n", "⏎").replace("$", r"\$")
    return text if len(text) <= n else text[:n - 1] + "…"


def heatmap_figure(maps: Sequence[Any], bits: bool = False):
    """Layer x position top-1 tokens (colour: their probability), one panel per model; last layer always drawn."""
    from matplotlib.figure import Figure

    width = max(len(m.input_ids) for m in maps)
    height = max(len(heatmap_rows(len(m.labels))) for m in maps)
    fig = Figure(figsize=(min(40.0, 1.2 + 0.75 * width), (0.9 + 0.3 * height) * len(maps)), dpi=120)
    for k, m in enumerate(maps):
        rows = heatmap_rows(len(m.labels))
        ax = fig.add_subplot(len(maps), 1, k + 1)
        im = ax.imshow(m.top_prob[rows], aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, origin="lower")
        for y, r in enumerate(rows):
            for x in range(len(m.input_ids)):
                ax.text(x, y, _cell(m.top_tokens[r][x]), ha="center", va="center", fontsize=6,
                        color="white" if m.top_prob[r, x] < 0.6 else "black")
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([m.labels[r] for r in rows], fontsize=6)
        ax.set_xticks(range(len(m.input_ids)))  # one tick per position: repeated tokens stay apart
        ax.set_xticklabels([f"{i}:{_cell(t)}" for i, t in enumerate(m.input_tokens)], rotation=60, ha="right", fontsize=6)
        ax.set_title(f"{_short(m.model)}: top-1 token per read-out (item {_short(m.item, 32)})", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.02, pad=0.01, label="top-1 probability")
    fig.tight_layout()
    return fig
