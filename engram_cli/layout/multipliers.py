"""Hash multipliers: numpy PCG64 (DeepSeek) and SplitMix64 (Qwen4-Exp).

Multipliers are pinned into saved layouts because numpy does not promise stream stability.
"""

from __future__ import annotations

import numpy as np

INT64_MAX = (1 << 63) - 1
LAYER_PRIME = 10007
_MASK64 = (1 << 64) - 1
_SPLITMIX_GAMMA = 0x9E3779B97F4A7C15
_SPLITMIX_M1 = 0xBF58476D1CE4E5B9
_SPLITMIX_M2 = 0x94D049BB133111EB


def half_bound(vocab_size: int) -> int:
    """``max(1, (int64_max // vocab) // 2)``: keeps ``token * multiplier`` inside int64."""
    return max(1, (INT64_MAX // max(int(vocab_size), 1)) // 2)


def pcg64_multipliers(layer_id: int, max_ngram_size: int, compressed_vocab_size: int, seed: int = 0) -> list[int]:
    """DeepSeek: ``2*r+1`` with r drawn by ``default_rng(seed + 10007*layer_id).integers``."""
    rng = np.random.default_rng(int(seed + LAYER_PRIME * int(layer_id)))
    r = rng.integers(low=0, high=half_bound(compressed_vocab_size), size=(max_ngram_size,), dtype=np.int64)
    return [int(v) * 2 + 1 for v in r]


def _splitmix64(value: int) -> int:
    value = (value + _SPLITMIX_GAMMA) & _MASK64
    value = ((value ^ (value >> 30)) * _SPLITMIX_M1) & _MASK64
    value = ((value ^ (value >> 27)) * _SPLITMIX_M2) & _MASK64
    return (value ^ (value >> 31)) & _MASK64


def splitmix64_multipliers(ple_layer_index: int, ngram_size: int, vocab_size: int, seed: int = 1234) -> list[int]:
    """Qwen4-Exp: ``2*(splitmix64(base + gamma*(i+1)) mod half_bound) + 1``, base = seed + 10007*index."""
    bound = half_bound(vocab_size)
    base = seed + LAYER_PRIME * int(ple_layer_index)
    out = []
    for i in range(ngram_size):
        value = (base + _SPLITMIX_GAMMA * (i + 1)) & _MASK64
        out.append(2 * (_splitmix64(value) % bound) + 1)
    return out
