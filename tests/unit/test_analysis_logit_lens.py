"""Logit lens: the streaming kernel against full materialisation, exact zeros, pairing, memory, texts."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models_helpers import tiny_reference_model, tiny_tokenizer  # noqa: E402

from engram_cli.analysis.capture import capture  # noqa: E402
from engram_cli.analysis.hooks import engram_ablation  # noqa: E402
from engram_cli.analysis.lens_run import LensSettings, ModelRun, analyse, check_pair, readouts_of  # noqa: E402
from engram_cli.analysis.lens_texts import LensItem, LensText, build_items, read_texts  # noqa: E402
from engram_cli.analysis.logit_lens import METRICS, Unembedder, first_converged, reference_metrics, token_metrics, trapezoid_weights  # noqa: E402
from engram_cli.analysis.plots_lens import heatmap_rows  # noqa: E402
from engram_cli.errors import BadInputError  # noqa: E402
from engram_cli.models.views import view_for  # noqa: E402

ALL_POINTS = ("embed", "block", "pre_engram", "post_engram")


def _items(n: int, seed: int = 1, vocab: int = 64, skip: int = 0) -> list[LensItem]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = 4 + (i * 7) % 9
        ids = torch.randint(1, vocab, (length,), generator=g).tolist()
        pos = list(range(skip, length - 1)) + ([length - 1] if i % 3 == 0 else [])  # some positions without gold
        out.append(LensItem(f"s{i}", ids, pos, [ids[p + 1] if p + 1 < length else -1 for p in pos]))
    return out


@pytest.fixture(scope="module")
def view():
    return view_for(tiny_reference_model(n_layers=3, hc_mult=2))


# ------------------------------------------------------------------------------------- kernel
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_kernel_equals_reference(dtype, tol):
    g = torch.Generator().manual_seed(0)
    layer = torch.randn(3, 20, 50, generator=g, dtype=torch.float64) * 3
    final = torch.randn(20, 50, generator=g, dtype=torch.float64) * 3
    layer[1] = final  # one read-out identical to the final
    gold = torch.randint(0, 50, (20,), generator=g)
    gold[::4] = -1
    ref = reference_metrics(layer.numpy(), final.numpy(), gold.numpy())
    lf = final.to(dtype).log_softmax(-1)
    got = torch.stack([token_metrics(x.to(dtype).log_softmax(-1), lf, lf.exp(), lf.argmax(-1), gold) for x in layer])
    assert np.allclose(got.double().numpy(), ref, atol=tol, rtol=tol)
    assert got[1, 0].abs().max() == 0 and got[1, 1].abs().max() == 0  # KL of identical distributions: exactly 0


def test_kernel_survives_masked_logits():
    logits = torch.randn(4, 30, dtype=torch.float64)
    logits[:, :5] = -math.inf
    lp = logits.log_softmax(-1).clamp_min(-1e4)
    lf = torch.randn(4, 30, dtype=torch.float64).log_softmax(-1)
    out = token_metrics(lp, lf, lf.exp(), lf.argmax(-1), torch.tensor([0, 7, -1, 9]))
    assert torch.isfinite(out).all()


def test_first_converged():
    kl = torch.tensor([[1.0, 0.05, 0.5], [0.01, 0.02, 0.5], [0.0, 0.0, 0.3]])
    agree = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    assert first_converged(kl, agree, 0.1).tolist() == [1, 1, -1]


# ------------------------------------------------------------------------------------- streaming vs full
def _full_reference(view, items, settings):
    """Materialise every read-out's logits for all selected positions, then the scipy reference."""
    unemb = Unembedder(view, "float64")
    keys = [(r.point, r.layer) for r in readouts_of(view, settings.points)]
    per_seq = []
    for it in items:
        ids = torch.tensor([it.ids])
        with torch.no_grad(), capture(view, ALL_POINTS, None, settings.branch_reduce) as cap:
            view.model(ids)
        with torch.no_grad(), capture(view, ("block",), [len(view.layers) - 1], "model") as fin:
            view.model(ids)
            final = unemb.logits(fin.states[("block", len(view.layers) - 1)][0, it.positions], True)
            layer = torch.stack([unemb.logits(cap.states[k][0, it.positions], settings.final_norm) for k in keys])
        per_seq.append(reference_metrics(layer.numpy(), final.numpy(), np.array(it.gold)))
    return keys, per_seq


