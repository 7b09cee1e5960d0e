"""Compiled table codecs (numba): fp8-e4m3 + e8m0 and int8 group-32 quantisation, and
fp8-e4m3 x e8m0 -> bf16/fp32 dequantisation, one pass over a row block.

Each kernel streams the block row by row and group by group: a 32-value group is loaded
(bf16 bits widened, fp32 as is, or fp8 x e8m0 decoded through the exact fp32 table), reduced
and written; the working set is one group plus, for decoding, the 512-byte (bf16) or 1 KiB
(fp32) slice of the 65536-entry table that the group's scale byte selects. No temporaries,
no torch. ``nogil``, so the background writer thread runs beside them.

The arithmetic is the torch reference's, operation for operation (``codecs.encode`` on the
fp32 values ``codecs.decode`` gives), so the bytes are identical (tested for all 256 x 256
code/scale pairs, NaN, +-inf, zeros and subnormals):

- fp8: ``amax`` over the group (NaN-propagating), ``ratio = fl32(amax / 448)``, ``e`` from
  ``frexp(ratio)`` (``e = exp - 1`` when the mantissa is 0.5; ``e = 0`` when ``amax`` is not
  > 0 or ``ratio`` is 0 or inf, as torch's ``frexp`` gives), scale byte ``clamp(e + 127, 1,
  254)``, ``q = e4m3(clamp(fl32(x * 2**-e), -448, 448))`` rounded as c10's
  ``fp8e4m3fn_from_fp32_value`` (nearest even; NaN -> 0x7F with the sign).
- int8: ``scale = fl32(amax / 127)`` if ``amax > 0`` else 1, ``q = clamp(rint(fl32(x / scale)),
  -127, 127)``, NaN -> 0 (torch's float -> int8 cast).

This module imports numba at import time: import it lazily (``codecs`` does).
"""

from __future__ import annotations

import functools
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from engram_cli.compiled import prepare_numba

prepare_numba()  # numba's array support without SciPy's BLAS (before numba loads it)

import numba as nb  # noqa: E402
import numpy as np  # noqa: E402

from engram_cli.numba_bits import bits_f32, f32_bits  # noqa: E402

E4M3_MAX = np.float32(448.0)


@nb.njit(cache=True, nogil=True, inline="always")
def e4m3_from_f32(v):
    """fp32 -> e4m3fn code as torch (2.13) casts: round to nearest even, NaN -> 0x7F with the
    sign, and saturating: ``|v| >= 448`` and +-inf -> +-448 (0x7E). The quantisers clamp to
    +-448 first, so only NaN and the rounding below 448 matter to them.

    Branch-free float form (so it vectorises): adding and subtracting ``2**(E + 20)``, with
    ``E = max(exponent(|v|), -6)``, rounds ``|v|`` to a multiple of ``2**(E - 3)`` (3 mantissa
    bits; ``2**-9``, the subnormal step, below 2**-6) in the fp32 unit's nearest-even mode;
    the code is then read off the result's bits (normal) or ``r * 2**9`` (subnormal).
    """
    bits = f32_bits(v)
    a = bits_f32(bits & np.uint32(0x7FFFFFFF))
    eb = bits & np.uint32(0x7F800000)
    eb = eb if eb > np.uint32(121 << 23) else np.uint32(121 << 23)
    magic = bits_f32(np.uint32(eb + np.uint32(20 << 23)))
    r = (a + magic) - magic
    nor = np.int32(f32_bits(r) >> np.uint32(20)) - np.int32(120 << 3)
    sub = np.int32(r * np.float32(512.0))
    res = nor if r >= np.float32(2.0**-6) else sub
    res = np.int32(0x7E) if a >= E4M3_MAX else res
    res = res if a == a else np.int32(0x7F)
    return np.uint8(res | np.int32((bits >> np.uint32(24)) & np.uint32(0x80)))


@nb.njit(cache=True, nogil=True, inline="always")
def _amax_bits(bbuf, n):
    """Largest ``|x|`` of fp32 bits ``bbuf[:n]`` as bits: non-negative floats order like their
    bits, and NaN bits (> 0x7F800000) exceed them all, so one integer max also finds NaN."""
    m = np.uint32(0)
    for i in range(n):
        a = bbuf[i] & np.uint32(0x7FFFFFFF)
        m = a if a > m else m
    return m


