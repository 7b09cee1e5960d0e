"""CUDA hashing equals the CPU kernels (skipped without CUDA): every rule, int32 ids, mixes
near 2**63 with primes of every size."""

import dataclasses

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
    g32 = v41_layout.hash(torch.from_numpy(ids).cuda(), seq_starts=[0, 1000], dead_mask=torch.from_numpy(dead).cuda(),
                          id_dtype="int32")
    assert g32.global_.dtype == torch.int32 and g32.global_.is_cuda
    np.testing.assert_array_equal(cpu.global_, g32.global_.cpu().numpy())


def test_cuda_qwen_eos_resets_equal_cpu():
    from engram_cli.layout import EngramLayout

    lay = EngramLayout.custom(layer_ids=[1, 3], max_ngram_size=3, n_heads=4, head_dim=8, vocab_base=20_000,
                              compressed_vocab_size=300, pad_id=7)
    lay = dataclasses.replace(lay, variant="qwen4-exp", eos_token_id=7)
    ids = np.random.default_rng(1).integers(0, 300, size=(3, 2000))
    ids[:, ::13] = 7
    cpu = lay.hash(ids, backend="numpy")
    gpu = lay.hash(torch.from_numpy(ids).cuda())
    np.testing.assert_array_equal(cpu.global_, gpu.global_.cpu().numpy())


def test_cuda_kernel_near_2_63_and_every_prime_size():
    from engram_cli.layout import hashing

    vocab = 300
    bound = (2**63 - 1) // vocab
    mults = [[bound, bound - 2, bound - 40]] * 2
    primes = [[2, 3, 8191, 8209], [65_521, 16_000_057, 2**31 - 1, 2**61 - 1]]
    offsets = [[0, 2, 5, 8196], [0, 65_521, 16_065_578, 16_065_578 + 2**31 - 1]]
    comp = np.random.default_rng(5).integers(vocab - 3, vocab, size=(2, 5000))
    cpu = hashing.hash_cpu(comp, 299, mults, primes, offsets, 2, kernel="numpy")
    gpu = hashing.hash_torch(torch.from_numpy(comp).cuda(), 299, mults, primes, offsets, 2)
    np.testing.assert_array_equal(cpu, gpu.cpu().numpy())
