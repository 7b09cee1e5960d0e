"""Ablation hooks, the evaluator and the retention report on tiny random models."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models_helpers import tiny_qwen4exp, tiny_reference_model, tiny_suites, tiny_tokenizer  # noqa: E402

from engram_cli.analysis.hooks import capture_means, engram_ablation, resolve_layers  # noqa: E402
from engram_cli.errors import BadInputError, UsageError  # noqa: E402
from engram_cli.models.views import view_for  # noqa: E402


def _logits(model, x):
    with torch.no_grad():
        return model(x).logits.clone()


def test_scale_one_is_exact_zero_changes_and_hooks_removed():
    model = tiny_reference_model()
    view = view_for(model)
    x = torch.randint(0, 64, (2, 9))
    base = _logits(model, x)
    with engram_ablation(view, [1, 2], mode="scale", alpha=1.0):
        assert torch.equal(_logits(model, x), base)
    with engram_ablation(view, [1, 2], mode="zero"):
        zero = _logits(model, x)
    assert not torch.allclose(zero, base)
    assert torch.equal(_logits(model, x), base)
    assert all(not m._forward_hooks for m in model.modules())


def test_zero_equals_model_without_engram_add():
    """Zero ablation makes the residual add an identity: same as deleting the module."""
    model = tiny_reference_model()
    view = view_for(model)
    x = torch.randint(0, 64, (1, 8))
    with engram_ablation(view, [1, 2], mode="zero"):
        zero = _logits(model, x)
    saved = [(l, l.engram) for l in model.model.layers if l.engram is not None]
    for l, _ in saved:
        l.engram = None
    try:
        assert torch.allclose(_logits(model, x), zero, atol=1e-6)
    finally:
        for l, e in saved:
            l.engram = e


def test_hooks_removed_on_error():
    model = tiny_reference_model()
    view = view_for(model)
    with pytest.raises(RuntimeError):
        with engram_ablation(view, [1], mode="zero"):
            raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in model.modules())


def test_mean_scale_and_ngram_order():
    model = tiny_reference_model()
    view = view_for(model)
    x = torch.randint(0, 64, (2, 9))
    base = _logits(model, x)
    with capture_means(view, [1, 2]) as means:
        _logits(model, x)
    assert means[1].shape == (1, 32)
    with engram_ablation(view, [1, 2], mode="mean", means=means):
        mean = _logits(model, x)
    with engram_ablation(view, [1], mode="scale", alpha=0.5):
        half = _logits(model, x)
    with engram_ablation(view, [1, 2], ngram_order=3):
        o3 = _logits(model, x)
    assert not torch.allclose(mean, base) and not torch.allclose(half, base) and not torch.allclose(o3, base)


def test_unresolved_layers_are_bad_input():
    view = view_for(tiny_reference_model())
    assert resolve_layers(view, "all") == [1, 2]
    assert resolve_layers(view, "2") == [2]
    with pytest.raises(BadInputError, match=r"\[5\]"):
        resolve_layers(view, "1,5")
    with pytest.raises(UsageError):
        resolve_layers(view, "x")


def test_qwen4exp_ple_is_suppressed():
    model = tiny_qwen4exp()
    view = view_for(model)
    x = torch.randint(1, 64, (1, 8))
    with torch.no_grad():
        base = model(input_ids=x).logits.clone()
        with engram_ablation(view, [0], mode="zero"):
            abl = model(input_ids=x).logits.clone()
        with engram_ablation(view, [0], mode="scale", alpha=1.0):
            same = model(input_ids=x).logits.clone()
        after = model(input_ids=x).logits
    assert not torch.allclose(base, abl)
    assert torch.equal(base, same) and torch.equal(base, after)


def test_run_ablation_report(tmp_path):
    from engram_cli.analysis.ablation import run_ablation
    from engram_cli.analysis.evaluator import Evaluator
    from engram_cli.analysis.tasks import resolve_tasks
    from engram_cli.models.loading import load_text_tokenizer

    tiny_tokenizer(tmp_path / "tok")
    tok = load_text_tokenizer(tmp_path / "tok", eos_id=0)
    model = tiny_reference_model(vocab_size=80)
    view = view_for(model)
    tasks = resolve_tasks([str(tiny_suites(tmp_path / "suites"))], tmp_path)
    ev = Evaluator(view, tok, batch_size=3)
    for mode, alpha in (("scale", 1.0), ("zero", 0.0), ("mean", 0.0)):
        rep = run_ablation(view, ev, tasks, mode=mode, alpha=alpha).to_dict()  # typed result since the conventions change
        json.dumps(rep)
        assert {t["task"] for t in rep["tasks"]} == {"caps_mc", "read_gen", "ppl"}
        for t in rep["tasks"]:
            if mode == "scale":
                assert t["baseline"] == t["ablated"] and t["flipped_lost"] == 0
                assert t["kl_mean"] == pytest.approx(0.0, abs=1e-9)
        if mode == "zero":
            assert max(t["kl_mean"] for t in rep["tasks"]) > 0
    assert all(not m._forward_hooks for m in model.modules())


def test_run_ablation_controls_capacity_and_rollups(tmp_path):
    """Span controls feed the measured floor; capacity gives one condition per K; roll-ups with and without."""
    from models_helpers import write_suite

    from engram_cli.analysis.ablation import run_ablation
    from engram_cli.analysis.evaluator import Evaluator
    from engram_cli.analysis.tasks import load_task
    from engram_cli.models.loading import load_text_tokenizer

    tiny_tokenizer(tmp_path / "tok")
    tok = load_text_tokenizer(tmp_path / "tok", eos_id=0)
    model = tiny_reference_model(vocab_size=80)
    view = view_for(model)
    caps = [("france", "paris"), ("italy", "rome"), ("germany", "berlin"), ("spain", "madrid")]
    items = []
    for i, (c, x) in enumerate(caps):
        ctx = f"passage : the capital of {c} is {x} . question : the capital of {c} is"
        items.append({"context": ctx, "choices": [f" {y}" for _, y in caps], "gold": i,
                      "context_span": [10, ctx.index(" question")]})
    read = load_task(write_suite(tmp_path / "read.jsonl", {"task": "read", "category": "reading",
                                                           "output_type": "multiple_choice"}, items))
    ppl = [load_task(write_suite(tmp_path / f"{s}.jsonl", {"task": s, "output_type": "loglikelihood_rolling", "text_split": s},
                                 [{"text": "the capital of france is paris . the river is blue"}])) for s in ("train", "heldout")]
    ev = Evaluator(view, tok, batch_size=3)
    rep = run_ablation(view, ev, [read] + ppl, mode="zero")
    r = rep.tasks[0]
    assert r.controls and r.controls[0].span == "context" and r.floor == r.controls[0].removed
    assert r.floor_span == "context" and r.controls[0].n_mismatched == 4
    assert [m.text_split for m in rep.memorisation] == ["train", "heldout"]
    assert set(rep.categories_all) >= set(rep.categories)
    off = run_ablation(view, ev, [read], mode="zero", controls=False)
    assert off.tasks[0].controls == [] and off.tasks[0].floor is None
    assert off.tasks[0].ablated == r.ablated and off.tasks[0].baseline == r.baseline
    cap = run_ablation(view, ev, [read], mode="capacity", rows=[1, 100000], controls=False)
    assert [p.rows for p in cap.dose_response] == [1, 100000] and cap.tasks is cap.dose_response[0].tasks
    big = cap.dose_response[1].tasks[0]
    assert big.baseline == big.ablated and big.kl_mean == pytest.approx(0.0, abs=1e-9)
    assert sorted(cap.head_rows) == [1, 2]
    with pytest.raises(UsageError):
        run_ablation(view, ev, [read], mode="capacity")
    with pytest.raises(UsageError):
        run_ablation(view, ev, [read], mode="zero", rows=[4])
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_paired_bootstrap():
    from engram_cli.analysis.stats import paired_bootstrap_ci

    ci = paired_bootstrap_ci([1.0] * 50 + [0.0] * 50, [1.0] * 25 + [0.0] * 75, lambda b, a: sum(a) / sum(b))
    assert ci.lo < 0.5 < ci.hi


def test_normalize_answer():
    from engram_cli.analysis.evaluator import normalize_answer

    assert normalize_answer(" The  Paris.") == "paris"
    assert normalize_answer("An apple, a day") == "apple day"


def test_generation_outputs_do_not_depend_on_batching(tmp_path):
    """Rows that finish early leave the batch; every row's output equals its one-row run."""
    from engram_cli.analysis.evaluator import Evaluator, no_hooks
    from engram_cli.models.loading import load_text_tokenizer

    tiny_tokenizer(tmp_path / "tok")
    tok = load_text_tokenizer(tmp_path / "tok", eos_id=0)
    model = tiny_reference_model(vocab_size=80)
    view = view_for(model)
    words = ["the capital of france is", "paris", "a river . the", "question : the capital of italy",
             "blue", "spain is", "the", "rome . berlin . madrid is the capital"]
    items = [{"context": w, "answers": ["paris"]} for w in words]
    until = [" is", "."]
    together = Evaluator(view, tok, batch_size=8).generate(items, [no_hooks], until, 6)
    alone = [Evaluator(view, tok, batch_size=1).generate([it], [no_hooks], until, 6).outputs[0][0] for it in items]
    assert together.outputs[0] == alone
    lengths = {len(o) for o in alone}
    assert len(lengths) > 1  # rows did finish at different steps
    # batches of 3 are formed longest context first: outputs and per-item KL come back in item order
    from engram_cli.analysis.hooks import engram_ablation

    conds = [no_hooks, lambda: engram_ablation(view, [1, 2], mode="zero")]
    by3 = Evaluator(view, tok, batch_size=3).generate(items, conds, until, 6)
    one = [Evaluator(view, tok, batch_size=1).generate([it], conds, until, 6) for it in items]
    assert by3.outputs[0] == alone and by3.outputs[1] == [r.outputs[1][0] for r in one]
    assert by3.kl == pytest.approx([r.kl[0] for r in one], rel=1e-4, abs=1e-6)  # float32 batch shapes
    assert len(set(by3.kl)) == len(items)  # distinct per item, so a misordering would show