@pytest.mark.parametrize("reduce,final_norm", [("model", True), ("sum", False)])
def test_streaming_equals_full_materialisation(view, reduce, final_norm):
    items = _items(9)
    s = LensSettings(points=ALL_POINTS, branch_reduce=reduce, final_norm=final_norm, batch_size=4, logit_budget=64 * 5,
                     compute_dtype="float64", n_boot=200)
    res = analyse([ModelRun("m", view)], items, s, pad_id=0)
    keys, per_seq = _full_reference(view, items, s)
    m = res.models[0]
    assert [(r.point, r.layer) for r in m.readouts] == keys
    allm = np.concatenate(per_seq, axis=2)  # [R, M, tokens]
    has_gold = np.concatenate([np.array(it.gold) >= 0 for it in items])
    for j, metric in enumerate(METRICS):
        vals = allm[:, j, has_gold] if metric in ("ce", "rank_gold") else allm[:, j]
        assert np.allclose(m.curves[metric].mean, vals.mean(axis=1), atol=1e-9, rtol=1e-9), metric
    # per-sequence sums too (what the bootstrap resamples)
    for i, ref in enumerate(per_seq):
        assert np.allclose(m.seq.sums[i], ref.sum(axis=2), atol=1e-9)
    assert m.n_tokens == allm.shape[2] and m.n_gold_tokens == int(has_gold.sum())


def test_last_block_kl_exactly_zero_float32(view):
    res = analyse([ModelRun("m", view)], _items(6), LensSettings(batch_size=2, n_boot=100), pad_id=0)
    c = res.models[0].curves
    assert c["kl_final_layer"].mean[-1] == 0.0 and c["kl_layer_final"].mean[-1] == 0.0
    assert c["top1_agree"].mean[-1] == 1.0 and c["rank_final_top1"].mean[-1] == 1.0
    assert res.models[0].final_check is not None and res.models[0].final_check < 1e-5
    assert res.models[0].convergence.never_fraction == 0.0


def test_bits_are_nats_over_ln2(view):
    items = _items(5)
    nats = analyse([ModelRun("m", view)], items, LensSettings(n_boot=100), 0).models[0].curves
    bits = analyse([ModelRun("m", view)], items, LensSettings(n_boot=100, bits=True), 0).models[0].curves
    for metric in METRICS:
        k = 1 / math.log(2) if metric in ("kl_final_layer", "kl_layer_final", "js", "entropy", "ce") else 1.0
        assert np.allclose(np.array(bits[metric].mean), np.array(nats[metric].mean) * k)


# ------------------------------------------------------------------------------------- pairing
def test_paired_with_itself_is_zero_and_ablation_is_not(view):
    items = _items(8)
    s = LensSettings(points=ALL_POINTS, n_boot=200)
    res = analyse([ModelRun("a", view), ModelRun("a again", view)], items, s, 0)
    for c in res.paired.curves.values():
        assert all(d == 0 for d in c.delta) and c.area == 0 and all(x == 0 for x in c.lo + c.hi)
    assert res.paired.convergence_delta == 0
    abl = analyse([ModelRun("a", view), ModelRun("abl", view, lambda: engram_ablation(view, [1, 2]))], items, s, 0)
    d = abl.paired.curves["kl_final_layer"]
    assert d.labels[0] == "embed" and any(abs(x) > 1e-6 for x in d.delta)
    w = trapezoid_weights([r.depth for r in abl.models[0].readouts])
    assert d.area == pytest.approx(float(np.dot(w, d.delta)), rel=1e-9)


def test_paired_refuses_different_depths(view):
    other = view_for(tiny_reference_model(n_layers=4))
    with pytest.raises(BadInputError, match="equal layer counts"):
        check_pair(ModelRun("a", view), ModelRun("b", other))


# ------------------------------------------------------------------------------------- memory
def test_accumulators_grow_only_per_sequence(view):
    s = LensSettings(n_boot=100)
    a = analyse([ModelRun("m", view)], _items(10), s, 0).models[0].seq
    b = analyse([ModelRun("m", view)], _items(20), s, 0).models[0].seq
    per_seq = (len(readouts_of(view, s.points)) * len(METRICS) + 4) * 8
    assert b.nbytes - a.nbytes == 10 * per_seq


MEMORY_SCRIPT = r"""
import json, resource, sys
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(1)
from models_helpers import tiny_reference_model
from engram_cli.analysis.lens_run import LensSettings, ModelRun, analyse
from engram_cli.analysis.lens_texts import LensItem
from engram_cli.models.views import view_for
view = view_for(tiny_reference_model(vocab_size=8192, n_layers=3))
g = torch.Generator().manual_seed(0)
def items(n):
    out = []
    for i in range(n):
        ids = torch.randint(1, 8192, (64,), generator=g).tolist()
        out.append(LensItem(str(i), ids, list(range(63)), ids[1:]))
    return out
s = LensSettings(batch_size=4, n_boot=100, logit_budget=1 << 18)
peaks = []
for n in (int(sys.argv[2]), 2 * int(sys.argv[2])):
    analyse([ModelRun("m", view)], items(n), s, 0)
    peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
print(json.dumps(peaks))
"""


