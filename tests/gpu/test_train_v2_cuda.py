"""Demo v2 training on CUDA: bit-identical reruns under exact_fp32, and the CPU's losses (skipped without CUDA)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models_helpers import demo_train_texts, tiny_text_stream, tiny_v2_config  # noqa: E402

from engram_cli.models.demo.bpe import train_bpe  # noqa: E402
from engram_cli.models.demo.train_v2 import build_model_v2, train_loop  # noqa: E402


@pytest.mark.parametrize("engram", [True, False])
def test_cuda_training_reruns_bit_identical_and_tracks_the_cpu(engram):
    tok = train_bpe(demo_train_texts(), 300)
    runs = []
    for device in ("cuda", "cuda", "cpu"):
        cfg = tiny_v2_config(engram=engram, steps=8)
        _, model = build_model_v2(tok, cfg)
        hist = train_loop(model, tiny_text_stream(tok), cfg, cfg.steps, log=lambda s: None, device=device)
        assert {p.device.type for p in model.parameters()} == {"cpu"}
        runs.append(([h["loss"] for h in hist], {k: v.clone() for k, v in model.state_dict().items()}))
    (loss_a, state_a), (loss_b, state_b), (loss_cpu, _) = runs
    assert loss_a == loss_b and all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert loss_a == pytest.approx(loss_cpu, rel=1e-3)
    assert not torch.are_deterministic_algorithms_enabled()  # exact_fp32 restored the global flags
