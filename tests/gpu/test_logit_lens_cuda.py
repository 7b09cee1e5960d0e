"""Logit lens on CUDA (skipped without CUDA): equals the CPU run, exact last-layer zero in bf16,
flat peak GPU memory when the sequences double, the CLI with --device cuda and --device-map auto."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models_helpers import tiny_reference_model  # noqa: E402

from engram_cli.analysis.hooks import engram_ablation  # noqa: E402
from engram_cli.analysis.lens_run import LensSettings, ModelRun, analyse  # noqa: E402
from engram_cli.analysis.lens_texts import LensItem  # noqa: E402
from engram_cli.models.views import view_for  # noqa: E402

POINTS = ("embed", "block", "pre_engram", "post_engram")


def _items(n: int, vocab: int = 64, length: int = 12) -> list[LensItem]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        ids = torch.randint(1, vocab, (length,), generator=g).tolist()
        out.append(LensItem(str(i), ids, list(range(length - 1)), ids[1:]))
    return out


def test_cuda_equals_cpu():
    items = _items(10)
    s = LensSettings(points=POINTS, batch_size=3, compute_dtype="float64", n_boot=100)
    cpu = view_for(tiny_reference_model(hc_mult=2, n_layers=3))
    gpu = view_for(tiny_reference_model(hc_mult=2, n_layers=3).cuda())
    a = analyse([ModelRun("c", cpu), ModelRun("ca", cpu, lambda: engram_ablation(cpu, [1, 2]))], items, s, 0)
    b = analyse([ModelRun("g", gpu), ModelRun("ga", gpu, lambda: engram_ablation(gpu, [1, 2]))], items, s, 0)
    for ma, mb in zip(a.models, b.models):
        for k, c in ma.curves.items():
            assert np.allclose(c.mean, mb.curves[k].mean, atol=1e-5, rtol=1e-5), k
    assert np.allclose(a.paired.curves["kl_final_layer"].delta, b.paired.curves["kl_final_layer"].delta, atol=1e-5)


def test_bf16_last_layer_exact_and_finite():
    view = view_for(tiny_reference_model(n_layers=3).cuda().to(torch.bfloat16))
    res = analyse([ModelRun("m", view)], _items(8), LensSettings(points=POINTS, n_boot=100), 0)
    m = res.models[0]
    assert m.curves["kl_final_layer"].mean[-1] == 0.0 and m.curves["top1_agree"].mean[-1] == 1.0
    assert all(v is not None for c in m.curves.values() for v in c.mean)
    assert not res.warnings, res.warnings


def test_peak_gpu_memory_flat_in_sequences():
    view = view_for(tiny_reference_model(vocab_size=32768, n_layers=3).cuda())
    s = LensSettings(batch_size=4, n_boot=100, logit_budget=1 << 20)
    peaks = []
    for n in (16, 32):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        analyse([ModelRun("m", view)], _items(n, vocab=32768, length=64), s, 0)
        peaks.append(torch.cuda.max_memory_allocated())
    # materialising [readouts, tokens, vocab] would add 3 x 16 x 63 x 32768 x 4 B = 396 MB
    assert peaks[1] - peaks[0] < 4e6, peaks


@pytest.mark.parametrize("extra", [["--device", "cuda"], ["--device-map", "auto"]])
def test_cli_demo_on_cuda(extra):
    from typer.testing import CliRunner

    from engram_cli.cli.app import app

    r = CliRunner().invoke(app, ["analyze", "logit-lens", "--compare", "ablated", "--limit", "4", "--json", *extra])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["provenance"]["device"].startswith("cuda")
    assert doc["models"][0]["metrics"]["kl_final_layer"]["mean"][-1] == 0.0
