"""The n-gram hash: compressed ids -> head-local and global row ids.

For position t and lookback k, the token is ``x[t-k]`` while k is below the number of
*available* lookbacks at t, else the pad id. Availability encodes every variant's rule:
sequence starts (the reference demo pads before the start), packed-sequence starts and
dead tokens (DeepSeek-V4.1 blocking: a lookback before the start or on a dead token makes
that position and every older one pad), and EOS resets (Qwen4-Exp).

For order n, ``mix_n = XOR_{k<n} tok_k * m_k`` (built incrementally); head j of order n emits
``mix_n mod p_{n,j}`` (head-local) and that plus the head's offset (global row id).

The numpy kernel works on cache-sized token chunks and replaces the int64 division by a
float64 reciprocal estimate with one exact integer correction, which is bit-exact for
every prime >= 2**14 (smaller primes use integer ``%``). A torch kernel serves CUDA tensors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

# Float reciprocal modulo is exact when the estimate's error stays below 0.5:
# (2**63 / p) * 3 * 2**-53 < 0.5  <=>  p > 6 * 2**10; use a safe margin.
_FLOAT_MOD_MIN_PRIME = 1 << 14
_CHUNK = 4096


@dataclass(frozen=True)
class HashIds:
    """Hash output, each ``[batch, tokens, layers, columns]`` int64 (numpy or torch)."""

    compressed: Any  # [batch, tokens] compressed ids (or raw ids where there is no compression)
    local: Any
    global_: Any


def available_lookbacks(
    shape: tuple[int, int],
    max_ngram_size: int,
    start_mask: np.ndarray | None = None,
    dead_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Per position, how many lookbacks (k = 0, 1, ...) read real tokens, capped at N.

    ``start_mask[b, t]`` marks the first token of a (packed) sequence; row starts always
    count. ``dead_mask[b, t]`` marks dead tokens: a dead token at t-k blocks k and every
    older lookback (and a dead current token blocks them all).
    """
    b, t = shape
    pos = np.broadcast_to(np.arange(t, dtype=np.int64), (b, t))
    if start_mask is not None:
        starts = np.where(start_mask, pos, 0)
        seg_start = np.maximum.accumulate(starts, axis=1)
    else:
        seg_start = np.zeros((b, t), dtype=np.int64)
    first_valid = seg_start
    if dead_mask is not None:
        dead_pos = np.where(dead_mask, pos, -1)
        last_dead = np.maximum.accumulate(dead_pos, axis=1)
        first_valid = np.maximum(first_valid, last_dead + 1)
    avail = pos - first_valid + 1  # lookbacks 0..avail-1 are real tokens
    return np.clip(avail, 0, max_ngram_size).astype(np.int8)


def _mod_columns(mix: np.ndarray, primes_i: np.ndarray, inv_f: np.ndarray, use_float: np.ndarray, out: np.ndarray) -> None:
    """out[:, j] = mix mod primes_i[j] for one order's heads (0 <= mix < 2**63).

    Shifting mix down by half the smallest prime before the reciprocal multiply puts the
    truncated quotient in {floor(mix/p) - 1, floor(mix/p)}: the estimate's error stays
    below 0.25 for p >= 2**14 while the shift is ~0.5 for every head of one order, whose
    primes differ by far less than 1 %. So r = mix - q*p lies in [0, 2p) and one unsigned
    minimum finishes it.
    """
    if use_float.all() and primes_i.max() < 1.01 * primes_i.min():
        shifted = mix.astype(np.float64)
        shifted -= 0.5 * float(primes_i.min())
        y = np.multiply(shifted[:, None], inv_f[None, :])
        q = y.astype(np.int64)  # trunc toward zero
        q *= primes_i[None, :]
        np.subtract(mix[:, None], q, out=q)  # r in [0, 2p)
        # r - p wraps to a huge unsigned value when r < p, so the unsigned minimum picks r.
        yi = y.view(np.int64)
        np.subtract(q, primes_i[None, :], out=yi)
        np.minimum(q.view(np.uint64), yi.view(np.uint64), out=out.view(np.uint64))
        return
    for j in range(primes_i.shape[0]):
        np.remainder(mix, primes_i[j], out=out[:, j])


