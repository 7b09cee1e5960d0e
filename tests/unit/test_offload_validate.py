"""The end-to-end check: the demo model with its Engram tables read from a file gives identical logits."""

import numpy as np
import pytest
import torch

from engram_cli.offload import prefetch, validate
from engram_cli.offload.backbone import load_demo, measure_step


@pytest.fixture(scope="module")
def demo():
    torch.set_num_threads(1)
    return load_demo("cpu")


def test_offloaded_logits_identical_and_a_wrong_row_is_seen(demo, tmp_path):
    model = demo.model
    streams = torch.from_numpy(validate.token_streams(demo.tokenizer, 2, 14, seed=1))
    _, ref = validate.decode(model, streams, 8, 6, None, keep=True)
    inst = prefetch.install(model, "file", tmp_path / "t.bin")
    try:
        inst.attach()
        _, got = validate.decode(model, streams, 8, 6, inst, keep=True)
        assert all(torch.equal(a, b) for a, b in zip(ref, got))
        original = inst.prefetcher.rows
        inst.prefetcher.rows = lambda k, local: original(k, local) + np.float32(1e-3)  # a wrong row
        _, bad = validate.decode(model, streams, 8, 6, inst, keep=True)
        assert not all(torch.equal(a, b) for a, b in zip(ref, bad))
    finally:
        inst.close()
    assert not (tmp_path / "t.bin").exists()
    assert all(layer.engram.multi_head_embedding.__class__.__name__ == "MultiHeadEmbedding"
               for layer in model.model.layers if layer.engram is not None)


def test_run_validate_small(demo, tmp_path):
    plan = validate.ValidatePlan(batch=2, prefill=8, steps=4, repeats=2)
    res = validate.run_validate(plan, device="cpu", workdir=tmp_path)
    assert res.logits_identical and res.max_abs_diff == 0.0
    assert len(res.resident.tokens_per_s) == 2 and len(res.offloaded.tokens_per_s) == 2
    assert res.resident.mean > 0 and res.offloaded.mean > 0
    assert res.projection_error_pp == pytest.approx(res.projected_overhead_pct - res.measured_overhead_pct)
    assert 0 < res.unique <= 1
    assert list(tmp_path.iterdir()) == []  # the table file and its folder are removed


def test_measure_step_times_every_backbone_layer(demo):
    st = measure_step(demo.model, "decode", 4, reps=2)
    n_plain = sum(layer.engram is None for layer in demo.model.model.layers)
    assert st.layer_us.n == 2 * n_plain and st.layer_us.p50 > 0 and st.tail_us.n == 2