@nb.njit(cache=True, nogil=True, inline="always")
def _fp8_scale_byte(mb):
    """The e8m0 scale byte of a group whose largest ``|x|`` has fp32 bits ``mb``."""
    sb = 127  # e = 0: amax 0, NaN, inf, or amax / 448 rounding to 0 (torch's frexp gives exponent 0 there)
    if np.uint32(0) < mb < np.uint32(0x7F800000):
        rb = f32_bits(bits_f32(mb) / E4M3_MAX)
        ex = np.int64(rb >> np.uint32(23))  # ratio = 1.m * 2**(ex - 127); e = ceil(log2(ratio))
        if ex > 0:
            sb = min(254, ex if (rb & np.uint32(0x7FFFFF)) == 0 else ex + 1)
        elif rb != 0:
            sb = 1  # a subnormal ratio: e <= -126, clamped
    return sb


@nb.njit(cache=True, nogil=True, inline="always")
def _fp8_group(bbuf, n, w_out, c0, s_out, g):
    """Quantise fp32 bits ``bbuf[:n]`` into codes ``w_out[c0:c0+n]`` and scale byte ``s_out[g]``."""
    sb = _fp8_scale_byte(_amax_bits(bbuf, n))
    inv = bits_f32(np.uint32((254 - sb) << 23))  # 2**-(sb - 127), exact (sb <= 254 keeps it normal)
    for i in range(n):
        v = bits_f32(bbuf[i]) * inv
        v = E4M3_MAX if v > E4M3_MAX else v  # NaN passes both
        v = -E4M3_MAX if v < -E4M3_MAX else v
        w_out[c0 + i] = e4m3_from_f32(v)
    s_out[g] = sb


@nb.njit(cache=True, nogil=True, inline="always")
def _int8_group(bbuf, n, w_out, c0, s_out, g):
    """Quantise fp32 bits ``bbuf[:n]`` into int8 codes (as uint8) and the fp32 scale ``s_out[g]``."""
    mb = _amax_bits(bbuf, n)
    scale = np.float32(1.0)
    if np.uint32(0) < mb <= np.uint32(0x7F800000):  # amax > 0 (inf included, NaN not)
        scale = bits_f32(mb) / np.float32(127.0)
    for i in range(n):
        v = np.rint(bits_f32(bbuf[i]) / scale)
        v = np.float32(127.0) if v > np.float32(127.0) else v
        v = np.float32(-127.0) if v < np.float32(-127.0) else v
        q = np.int32(v) if v == v else np.int32(0)  # NaN -> 0, as torch's cast
        w_out[c0 + i] = np.uint8(q & np.int32(0xFF))
    s_out[g] = scale


@nb.njit(cache=True, nogil=True, inline="always")
def _load_float(x, shift, r, c0, group, bbuf):
    xr = x[r]
    for i in range(group):
        bbuf[i] = np.uint32(xr[c0 + i]) << np.uint32(shift)


@nb.njit(cache=True, nogil=True, inline="always")
def _load_fp8(w, s, sidx, lut32, r, c0, group, bbuf):
    wr, sr = w[r], s[r]
    for i in range(group):
        c = c0 + i
        bbuf[i] = lut32[(np.int64(sr[sidx[c]]) << 8) | np.int64(wr[c])]


# Four kernels (source float bits or fp8 x e8m0) x (target fp8 or int8). Each takes the target's
# ``w_out [n, dim]`` uint8 and ``s_out [n, dim/group]`` (uint8 e8m0 bytes, or float32 int8
# scales); ``write_w`` False computes the scales only (``w_out`` may then be any [>=1, dim] buffer).
# Float sources: uint16 bf16 bits with ``shift`` 16, or uint32 fp32 bits with ``shift`` 0.
# fp8 sources: codes ``w``, e8m0 bytes ``s`` per ``sgroup`` columns, ``lut32`` the exact fp32 table.