def hash_numpy(
    compressed: np.ndarray,
    avail: np.ndarray,
    pad_id: int,
    multipliers: Sequence[Sequence[int]],
    primes: Sequence[Sequence[int]],
    offsets: Sequence[Sequence[int]],
    n_heads: int,
    chunk: int = _CHUNK,
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The chunked numpy kernel. Returns (local, global) ``[B, T, L, C]`` int64.

    Chunks are spread over ``threads`` worker threads (default: one per CPU, at most 8);
    numpy releases the GIL inside its loops, so they run in parallel.
    """
    b, t = compressed.shape
    n_layers = len(primes)
    n_cols = len(primes[0]) if n_layers else 0
    n_orders = n_cols // n_heads if n_heads else 0
    max_n = n_orders + 1
    flat = np.ascontiguousarray(compressed, dtype=np.int64).reshape(-1)
    avail_flat = avail.reshape(-1)
    total = flat.shape[0]
    local = np.empty((total, n_layers, n_cols), dtype=np.int64)
    glob = np.empty((total, n_layers, n_cols), dtype=np.int64)
    # Left-pad so that x[t-k] indexing never wraps; availability decides what is real.
    padded = np.concatenate([np.full(max_n - 1, pad_id, dtype=np.int64), flat])
    mults = [np.asarray(m, dtype=np.int64) for m in multipliers]
    prime_arr = [np.asarray(p, dtype=np.int64) for p in primes]
    inv = [1.0 / np.asarray(p, dtype=np.float64) for p in primes]
    use_float = [p >= _FLOAT_MOD_MIN_PRIME for p in prime_arr]
    off_arr = [np.asarray(o, dtype=np.int64) for o in offsets]

    def run(lo: int, hi: int) -> None:
        for s in range(lo, hi, chunk):
            e = min(hi, s + chunk)
            av = avail_flat[s:e]
            full = bool((av >= max_n).all())
            toks = []
            for k in range(max_n):
                tk = padded[s + max_n - 1 - k : e + max_n - 1 - k]
                if not full:
                    tk = np.where(av > k, tk, pad_id)
                toks.append(tk)
            for li in range(n_layers):
                m = mults[li]
                mix = toks[0] * m[0]
                for k in range(1, max_n):
                    mix = np.bitwise_xor(mix, toks[k] * m[k])
                    cols = slice((k - 1) * n_heads, k * n_heads)
                    _mod_columns(mix, prime_arr[li][cols], inv[li][cols], use_float[li][cols], local[s:e, li, cols])
                np.add(local[s:e, li], off_arr[li][None, :], out=glob[s:e, li])

    n_chunks = -(-total // chunk) if total else 0
    workers = max(1, min(threads or min(os.cpu_count() or 1, 8), n_chunks))
    if workers == 1:
        run(0, total)
    else:
        from concurrent.futures import ThreadPoolExecutor

        per = -(-n_chunks // workers) * chunk
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(lambda lo: run(lo, min(total, lo + per)), range(0, total, per)))
    return local.reshape(b, t, n_layers, n_cols), glob.reshape(b, t, n_layers, n_cols)


def hash_torch(
    compressed: Any,
    avail: Any,
    pad_id: int,
    multipliers: Sequence[Sequence[int]],
    primes: Sequence[Sequence[int]],
    offsets: Sequence[Sequence[int]],
    n_heads: int,
) -> tuple[Any, Any]:
    """Whole-tensor torch kernel (any device). Same contract as :func:`hash_numpy`."""
    import torch

    x = compressed.to(torch.int64)
    b, t = x.shape
    dev = x.device
    n_layers = len(primes)
    n_cols = len(primes[0]) if n_layers else 0
    max_n = n_cols // n_heads + 1 if n_heads else 1
    avail = avail.to(dev)
    padded = torch.nn.functional.pad(x, (max_n - 1, 0), value=pad_id)
    toks = []
    for k in range(max_n):
        tk = padded[:, max_n - 1 - k : max_n - 1 - k + t]
        toks.append(torch.where(avail > k, tk, torch.full_like(tk, pad_id)))
    local = torch.empty((b, t, n_layers, n_cols), dtype=torch.int64, device=dev)
    for li in range(n_layers):
        m = multipliers[li]
        p = torch.tensor(list(primes[li]), dtype=torch.int64, device=dev)
        mix = toks[0] * int(m[0])
        for k in range(1, max_n):
            mix = torch.bitwise_xor(mix, toks[k] * int(m[k]))
            cols = slice((k - 1) * n_heads, k * n_heads)
            local[:, :, li, cols] = torch.remainder(mix.unsqueeze(-1), p[cols])
    off = torch.tensor([list(o) for o in offsets], dtype=torch.int64, device=dev)
    return local, local + off
