"""matplotlib Figure builders for ``engram ablate`` (no pyplot state; callers save the figure).

``retention_figure``: the retention figure a paper would print. Left axis: per task the raw
retention (with its 95 % CI), the chance-corrected retention (nominal chance) and the
floor-corrected one (measured no-context floor) side by side; a black tick per
multiple-choice task where an ablated model at chance would land (chance / baseline), a dashed
tick for the measured floor; then the category roll-ups with the paper's category ranges and
its TriviaQA / C3 bars (zero ablation only: the paper measured nothing else). Tasks whose
baseline is near chance are faded. Right axis: perplexity retention (a ratio of perplexities,
not an accuracy), training text vs held-out text. Every mark is in the legend, which sits
below the axes. ``capacity_figure``: retention against K rows per head.
"""

from __future__ import annotations

from typing import Any

CATEGORY_COLORS = {"factual": "#d62728", "reading": "#1f77b4", "other": "#7f7f7f"}
FONT = 10
_W = 0.26  # bar width within a task group


YMIN = -60.0  # corrected retentions below this are clipped (their value is printed at the clip)


def _pct(v: float | None) -> float | None:
    return None if v is None else 100.0 * v


def _corrected_bars(ax, x: float, values: list[float | None], color: str, alpha: float) -> None:
    """Chance-corrected (plain) and floor-corrected (dotted) bars right of the raw bar, clipped at ``YMIN``."""
    for off, v, hatch in ((0.0, values[0], None), (_W, values[1], "..")):
        if v is None:
            continue
        shown = max(v, YMIN)
        ax.bar(x + off, shown, _W, color="white", edgecolor=color, hatch=hatch, linewidth=1.2, alpha=alpha)
        if shown != v:
            ax.text(x + off, YMIN + 2, f"{v:.0f}", ha="center", va="bottom", fontsize=FONT - 3, rotation=90)


def _paper_applies(doc: dict[str, Any]) -> bool:
    return doc["mode"] == "zero" and not doc.get("ngram_order")


def _task_groups(ax, rows: list[dict], x0: float) -> list[float]:
    """Raw / chance-corrected / floor-corrected bars per task; returns the group centres."""
    xs = []
    for i, t in enumerate(rows):
        x = x0 + i
        xs.append(x)
        color = CATEGORY_COLORS.get(t["category"], "#7f7f7f")
        faded = t.get("near_chance") or t.get("near_floor")
        alpha = 0.35 if faded else 1.0
        raw = _pct(t["retained"])
        lo, hi = t["ci95"]
        err = [[max(0.0, raw - 100 * lo) if lo is not None else 0.0], [max(0.0, 100 * hi - raw) if hi is not None else 0.0]]
        ax.bar(x - _W, raw, _W, yerr=err, color=color, alpha=alpha, edgecolor="black", linewidth=0.6, capsize=3,
               error_kw={"elinewidth": 0.9, "alpha": alpha})
        _corrected_bars(ax, x, [_pct(t.get("chance_corrected")), _pct(t.get("chance_corrected_floor"))], color, alpha)
        b = t["baseline"]
        if t.get("chance") and b > 0:
            ax.hlines(100 * t["chance"] / b, x - 1.5 * _W, x - 0.5 * _W, color="black", linewidth=2.2, alpha=alpha)
        if t.get("floor") is not None and b > 0:
            ax.hlines(100 * t["floor"] / b, x - 1.5 * _W, x - 0.5 * _W, color="black", linewidth=1.4,
                      linestyles=(0, (2, 1)), alpha=alpha)
        ax.text(x - _W, max(raw, err[1][0] + raw) + 2, f"{raw:.0f}", ha="center", va="bottom", fontsize=FONT - 2)
    return xs


def _category_bars(ax, doc: dict[str, Any], x0: float) -> tuple[list[float], list[str]]:
    """Roll-ups over informative tasks (solid) and, where they differ, over all tasks (faded)."""
    xs, labels = [], []
    paper = doc["paper_reference"]["categories"] if _paper_applies(doc) else {}
    groups = []
    for cat in CATEGORY_COLORS:
        inf, every = doc["categories"].get(cat), doc.get("categories_all", {}).get(cat)
        if inf is not None:
            groups.append((cat, inf, False))
        if every is not None and (inf is None or every["tasks"] != inf["tasks"]):
            groups.append((cat, every, True))
    for i, (cat, v, faded) in enumerate(groups):
        x = x0 + i
        color = CATEGORY_COLORS.get(cat, "#7f7f7f")
        alpha = 0.35 if faded else 1.0
        raw = _pct(v["retained"])
        if raw is None:
            continue
        lo, hi = v["ci95"]
        err = [[max(0.0, raw - 100 * lo) if lo is not None else 0.0], [max(0.0, 100 * hi - raw) if hi is not None else 0.0]]
        ax.bar(x - _W, raw, _W, yerr=err, color=color, alpha=alpha, edgecolor="black", linewidth=1.2, capsize=3,
               error_kw={"alpha": alpha})
        _corrected_bars(ax, x, [_pct(v.get("chance_corrected")), _pct(v.get("chance_corrected_floor"))], color, alpha)
        if cat in paper:
            plo, phi = paper[cat]
            ax.bar(x + 2 * _W, 100 * (phi - plo), _W * 0.8, bottom=100 * plo, color="#bbbbbb", edgecolor="black",
                   hatch="xx", linewidth=0.6)
        ax.text(x - _W, raw + err[1][0] + 2, f"{raw:.0f}", ha="center", va="bottom", fontsize=FONT - 2)
        xs.append(x)
        labels.append(f"{cat} *\n(all {len(v['tasks'])} tasks)" if faded else f"{cat}\n(mean of {len(v['tasks'])})")
    return xs, labels