@nb.njit(cache=True, nogil=True)
def float_to_fp8(x, shift, group, w_out, s_out, write_w):
    n, dim = x.shape
    buf = np.empty(group, np.uint32)
    for r in range(n):
        wr = w_out[r if write_w else 0]
        for g in range(dim // group):
            _load_float(x, shift, r, g * group, group, buf)
            _fp8_group(buf, group, wr, g * group, s_out[r], g)


@nb.njit(cache=True, nogil=True)
def float_to_int8(x, shift, group, w_out, s_out, write_w):
    n, dim = x.shape
    buf = np.empty(group, np.uint32)
    for r in range(n):
        wr = w_out[r if write_w else 0]
        for g in range(dim // group):
            _load_float(x, shift, r, g * group, group, buf)
            _int8_group(buf, group, wr, g * group, s_out[r], g)


@nb.njit(cache=True, nogil=True)
def fp8_to_fp8(w, s, sgroup, lut32, group, w_out, s_out, write_w):
    n, dim = w.shape
    buf = np.empty(group, np.uint32)
    sidx = np.arange(dim) // sgroup
    for r in range(n):
        wr = w_out[r if write_w else 0]
        for g in range(dim // group):
            _load_fp8(w, s, sidx, lut32, r, g * group, group, buf)
            _fp8_group(buf, group, wr, g * group, s_out[r], g)


@nb.njit(cache=True, nogil=True)
def fp8_to_int8(w, s, sgroup, lut32, group, w_out, s_out, write_w):
    n, dim = w.shape
    buf = np.empty(group, np.uint32)
    sidx = np.arange(dim) // sgroup
    for r in range(n):
        wr = w_out[r if write_w else 0]
        for g in range(dim // group):
            _load_fp8(w, s, sidx, lut32, r, g * group, group, buf)
            _int8_group(buf, group, wr, g * group, s_out[r], g)


@nb.njit(cache=True, nogil=True)
def decode_fp8(w, s, group, lut, out):
    """``out[r, c] = lut[s[r, c // group] << 8 | w[r, c]]`` (bf16 uint16 or fp32 uint32 bits);
    a partial last group (width not a multiple of ``group``) is handled."""
    n, cols = w.shape
    for r in range(n):
        for g in range(s.shape[1]):
            c0 = g * group
            c1 = min(cols, c0 + group)
            base = np.int64(s[r, g]) << 8
            for c in range(c0, c1):
                out[r, c] = lut[base | np.int64(w[r, c])]
    return out


@nb.njit(cache=True, nogil=True)
def decode_fp8_words(w64, s, words_per_group, lut, out):
    """The fast form of :func:`decode_fp8` for full groups of a multiple of 8 codes: codes are
    read 8 at a time as one little-endian uint64 (``w64``, the flat codes viewed as uint64),
    ``s`` flat (one scale byte per group), ``out`` flat. Eight scalar table loads per word and
    no vector gathers (slow on the AMD cores measured): 0.5 vs 1.45 ns per value."""
    for g in range(s.shape[0]):
        base = np.int64(s[g]) << 8
        for q in range(words_per_group):
            j = g * words_per_group + q
            v = w64[j]
            o = j * 8
            for b in range(8):
                out[o + b] = lut[base | np.int64((v >> np.uint64(8 * b)) & np.uint64(0xFF))]


# ---------------------------------------------------------------- bf16 sources: three phases
# bf16 rows are quantised in three passes over a row block: (1) the group maxima of the
# magnitude bits (a vectorised integer max), (2) each group's scale, (3) the codes. Splitting
# the passes keeps each loop free of the per-group branches that stopped the fused loop above
# from vectorising (4.7 ns per value on the 2-core AMD EPYC; 1.7 ns here), and lets a
# scales-only call stop after pass (2).
#
# fp8 codes from a lookup table: scaling by the power of two ``2**-e`` only moves the exponent
# field, so for a bf16 magnitude ``b`` (15 bits) the code is ``MAG[b - (e << 7) + MAG_OFF]``
# with the sign bit OR'ed in, where ``MAG[j]`` is the exact code (clamp to 448, c10 rounding)
# of the bf16 magnitude ``j - MAG_OFF`` and 0 below 0 (an exponent that underflows: the value
# is below 2**-126, so its code is 0 either way). Exact because ``x * 2**-e`` is exact whenever
# the result is a normal fp32; where it is not, both give 0. Zeros and bf16 subnormals under a
# scale-up (e < 0) land on exponents <= |e| <= 110, values below 2**-16, code 0, as the float
# path gives. Groups with ``e < -110`` (amax below ~1.7e-31) take the float path.
MAG_OFF = 127 << 7


@nb.njit(cache=True)
def _fp8_magnitude_table():
    t = np.empty(65536, np.uint8)
    for j in range(65536):
        b = j - MAG_OFF
        if b < 0:
            t[j] = 0
        elif b > 0x7FFF:
            t[j] = 0x7E
        else:
            v = bits_f32(np.uint32(b) << np.uint32(16))
            t[j] = e4m3_from_f32(E4M3_MAX if v > E4M3_MAX else v)
    return t


@nb.njit(cache=True, nogil=True)
def _bf16_group_max(x, group, mx):
    """Largest magnitude bits per group. The explicit uint16 cast keeps the loop in 16-bit lanes
    (numba widens integer arithmetic to 64 bits): 0.21 instead of 0.64 ns per value."""
    for g in range(mx.shape[0]):
        m = np.uint16(0)
        for i in range(group):
            v = np.uint16(x[g * group + i] & np.uint16(0x7FFF))
            m = v if v > m else m
        mx[g] = m


@nb.njit(cache=True, nogil=True)
def bf16_to_fp8(x, group, mag, w_out, s_out, write_w):
    """bf16 bits ``x`` (flat, a multiple of ``group``) -> fp8 codes ``w_out`` (flat) and e8m0
    bytes ``s_out`` (one per group); ``write_w`` False: scales only."""
    mx = np.empty(s_out.shape[0], np.uint16)
    _bf16_group_max(x, group, mx)
    buf = np.empty(group, np.uint32)
    for g in range(mx.shape[0]):
        mb = np.uint32(mx[g]) << np.uint32(16)
        sb = _fp8_scale_byte(mb)
        if not write_w:
            s_out[g] = sb
            continue
        base = g * group
        if sb < 17:  # e < -110: the float path (bf16 subnormals can scale into range)
            for i in range(group):
                buf[i] = np.uint32(x[base + i]) << np.uint32(16)
            _fp8_group(buf, group, w_out, base, s_out, g)
            continue
        off = MAG_OFF - ((sb - 127) << 7)
        for i in range(group):
            b = np.int64(x[base + i])
            w_out[base + i] = mag[(b & 0x7FFF) + off] | np.uint8((b >> 8) & 0x80)
        s_out[g] = sb


@nb.njit(cache=True, nogil=True)
def bf16_to_int8(x, group, w_out, s_out, write_w):
    """bf16 bits ``x`` (flat) -> int8 codes (as uint8) ``w_out`` and fp32 scales ``s_out``.
    Groups holding inf or NaN take the scalar path (their scale or quotient needs its rules)."""
    mx = np.empty(s_out.shape[0], np.uint16)
    _bf16_group_max(x, group, mx)
    buf = np.empty(group, np.uint32)
    scratch = np.empty(group, np.uint8)
    for g in range(mx.shape[0]):
        base = g * group
        if mx[g] >= np.uint16(0x7F80):
            for i in range(group):
                buf[i] = np.uint32(x[base + i]) << np.uint32(16)
            if write_w:
                _int8_group(buf, group, w_out, base, s_out, g)
            else:
                _int8_group(buf, group, scratch, 0, s_out, g)
            continue
        scale = np.float32(1.0)
        if mx[g] > np.uint16(0):
            scale = bits_f32(np.uint32(mx[g]) << np.uint32(16)) / np.float32(127.0)
        s_out[g] = scale
        if write_w:
            for i in range(group):
                v = np.rint(bits_f32(np.uint32(x[base + i]) << np.uint32(16)) / scale)
                v = min(max(v, np.float32(-127.0)), np.float32(127.0))
                w_out[base + i] = np.uint8(np.int32(v) & 0xFF)


# ---------------------------------------------------------------- entry points for codecs.py
_FLOAT_SOURCES = {"BF16": (np.uint16, 16), "F32": (np.uint32, 0)}
@functools.cache
def _mag_table() -> np.ndarray:
    """The 64 KiB fp8 magnitude table of :func:`bf16_to_fp8`, built once per process."""
    return _fp8_magnitude_table()


# The kernels release the GIL: a block is split by rows over KERNEL_THREADS threads (the shard
# writer thread runs beside them; on the 2-core machine the codec was the one busy core).
KERNEL_THREADS = max(1, min(4, int(os.environ.get("ENGRAM_CODEC_THREADS", "0") or 0) or (os.cpu_count() or 1)))
MIN_ROWS_PER_THREAD = 2048


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=KERNEL_THREADS - 1, thread_name_prefix="engram-codec")


def _by_rows(n: int, run: Callable[[int, int], None]) -> None:
    """``run(a, b)`` over row ranges covering ``[0, n)``, in parallel when the block is big enough."""
    k = min(KERNEL_THREADS, n // MIN_ROWS_PER_THREAD)
    if k <= 1:
        run(0, n)
        return
    cuts = [n * i // k for i in range(k + 1)]
    futures = [_pool().submit(run, cuts[i], cuts[i + 1]) for i in range(1, k)]
    run(cuts[0], cuts[1])
    for f in futures:
        f.result()


def decode(w: np.ndarray, s: np.ndarray, group: int, lut: np.ndarray, out: np.ndarray) -> np.ndarray:
    """fp8 codes ``w [n, C]`` x e8m0 bytes ``s [n, ceil(C/group)]`` -> ``out [n, C]`` output bits
    (``lut``: ``codecs.e4m3_e8m0_lut``, uint16 bf16 or uint32 fp32)."""
    w, s = np.ascontiguousarray(w), np.ascontiguousarray(s)
    n, cols = w.shape
    if (group % 8 == 0 and cols % group == 0 and s.shape[1] * group == cols and w.ctypes.data % 8 == 0
            and out.flags.c_contiguous and sys.byteorder == "little"):
        w64, sf, of, wpg, g_row = w.reshape(-1).view(np.uint64), s.reshape(-1), out.reshape(-1), group // 8, cols // group
        _by_rows(n, lambda a, b: decode_fp8_words(w64[a * g_row * wpg:b * g_row * wpg], sf[a * g_row:b * g_row], wpg, lut,
                                                  of[a * cols:b * cols]))
        return out
    return decode_fp8(w, s, int(group), lut, out)


def quantise(src, dst, dim: int, w: np.ndarray, s: np.ndarray | None, lut32: np.ndarray,
             out_w: np.ndarray | None = None, scales_only: bool = False) -> tuple[np.ndarray, np.ndarray] | None:
    """``src`` (bf16, fp32, or fp8-e4m3 x e8m0) rows -> ``dst`` (fp8-e4m3 + e8m0 bytes, or int8 +
    fp32 scales), as ``(weight uint8 [n, dim], scale uint8 [n, scale row bytes])``, or None when
    the kernels do not cover the pair. ``out_w``: uint8 ``[n, dim]`` for the weights;
    ``scales_only``: weights are not kept (the first element is then a scratch row)."""
    fp8 = dst.weight_dtype == "F8_E4M3" and dst.scale_dtype in ("F8_E8M0", "U8")
    int8 = dst.weight_dtype == "I8" and dst.scale_dtype == "F32"
    if not (fp8 or int8) or dst.pack != 1 or src.pack != 1 or dim % dst.group:
        return None
    n = w.shape[0]
    s_out = np.empty((n, dim // dst.group), np.uint8 if fp8 else np.float32)
    w_out = np.empty((1, dim), np.uint8) if scales_only else (np.empty((n, dim), np.uint8) if out_w is None else out_w)
    if src.scale_dtype is None and src.weight_dtype == "BF16" and w_out.flags.c_contiguous:
        x = np.ascontiguousarray(w).reshape(-1).view(np.uint16)
        wf = w_out.reshape(-1) if not scales_only else w_out
        sf = s_out.reshape(-1)
        g_row, mag, keep = dim // dst.group, _mag_table(), not scales_only

        def rows(a: int, b: int) -> None:
            wpart = wf[a * dim:b * dim] if keep else wf
            if fp8:
                bf16_to_fp8(x[a * dim:b * dim], dst.group, mag, wpart, sf[a * g_row:b * g_row], keep)
            else:
                bf16_to_int8(x[a * dim:b * dim], dst.group, wpart, sf[a * g_row:b * g_row], keep)

        _by_rows(n, rows)
    elif src.scale_dtype is None and src.weight_dtype in _FLOAT_SOURCES:
        dt, shift = _FLOAT_SOURCES[src.weight_dtype]
        x = np.ascontiguousarray(w).reshape(n, -1).view(dt)
        (float_to_fp8 if fp8 else float_to_int8)(x, shift, dst.group, w_out, s_out, not scales_only)
    elif src.weight_dtype == "F8_E4M3" and src.scale_dtype in ("F8_E8M0", "U8") and s is not None:
        args = (np.ascontiguousarray(w).reshape(n, dim), np.ascontiguousarray(s).reshape(n, -1), src.group, lut32)
        (fp8_to_fp8 if fp8 else fp8_to_int8)(*args, dst.group, w_out, s_out, not scales_only)
    else:
        return None
    return w_out, s_out.view(np.uint8).reshape(n, -1)
