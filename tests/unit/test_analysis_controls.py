"""Context controls (span removed / mismatched), capacity ablation, memorisation rows, span parsing."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models_helpers import tiny_reference_model, tiny_tokenizer, write_suite  # noqa: E402

from engram_cli.analysis.controls import control_warnings, derangement, mismatched_items, removed_items, run_controls, span_control  # noqa: E402
from engram_cli.analysis.tasks import load_task  # noqa: E402
from engram_cli.errors import BadInputError, UsageError  # noqa: E402
from engram_cli.models.views import view_for  # noqa: E402

CAPS = [("france", "paris"), ("italy", "rome"), ("germany", "berlin"), ("spain", "madrid")]


def _reading_items() -> list[dict]:
    items = []
    for i, (c, x) in enumerate(CAPS):
        head = "passage : "
        passage = f"the capital of {c} is {x} ."
        ctx = f"{head}{passage} question : the capital of {c} is"
        items.append({"id": f"r/{i}", "context": ctx, "choices": [f" {y}" for _, y in CAPS], "gold": i,
                      "context_span": [len(head), len(head) + len(passage)],
                      "subject_span": [ctx.rindex(c), ctx.rindex(c) + len(c)]})
    return items


def test_controls_change_only_the_span_text():
    items = _reading_items()
    for field in ("context_span", "subject_span"):
        s0 = [it[field] for it in items]
        for new, idx in ((removed_items(items, field), list(range(len(items)))), mismatched_items(items, field)):
            assert len(new) == len(idx) >= 2
            for it2, i in zip(new, idx):
                it = items[i]
                start, end = s0[i]
                for key in ("id", "choices", "gold"):
                    assert it2[key] == it[key]
                assert "context_span" not in it2 and "subject_span" not in it2
                assert it2["context"].startswith(it["context"][:start]) and it2["context"].endswith(it["context"][end:])
                assert it2["context"] != it["context"]
    mis, _ = mismatched_items(items, "context_span")
    assert [m["context"][10:] for m in mis] != [it["context"][10:] for it in items]


def test_derangement_is_deterministic_and_has_no_fixed_text():
    texts = ["a", "a", "b", "c", "c", "d"]
    d = derangement(texts)
    assert d == derangement(texts)
    assert all(j is not None and j != i and texts[j] != texts[i] for i, j in enumerate(d))
    assert derangement(["x", "x"]) == [None, None]


class _Recorder:
    """Wraps ``view.logits_at``: every scored row's (context tokens, scored continuation tokens)."""

    def __init__(self, view):
        self.inner = view.logits_at
        self.rows: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

    def __call__(self, x, positions=None):
        for k in range(x.shape[0]):
            pos = positions[k].nonzero().flatten().tolist()
            first, last = pos[0], pos[-1]
            toks = x[k, :last + 2].tolist()
            self.rows.append((tuple(toks[:first + 1]), tuple(toks[first + 1:])))
        return self.inner(x, positions)


def test_controls_differ_only_in_context_tokens(tmp_path):
    """Down to the scored tokens: the continuations are identical, only the context tokens differ."""
    from engram_cli.analysis.evaluator import Evaluator, no_hooks
    from engram_cli.models.loading import load_text_tokenizer

    tiny_tokenizer(tmp_path / "tok")
    tok = load_text_tokenizer(tmp_path / "tok", eos_id=0)
    view = view_for(tiny_reference_model(vocab_size=80))
    ev = Evaluator(view, tok, batch_size=5)
    items = _reading_items()
    seen = {}
    for name, its in (("full", items), ("removed", removed_items(items, "context_span")),
                      ("mismatched", mismatched_items(items, "context_span")[0])):
        rec = _Recorder(view)
        view.logits_at = rec
        try:
            ev.multiple_choice(its, [no_hooks])
        finally:
            del view.logits_at
        seen[name] = rec.rows
    conts = {k: Counter(c for _, c in v) for k, v in seen.items()}
    assert conts["full"] == conts["removed"] == conts["mismatched"]
    ctxs = {k: {c for c, _ in v} for k, v in seen.items()}
    assert ctxs["full"].isdisjoint(ctxs["removed"]) and ctxs["full"].isdisjoint(ctxs["mismatched"])
    # the tokens after the span (the question) are the same
    tail = {k: {c[-6:] for c in v} for k, v in ctxs.items()}
    assert tail["full"] == tail["removed"] == tail["mismatched"]


def test_span_control_statistics_and_warnings():
    full = [1.0] * 40 + [0.0] * 10
    same = list(full)
    c = span_control("context_span", full, same, same[:30], list(range(30)))
    assert c.dependence == 0 and c.mismatch_dependence == 0 and c.n_mismatched == 30
    from engram_cli.analysis.controls import TaskControls

    w = control_warnings("r", "reading", 0.25, TaskControls([c], c.removed, "context"))
    assert w and "does not measure reading" in w[0]
    dep = span_control("context_span", full, [0.0] * 50, [0.0] * 50, list(range(50)))
    assert dep.dependence == pytest.approx(0.8) and dep.dependence_ci95[0] > 0.6
    assert control_warnings("r", "reading", 0.25, TaskControls([dep], 0.0, "context")) == []
    subj = span_control("subject_span", [1.0] * 50, [1.0] * 30 + [0.0] * 20, [], [])
    w = control_warnings("f", "factual", 0.25, TaskControls([subj], subj.removed, "subject"))
    assert w and "without its subject" in w[0] and subj.mismatched is None
    assert control_warnings("f", "factual", 0.7, TaskControls([subj], subj.removed, "subject")) == []


