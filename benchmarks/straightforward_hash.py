"""A straightforward implementation of the Engram hash, written the way the reference demo
writes it: per layer, per n-gram order, per head, on whole numpy arrays (left-padded
shifts, XOR mix recomputed for every order, one ``%`` per head, stacked at the end).

It is the baseline of ``bench_hash.py`` and an independent oracle for the tests. It
handles only the demo rule (pad before the start of each row).
"""

from __future__ import annotations

import numpy as np


def straightforward_hash(compressed, pad_id, multipliers, primes, offsets, n_heads):
    """compressed ``[B, T]`` -> (local, global) ``[B, T, L, C]`` int64."""
    x = np.asarray(compressed, dtype=np.int64)
    _, t = x.shape
    max_n = len(primes[0]) // n_heads + 1
    local_layers = []
    for li in range(len(primes)):
        m = multipliers[li]

        def shift_k(k: int) -> np.ndarray:
            if k == 0:
                return x
            return np.pad(x, ((0, 0), (k, 0)), mode="constant", constant_values=pad_id)[:, :t]

        shifts = [shift_k(k) for k in range(max_n)]
        heads = []
        for n in range(2, max_n + 1):
            mix = shifts[0] * np.int64(m[0])
            for k in range(1, n):
                mix = np.bitwise_xor(mix, shifts[k] * np.int64(m[k]))
            for j in range(n_heads):
                heads.append((mix % int(primes[li][(n - 2) * n_heads + j])).astype(np.int64, copy=False))
        local_layers.append(np.stack(heads, axis=2))
    local = np.stack(local_layers, axis=2)
    glob = local + np.asarray(offsets, dtype=np.int64)[None, None, :, :]
    return local, glob


def naive_hash_one(tokens, pad_id, multipliers, primes, offsets, n_heads, starts=(), dead=(), eos=None):
    """Per-token Python loops with Python integers: the rules spelled out one by one.

    ``starts``: positions where a packed sequence starts; ``dead``: positions of dead
    tokens (a lookback on or past one reads pad); ``eos``: Qwen4-Exp resets after EOS.
    """
    t_len = len(tokens)
    max_n = len(primes[0]) // n_heads + 1
    out_local = [[[0] * len(primes[0]) for _ in primes] for _ in range(t_len)]
    out_global = [[[0] * len(primes[0]) for _ in primes] for _ in range(t_len)]
    for t in range(t_len):
        seg = 0
        for s in starts:
            if s <= t:
                seg = max(seg, s)
        if eos is not None:
            for u in range(t):
                if tokens[u] == eos:
                    seg = max(seg, u + 1)
        lookback = []
        blocked = False
        for k in range(max_n):
            pos = t - k
            if pos < seg or pos in dead:
                blocked = True
            lookback.append(pad_id if blocked else int(tokens[pos]))
        for li in range(len(primes)):
            m = multipliers[li]
            for n in range(2, max_n + 1):
                mix = 0
                for k in range(n):
                    mix ^= lookback[k] * int(m[k])
                for j in range(n_heads):
                    c = (n - 2) * n_heads + j
                    out_local[t][li][c] = mix % int(primes[li][c])
                    out_global[t][li][c] = out_local[t][li][c] + int(offsets[li][c])
    return np.asarray(out_local, dtype=np.int64), np.asarray(out_global, dtype=np.int64)