def _paper_bars(ax, doc: dict[str, Any], x0: float) -> tuple[list[float], list[str]]:
    xs, labels = [], []
    for i, (name, value) in enumerate(doc["paper_reference"]["tasks"].items()):
        x = x0 + i
        color = CATEGORY_COLORS["factual" if name == "TriviaQA" else "reading"]
        ax.bar(x - _W, 100 * value, _W, color=color, alpha=0.55, hatch="//", edgecolor="black", linewidth=0.6)
        ax.text(x - _W, 100 * value + 2, f"{100 * value:.0f}", ha="center", va="bottom", fontsize=FONT - 2)
        xs.append(x)
        labels.append(f"{name}\n(paper)")
    return xs, labels


def _perplexity_axis(ax, ppl: list[dict]) -> None:
    labels = []
    for i, t in enumerate(ppl):
        v = t["retained"]
        lo, hi = t["ci95"]
        err = [[max(0.0, v - lo) if lo is not None else 0.0], [max(0.0, hi - v) if hi is not None else 0.0]]
        split = t.get("text_split")
        ax.bar(i, v, 0.6, yerr=err, capsize=3, color="#9467bd" if split == "train" else "#2ca02c",
               edgecolor="black", linewidth=0.6)
        ax.text(i, v + err[1][0] + 0.02, f"{v:.2f}", ha="center", va="bottom", fontsize=FONT - 2)
        labels.append(t["task"] + ({"train": "\n(training text)", "heldout": "\n(held-out text)"}.get(split, "")))
    ax.axhline(1.0, color="black", linewidth=0.6, linestyle=":")
    ax.set_xticks(range(len(ppl)))
    ax.set_xticklabels(labels, fontsize=FONT - 1, rotation=20, ha="right")
    ax.set_ylabel("perplexity retention\n(baseline ppl / ablated ppl)", fontsize=FONT)
    ax.set_ylim(0, max(1.15, max((t["retained"] for t in ppl), default=1.0) + 0.15))
    ax.set_xlim(-0.7, len(ppl) - 0.3)
    ax.tick_params(labelsize=FONT - 1)


def _legend_handles(doc: dict[str, Any], has_ppl: bool, any_faded: bool) -> list:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    cats = sorted({t["category"] for t in doc["tasks"] if t["metric"] != "perplexity"}, key=list(CATEGORY_COLORS).index)
    h = [Patch(facecolor=CATEGORY_COLORS.get(c, "#7f7f7f"), edgecolor="black", label=f"{c}: retained (95 % CI)") for c in cats]
    h += [Patch(facecolor="white", edgecolor="black", label="chance-corrected (nominal chance)"),
          Patch(facecolor="white", edgecolor="black", hatch="..", label="floor-corrected (measured no-context floor)"),
          Line2D([], [], color="black", linewidth=2.2, label="chance marker (chance / baseline)"),
          Line2D([], [], color="black", linewidth=1.4, linestyle=(0, (2, 1)), label="measured floor / baseline")]
    if any_faded:
        h.append(Patch(facecolor="#7f7f7f", alpha=0.35, label="faded, *: baseline within 0.05 of chance or floor"))
    h.append(Line2D([], [], color="black", linewidth=0.6, linestyle=":", label="100 % (nothing lost)"))
    if _paper_applies(doc):
        h += [Patch(facecolor="#cccccc", hatch="//", edgecolor="black", label="paper: TriviaQA / C3 (zero ablation)"),
              Patch(facecolor="#bbbbbb", hatch="xx", edgecolor="black", label="paper: category range (zero ablation)")]
    if has_ppl:
        h += [Patch(facecolor="#9467bd", edgecolor="black", label="perplexity: training text"),
              Patch(facecolor="#2ca02c", edgecolor="black", label="perplexity: held-out text")]
    return h


def _title(doc: dict[str, Any]) -> str:
    mode = doc["mode"]
    if doc.get("alpha") is not None:
        mode += f" alpha={doc['alpha']}"
    if doc.get("rows"):
        mode += f" rows={doc['rows'][0]}"
    if doc.get("ngram_order"):
        mode += f" order {doc['ngram_order']}"
    return f"Retained performance under Engram ablation ({mode}, layers {doc['layers']})"


