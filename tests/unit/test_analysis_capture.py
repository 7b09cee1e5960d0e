"""analysis/capture.py: read-out points, branch reduction, hooks always removed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models_helpers import tiny_qwen4exp, tiny_reference_model  # noqa: E402

from engram_cli.analysis.capture import capture, expected_keys, reduce_branches  # noqa: E402
from engram_cli.analysis.hooks import engram_ablation  # noqa: E402
from engram_cli.errors import BadInputError, UsageError  # noqa: E402
from engram_cli.models.views import view_for  # noqa: E402

IDS = torch.tensor([[3, 5, 7, 9, 11, 13, 2, 4], [8, 6, 4, 2, 10, 12, 14, 16]])


def _hooks(view) -> int:
    mods = list(view.layers) + list(view.engram_modules.values())
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in mods)


@pytest.mark.parametrize("hc", [1, 2])
def test_reference_points_match_hidden_states(hc):
    view = view_for(tiny_reference_model(hc_mult=hc, n_layers=3))
    pts = ("embed", "block", "pre_engram", "post_engram")
    with torch.no_grad(), capture(view, points=pts) as cap:
        out = view.model(IDS, output_hidden_states=True)
        cap.check()
    assert list(cap.states) == expected_keys(view, pts, None)
    assert [k for k in cap.states][:3] == [("embed", -1), ("block", 0), ("pre_engram", 1)]
    hs = out.hidden_states  # the reference model: branch means entering each layer, then the normed output
    assert torch.equal(cap.states[("embed", -1)], hs[0])
    for i in range(3):
        assert cap.states[("block", i)].shape == (2, 8, 32)
        if i + 1 < 3:
            assert torch.allclose(cap.states[("block", i)], hs[i + 1], atol=1e-6)
    # pre-Engram is the previous block's output; post differs by the Engram output
    assert torch.equal(cap.states[("pre_engram", 1)], cap.states[("block", 0)])
    assert not torch.allclose(cap.states[("post_engram", 1)], cap.states[("pre_engram", 1)])
    # final norm on the last block read-out reproduces the model's logits exactly
    logits = view.unembed(view.final_norm(cap.states[("block", 2)]))
    assert torch.equal(logits, out.logits)
    assert _hooks(view) == 0


def test_post_engram_sees_ablation():
    view = view_for(tiny_reference_model(n_layers=3))
    with torch.no_grad(), engram_ablation(view, [1, 2]), capture(view, points=("pre_engram", "post_engram")) as cap:
        view.model(IDS)
    for i in (1, 2):
        assert torch.equal(cap.states[("post_engram", i)], cap.states[("pre_engram", i)])


def test_branch_reductions_and_raw():
    view = view_for(tiny_reference_model(hc_mult=2, n_layers=2))
    raw = {}
    with torch.no_grad(), capture(view, layers=[1], branch_reduce="none") as cap:
        view.model(IDS)
    raw = cap.states[("block", 1)]
    assert raw.shape == (2, 8, 2, 32)
    for how, want in (("mean", raw.mean(2)), ("sum", raw.sum(2)), ("first", raw[:, :, 0]), ("model", raw.mean(2))):
        with torch.no_grad(), capture(view, layers=[1], branch_reduce=how) as cap:
            view.model(IDS)
        assert torch.allclose(cap.states[("block", 1)], want, atol=1e-6), how
    with pytest.raises(UsageError):
        reduce_branches(view, raw, "concat")


def test_qwen4exp_model_reduce_is_the_mixer():
    model = tiny_qwen4exp()
    view = view_for(model)
    assert view.hc_mult == 2 and view.branch_mixer is not None
    ids = IDS % 64
    with torch.no_grad(), capture(view, points=("embed", "block", "pre_engram", "post_engram")) as cap:
        out = model(input_ids=ids, use_cache=False)
        cap.check()
    last = cap.states[("block", len(view.layers) - 1)]
    assert torch.allclose(view.unembed(last), out.logits, atol=1e-6)
    with torch.no_grad(), capture(view, branch_reduce="first") as cap:
        model(input_ids=ids, use_cache=False)
    assert cap.states[("block", 0)].shape == (2, 8, 32)


def test_hooks_removed_on_error_and_sink():
    view = view_for(tiny_reference_model(n_layers=2))
    got = []
    with pytest.raises(RuntimeError):
        with capture(view, points=("embed", "block", "post_engram"), sink=lambda p, i, t: got.append((p, i))):
            view.model(IDS)
            raise RuntimeError("boom")
    assert _hooks(view) == 0
    assert got == [("embed", -1), ("block", 0), ("post_engram", 1), ("block", 1)]


def test_bad_requests():
    view = view_for(tiny_reference_model(n_layers=2))
    with pytest.raises(UsageError):
        expected_keys(view, ("resid",), None)
    with pytest.raises(UsageError):
        expected_keys(view, ("block",), [5])
    cap_keys = expected_keys(view, ("pre_engram",), [0])
    assert cap_keys == []  # layer 0 has no Engram module
    with capture(view, points=("block",)) as cap:
        pass
    with pytest.raises(BadInputError, match="never fired"):
        cap.check()


# ---------------------------------------------------------------- batching (shared with the evaluator)
def test_batching_is_stable_and_masked():
    from engram_cli.analysis.batching import budget_groups, fixed_batches, iter_batches, length_order, pad_batch

    seqs = [[1, 2], [3, 4, 5], [6], [7, 8, 9], [1, 1]]
    assert length_order([len(s) for s in seqs]) == [1, 3, 0, 4, 2]
    assert fixed_batches([len(s) for s in seqs], 2) == [[1, 3], [0, 4], [2]]
    assert fixed_batches([len(s) for s in seqs], 2, sort=False) == [[0, 1], [2, 3], [4]]
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[True] * 3, [True, False, False]]
    assert budget_groups([2, 2, 5, 1, 1], batch_size=3, max_rows=4) == [[0, 1], [2], [3, 4]]
    got = [b.indices for b in iter_batches(seqs, 4, 0, max_tokens=6)]
    assert got == [[1, 3], [0, 4, 2]]
    assert sorted(i for g in got for i in g) == list(range(len(seqs)))
    b = next(iter_batches(seqs, 8, pad_id=9, sort=False))
    assert b.lengths == [2, 3, 1, 3, 2] and int(b.mask.sum()) == 11 and b.ids[2].tolist() == [6, 9, 9]
