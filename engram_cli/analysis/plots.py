"""matplotlib Figure builders (no pyplot state; callers save the figure)."""

from __future__ import annotations

from typing import Any

CATEGORY_COLORS = {"factual": "#d62728", "reading": "#1f77b4", "other": "#7f7f7f"}


def retention_figure(report: dict[str, Any]):
    """A bar chart like the paper's Figure 6: retained score per task (with 95 % CI) and the paper's bars."""
    from matplotlib.figure import Figure

    rows = [t for t in report["tasks"] if t.get("retained") is not None]
    labels, vals, errs, colors = [], [], [[], []], []
    for t in rows:
        v = 100 * t["retained"]
        lo, hi = t["ci95"]
        labels.append(t["task"] + (" *" if t.get("near_chance") else ""))
        vals.append(v)
        errs[0].append(max(0.0, v - 100 * lo) if lo is not None else 0.0)
        errs[1].append(max(0.0, 100 * hi - v) if hi is not None else 0.0)
        colors.append(CATEGORY_COLORS.get(t["category"], "#7f7f7f"))
    ref = report["paper_reference"]["tasks"]
    for name, value in ref.items():
        labels.append(f"{name}\n(paper)")
        vals.append(100 * value)
        errs[0].append(0.0)
        errs[1].append(0.0)
        colors.append(CATEGORY_COLORS["factual" if name == "TriviaQA" else "reading"])
    fig = Figure(figsize=(max(6.0, 0.9 * len(labels) + 2), 4.2), dpi=120)
    ax = fig.add_subplot(111)
    xs = list(range(len(labels)))
    bars = ax.bar(xs, vals, yerr=errs, color=colors, capsize=3, edgecolor="black", linewidth=0.5)
    for b, t in zip(bars, rows):
        if t.get("near_chance"):
            b.set_alpha(0.35)
    for b in bars[len(rows):]:
        b.set_hatch("//")
        b.set_alpha(0.6)
    for x, v, up in zip(xs, vals, errs[1]):
        ax.text(x, v + up + 1.5, f"{v:.0f}%", ha="center", va="bottom", fontsize=8)
    ax.axhline(100, color="black", linewidth=0.6, linestyle=":")
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("retained performance (%)")
    if any(t.get("near_chance") for t in rows):
        ax.text(1.0, -0.28, "* baseline near chance: retention not informative", transform=ax.transAxes,
                ha="right", fontsize=7)
    mode = report["mode"] + (f" alpha={report['alpha']}" if report.get("alpha") is not None else "")
    ax.set_title(f"Retained performance under Engram ablation ({mode}, layers {report['layers']})", fontsize=9)
    ax.set_ylim(0, max(120, max(vals) + 15 if vals else 120))
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=c, label=k) for k, c in CATEGORY_COLORS.items()], fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig
