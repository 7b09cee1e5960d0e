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
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

# Float reciprocal modulo is exact when the estimate's error stays below 0.5:
# (2**63 / p) * 3 * 2**-53 < 0.5  <=>  p > 6 * 2**10; use a safe margin.
_FLOAT_MOD_MIN_PRIME = 1 << 14
_CHUNK = 16384


@dataclass(frozen=True)
class HashIds:
    """Hash output: compressed ids ``[batch, tokens]`` and global row ids
    ``[batch, tokens, layers, columns]`` int64 (numpy, or torch on the input's device).

    ``local`` (head-local ids) is derived on access as ``global_ - offsets``.
    """

    compressed: Any
    global_: Any
    offsets: Any = field(repr=False, default=None)  # [layers, columns], same library as global_

    @property
    def local(self) -> Any:
        return self.global_ - self.offsets


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
) -> np.ndarray:
    """The chunked numpy kernel: global row ids ``[B, T, L, C]`` int64.

    Each chunk of tokens is hashed head by head into a small column-major scratch buffer
    (long contiguous loops that stay in cache), offset, and written transposed into the
    output. Chunks are spread over ``threads`` worker threads (default: one per CPU, at most
    8); numpy releases the GIL inside its loops, so they run in parallel.
    """
    b, t = compressed.shape
    n_layers = len(primes)
    n_cols = len(primes[0]) if n_layers else 0
    max_n = (n_cols // n_heads if n_heads else 0) + 1
    flat = np.ascontiguousarray(compressed, dtype=np.int64).reshape(-1)
    avail_flat = avail.reshape(-1)
    total = flat.shape[0]
    glob = np.empty((total, n_layers, n_cols), dtype=np.int64)
    # Left-pad so that x[t-k] indexing never wraps; availability decides what is real.
    padded = np.concatenate([np.full(max_n - 1, pad_id, dtype=np.int64), flat])
    mults = [[np.int64(m) for m in ms] for ms in multipliers]
    heads = [_HeadModulus.for_order(primes[li][o * n_heads : (o + 1) * n_heads]) for li in range(n_layers)
             for o in range(max_n - 1)]
    offs = [np.asarray(o, dtype=np.int64)[:, None] for o in offsets]

    def run(lo: int, hi: int) -> None:
        scratch = np.empty((n_cols, chunk), dtype=np.int64)
        work = _Scratch(n_heads, chunk)
        for s in range(lo, hi, chunk):
            e = min(hi, s + chunk)
            n = e - s
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
                    rows = scratch[(k - 1) * n_heads : k * n_heads, :n]
                    heads[li * (max_n - 1) + k - 1].mod(mix, rows, work)
                block = scratch[:, :n]
                block += offs[li]
                glob[s:e, li] = block.T

    n_chunks = -(-total // chunk) if total else 0
    workers = max(1, min(threads or min(os.cpu_count() or 1, 8), n_chunks))
    if workers == 1:
        run(0, total)
    else:
        from concurrent.futures import ThreadPoolExecutor

        per = -(-n_chunks // workers) * chunk
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(lambda lo: run(lo, min(total, lo + per)), range(0, total, per)))
    return glob.reshape(b, t, n_layers, n_cols)


class _Scratch:
    """Per-thread float/int buffers for one chunk of one order's heads."""

    def __init__(self, n_heads: int, chunk: int):
        self.shifted = np.empty(chunk, dtype=np.float64)
        self.quot = np.empty((n_heads, chunk), dtype=np.float64)
        self.r = np.empty((n_heads, chunk), dtype=np.int64)


@dataclass(frozen=True)
class _HeadModulus:
    """``mix mod p`` for the heads of one (layer, order), written to ``out[head, token]``.

    When every prime is >= 2**14 and they lie within 1 % of each other (always true for
    real layouts), the quotient comes from a float64 reciprocal of ``mix - p_min/2``: its
    error stays below 0.25 while the shift is ~0.5, so the truncated quotient is
    floor(mix/p) or one less, ``r = mix - q*p`` lies in [0, 2p), and one unsigned minimum
    with ``r - p`` finishes it. Otherwise plain integer ``%``. Heads run as rows of 2-D
    arrays so every numpy loop is long and contiguous.
    """

    primes: np.ndarray  # [heads, 1] int64
    inverses: np.ndarray  # [heads, 1] float64
    use_float: bool

    @classmethod
    def for_order(cls, primes: Sequence[int]) -> "_HeadModulus":
        ps = [int(p) for p in primes]
        ok = min(ps) >= _FLOAT_MOD_MIN_PRIME and max(ps) < 1.01 * min(ps)
        arr = np.asarray(ps, dtype=np.int64)[:, None]
        return cls(arr, 1.0 / arr.astype(np.float64), ok)

    def mod(self, mix: np.ndarray, out: np.ndarray, work: _Scratch) -> None:
        n = mix.shape[0]
        if not self.use_float:
            np.remainder(mix[None, :], self.primes, out=out)
            return
        shifted, quot, r = work.shifted[:n], work.quot[:, :n], work.r[:, :n]
        np.copyto(shifted, mix, casting="unsafe")
        shifted -= 0.5 * float(self.primes[0, 0])
        np.multiply(shifted[None, :], self.inverses, out=quot)
        np.copyto(out, quot, casting="unsafe")  # trunc toward zero
        out *= self.primes
        np.subtract(mix[None, :], out, out=out)  # r in [0, 2p)
        np.subtract(out, self.primes, out=r)  # wraps to a huge unsigned value when r < p
        np.minimum(out.view(np.uint64), r.view(np.uint64), out=out.view(np.uint64))


def hash_torch(
    compressed: Any,
    avail: Any,
    pad_id: int,
    multipliers: Sequence[Sequence[int]],
    primes: Sequence[Sequence[int]],
    offsets: Sequence[Sequence[int]],
    n_heads: int,
) -> Any:
    """Whole-tensor torch kernel (any device): global row ids, as :func:`hash_numpy`."""
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
    glob = torch.empty((b, t, n_layers, n_cols), dtype=torch.int64, device=dev)
    off = torch.tensor([list(o) for o in offsets], dtype=torch.int64, device=dev)
    for li in range(n_layers):
        m = multipliers[li]
        p = torch.tensor(list(primes[li]), dtype=torch.int64, device=dev)
        mix = toks[0] * int(m[0])
        for k in range(1, max_n):
            mix = torch.bitwise_xor(mix, toks[k] * int(m[k]))
            cols = slice((k - 1) * n_heads, k * n_heads)
            glob[:, :, li, cols] = torch.remainder(mix.unsqueeze(-1), p[cols]) + off[li, cols]
    return glob
