"""Typed results of ``engram ablate`` and the summaries built from per-item scores.

Per task: retention with a paired-bootstrap CI, two chance corrections (nominal chance and the
measured floor from the context controls), flips and KL. Per category: the mean of the task
retentions, once over informative tasks only and once over every task. Perplexity tasks on
training text and on held-out text side by side (the memorisation control).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from engram_cli.analysis.controls import SpanControl, TaskControls
from engram_cli.analysis.evaluator import ItemScores
from engram_cli.analysis.stats import N_BOOT, mean_of_ratios_ci, paired_bootstrap_ci
from engram_cli.analysis.tasks import Task

PAPER_REFERENCE = {
    "source": "arXiv:2601.07372 §6.3, Figure 6 (Engram-27B, zero ablation)",
    "tasks": {"TriviaQA": 0.29, "C3": 0.93},
    "categories": {"factual": [0.29, 0.44], "reading": [0.81, 0.93]},
    "caveat": "post-hoc ablation induces a training-inference inconsistency (paper §6.3)",
}
NEAR_CHANCE = 0.05
BOOTSTRAP_SEED = 0
CATEGORY_ORDER = ("factual", "reading", "other")


@dataclass
class TaskResult:
    task: str
    category: str
    output_type: str
    metric: str
    n: int
    baseline: float
    ablated: float
    retained: float | None
    chance: float | None
    chance_corrected: float | None
    ci95: list[float | None]
    flipped_lost: int
    flipped_gained: int
    kl_mean: float | None
    near_chance: bool
    floor: float | None = None
    floor_span: str | None = None
    chance_corrected_floor: float | None = None
    near_floor: bool = False
    text_split: str | None = None
    controls: list[SpanControl] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def informative(self) -> bool:
        """Retention defined, and the baseline clear of both nominal chance and the measured floor."""
        return self.metric != "perplexity" and self.retained is not None and not self.near_chance and not self.near_floor


@dataclass
class CategoryResult:
    tasks: list[str]
    excluded: list[str]
    retained: float | None
    ci95: list[float | None]
    chance_corrected: float | None
    chance_corrected_floor: float | None
    baseline: float
    ablated: float


@dataclass
class MemorisationRow:
    """Perplexity retention of one text sample whose suite says whether it was trained on."""

    task: str
    text_split: str
    n: int
    tokens: int
    baseline_ppl: float
    ablated_ppl: float
    retained: float | None
    ci95: list[float | None]


@dataclass
class ConditionResult:
    """Every task under one ablation condition (one K of a capacity sweep, or the only one)."""

    label: str
    rows: int | None
    tasks: list[TaskResult]
    categories: dict[str, CategoryResult]
    categories_all: dict[str, CategoryResult]
    kl_next_token_mean: float


@dataclass
class AblationReport:
    """What ``engram ablate`` measured (the CLI adds ``schema``, ``provenance`` and the model).

    ``tasks``/``categories`` are the headline condition: the only one, or for ``capacity`` the
    smallest K; ``dose_response`` lists every K of a capacity sweep.
    """

    mode: str
    alpha: float | None
    ngram_order: int | None
    rows: list[int] | None
    layers: list[int]
    tasks: list[TaskResult]
    categories: dict[str, CategoryResult]
    categories_all: dict[str, CategoryResult]
    memorisation: list[MemorisationRow]
    dose_response: list[ConditionResult]
    controls: bool
    kl_next_token_mean: float
    warnings: list[str]
    head_rows: dict[int, list[int]] = field(default_factory=dict)
    layer_index_base: int = 0
    bootstrap: dict[str, int] = field(default_factory=lambda: {"n_boot": N_BOOT, "seed": BOOTSTRAP_SEED})
    paper_reference: dict[str, Any] = field(default_factory=lambda: PAPER_REFERENCE)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ratio(a: float, b: float) -> float | None:
    return a / b if b and math.isfinite(b) and abs(b) > 1e-12 else None


def mean(x) -> float:
    return float(np.mean(x)) if len(x) else float("nan")


def _corrected(b: float, a: float, floor: float | None) -> float | None:
    return (a - floor) / (b - floor) if floor is not None and b - floor > 1e-9 else None


def perplexity_result(task: Task, s: ItemScores) -> TaskResult:
    """Retention for perplexity: baseline ppl / ablated ppl (1 = unchanged, lower = worse);
    CI by resampling sequences (token-weighted)."""
    toks = np.asarray(s.tokens, dtype=np.float64)
    nll_b, nll_a = np.asarray(s.scores[0]), np.asarray(s.scores[1])
    b = math.exp(nll_b.sum() / max(1.0, toks.sum()))
    a = math.exp(nll_a.sum() / max(1.0, toks.sum()))
    ci = paired_bootstrap_ci(nll_b - nll_a, toks, lambda d, t: math.exp(d.sum() / t.sum()), seed=BOOTSTRAP_SEED)
    return TaskResult(task.name, task.category, task.output_type, "perplexity", len(task.items), b, a, _ratio(b, a),
                      None, None, ci.to_list(), 0, 0, mean(s.kl), False, text_split=task.text_split,
                      extra={"retained_definition": "baseline_ppl / ablated_ppl", "tokens": int(toks.sum())})


def scored_result(task: Task, s: ItemScores, controls: TaskControls | None) -> TaskResult:
    """Accuracy-type retention (multiple choice, generation) from baseline/ablated per-item scores."""
    if task.output_type == "multiple_choice":
        metric = "acc"
        extra: dict[str, Any] = {"acc_norm_baseline": mean(s.norm_scores[0]), "acc_norm_ablated": mean(s.norm_scores[1])}
    else:
        metric = "exact_match"
        extra = {"examples": [{"id": it["id"], "answers": it["answers"], "baseline": s.outputs[0][i],
                               "ablated": s.outputs[1][i]} for i, it in enumerate(task.items[:5])]}
    base, abl = s.scores[0], s.scores[1]
    chance = task.chance
    b, a = mean(base), mean(abl)
    ci = paired_bootstrap_ci(base, abl, lambda x, y: _ratio(float(y.mean()), float(x.mean())), seed=BOOTSTRAP_SEED)
    floor = controls.floor if controls else None
    return TaskResult(
        task.name, task.category, task.output_type, metric, len(task.items), b, a, _ratio(a, b), chance,
        _corrected(b, a, chance), ci.to_list(), sum(1 for x, y in zip(base, abl) if x > y),
        sum(1 for x, y in zip(base, abl) if y > x), mean(s.kl) if s.kl else None,
        chance is not None and b - chance < NEAR_CHANCE, floor=floor, floor_span=controls.floor_span if controls else None,
        chance_corrected_floor=_corrected(b, a, floor), near_floor=floor is not None and b - floor < NEAR_CHANCE,
        controls=list(controls.spans) if controls else [], extra=extra)


def category_rollup(results: list[TaskResult], per_item: dict[str, tuple[list[float], list[float]]],
                    informative_only: bool) -> dict[str, CategoryResult]:
    """Per category: mean of task retention, CI from resampling every task's items.

    With ``informative_only`` tasks whose baseline is near chance or near the measured floor stay
    out (listed under ``excluded``); tasks with undefined retention (baseline 0) always do."""
    out = {}
    for cat in CATEGORY_ORDER:
        cands = [r for r in results if r.category == cat and r.metric != "perplexity"]
        rs = [r for r in cands if (r.informative if informative_only else r.retained is not None)]
        if not rs:
            continue
        ci = mean_of_ratios_ci([per_item[r.task] for r in rs], seed=BOOTSTRAP_SEED + 1)
        ccs = [r.chance_corrected for r in rs if r.chance_corrected is not None]
        ccf = [r.chance_corrected_floor for r in rs if r.chance_corrected_floor is not None]
        out[cat] = CategoryResult([r.task for r in rs], [r.task for r in cands if r not in rs], mean([r.retained for r in rs]),
                                  ci.to_list(), mean(ccs) if ccs else None, mean(ccf) if ccf else None,
                                  mean([r.baseline for r in rs]), mean([r.ablated for r in rs]))
    return out


def memorisation_rows(results: list[TaskResult]) -> list[MemorisationRow]:
    """Perplexity tasks that say which text they are (``text_split``), training text first."""
    rows = [MemorisationRow(r.task, r.text_split, r.n, int(r.extra.get("tokens", 0)), r.baseline, r.ablated, r.retained, r.ci95)
            for r in results if r.metric == "perplexity" and r.text_split]
    return sorted(rows, key=lambda m: (m.text_split != "train", m.task))


def memorisation_warnings(rows: list[MemorisationRow]) -> list[str]:
    """Warn when training text loses clearly more perplexity than held-out text."""
    train = [m for m in rows if m.text_split == "train" and m.ci95[1] is not None]
    held = [m for m in rows if m.text_split == "heldout" and m.ci95[0] is not None]
    out = []
    for t in train:
        for h in held:
            if t.ci95[1] < h.ci95[0]:
                out.append(f"perplexity retention is {100 * t.retained:.1f}% on training text ({t.task}) but "
                           f"{100 * h.retained:.1f}% on held-out text ({h.task}): the tables hold the training text itself, "
                           "so a collapse on trained facts may be memorisation rather than knowledge")
    return out


def condition_result(label: str, rows: int | None, results: list[TaskResult],
                     per_item: dict[str, tuple[list[float], list[float]]]) -> ConditionResult:
    return ConditionResult(label, rows, results, category_rollup(results, per_item, True),
                           category_rollup(results, per_item, False),
                           mean([r.kl_mean for r in results if r.kl_mean is not None]))


def task_warnings(results: list[TaskResult]) -> list[str]:
    out = []
    for r in results:
        if r.near_chance:
            out.append(f"{r.task}: baseline {r.baseline:.3f} is within {NEAR_CHANCE} of chance ({r.chance:.3f}); "
                       "its retention is not informative")
        elif r.near_floor:
            out.append(f"{r.task}: baseline {r.baseline:.3f} is within {NEAR_CHANCE} of its measured floor "
                       f"({r.floor:.3f}, {r.floor_span} removed); its retention is not informative")
    return out
