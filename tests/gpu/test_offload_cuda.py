"""GPU tier: every CUDA gather path returns the numpy reference rows bit for bit (skipped without CUDA)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture(scope="module")
def registered():
    from engram_cli.offload import gpu, host

    table = host.make_table(8 << 20, seed=11)
    reg = gpu.register_host(table.buf)
    yield table, reg
    torch.cuda.synchronize()
    reg.close()
    table.close()


@pytest.mark.parametrize("rb", [64, 264, 2048])
def test_uva_index_select_equals_numpy(registered, rb):
    from engram_cli.offload import gpu

    table, reg = registered
    host_view = table.view(rb)
    uva = gpu.uva_view(host_view, reg).view(torch.int32)
    idx = np.random.default_rng(rb).integers(0, host_view.shape[0], size=1000)
    got = torch.index_select(uva, 0, torch.from_numpy(idx).cuda()).cpu().numpy().view(np.uint8)
    assert np.array_equal(got, host_view[idx])
    assert reg.pin_memory_would_allocate >= reg.nbytes and reg.nbytes == table.nbytes  # exact size registered


@pytest.mark.parametrize("grid", [None, 1, 16, 66])
def test_triton_gather_equals_numpy(registered, grid):
    from engram_cli.offload import gpu

    if not gpu.triton_available():
        pytest.skip("triton is not installed")
    from engram_cli.offload import triton_gather

    table, reg = registered
    host_view = table.view(264)
    words = gpu.uva_view(host_view, reg).view(torch.int32)
    idx = np.random.default_rng(3).integers(0, host_view.shape[0], size=777)
    out = torch.zeros((777, 66), dtype=torch.int32, device="cuda")
    triton_gather.gather(words, torch.from_numpy(idx).cuda(), out, grid)
    assert np.array_equal(out.cpu().numpy().view(np.uint8), host_view[idx])


def test_run_gpu_small_plan_verifies_every_mode():
    from engram_cli.offload.gpubench import GpuPlan, run_gpu

    plan = GpuPlan(bulk_sizes=(64 << 10, 4 << 20), trials=2, row_bytes=(264,), rows=(24, 4096), grids=("full", "sm/2", "32"),
                   iters=6, verify_every=2, hbm_bytes=16 << 20, hot_cache_rows=4096, matmul_n=512, interference_rows=4096)
    res = run_gpu(plan, table_bytes=64 << 20, threads=2)
    modes = {c.mode for c in res.gathers}
    assert {"uva-index_select", "staging", "hbm", "hot-cache"} <= modes
    assert all(c.verified_calls >= 2 and c.latency_us.n == plan.iters for c in res.gathers)
    assert all(c.gbps.p50 > 0 for c in res.bulk)
    assert res.ceilings["sm-h2d"] and res.interference and res.device["name"]


def test_validate_on_cuda_gives_identical_logits(tmp_path):
    from engram_cli.offload.validate import ValidatePlan, run_validate

    res = run_validate(ValidatePlan(batch=2, prefill=8, steps=4, repeats=2), device="cuda", workdir=tmp_path)
    assert res.device == "cuda" and "UVA" in res.placement
    assert res.logits_identical and res.max_abs_diff == 0.0
