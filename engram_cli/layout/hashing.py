"""The n-gram hash: compressed ids -> head-local and global row ids.

For position t and lookback k, the token is ``x[t-k]`` while k is below the number of
*available* lookbacks at t, else the pad id. Availability encodes every variant's rule:
sequence starts (the reference demo pads before the start), packed-sequence starts and
dead tokens (DeepSeek-V4.1 blocking: a lookback before the start or on a dead token makes
that position and every older one pad), and EOS resets (Qwen4-Exp).

For order n, ``mix_n = XOR_{k<n} tok_k * m_k`` (built incrementally); head j of order n emits
``mix_n mod p_{n,j}`` (head-local) and that plus the head's offset (global row id).

CPU kernels (:func:`hash_cpu` dispatches): the compiled numba kernel
(:mod:`engram_cli.layout.hash_numba`, one pass, parallel over token chunks) when numba is
importable and ``ENGRAM_NO_NUMBA`` is unset or 0, for inputs of at least ``NUMBA_MIN_TOKENS``
tokens (below that numba's import costs more than it saves) or once the kernel is loaded in
the process; otherwise the numpy kernel,
which is kept as the reference: it works on cache-sized token chunks and replaces the int64
division by a float64 reciprocal estimate with one exact integer correction, bit-exact for
every prime >= 2**14 (smaller primes use integer ``%``). A torch kernel serves CUDA tensors.
Both write int64 or int32 ids (``id_dtype``).
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from engram_cli.compiled import numba_enabled
from engram_cli.errors import UsageError

NUMBA_MIN_TOKENS = 1 << 20  # below this, numba's import and cache load (~0.5 s) cost more than the kernel saves
ID_DTYPES = ("int64", "int32")
_NUMBA_LOCK = threading.Lock()  # numba's workqueue threading layer (the fallback) is not re-entrant

# Float reciprocal modulo is exact when the estimate's error stays below 0.5:
# (2**63 / p) * 3 * 2**-53 < 0.5  <=>  p > 6 * 2**10; use a safe margin.
_FLOAT_MOD_MIN_PRIME = 1 << 14
_CHUNK = 16384


@dataclass(frozen=True)
class HashIds:
    """Hash output: compressed ids ``[batch, tokens]`` and global row ids
    ``[batch, tokens, layers, columns]`` int64 or int32 (numpy, or torch on the input's device).

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


def eos_starts(ids: np.ndarray, start_mask: np.ndarray | None, eos_id: int | None) -> np.ndarray | None:
    """``start_mask`` plus a segment start right after every ``eos_id`` (the EOS closes its own segment)."""
    if eos_id is None:
        return start_mask
    after_eos = np.zeros(ids.shape, dtype=bool)
    after_eos[:, 1:] = ids[:, :-1] == eos_id
    return after_eos if start_mask is None else (start_mask | after_eos)


def check_id_dtype(id_dtype: str, rows: Sequence[int]) -> np.dtype:
    """The numpy dtype for ``id_dtype``; UsageError when a layer's rows do not fit it."""
    from engram_cli.errors import UsageError

    if id_dtype not in ID_DTYPES:
        raise UsageError(f"unknown id dtype {id_dtype!r}", hint="int64 or int32")
    dt = np.dtype(id_dtype)
    limit = int(np.iinfo(dt).max)
    big = [int(r) for r in rows if int(r) - 1 > limit]
    if big:
        raise UsageError(
            f"{id_dtype} cannot hold this layout's row ids: a layer has {max(big):,} rows, {id_dtype} holds ids up to {limit:,}",
            hint="use int64 ids",
        )
    return dt


def hash_cpu(
    compressed: np.ndarray,
    pad_id: int,
    multipliers: Sequence[Sequence[int]],
    primes: Sequence[Sequence[int]],
    offsets: Sequence[Sequence[int]],
    n_heads: int,
    *,
    start_mask: np.ndarray | None = None,
    dead_mask: np.ndarray | None = None,
    eos_id: int | None = None,
    id_dtype: str = "int64",
    threads: int | None = None,
    kernel: str = "auto",
) -> np.ndarray:
    """Global row ids ``[B, T, L, C]`` of compressed ids ``[B, T]`` on the CPU.

    ``start_mask``/``dead_mask``: bool ``[B, T]``; ``eos_id``: compressed id after which a
    segment restarts. ``kernel``: "auto" (numba when :func:`numba_enabled` and the input has
    at least ``NUMBA_MIN_TOKENS`` tokens or numba is loaded already), "numba" or "numpy". Both
    are bit-identical (tested).
    """
    comp = np.asarray(compressed, dtype=np.int64)
    dt = np.dtype(id_dtype)
    big = comp.size >= NUMBA_MIN_TOKENS or "engram_cli.layout.hash_numba" in sys.modules
    use_numba = kernel == "numba" or (kernel == "auto" and big and numba_enabled())
    if use_numba:
        from engram_cli.layout import hash_numba

        with _NUMBA_LOCK:
            return hash_numba.hash_global(comp, pad_id, multipliers, primes, offsets, n_heads, start_mask=start_mask,
                                          dead_mask=dead_mask, eos_id=eos_id, out_dtype=dt, threads=threads)
    max_n = len(primes[0]) // n_heads + 1 if primes and n_heads else 1
    avail = available_lookbacks(comp.shape, max_n, eos_starts(comp, start_mask, eos_id), dead_mask)
    return hash_numpy(comp, avail, pad_id, multipliers, primes, offsets, n_heads, threads=threads, out_dtype=dt)


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
    out_dtype: Any = np.int64,
) -> np.ndarray:
    """The chunked numpy kernel: global row ids ``[B, T, L, C]`` (``out_dtype``, int64 by default).

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
    glob = np.empty((total, n_layers, n_cols), dtype=out_dtype)
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
    def for_order(cls, primes: Sequence[int]) -> _HeadModulus:
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


def available_lookbacks_torch(shape: tuple[int, int], max_ngram_size: int, start_mask: Any = None, dead_mask: Any = None,
                              device: Any = None) -> Any:
    """:func:`available_lookbacks` with torch ops on ``device`` (masks: bool tensors there)."""
    import torch

    b, t = shape
    pos = torch.arange(t, dtype=torch.int64, device=device).expand(b, t)
    first_valid = torch.zeros((b, t), dtype=torch.int64, device=device)
    if start_mask is not None:
        first_valid = torch.cummax(torch.where(start_mask, pos, 0), dim=1).values
    if dead_mask is not None:
        last_dead = torch.cummax(torch.where(dead_mask, pos, -1), dim=1).values
        first_valid = torch.maximum(first_valid, last_dead + 1)
    return (pos - first_valid + 1).clamp_(0, max_ngram_size).to(torch.int8)


def hash_torch(
    compressed: Any,
    pad_id: int,
    multipliers: Sequence[Sequence[int]],
    primes: Sequence[Sequence[int]],
    offsets: Sequence[Sequence[int]],
    n_heads: int,
    *,
    start_mask: Any = None,
    dead_mask: Any = None,
    eos_id: int | None = None,
    id_dtype: str = "int64",
) -> Any:
    """Whole-tensor torch kernel on the input's device: global row ids, as :func:`hash_cpu`.

    Everything stays on the device (masks: bool tensors, moved there). One broadcast per
    n-gram order covers every layer and head: ``[B, T, L] mod [L, H]`` -> ``[B, T, L, H]``.
    """
    import torch

    x = compressed.to(torch.int64)
    b, t = x.shape
    dev = x.device
    n_layers = len(primes)
    n_cols = len(primes[0]) if n_layers else 0
    max_n = n_cols // n_heads + 1 if n_heads else 1
    glob = torch.empty((b, t, n_layers, n_cols), dtype=getattr(torch, id_dtype), device=dev)
    if glob.numel() == 0:
        return glob
    if eos_id is not None:
        after_eos = torch.zeros((b, t), dtype=torch.bool, device=dev)
        after_eos[:, 1:] = x[:, :-1] == int(eos_id)
        start_mask = after_eos if start_mask is None else (start_mask.to(dev) | after_eos)
    avail = available_lookbacks_torch((b, t), max_n, None if start_mask is None else start_mask.to(dev),
                                      None if dead_mask is None else dead_mask.to(dev), dev)
    padded = torch.nn.functional.pad(x, (max_n - 1, 0), value=pad_id)
    mult = torch.tensor([[int(v) for v in m] for m in multipliers], dtype=torch.int64, device=dev)  # [L, N]
    p = torch.tensor([list(r) for r in primes], dtype=torch.int64, device=dev)  # [L, C]
    off = torch.tensor([list(o) for o in offsets], dtype=torch.int64, device=dev)
    mix = None
    for k in range(max_n):
        tk = torch.where(avail > k, padded[:, max_n - 1 - k: max_n - 1 - k + t], pad_id)
        prod = tk.unsqueeze(-1) * mult[:, k]  # [B, T, L]
        mix = prod if mix is None else mix.bitwise_xor_(prod)
        if k:
            cols = slice((k - 1) * n_heads, k * n_heads)
            glob[..., cols] = torch.remainder(mix.unsqueeze(-1), p[:, cols]).add_(off[:, cols])
    return glob


def is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "device")


def as_numpy_bool(x: Any) -> np.ndarray:
    if is_torch(x):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=bool)


def start_mask(seq_starts: Any, shape: tuple[int, int]) -> np.ndarray | None:
    if seq_starts is None:
        return None
    arr = seq_starts.detach().cpu().numpy() if is_torch(seq_starts) else np.asarray(seq_starts)
    if arr.dtype == bool:
        return arr.reshape(shape)
    arr = arr.astype(np.int64).reshape(-1)
    if arr.size and (arr.min() < 0 or arr.max() >= shape[1]):
        raise UsageError(f"sequence start positions must lie in [0, {shape[1]})")
    mask = np.zeros(shape, dtype=bool)
    mask[:, arr] = True
    return mask
