"""``engram ablate``: retention of task scores when the Engram output is suppressed.

Method (arXiv 2601.07372 §6.3): evaluate the same model with the Engram output suppressed
(``zero``, the paper's default), replaced by its mean over a reference set (``mean``) or
scaled (``scale``, a dose-response sweep), keeping the backbone unchanged; retained =
ablated / baseline. See shared/reference/analysis.md §3.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from engram_cli.analysis.evaluator import Evaluator, ItemScores, no_hooks
from engram_cli.analysis.hooks import capture_means, engram_ablation, resolve_layers
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
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class CategoryResult:
    tasks: list[str]
    excluded: list[str]
    retained: float | None
    ci95: list[float | None]
    chance_corrected: float | None
    baseline: float
    ablated: float


@dataclass
class AblationReport:
    """What ``engram ablate`` measured (the CLI adds ``schema``, ``provenance`` and the model)."""

    mode: str
    alpha: float | None
    ngram_order: int | None
    layers: list[int]
    tasks: list[TaskResult]
    categories: dict[str, CategoryResult]
    kl_next_token_mean: float
    warnings: list[str]
    layer_index_base: int = 0
    bootstrap: dict[str, int] = field(default_factory=lambda: {"n_boot": N_BOOT, "seed": BOOTSTRAP_SEED})
    paper_reference: dict[str, Any] = field(default_factory=lambda: PAPER_REFERENCE)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ratio(a: float, b: float) -> float | None:
    return a / b if b and math.isfinite(b) and abs(b) > 1e-12 else None


def _mean(x) -> float:
    return float(np.mean(x)) if len(x) else float("nan")


def _score_perplexity(task: Task, s: ItemScores) -> TaskResult:
    """Retention for perplexity: baseline ppl / ablated ppl (1 = unchanged, lower = worse);
    CI by resampling sequences (token-weighted)."""
    toks = np.asarray(s.tokens, dtype=np.float64)
    nll_b, nll_a = np.asarray(s.scores[0]), np.asarray(s.scores[1])
    b = math.exp(nll_b.sum() / max(1.0, toks.sum()))
    a = math.exp(nll_a.sum() / max(1.0, toks.sum()))
    both = np.stack([nll_b - nll_a, toks], axis=1)
    ci = paired_bootstrap_ci(both[:, 0], both[:, 1], lambda d, t: math.exp(d.sum() / t.sum()), seed=BOOTSTRAP_SEED)
    return TaskResult(task.name, task.category, task.output_type, "perplexity", len(task.items), b, a, _ratio(b, a),
                      None, None, ci.to_list(), 0, 0, _mean(s.kl), False,
                      {"retained_definition": "baseline_ppl / ablated_ppl", "tokens": int(toks.sum())})


def _score_task(task: Task, ev: Evaluator, conditions, progress) -> tuple[TaskResult, list[float], list[float]]:
    if task.output_type == "multiple_choice":
        s: ItemScores = ev.multiple_choice(task.items, conditions, progress)
        metric = "acc"
        extra = {"acc_norm_baseline": _mean(s.norm_scores[0]), "acc_norm_ablated": _mean(s.norm_scores[1])}
    elif task.output_type == "generate_until":
        s = ev.generate(task.items, conditions, task.until, task.max_gen_toks, progress)
        metric = "exact_match"
        extra = {"examples": [{"id": it["id"], "answers": it["answers"], "baseline": s.outputs[0][i],
                               "ablated": s.outputs[1][i]} for i, it in enumerate(task.items[:5])]}
    else:
        return _score_perplexity(task, ev.rolling(task.items, conditions, progress)), [], []
    base, abl = s.scores[0], s.scores[1]
    chance = task.chance
    b, a = _mean(base), _mean(abl)
    cc = (a - chance) / (b - chance) if chance is not None and b - chance > 1e-9 else None
    ci = paired_bootstrap_ci(base, abl, lambda x, y: _ratio(float(y.mean()), float(x.mean())), seed=BOOTSTRAP_SEED)
    lost = sum(1 for x, y in zip(base, abl) if x > y)
    gained = sum(1 for x, y in zip(base, abl) if y > x)
    near = chance is not None and b - chance < NEAR_CHANCE
    return TaskResult(task.name, task.category, task.output_type, metric, len(task.items), b, a, _ratio(a, b),
                      chance, cc, ci.to_list(), lost, gained, _mean(s.kl) if s.kl else None, near, extra), base, abl


def _category_rollup(results: list[TaskResult], per_item: dict[str, tuple[list[float], list[float]]]) -> dict[str, CategoryResult]:
    """Per category: mean of task retention, CI from resampling every task's items.

    Tasks whose retention is undefined (baseline 0) or uninformative (baseline near chance) stay
    out of the roll-up; they are listed under ``excluded``."""
    out = {}
    for cat in ("factual", "reading", "other"):
        rs = [r for r in results if r.category == cat and r.metric != "perplexity" and r.retained is not None
              and not r.near_chance]
        if not rs:
            continue
        ci = mean_of_ratios_ci([per_item[r.task] for r in rs], seed=BOOTSTRAP_SEED + 1)
        ccs = [r.chance_corrected for r in rs if r.chance_corrected is not None]
        excluded = [r.task for r in results if r.category == cat and r.metric != "perplexity" and r not in rs]
        out[cat] = CategoryResult([r.task for r in rs], excluded, _mean([r.retained for r in rs]), ci.to_list(),
                                  _mean(ccs) if ccs else None, _mean([r.baseline for r in rs]), _mean([r.ablated for r in rs]))
    return out


def _reference_means(view, evaluator: Evaluator, tasks: list[Task], layer_ids: list[int], texts: list[str] | None):
    """Per-layer mean Engram output over reference texts (for ``mode="mean"``)."""
    import torch

    texts = texts or [it.get("context") or it.get("text") for t in tasks for it in t.items][:64]
    with capture_means(view, layer_ids) as means, torch.no_grad():
        for text in texts:
            ids = evaluator.tok.encode(text)[: evaluator.max_length]
            if len(ids) >= 2:
                x = torch.tensor([ids], device=evaluator.device)
                view.logits_at(x, torch.zeros(1, len(ids), dtype=torch.bool, device=evaluator.device))
    return means


def run_ablation(view, evaluator: Evaluator, tasks: list[Task], *, layers: str | list[int] | None = "all",
                 mode: str = "zero", alpha: float = 0.0, ngram_order: int | None = None,
                 reference_texts: list[str] | None = None, progress=None) -> AblationReport:
    """Score every task with and without the ablation on the same items."""
    from engram_cli.analysis.hooks import MODES
    from engram_cli.errors import UsageError

    if mode not in MODES:
        raise UsageError(f"unknown mode {mode!r}", hint=f"one of {', '.join(MODES)}")
    layer_ids = resolve_layers(view, layers)
    means = None
    if mode == "mean" and ngram_order is None:
        means = _reference_means(view, evaluator, tasks, layer_ids, reference_texts)

    def ablated():
        return engram_ablation(view, layer_ids, mode=mode, alpha=alpha, means=means, ngram_order=ngram_order)

    results, per_item = [], {}
    for k, task in enumerate(tasks):
        def prog(done, total, desc="", k=k, task=task):
            if progress:
                progress(done, total, f"{task.name} ({k + 1}/{len(tasks)})")
        r, base, abl = _score_task(task, evaluator, [no_hooks, ablated], prog)
        results.append(r)
        if r.metric != "perplexity":
            per_item[task.name] = (base, abl)
    warnings = [f"{r.task}: baseline {r.baseline:.3f} is within {NEAR_CHANCE} of chance ({r.chance:.3f}); "
                "its retention is not informative" for r in results if r.near_chance]
    return AblationReport(mode=mode, alpha=alpha if mode == "scale" else None, ngram_order=ngram_order,
                          layers=layer_ids, tasks=results, categories=_category_rollup(results, per_item),
                          kl_next_token_mean=_mean([r.kl_mean for r in results if r.kl_mean is not None]),
                          warnings=warnings)
