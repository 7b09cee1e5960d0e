"""``engram ablate``: retention of task scores when the Engram output is suppressed.

Method (arXiv 2601.07372 §6.3): evaluate the same model with the Engram output suppressed
(``zero``, the paper's default), replaced by its mean over a reference set (``mean``) or
scaled (``scale``, a dose-response sweep), keeping the backbone unchanged; retained =
ablated / baseline. See shared/reference/analysis.md §3.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from engram_cli.analysis.evaluator import Evaluator, ItemScores, no_hooks
from engram_cli.analysis.hooks import capture_means, engram_ablation, resolve_layers
from engram_cli.analysis.tasks import Task

SCHEMA = "engram.ablate/1"
PAPER_REFERENCE = {
    "source": "arXiv:2601.07372 §6.3, Figure 6 (Engram-27B, zero ablation)",
    "tasks": {"TriviaQA": 0.29, "C3": 0.93},
    "categories": {"factual": [0.29, 0.44], "reading": [0.81, 0.93]},
    "caveat": "post-hoc ablation induces a training-inference inconsistency (paper §6.3)",
}
NEAR_CHANCE = 0.05


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


def _ratio(a: float, b: float) -> float | None:
    return a / b if b and math.isfinite(b) and abs(b) > 1e-12 else None


def paired_bootstrap(base: list[float], abl: list[float], stat, n_boot: int = 1000, seed: int = 0) -> list[float | None]:
    """95 % percentile CI of ``stat(base_sample, abl_sample)`` resampling items in pairs."""
    if not base:
        return [None, None]
    rng = random.Random(seed)
    n = len(base)
    vals = []
    for _ in range(n_boot):
        idx = [rng.randrange(n) for _ in range(n)]
        v = stat([base[i] for i in idx], [abl[i] for i in idx])
        if v is not None and math.isfinite(v):
            vals.append(v)
    if len(vals) < n_boot // 2:
        return [None, None]
    vals.sort()
    return [vals[int(0.025 * (len(vals) - 1))], vals[int(0.975 * (len(vals) - 1))]]


def _mean(x: list[float]) -> float:
    return sum(x) / len(x) if x else float("nan")


def _score_task(task: Task, ev: Evaluator, conditions, progress):
    if task.output_type == "multiple_choice":
        s: ItemScores = ev.multiple_choice(task.items, conditions, progress)
        base, abl = s.scores[0], s.scores[1]
        metric = "acc"
        extra = {"acc_norm_baseline": _mean(s.norm_scores[0]), "acc_norm_ablated": _mean(s.norm_scores[1])}
    elif task.output_type == "generate_until":
        s = ev.generate(task.items, conditions, task.until, task.max_gen_toks, progress)
        base, abl = s.scores[0], s.scores[1]
        metric = "exact_match"
        extra = {"examples": [{"id": it["id"], "answers": it["answers"], "baseline": s.outputs[0][i],
                               "ablated": s.outputs[1][i]} for i, it in enumerate(task.items[:5])]}
    else:
        s = ev.rolling(task.items, conditions, progress)
        toks = s.tokens
        ppl = lambda nll: math.exp(sum(nll) / max(1, sum(toks)))  # noqa: E731
        b, a = ppl(s.scores[0]), ppl(s.scores[1])

        # retention for perplexity: baseline ppl / ablated ppl (1 = unchanged, lower = worse)
        rng = random.Random(0)
        n = len(toks)
        vals = []
        for _ in range(1000):
            idx = [rng.randrange(n) for _ in range(n)]
            t = sum(toks[i] for i in idx)
            vals.append(math.exp((sum(s.scores[0][i] for i in idx) - sum(s.scores[1][i] for i in idx)) / t))
        vals.sort()
        return TaskResult(task.name, task.category, task.output_type, "perplexity", len(task.items), b, a,
                          _ratio(b, a), None, None, [vals[24], vals[974]], 0, 0, _mean(s.kl), False,
                          {"retained_definition": "baseline_ppl / ablated_ppl", "tokens": sum(toks)}), [], []
    chance = task.chance
    b, a = _mean(base), _mean(abl)
    cc = None
    if chance is not None and b - chance > 1e-9:
        cc = (a - chance) / (b - chance)
    ci = paired_bootstrap(base, abl, lambda x, y: _ratio(_mean(y), _mean(x)))
    lost = sum(1 for x, y in zip(base, abl) if x > y)
    gained = sum(1 for x, y in zip(base, abl) if y > x)
    near = chance is not None and b - chance < NEAR_CHANCE
    return TaskResult(task.name, task.category, task.output_type, metric, len(task.items), b, a, _ratio(a, b),
                      chance, cc, ci, lost, gained, _mean(s.kl) if s.kl else None, near, extra), base, abl


def _category_rollup(results: list[TaskResult], per_item: dict[str, tuple[list[float], list[float]]]) -> dict:
    out = {}
    for cat in ("factual", "reading", "other"):
        # tasks whose retention is undefined (baseline 0) or uninformative (baseline near chance)
        # stay out of the roll-up; they are listed under "excluded"
        rs = [r for r in results if r.category == cat and r.metric != "perplexity" and r.retained is not None
              and not r.near_chance]
        if not rs:
            continue
        # pooled over tasks: mean of per-task retention, CI from a bootstrap over tasks' items
        pairs = [per_item[r.task] for r in rs]

        rets = [r.retained for r in rs if r.retained is not None]
        rng = random.Random(1)
        boots = []
        for _ in range(1000):
            vals = []
            for b, a in pairs:
                idx = [rng.randrange(len(b)) for _ in range(len(b))]
                mb = _mean([b[i] for i in idx])
                if mb > 0:
                    vals.append(_mean([a[i] for i in idx]) / mb)
            if len(vals) == len(pairs):
                boots.append(_mean(vals))
        boots.sort()
        ci = [boots[int(0.025 * (len(boots) - 1))], boots[int(0.975 * (len(boots) - 1))]] if boots else [None, None]
        ccs = [r.chance_corrected for r in rs if r.chance_corrected is not None]
        excluded = [r.task for r in results if r.category == cat and r.metric != "perplexity" and r not in rs]
        out[cat] = {"tasks": [r.task for r in rs], "excluded": excluded, "retained": _mean(rets) if rets else None, "ci95": ci,
                    "chance_corrected": _mean(ccs) if ccs else None,
                    "baseline": _mean([r.baseline for r in rs]), "ablated": _mean([r.ablated for r in rs])}
    return out


def run_ablation(view, evaluator: Evaluator, tasks: list[Task], *, layers: str | list[int] | None = "all",
                 mode: str = "zero", alpha: float = 0.0, ngram_order: int | None = None,
                 reference_texts: list[str] | None = None, progress=None) -> dict[str, Any]:
    """Score every task with and without the ablation; return the report document."""
    import torch

    from engram_cli.analysis.hooks import MODES
    from engram_cli.errors import UsageError

    if mode not in MODES:
        raise UsageError(f"unknown mode {mode!r}", hint=f"one of {', '.join(MODES)}")
    layer_ids = resolve_layers(view, layers)
    means = None
    if mode == "mean" and ngram_order is None:
        texts = reference_texts or [it.get("context") or it.get("text") for t in tasks for it in t.items][:64]
        with capture_means(view, layer_ids) as means, torch.no_grad():
            for text in texts:
                ids = evaluator.tok.encode(text)[: evaluator.max_length]
                if len(ids) >= 2:
                    view.logits_at(torch.tensor([ids], device=evaluator.device), torch.zeros(1, len(ids), dtype=torch.bool, device=evaluator.device))

    def ablated():
        return engram_ablation(view, layer_ids, mode=mode, alpha=alpha, means=means, ngram_order=ngram_order)

    conditions = [no_hooks, ablated]
    results = []
    per_item = {}
    for k, task in enumerate(tasks):
        def prog(done, total, desc="", k=k, task=task):
            if progress:
                progress(done, total, f"{task.name} ({k + 1}/{len(tasks)})")
        r, base, abl = _score_task(task, evaluator, conditions, prog)
        results.append(r)
        if r.metric != "perplexity":
            per_item[task.name] = (base, abl)
    warnings = []
    for r in results:
        if r.near_chance:
            warnings.append(f"{r.task}: baseline {r.baseline:.3f} is within {NEAR_CHANCE} of chance "
                            f"({r.chance:.3f}); its retention is not informative")
    return {
        "schema": SCHEMA,
        "mode": mode, "alpha": alpha if mode == "scale" else None, "ngram_order": ngram_order,
        "layers": layer_ids, "layer_index_base": 0,
        "tasks": [r.__dict__ for r in results],
        "categories": _category_rollup(results, per_item),
        "kl_next_token_mean": _mean([r.kl_mean for r in results if r.kl_mean is not None]),
        "paper_reference": PAPER_REFERENCE,
        "warnings": warnings,
    }