def test_run_controls_floor_is_the_context_span(tmp_path):
    items = _reading_items()
    p = write_suite(tmp_path / "r.jsonl", {"task": "r", "category": "reading", "output_type": "multiple_choice"}, items)
    task = load_task(p)
    assert task.span_fields == ["context_span", "subject_span"]
    calls = []

    def score(its):
        calls.append(its)
        return [0.0 if "paris" not in it["context"] else 1.0 for it in its]

    ctrl = run_controls(task, score, [1.0, 1.0, 1.0, 1.0])
    assert [c.span for c in ctrl.spans] == ["context", "subject"] and ctrl.floor_span == "context"
    assert ctrl.floor == ctrl.spans[0].removed == 0.0
    assert len(calls) == 4


@pytest.mark.parametrize("item,msg", [
    ({"context": "abc", "choices": ["x", "y"], "gold": 0, "context_span": [2, 9]}, "context_span"),
    ({"context": "abc", "choices": ["x", "y"], "gold": 0, "context_span": [2, 2]}, "context_span"),
    ({"context": "abc", "choices": ["x", "y"], "gold": 0, "subject_span": "0:1"}, "subject_span"),
])
def test_bad_spans_are_bad_input(tmp_path, item, msg):
    with pytest.raises(BadInputError, match=msg):
        load_task(write_suite(tmp_path / "t.jsonl", None, [item]))


def test_span_on_some_items_only_is_bad_input(tmp_path):
    a = {"context": "abc", "choices": ["x", "y"], "gold": 0, "context_span": [0, 1]}
    b = {"context": "abc", "choices": ["x", "y"], "gold": 0}
    with pytest.raises(BadInputError, match="t.jsonl:2: 'context_span' must be on every item"):
        load_task(write_suite(tmp_path / "t.jsonl", None, [a, b]))
    with pytest.raises(BadInputError, match="text_split"):
        load_task(write_suite(tmp_path / "p.jsonl", {"output_type": "loglikelihood_rolling", "text_split": "dev"}, [{"text": "a b"}]))


# ------------------------------------------------------------------------------ capacity
def _logits(model, x):
    with torch.no_grad():
        return model(x).logits.clone()


def test_capacity_large_k_is_identity_and_k1_reads_one_row():
    from engram_cli.analysis.capacity import capacity_rows, head_sizes, parse_rows

    model = tiny_reference_model()
    view = view_for(model)
    x = torch.randint(0, 64, (2, 11))
    base = _logits(model, x)
    sizes = head_sizes(view, 1)
    assert len(sizes) == 4 and min(sizes) > 100
    with capacity_rows(view, [1, 2], max(max(head_sizes(view, 1)), max(head_sizes(view, 2)))):
        assert torch.equal(_logits(model, x), base)
    emb = view.engram_embeddings[1]
    got = {}
    h = emb.register_forward_hook(lambda m, i, o: got.__setitem__("out", o.detach().clone()))
    try:
        with capacity_rows(view, [1, 2], 1):
            k1 = _logits(model, x)
    finally:
        h.remove()
    out = got["out"]  # [B, T, C, dim]
    for c in range(out.shape[2]):
        expect = emb.embedding.weight[emb.offsets[c]]
        assert torch.equal(out[:, :, c], expect.expand_as(out[:, :, c]))
    assert not torch.allclose(k1, base)
    assert torch.equal(_logits(model, x), base) and all(not m._forward_pre_hooks for m in model.modules())
    assert parse_rows(["1,16", "4", "16"]) == [1, 4, 16]
    for bad in (["0"], ["x"]):
        with pytest.raises(UsageError):
            parse_rows(bad)


def test_capacity_refuses_models_without_local_ids():
    from models_helpers import tiny_qwen4exp

    from engram_cli.analysis.capacity import capacity_rows

    view = view_for(tiny_qwen4exp())
    with pytest.raises(UsageError, match="capacity"):
        with capacity_rows(view, [0], 4):
            pass


# ------------------------------------------------------------------------------ memorisation
def test_memorisation_rows_and_warning():
    from engram_cli.analysis.ablation_results import MemorisationRow, TaskResult, memorisation_rows, memorisation_warnings

    def ppl(name, split, ret, ci):
        return TaskResult(name, "other", "loglikelihood_rolling", "perplexity", 10, 100.0, 100.0 / ret, ret, None, None,
                          ci, 0, 0, 0.1, False, text_split=split, extra={"tokens": 500})

    rows = memorisation_rows([ppl("held", "heldout", 0.95, [0.9, 1.0]), ppl("train", "train", 0.3, [0.25, 0.35]),
                              ppl("plain", None, 0.5, [0.4, 0.6])])
    assert [r.task for r in rows] == ["train", "held"] and isinstance(rows[0], MemorisationRow)
    assert memorisation_warnings(rows) and "training text" in memorisation_warnings(rows)[0]
    close = memorisation_rows([ppl("held", "heldout", 0.95, [0.9, 1.0]), ppl("train", "train", 0.93, [0.88, 0.98])])
    assert memorisation_warnings(close) == []
