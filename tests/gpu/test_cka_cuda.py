"""CKA on CUDA equals the CPU result, and the command runs end to end on the GPU (skipped without CUDA)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

from engram_cli.analysis import cka as C  # noqa: E402


def _pair(seed=0, la=5, lb=7, n=300, da=48, db=96):
    g = torch.Generator().manual_seed(seed)
    xa = torch.randn(la, n, da, generator=g, dtype=torch.float64)
    xb = torch.randn(lb, n, db, generator=g, dtype=torch.float64) + xa[0, :, :1]
    return xa, xb


@pytest.mark.parametrize("kw", [{"path": "gram"}, {"path": "feature"}, {"kernel": "rbf"}])
@pytest.mark.parametrize("unbiased", [True, False])
def test_cuda_equals_cpu(kw, unbiased):
    xa, xb = _pair()
    cpu = C.hsic_terms(xa, xb, unbiased=unbiased, **kw)
    gpu = C.hsic_terms(xa.cuda(), xb.cuda(), unbiased=unbiased, **kw)
    for f in ("xy", "xx", "yy"):
        np.testing.assert_allclose(getattr(gpu, f), getattr(cpu, f), rtol=1e-10, atol=1e-12)
    blocked = C.blocked_gram_hsic(xa.cuda(), xb.cuda(), unbiased=unbiased, kernel=kw.get("kernel", "linear"),
                                  block_bytes=1 << 20)
    np.testing.assert_allclose(blocked.xy, C.hsic_terms(xa, xb, unbiased=unbiased, kernel=kw.get("kernel", "linear"),
                                                        path="gram").xy, rtol=1e-10, atol=1e-12)


def test_cuda_batched_and_self():
    xa, xb = _pair(n=320)
    a4, b4 = xa.reshape(5, 10, 32, -1).cuda(), xb.reshape(7, 10, 32, -1).cuda()
    main, same = C.hsic_terms_batched(a4, [b4, None], unbiased=True)
    ref = C.hsic_terms_batched(a4.cpu(), [b4.cpu()], unbiased=True)[0]
    np.testing.assert_allclose(main.xy, ref.xy, rtol=1e-10, atol=1e-12)
    acc = C.MinibatchAccumulator()
    acc.add_many(same, 32)
    S = acc.cka()
    assert (np.diag(S) == 1.0).all() and (S == S.T).all()


def test_cli_on_cuda(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from models_helpers import save_tiny_reference
    from typer.testing import CliRunner

    from engram_cli.cli.app import app

    model = save_tiny_reference(tmp_path / "m", vocab_size=80)
    r = CliRunner().invoke(app, ["analyze", "cka", str(model), "--device", "cuda", "--batch-size", "8",
                                 "--max-length", "24", "--max-examples", "128", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["provenance"]["device"].startswith("cuda") and doc["self_check"]["ok"]
    r_cpu = CliRunner().invoke(app, ["analyze", "cka", str(model), "--device", "cpu", "--batch-size", "8",
                                     "--max-length", "24", "--max-examples", "128", "--json"])
    cpu = json.loads(r_cpu.stdout)
    np.testing.assert_allclose(np.array(doc["cka"], dtype=float), np.array(cpu["cka"], dtype=float), atol=1e-4)