def retention_figure(doc: dict[str, Any]):
    """The retention figure of an ``engram.ablate`` document (see the module docstring)."""
    from matplotlib.figure import Figure

    rows = [t for t in doc["tasks"] if t["metric"] != "perplexity" and t.get("retained") is not None]
    ppl = [t for t in doc["tasks"] if t["metric"] == "perplexity" and t.get("retained") is not None]
    n_left = len(rows) + 2 * len(doc["categories_all"]) + (len(doc["paper_reference"]["tasks"]) if _paper_applies(doc) else 0)
    width = max(8.0, 1.15 * n_left + (1.6 + 1.0 * len(ppl) if ppl else 0) + 1.5)
    fig = Figure(figsize=(width, 6.4), dpi=120, layout="constrained")
    axes = fig.subplots(1, 2, width_ratios=[max(1, n_left), max(1.6, 1.1 * len(ppl))]) if ppl else [fig.add_subplot(111)]
    ax = axes[0]
    xs = _task_groups(ax, rows, 0.0)
    labels = [t["task"] + (" *" if t.get("near_chance") or t.get("near_floor") else "") for t in rows]
    cx, cl = _category_bars(ax, doc, len(rows) + 0.6)
    xs, labels = xs + cx, labels + cl
    if _paper_applies(doc):
        px, plab = _paper_bars(ax, doc, len(rows) + 0.6 + len(cx) + 0.4)
        xs, labels = xs + px, labels + plab
    if rows and cx:
        ax.axvline(len(rows) - 0.2, color="#888888", linewidth=0.8)
    ax.axhline(100, color="black", linewidth=0.6, linestyle=":")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=FONT - 1)
    ax.set_ylabel("retained performance (%)", fontsize=FONT)
    ax.tick_params(labelsize=FONT - 1)
    lows = [_pct(t.get(k)) for t in rows for k in ("chance_corrected", "chance_corrected_floor")]
    low = max(YMIN, min([v for v in lows if v is not None], default=0.0))
    ax.set_ylim(min(0.0, low) - 5, max(125.0, max((_pct(t["retained"]) for t in rows), default=0) + 20))
    ax.set_title(_title(doc), fontsize=FONT + 1)
    if ppl:
        _perplexity_axis(axes[1], ppl)
        axes[1].set_title("Perplexity", fontsize=FONT + 1)
    any_faded = any(t.get("near_chance") or t.get("near_floor") for t in rows)
    handles = _legend_handles(doc, bool(ppl), any_faded)
    fig.legend(handles=handles, loc="outside lower center", ncol=min(4, len(handles)), fontsize=FONT - 1, frameon=False)
    return fig


def capacity_figure(doc: dict[str, Any]):
    """Retention against K rows per head (log axis), per task and per informative category, with CIs."""
    from matplotlib.figure import Figure

    points = doc["dose_response"]
    ks = [p["rows"] for p in points]
    fig = Figure(figsize=(8.5, 5.2), dpi=120, layout="constrained")
    ax = fig.add_subplot(111)
    names = [t["task"] for t in points[0]["tasks"] if t["metric"] != "perplexity"]
    for name in names:
        ts = [next(t for t in p["tasks"] if t["task"] == name) for p in points]
        color = CATEGORY_COLORS.get(ts[0]["category"], "#7f7f7f")
        ys = [_pct(t["retained"]) if t["retained"] is not None else float("nan") for t in ts]
        ax.plot(ks, ys, marker="o", color=color, alpha=0.45, linewidth=1, label=f"{name} ({ts[0]['category']})")
    for cat in CATEGORY_COLORS:
        vs = [p["categories"].get(cat) for p in points]
        if not any(vs):
            continue
        ys = [_pct(v["retained"]) if v else float("nan") for v in vs]
        lo = [_pct(v["ci95"][0]) if v and v["ci95"][0] is not None else float("nan") for v in vs]
        hi = [_pct(v["ci95"][1]) if v and v["ci95"][1] is not None else float("nan") for v in vs]
        color = CATEGORY_COLORS[cat]
        ax.plot(ks, ys, marker="s", color=color, linewidth=2.5, label=f"{cat}: mean retention")
        ax.fill_between(ks, lo, hi, color=color, alpha=0.15, label=f"{cat}: 95 % CI")
    heads = doc.get("head_rows") or {}
    sizes = [s for v in heads.values() for s in v]
    if sizes:
        ax.axvline(min(sizes), color="black", linestyle=":", linewidth=1, label=f"smallest head: {min(sizes):,} rows")
        ax.axvline(max(sizes), color="black", linestyle="-.", linewidth=1,
                   label=f"largest head: {max(sizes):,} rows (K beyond: identical to baseline)")
    ax.axhline(100, color="black", linewidth=0.6, linestyle="--", label="100 % (nothing lost)")
    ax.set_xscale("log")
    ax.set_xticks(ks)
    ax.set_xticklabels([f"{k:,}" for k in ks])
    ax.minorticks_off()
    ax.set_xlabel("K rows per head (ids re-hashed mod K)", fontsize=FONT)
    ax.set_ylabel("retained performance (%)", fontsize=FONT)
    ax.tick_params(labelsize=FONT - 1)
    ax.set_title(f"Capacity ablation: dose-response over K (layers {doc['layers']})", fontsize=FONT + 1)
    fig.legend(loc="outside right center", fontsize=FONT - 2, frameon=False)
    return fig
