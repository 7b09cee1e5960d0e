"""CUDA hashing equals the CPU kernel (skipped without CUDA)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_cuda_hash_equals_cpu(v41_layout):
    ids = np.random.default_rng(0).integers(0, 129_280, size=(4, 4096))
    dead = ids % 97 == 0
    cpu = v41_layout.hash(ids, seq_starts=[0, 1000], dead_mask=dead)
    gpu = v41_layout.hash(torch.from_numpy(ids).cuda(), seq_starts=[0, 1000], dead_mask=torch.from_numpy(dead).cuda())
    assert gpu.global_.is_cuda
    np.testing.assert_array_equal(cpu.global_, gpu.global_.cpu().numpy())
    np.testing.assert_array_equal(cpu.local, gpu.local.cpu().numpy())