def test_peak_memory_flat_in_sequences(tmp_path):
    """Doubling the sequences does not raise the peak RSS; materialising [readouts, tokens, vocab]
    would add 4 x 32 x 63 x 8192 x 4 B = 264 MB for 32 extra sequences."""
    script = tmp_path / "mem.py"
    script.write_text(MEMORY_SCRIPT)
    helpers = str(Path(__file__).resolve().parents[1])
    r = subprocess.run([sys.executable, str(script), helpers, "64"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    first, second = json.loads(r.stdout.strip().splitlines()[-1])
    assert second - first < 40e6, (first, second)


# ------------------------------------------------------------------------------------- texts and positions
@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from engram_cli.models.loading import load_text_tokenizer

    d = tmp_path_factory.mktemp("tok")
    tiny_tokenizer(d)
    return load_text_tokenizer(d, eos_id=0)


def test_positions(tok):
    from engram_cli.analysis.spans import Span

    texts = [LensText("t", "the capital of france is paris"), LensText("q", "the capital of italy is", " rome")]
    al = build_items(texts, tok, "all")
    assert [len(i.ids) for i in al] == [6, 6] and al[0].positions == list(range(5)) and al[0].gold == al[0].ids[1:]
    last = build_items(texts, tok, "last")
    assert last[0].positions == [5] and last[0].gold == [-1] and last[1].positions == [4]
    assert last[1].gold == [last[1].ids[5]]
    ans = build_items(texts, tok, "answer")
    assert [i.id for i in ans] == ["q"] and ans[0].positions == [4]
    skip = build_items(texts, tok, "all", skip_first=2)
    assert skip[0].positions == [2, 3, 4]
    ent = build_items([LensText("e", "the capital of france is paris", None, (Span(15, 21), Span(25, 30)))], tok,
                      "entity-final")
    assert ent[0].positions == [3, 5]
    with pytest.raises(BadInputError, match="needs task items"):
        build_items(texts[:1], tok, "answer")
    with pytest.raises(BadInputError, match="no positions"):
        build_items(texts, tok, "all", skip_first=50)


def test_read_texts(tmp_path):
    j = tmp_path / "t.jsonl"
    j.write_text('{"task": "x", "output_type": "multiple_choice"}\n{"context": "a", "choices": [" b", " c"], "gold": 1}\n'
                 '\n{"text": "plain"}\n{"context": "q", "answers": ["r"]}\n')
    got = read_texts(j)
    assert [(t.context, t.answer) for t in got] == [("a", " c"), ("plain", None), ("q", "r")]
    (tmp_path / "p.txt").write_text("one\n\ntwo\n")
    assert [t.context for t in read_texts(tmp_path / "p.txt")] == ["one", "two"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"nope": 1}\n')
    with pytest.raises(BadInputError, match="bad.jsonl:2"):
        read_texts(bad)


def test_heatmap_rows_keep_last():
    assert heatmap_rows(5, 40) == [0, 1, 2, 3, 4]
    for n in (41, 64, 97, 200):
        rows = heatmap_rows(n, 40)
        assert rows[-1] == n - 1 and len(rows) <= 40 and rows == sorted(set(rows))


def test_qwen4exp_hyper_connections():
    from models_helpers import tiny_qwen4exp

    view = view_for(tiny_qwen4exp())
    items = _items(3)
    res = analyse([ModelRun("q", view)], items, LensSettings(points=ALL_POINTS, n_boot=100), 0)
    m = res.models[0]  # PLE config id 1 is 1-based: zero-based decoder layer 0
    assert [r.label for r in m.readouts] == ["embed", "L0.pre-engram", "L0.post-engram", "L0", "L1"]
    assert m.curves["kl_final_layer"].mean[-1] == 0.0 and m.final_check < 1e-5 and not res.warnings
    mean = analyse([ModelRun("q", view)], items, LensSettings(branch_reduce="mean", n_boot=100), 0).models[0]
    assert mean.curves["kl_final_layer"].mean[-1] > 0  # the mean of the branches is not the model's own mixer


def test_default_texts_are_held_out():
    from engram_cli.analysis.lens_texts import DEFAULT_LIMITS, load_texts

    texts, src = load_texts(None, "all")
    assert "wiki_ppl" in src and "train" not in src and not any("train" in t.id for t in texts)
    assert 0 < len(texts) <= 8 * DEFAULT_LIMITS["suites"]
    assert any(t.answer for t in texts) and any(t.answer is None for t in texts)
    spans, src = load_texts(None, "entity-final")
    assert src == "bundled entity spans" and all(t.spans for t in spans)
