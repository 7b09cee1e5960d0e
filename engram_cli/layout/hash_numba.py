"""The compiled CPU hash kernel (numba): compressed ids -> global row ids in one pass.

One loop over tokens, parallel over token chunks (``prange``). Per token it works out how
many lookbacks read real tokens (row start, packed-sequence starts, dead tokens, EOS resets;
the rules of :func:`engram_cli.layout.hashing.available_lookbacks`), builds the n-gram mix
incrementally (each order's mix is shared by its heads) and writes ``mix mod p + offset``
straight into the ``[tokens, layers, columns]`` output (int64 or int32). No temporaries.

Exact modulo, fast path (``mod_fast``, the kernel's inner loop). For ``0 <= x < 2**63`` and a
prime ``2**13 <= p < 2**31`` the quotient comes from a float64 reciprocal:
``Q = fl(fl(x) * fl(1/p))``. Each of the three roundings has relative error <= 2**-53, so
``|Q - x/p| <= (x/p) * ((1 + 2**-53)**3 - 1) < (2**63 / p) * 3.0000001 * 2**-53 =
3.0000001 * 2**10 / p <= 0.375`` for ``p >= 2**13``. ``0 <= Q < 2**51``, so ``Q + 2**52`` is
rounded to an integer exactly once (the float64 spacing there is 1) and its bit pattern holds
``q = round(Q)`` in its low 52 bits: no float -> int conversion, which AVX2 has no vector form
of. ``|q - x/p| <= 0.875`` makes ``q`` ``floor(x/p)`` or ``floor(x/p) + 1``, so the true
``r = x - q*p`` lies in ``[-p, p)`` and one ``r += p if r < 0`` gives ``x mod p``. ``r`` fits in
int32 (``p < 2**31``), so it is the sign-extended low 32 bits of ``x - bits*p`` computed with
wrapping int64 arithmetic: the exponent bits of ``bits`` (a multiple of 2**52) and any wrap
only touch bits 32 and up. ``tests/unit/test_hash_numba.py`` checks the correction both taken
and not at ``p = 8209`` (the smallest prime >= 2**13) and ``p = 2**31 - 1``, near 2**63 and near
multiples of p. LLVM vectorises this loop four heads wide.

General modulo (``mod_exact``, orders with another prime or a possibly negative mix): for
``2**13 <= p < 2**32``, ``trunc(Q)`` is ``floor(x/p) - 1``, ``floor(x/p)`` or ``floor(x/p) + 1``
and ``r = x - q*p`` in ``[-p, 2p)`` takes one integer correction each way (``q*p`` may wrap for
x near 2**63, but int64 arithmetic is exact modulo 2**64 and ``|r| < 2**34``). Smaller or
larger primes (and negative x, which valid inputs never produce: every product
``token * multiplier`` is below 2**63) use integer ``%`` (floor modulo, as numpy's ``%``).
The same test checks both corrections at ``p = 8209``.

This module imports numba at import time: import it lazily (``hashing`` does).
"""

from __future__ import annotations

from engram_cli.compiled import prepare_numba

prepare_numba()  # numba's array support without SciPy's BLAS (before numba loads it)

import numba as nb  # noqa: E402
import numpy as np  # noqa: E402

from engram_cli.numba_bits import f64_bits  # noqa: E402

FLOAT_MOD_MIN_PRIME = 1 << 13
FLOAT_MOD_MAX_PRIME = 1 << 32
FAST_MOD_MAX_PRIME = 1 << 31  # mod_fast: the remainder fits in int32
TWO52 = float(1 << 52)
START, DEAD = 1, 2  # bits of the per-token flags
CHUNK = 4096


def reciprocals(primes: np.ndarray) -> np.ndarray:
    """``1/p`` (float64) where the float path is exact, 0.0 where ``mod_exact`` must use ``%``."""
    p = np.asarray(primes, dtype=np.int64)
    ok = (p >= FLOAT_MOD_MIN_PRIME) & (p < FLOAT_MOD_MAX_PRIME)
    return np.where(ok, 1.0 / np.maximum(p, 1).astype(np.float64), 0.0)


@nb.njit(cache=True, nogil=True, inline="always")
def quotient_estimate(x, inv):
    """``trunc(fl(fl(x) * inv))``: floor(x/p) within one (see the module docstring)."""
    return np.int64(np.float64(x) * inv)


@nb.njit(cache=True, nogil=True, inline="always")
def mod_exact(x, p, inv):
    """``x mod p`` (floor modulo) for int64 ``x``; ``inv`` from :func:`reciprocals`."""
    if inv == 0.0 or x < 0:
        return x % p
    r = x - quotient_estimate(x, inv) * p
    if r < 0:
        r += p
    elif r >= p:
        r -= p
    return r


@nb.njit(cache=True, nogil=True, inline="always")
def mod_fast(x, xf, p, inv):
    """``x mod p`` for ``0 <= x < 2**63``, ``2**13 <= p < 2**31``, ``xf = float64(x)``, ``inv = 1/p``
    (see the module docstring: the rounded quotient read from the bits of ``Q + 2**52``)."""
    r = np.int64(np.int32(x - f64_bits(xf * inv + TWO52) * p))
    return r + p if r < 0 else r


def _fast_orders(comp: np.ndarray, pad: int, mults: np.ndarray, primes: np.ndarray, inv: np.ndarray, n_heads: int) -> np.ndarray:
    """``[L, N-1]`` bool: every product ``token * m_k`` lies in [0, 2**63) (so every mix does)
    and every head of the order has a prime ``mod_fast`` takes (``2**13 <= p < 2**31``)."""
    lo, hi = min(int(comp.min()), pad), max(int(comp.max()), pad)
    n_layers, max_n = mults.shape
    no_wrap = [lo >= 0 and all(0 <= int(m) and hi * int(m) < 2**63 for m in mults[li]) for li in range(n_layers)]
    fast_prime = (inv != 0.0) & (primes < FAST_MOD_MAX_PRIME)
    heads_ok = fast_prime.reshape(n_layers, max_n - 1, n_heads).all(axis=2)
    return heads_ok & np.asarray(no_wrap, dtype=bool)[:, None]


