"""``engram ablate``: retention of task scores when the Engram output is suppressed.

Method (arXiv 2601.07372 §6.3): evaluate the same model with the Engram output suppressed
(``zero``, the paper's default), replaced by its mean over a reference set (``mean``), scaled
(``scale``, a dose-response sweep) or squeezed into K rows per head (``capacity``, see
``capacity.py``), keeping the backbone unchanged; retained = ablated / baseline. See
shared/reference/analysis.md §3. With ``controls`` every task that marks a context or subject
span is also scored with the span removed and mismatched (``controls.py``).
"""

from __future__ import annotations

from typing import Any, Callable

from engram_cli.analysis.ablation_results import (  # noqa: F401 - re-exported for callers
    NEAR_CHANCE,
    PAPER_REFERENCE,
    AblationReport,
    CategoryResult,
    ConditionResult,
    TaskResult,
    condition_result,
    memorisation_rows,
    memorisation_warnings,
    perplexity_result,
    scored_result,
    task_warnings,
)
from engram_cli.analysis.capacity import capacity_rows, head_sizes
from engram_cli.analysis.controls import TaskControls, control_warnings, run_controls
from engram_cli.analysis.evaluator import Evaluator, ItemScores, no_hooks
from engram_cli.analysis.hooks import MODES, capture_means, engram_ablation, resolve_layers
from engram_cli.analysis.tasks import Task

ALL_MODES = MODES + ("capacity", "none")  # none: score the model as it is (baseline, controls), e.g. a no-Engram twin


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


def _evaluate(task: Task, ev: Evaluator, conditions: list[Callable[[], Any]], progress) -> ItemScores:
    if task.output_type == "multiple_choice":
        return ev.multiple_choice(task.items, conditions, progress)
    if task.output_type == "generate_until":
        return ev.generate(task.items, conditions, task.until, task.max_gen_toks, progress)
    return ev.rolling(task.items, conditions, progress)


def _conditions(view, evaluator, tasks, layer_ids, mode, alpha, ngram_order, rows, reference_texts):
    """``[(label, rows, context-manager factory)]`` of the ablations to compare with the baseline."""
    from engram_cli.errors import UsageError

    if mode == "capacity":
        if not rows:
            raise UsageError("--mode capacity needs --rows K (one or more)")
        if ngram_order is not None:
            raise UsageError("--ngram-order does not combine with --mode capacity")
        return [(f"rows={k}", k, lambda k=k: capacity_rows(view, layer_ids, k)) for k in rows]
    if rows:
        raise UsageError("--rows only applies to --mode capacity")
    if mode == "none":
        if ngram_order is not None:
            raise UsageError("--ngram-order does not combine with --mode none")
        return [("none", None, None)]
    means = None
    if mode == "mean" and ngram_order is None:
        means = _reference_means(view, evaluator, tasks, layer_ids, reference_texts)
    label = mode + (f" alpha={alpha}" if mode == "scale" else "")
    return [(label, None, lambda: engram_ablation(view, layer_ids, mode=mode, alpha=alpha, means=means,
                                                  ngram_order=ngram_order))]


def _baseline_only(task: Task, ev: Evaluator, progress) -> ItemScores:
    """Score once (no ablation) and mirror the scores as the "ablated" condition: retention 1, KL 0."""
    s = _evaluate(task, ev, [no_hooks], progress)
    s.scores.append(list(s.scores[0]))
    if s.norm_scores:
        s.norm_scores.append(list(s.norm_scores[0]))
    if s.outputs:
        s.outputs.append(list(s.outputs[0]))
    s.kl = [0.0] * len(s.scores[0])
    return s


def _task_controls(task: Task, ev: Evaluator, full: list[float], progress) -> TaskControls | None:
    def score(items):
        if task.output_type == "multiple_choice":
            return ev.multiple_choice(items, [no_hooks], progress).scores[0]
        return ev.generate(items, [no_hooks], task.until, task.max_gen_toks, progress).scores[0]

    return run_controls(task, score, full)


def run_ablation(view, evaluator: Evaluator, tasks: list[Task], *, layers: str | list[int] | None = "all",
                 mode: str = "zero", alpha: float = 0.0, ngram_order: int | None = None, rows: list[int] | None = None,
                 controls: bool = True, reference_texts: list[str] | None = None, progress=None) -> AblationReport:
    """Score every task with and without the ablation on the same items (and the span controls)."""
    from engram_cli.errors import UsageError

    if mode not in ALL_MODES:
        raise UsageError(f"unknown mode {mode!r}", hint=f"one of {', '.join(ALL_MODES)}")
    layer_ids = resolve_layers(view, layers) if mode != "none" else []
    conds = _conditions(view, evaluator, tasks, layer_ids, mode, alpha, ngram_order, rows, reference_texts)
    results: list[list[TaskResult]] = [[] for _ in conds]
    per_item: list[dict[str, tuple[list[float], list[float]]]] = [{} for _ in conds]
    warnings: list[str] = []
    for k, task in enumerate(tasks):
        def prog(done, total, desc="", k=k, task=task, what=""):
            if progress:
                progress(done, total, f"{task.name}{what} ({k + 1}/{len(tasks)})")
        scores = [_evaluate(task, evaluator, [no_hooks, factory], prog) if factory else _baseline_only(task, evaluator, prog)
                  for _, _, factory in conds]
        if task.output_type == "loglikelihood_rolling":
            for c, s in enumerate(scores):
                results[c].append(perplexity_result(task, s))
            continue
        ctrl = None
        if controls:
            ctrl = _task_controls(task, evaluator, scores[0].scores[0],
                                  lambda d, t, desc="", p=prog: p(d, t, what=" controls"))
            warnings += control_warnings(task.name, task.category, task.chance, ctrl)
        for c, s in enumerate(scores):
            results[c].append(scored_result(task, s, ctrl))
            per_item[c][task.name] = (s.scores[0], s.scores[1])
    dose = [condition_result(label, k, results[c], per_item[c]) for c, (label, k, _) in enumerate(conds)]
    head = dose[0]
    mem = memorisation_rows(head.tasks)
    warnings = task_warnings(head.tasks) + warnings + memorisation_warnings(mem)
    return AblationReport(mode=mode, alpha=alpha if mode == "scale" else None, ngram_order=ngram_order,
                          rows=list(rows) if mode == "capacity" else None, layers=layer_ids, tasks=head.tasks,
                          categories=head.categories, categories_all=head.categories_all, memorisation=mem,
                          dose_response=dose if mode == "capacity" else [], controls=controls,
                          kl_next_token_mean=head.kl_next_token_mean, warnings=warnings,
                          head_rows={lid: head_sizes(view, lid) for lid in layer_ids} if mode == "capacity" else {})
