"""Context controls for ``engram ablate``: what does a task's score depend on?

A task item may mark a span of its ``context`` (docs/ablate.md): ``context_span`` (the passage
a reading item must be answered from) or ``subject_span`` (the entity a closed-book fact is
about). For every marked span the unablated model scores the task twice more:

- **removed**: the span is cut out of the context (``ctx[:start] + ctx[end:]``);
- **mismatched**: the span is replaced by another item's span text, chosen by a deterministic
  derangement (no item keeps its own text).

Only the context changes: choices, answers, ``gold`` and every character outside the span stay
byte-identical (tests/unit/test_analysis_controls.py checks this down to the scored tokens).
``dependence`` = score with the span − score without it, with a paired-bootstrap CI over items.
The removed-span score is the task's measured floor: what the model gets without the
information, used for a second chance correction beside the nominal one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from engram_cli.analysis.stats import bootstrap_ci, paired_bootstrap_ci

SPANS = {"context_span": "context", "subject_span": "subject"}
CONTROL_SEED = 2


@dataclass
class SpanControl:
    """Scores of one task with a span kept, removed and mismatched (unablated model)."""

    span: str
    field: str
    n: int
    full: float
    removed: float
    removed_ci95: list[float | None]
    dependence: float
    dependence_ci95: list[float | None]
    mismatched: float | None
    n_mismatched: int
    mismatch_dependence: float | None
    mismatch_dependence_ci95: list[float | None]


@dataclass
class TaskControls:
    """Every span control of one task, and the floor they imply."""

    spans: list[SpanControl]
    floor: float | None
    floor_span: str | None


def _cut(item: dict[str, Any], field: str, replacement: str) -> dict[str, Any]:
    start, end = item[field]
    out = {k: v for k, v in item.items() if k not in SPANS}
    out["context"] = item["context"][:start] + replacement + item["context"][end:]
    return out


def span_text(item: dict[str, Any], field: str) -> str:
    start, end = item[field]
    return item["context"][start:end]


def removed_items(items: list[dict[str, Any]], field: str) -> list[dict[str, Any]]:
    """Each item with its ``field`` span cut out of the context (nothing else changes)."""
    return [_cut(it, field, "") for it in items]


def derangement(texts: list[str]) -> list[int | None]:
    """For item i, the index of another item whose text differs (None if none does).

    Deterministic: start half-way round the list and walk forward to the first different
    text, so items sharing a passage never swap it for the same passage.
    """
    n = len(texts)
    out: list[int | None] = []
    shift = max(1, n // 2)
    for i in range(n):
        pick = None
        for k in range(n - 1):
            j = (i + shift + k) % n
            if j != i and texts[j] != texts[i]:
                pick = j
                break
        out.append(pick)
    return out


def mismatched_items(items: list[dict[str, Any]], field: str) -> tuple[list[dict[str, Any]], list[int]]:
    """Items whose span holds another item's span text, and the indices of the items kept."""
    texts = [span_text(it, field) for it in items]
    donors = derangement(texts)
    kept = [i for i, d in enumerate(donors) if d is not None]
    return [_cut(items[i], field, texts[donors[i]]) for i in kept], kept


def _mean(x) -> float:
    return float(np.mean(x)) if len(x) else float("nan")


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(a.mean() - b.mean())


def span_control(field: str, full: list[float], removed: list[float], mismatched: list[float],
                 kept: list[int]) -> SpanControl:
    """Summary statistics of one span control from per-item scores."""
    f, r = np.asarray(full, dtype=np.float64), np.asarray(removed, dtype=np.float64)
    dep_ci = paired_bootstrap_ci(f, r, _diff, seed=CONTROL_SEED)
    if kept:
        fm, m = f[kept], np.asarray(mismatched, dtype=np.float64)
        mis, mis_dep = _mean(m), _diff(fm, m)
        mis_ci = paired_bootstrap_ci(fm, m, _diff, seed=CONTROL_SEED).to_list()
    else:
        mis, mis_dep, mis_ci = None, None, [None, None]
    return SpanControl(span=SPANS[field], field=field, n=len(f), full=_mean(f), removed=_mean(r),
                       removed_ci95=bootstrap_ci(r, seed=CONTROL_SEED).to_list(), dependence=_diff(f, r),
                       dependence_ci95=dep_ci.to_list(), mismatched=mis, n_mismatched=len(kept),
                       mismatch_dependence=mis_dep, mismatch_dependence_ci95=mis_ci)


def run_controls(task, score: Callable[[list[dict[str, Any]]], list[float]], full: list[float]) -> TaskControls | None:
    """Score ``task`` with each marked span removed and mismatched; ``score(items)`` runs the unablated model.

    ``full`` are the unablated per-item scores with the context intact. The floor is the
    removed-span score of the context span if the task marks one, else of the subject span.
    """
    fields = [f for f in SPANS if f in task.span_fields]
    if not fields or task.output_type == "loglikelihood_rolling":
        return None
    spans = []
    for field in fields:
        removed = score(removed_items(task.items, field))
        mis_items, kept = mismatched_items(task.items, field)
        mismatched = score(mis_items) if mis_items else []
        spans.append(span_control(field, full, removed, mismatched, kept))
    floor = spans[0]
    return TaskControls(spans=spans, floor=floor.removed, floor_span=floor.span)


def control_warnings(task: str, category: str, chance: float | None, controls: TaskControls | None) -> list[str]:
    """Reading tasks that do not need their passage; factual tasks answerable without their subject."""
    if controls is None:
        return []
    out = []
    for c in controls.spans:
        lo = c.dependence_ci95[0]
        if category == "reading" and c.span == "context" and (lo is None or lo <= 0):
            out.append(f"{task}: scores {c.full:.3f} with its passage and {c.removed:.3f} without it "
                       f"(dependence {c.dependence:+.3f}, CI lower bound {_fmt(lo)}): it does not measure reading")
        rlo = c.removed_ci95[0]
        if category == "factual" and c.span == "subject" and chance is not None and rlo is not None and rlo > chance:
            out.append(f"{task}: answerable without its subject: {c.removed:.3f} with the subject removed "
                       f"(CI lower bound {rlo:.3f}) vs chance {chance:.3f}; the choices' priors give the answer away")
    return out


def _fmt(x: float | None) -> str:
    return "undefined" if x is None else f"{x:+.3f}"