@nb.njit(cache=True, nogil=True)
def _available(comp, flags, has_flags, eos, t, row_start, max_n):
    """Lookbacks 0..avail-1 of position t read real tokens (the others read the pad id)."""
    avail = 0
    for k in range(max_n):
        u = t - k
        if u < row_start:
            break
        if has_flags and (flags[u] & DEAD):
            break
        if k > 0 and comp[u] == eos:  # the EOS closes its segment: t lies in a later one
            break
        avail = k + 1
        if has_flags and (flags[u] & START):
            break
    return avail


@nb.njit(parallel=True, cache=True, nogil=True)
def hash_kernel(comp, row_len, flags, eos, pad, mults, primes, inv, fast, offsets, n_heads, out, chunk):
    """Global row ids of flat compressed ids ``comp [B*T]`` (rows of ``row_len``) into ``out [B*T, L, C]``.

    ``flags [B*T]`` uint8 (``START | DEAD`` bits) or an empty array; ``eos``: the compressed
    EOS id after which a segment restarts (-1: none); ``mults [L, N]``, ``primes``, ``inv``,
    ``offsets [L, C]``; ``fast [L, N-1]``: the order's mixes are >= 0 and all its primes suit
    ``mod_fast``, so the branch-free loop (vectorised over heads) applies.
    """
    total = comp.shape[0]
    n_layers = primes.shape[0]
    max_n = mults.shape[1]
    has_flags = flags.shape[0] == total
    simple = not has_flags and eos < 0
    n_chunks = (total + chunk - 1) // chunk
    for ci in nb.prange(n_chunks):
        s = ci * chunk
        e = min(total, s + chunk)
        tok = np.empty(max_n, np.int64)
        pos = s % row_len  # position of t in its row
        for t in range(s, e):
            if simple:
                avail = min(max_n, pos + 1)
            else:
                avail = _available(comp, flags, has_flags, eos, t, t - pos, max_n)
            pos = pos + 1 if pos + 1 < row_len else 0
            for k in range(max_n):
                tok[k] = comp[t - k] if k < avail else pad
            for li in range(n_layers):
                mix = tok[0] * mults[li, 0]
                c = 0
                for k in range(1, max_n):
                    mix ^= tok[k] * mults[li, k]
                    if fast[li, k - 1]:
                        xf = np.float64(mix)
                        for h in range(n_heads):  # (range(c, c + n_heads) compiles to a 1.7x slower loop)
                            out[t, li, c + h] = mod_fast(mix, xf, primes[li, c + h], inv[li, c + h]) + offsets[li, c + h]
                    else:
                        for h in range(n_heads):
                            out[t, li, c + h] = mod_exact(mix, primes[li, c + h], inv[li, c + h]) + offsets[li, c + h]
                    c += n_heads
    return out


def hash_global(
    compressed: np.ndarray,
    pad_id: int,
    multipliers,
    primes,
    offsets,
    n_heads: int,
    *,
    start_mask: np.ndarray | None = None,
    dead_mask: np.ndarray | None = None,
    eos_id: int | None = None,
    out_dtype=np.int64,
    threads: int | None = None,
    chunk: int = CHUNK,
) -> np.ndarray:
    """Global row ids ``[B, T, L, C]`` (``out_dtype``) of compressed ids ``[B, T]``.

    ``start_mask``/``dead_mask``: bool ``[B, T]``; ``eos_id``: compressed EOS id (Qwen4-Exp
    resets). ``threads``: numba worker threads (default: numba's, i.e. one per CPU).
    """
    comp = np.ascontiguousarray(compressed, dtype=np.int64)
    b, t = comp.shape
    pr = np.ascontiguousarray(primes, dtype=np.int64).reshape(len(primes), -1)
    n_layers, n_cols = pr.shape
    out = np.empty((b * t, n_layers, n_cols), dtype=out_dtype)
    if out.size == 0:
        return out.reshape(b, t, n_layers, n_cols)
    flags = np.empty(0, np.uint8)
    if start_mask is not None or dead_mask is not None:
        flags = np.zeros(b * t, np.uint8)
        if start_mask is not None:
            flags |= np.asarray(start_mask, dtype=bool).reshape(-1).view(np.uint8) * np.uint8(START)
        if dead_mask is not None:
            flags |= np.asarray(dead_mask, dtype=bool).reshape(-1).view(np.uint8) * np.uint8(DEAD)
    mults = np.ascontiguousarray(multipliers, dtype=np.int64).reshape(n_layers, -1)
    offs = np.ascontiguousarray(offsets, dtype=np.int64).reshape(n_layers, n_cols)
    eos = -1 if eos_id is None else int(eos_id)
    inv = reciprocals(pr)
    fast = _fast_orders(comp, int(pad_id), mults, pr, inv, int(n_heads))
    prev = nb.get_num_threads()
    want = max(1, min(int(threads or prev), nb.config.NUMBA_NUM_THREADS))
    nb.set_num_threads(want)
    try:
        hash_kernel(comp.reshape(-1), t, flags, eos, int(pad_id), mults, pr, inv, fast, offs, int(n_heads), out, int(chunk))
    finally:
        nb.set_num_threads(prev)
    return out.reshape(b, t, n_layers, n_cols)
