"""Block codecs between table encodings (fp8-e4m3 + e8m0 row-group scales, int8 group-32,
bf16, fp16, fp32), applied to one bounded row block at a time.

Semantics and error bounds (``docs/shard.md`` repeats them):

- e8m0 scale byte ``s`` means ``2**(s-127)``; ``s == 0`` decodes to 0.0 and ``s == 255`` to
  NaN (vLLM's bit-shift semantics). Scale index of column ``c`` is ``c // 32`` (row groups,
  never 32x32 tiles).
- fp8-e4m3 x e8m0 -> bf16/fp32: **exact** (every such product is a bf16 number unless it
  leaves bf16's range). Computed directly in bf16 for bf16 targets, never via a full fp32 table.
- float -> fp8-e4m3 + e8m0: per 32-column group ``e = ceil(log2(amax/448))``, scale byte
  ``e+127`` (clamped to 1..254), ``q = rne(x / 2**e)``: ``|err| <= 2**-4 * |x|`` for normal
  codes and ``<= 2**(e-10)`` in the subnormal range. Re-encoding a decoded fp8 table gives the
  same values (possibly a smaller-exponent scale when a group's largest code is below 224).
- float -> int8 group-32: ``scale = amax/127`` (fp32), ``q = round(x/scale)``:
  ``|err| <= amax/254`` per group (plus fp32 rounding, ``<= 2**-23 * amax``).
- fp32 -> bf16: round to nearest even, relative error ``<= 2**-8``.

Speed: fp8-e4m3 x e8m0 -> bf16/fp32 goes through a 65536-entry table indexed by
``(scale_byte << 8) | code`` that holds the exact output bits (:func:`e4m3_e8m0_lut`), applied
with numpy over cache-sized row chunks; it is bit-identical to the torch reference
(:func:`decode_reference`) for all 256 x 256 (code, scale) pairs, NaN codes, scale bytes 0 and
255, subnormal results and negative zero included (tested). Other directions run the torch
codec over cache-sized row chunks with one intra-op thread (:func:`codec_threads`): on a
shared machine, OpenMP workers waiting for a busy core cost more than they gain.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from typing import Iterator

import numpy as np

from engram_cli.errors import UsageError
from engram_cli.tables.model import Encoding

DTYPE_CHOICES = ("keep", "bf16", "fp32", "fp8-e4m3", "int8")


def target_encoding(src: Encoding, dtype: str) -> Encoding:
    """The encoding a ``--dtype`` choice produces from ``src``."""
    if dtype in ("keep", None, ""):
        return src
    table = {
        "bf16": Encoding("BF16"),
        "fp16": Encoding("F16"),
        "fp32": Encoding("F32"),
        "fp8-e4m3": Encoding("F8_E4M3", src.scale_dtype if src.weight_dtype == "F8_E4M3" and src.scale_dtype in ("F8_E8M0", "U8") else "F8_E8M0", 32),
        "int8": Encoding("I8", "F32", 32),
    }
    if dtype not in table:
        raise UsageError(f"unknown --dtype {dtype!r}", hint="choose one of " + ", ".join(DTYPE_CHOICES))
    return table[dtype]


def check_convertible(src: Encoding, dst: Encoding, what: str = "table") -> None:
    if src == dst:
        return
    if src.pack != 1:
        raise UsageError(f"{what}: {src.name} tables are re-partitioned as stored, not converted", hint="use --dtype keep")
    if src.weight_dtype == "F8_E4M3" and src.scale_dtype is None:
        raise UsageError(f"{what}: fp8 without per-row-group scales cannot be converted; use --dtype keep")
    if src.scale_dtype is not None and src.weight_dtype not in ("F8_E4M3", "I8"):
        raise UsageError(f"{what}: unsupported source encoding {src.name}")


# ---------------------------------------------------------------- torch, one intra-op thread
_LOCAL = threading.local()  # .threads: the intra-op thread count asked by codec_threads in this thread


def _torch():
    import torch

    want = getattr(_LOCAL, "threads", None)
    if want is not None and torch.get_num_threads() != want:
        torch.set_num_threads(want)
    return torch


@contextlib.contextmanager
def codec_threads(n: int = 1) -> Iterator[None]:
    """Run torch codecs with ``n`` intra-op threads inside the block (restored afterwards).

    Blocks are converted in cache-sized chunks; on a machine whose cores are shared, OpenMP
    workers spinning for a descheduled peer made chunked torch ops 10-100x slower.
    """
    import sys

    prev_flag = getattr(_LOCAL, "threads", None)
    torch = sys.modules.get("torch")
    prev = torch.get_num_threads() if torch is not None else None
    _LOCAL.threads = n
    try:
        yield
    finally:
        _LOCAL.threads = prev_flag
        torch = sys.modules.get("torch")
        if torch is not None:
            want = prev if prev is not None else (prev_flag or torch.get_num_threads())
            if prev is not None and torch.get_num_threads() != want:
                torch.set_num_threads(want)


def _tdtype(st: str):
    torch = _torch()
    return {
        "BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32,
        "F8_E4M3": torch.float8_e4m3fn, "I8": torch.int8, "U8": torch.uint8,
    }[st]


# ---------------------------------------------------------------- fp8-e4m3 x e8m0 lookup tables
CHUNK_ELEMS = 1 << 18  # elements per codec chunk: index, table and output stay in L2
KERNEL_MIN_ELEMS = 1 << 22  # smaller decodes keep the numpy table path unless the kernels are loaded already


def _compiled(elems: int | None = None):
    """The compiled kernels (:mod:`engram_cli.tables.codec_kernels`), or None: numba missing,
    ``ENGRAM_NO_NUMBA=1``, or a decode under ``KERNEL_MIN_ELEMS`` elements while numba is not
    loaded yet (its import and cache load cost more than the numpy path there)."""
    import sys

    from engram_cli.compiled import numba_enabled

    if not numba_enabled():
        return None
    if elems is not None and elems < KERNEL_MIN_ELEMS and "engram_cli.tables.codec_kernels" not in sys.modules:
        return None
    from engram_cli.tables import codec_kernels

    return codec_kernels


def is_fp8_e8m0(enc: Encoding) -> bool:
    return enc.weight_dtype == "F8_E4M3" and enc.scale_dtype in ("F8_E8M0", "U8") and enc.pack == 1


def e4m3_values() -> np.ndarray:
    """The 256 fp8-e4m3fn code values as float64 (NaN for ``(c & 127) == 127``, -0.0 for 0x80)."""
    c = np.arange(256)
    e, m = (c >> 3) & 15, c & 7
    mag = np.where(e == 0, m * 2.0**-9, np.ldexp(1.0 + m / 8.0, e - 7))
    v = np.where(c & 128, -mag, mag)
    v[(c & 127) == 127] = np.nan
    return v


@functools.cache
def e4m3_e8m0_lut(out_dtype: str) -> np.ndarray:
    """Exact output bits of ``e4m3(code) * e8m0(scale)`` for index ``(scale << 8) | code``.

    ``F32``: uint32, the IEEE product (exact; +-inf past fp32, subnormal results kept); e4m3 NaN
    codes give torch's widened NaN ``0x7FF00000 | sign``, scale byte 255 ``0x7FC00000`` (for every
    code), scale
    byte 0 a zero with the code's sign. ``BF16``: uint16, the fp32 product rounded to nearest
    even (only subnormal bf16 results round), every NaN as ``0xFFFF`` (torch's vectorised
    fp32 -> bf16 cast; its scalar kernel, which it picks for some other shapes, writes 0x7FC0).
    Both are what :func:`decode_reference` computes at the table layout, for all 65536 pairs.
    """
    c = np.arange(256)
    val = e4m3_values()
    scale = np.ldexp(1.0, np.arange(256) - 127)
    scale[0], scale[255] = 0.0, np.nan
    with np.errstate(over="ignore", invalid="ignore"):
        f32 = (scale[:, None] * val[None, :]).astype(np.float32)  # [scale, code]; exact in float64
    bits = f32.view(np.uint32).copy()
    nan_code = (c & 127) == 127
    if out_dtype == "F32":
        bits[:, nan_code] = np.uint32(0x7FF00000) | (c[nan_code].astype(np.uint32) >> 7 << 31)
        bits[255, :] = 0x7FC00000  # a NaN scale wins, also over a NaN code
        return bits.reshape(-1)
    if out_dtype != "BF16":
        raise ValueError(out_dtype)
    b = bits.astype(np.uint64)
    out = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)
    out[np.isnan(f32)] = 0xFFFF
    return out.reshape(-1)


def _out_view(out: np.ndarray | None, shape: tuple[int, ...], dtype) -> np.ndarray | None:
    """``out`` (a uint8 buffer of at least the needed bytes, e.g. a pooled block) viewed as ``shape``."""
    if out is None:
        return None
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return out.reshape(-1)[:nbytes].view(dtype).reshape(shape)


def lut_decode(w: np.ndarray, s: np.ndarray, group: int, out_dtype: str, out: np.ndarray | None = None) -> np.ndarray:
    """fp8-e4m3 bytes ``w [n, C]`` with e8m0 bytes ``s [n, ceil(C/group)]`` (one per ``group``
    columns of a row) -> output bits ``[n, C]`` (uint16 bf16 or uint32 fp32), chunk by chunk,
    into ``out`` (a contiguous uint8 buffer of at least that many bytes) when given."""
    lut = e4m3_e8m0_lut(out_dtype)
    n, cols = w.shape
    g = s.shape[1]
    out = _out_view(out, (n, cols), lut.dtype) if out is not None else np.empty((n, cols), lut.dtype)
    if n == 0:
        return out
    if (fast := _compiled(w.size)) is not None:
        return fast.decode(w, s, group, lut, out)
    ch = max(1, min(n, CHUNK_ELEMS // max(1, cols)))
    idx = np.empty((ch, cols), np.uint16)
    hi = np.empty((ch, g), np.uint16)
    even = cols == g * group
    for a in range(0, n, ch):
        b = min(n, a + ch)
        k = b - a
        np.left_shift(s[a:b], 8, out=hi[:k], dtype=np.uint16)
        if even:
            np.bitwise_or(w[a:b].reshape(k, g, group), hi[:k, :, None], out=idx[:k].reshape(k, g, group))
        else:  # a partial last group (32x32 tiles of a matrix whose width is not a multiple of 32)
            np.bitwise_or(w[a:b], np.repeat(hi[:k], group, axis=1)[:, :cols], out=idx[:k])
        np.take(lut, idx[:k], out=out[a:b], mode="clip")
    return out


def dequant_tiles(w: np.ndarray, s_tiles: np.ndarray, row0: int, tile: int = 32, out_dtype: str = "BF16",
                  out: np.ndarray | None = None) -> np.ndarray:
    """Rows ``[row0, row0 + n)`` of an fp8-e4m3 matrix with ``tile x tile`` e8m0 block scales
    (``s_tiles`` holds tile rows ``row0 // tile ..``) -> bf16/fp32 bits ``[n, C]``.

    Element ``(r, c)`` uses scale ``[r // tile, c // tile]`` (DeepSeek ``wkv.scale``), with the
    same per-element semantics as the table codec (exact; byte 0 -> 0, 255 -> NaN).
    """
    n = w.shape[0]
    rows = (np.arange(row0, row0 + n) // tile) - row0 // tile
    return lut_decode(w, s_tiles[rows], tile, out_dtype, out)


# ---------------------------------------------------------------- decode / encode
def decode(src: Encoding, dim: int, w: np.ndarray, s: np.ndarray | None, out_dtype: str = "F32"):
    """uint8 blocks -> float tensor ``[n, dim]`` in ``out_dtype`` (BF16 or F32)."""
    if s is not None and is_fp8_e8m0(src) and out_dtype in ("BF16", "F32"):
        torch = _torch()
        n = w.shape[0]
        bits = lut_decode(w.reshape(n, dim), s.reshape(n, -1), src.group, out_dtype)
        return torch.from_numpy(bits.view(np.int16 if out_dtype == "BF16" else np.int32)).view(_tdtype(out_dtype))
    return decode_reference(src, dim, w, s, out_dtype)


def decode_reference(src: Encoding, dim: int, w: np.ndarray, s: np.ndarray | None, out_dtype: str = "F32"):
    """The straightforward torch codec (the ground truth the lookup tables are tested against)."""
    torch = _torch()
    n = w.shape[0]
    tw = torch.from_numpy(w).view(_tdtype(src.weight_dtype)).reshape(n, dim)
    odt = _tdtype(out_dtype)
    if src.scale_dtype is None:
        return tw.to(odt)
    g = src.group
    ts = torch.from_numpy(s)
    if src.scale_dtype in ("F8_E8M0", "U8"):
        if out_dtype == "BF16":
            bits = ts.to(torch.int16) << 7
            bits = torch.where(ts == 255, torch.tensor(0x7FC0, dtype=torch.int16), bits)
            scale = bits.view(torch.bfloat16)
        else:
            bits = ts.to(torch.int32) << 23
            bits = torch.where(ts == 255, torch.tensor(0x7FC00000, dtype=torch.int32), bits)
            scale = bits.view(torch.float32)
            odt = torch.float32
        x = tw.to(odt).reshape(n, dim // g, g) * scale.reshape(n, dim // g, 1)
        return x.reshape(n, dim).to(_tdtype(out_dtype))
    # int8 with fp32 group scales
    scale = ts.view(torch.float32).reshape(n, dim // g, 1)
    x = tw.to(torch.float32).reshape(n, dim // g, g) * scale
    return x.reshape(n, dim).to(_tdtype(out_dtype))


def _group_scales(xf, dst: Encoding):
    """Per-group scales of ``xf [n, groups, group]`` (fp32): (e8m0 bytes int32, or int8 fp32 scales)."""
    torch = _torch()
    amax = xf.abs().amax(dim=2)
    if dst.weight_dtype == "F8_E4M3":
        ratio = amax / 448.0
        mant, exp = torch.frexp(ratio)  # ratio = mant * 2**exp, mant in [0.5, 1)
        e = torch.where(mant == 0.5, exp - 1, exp).to(torch.int32)
        e = torch.where(amax > 0, e, torch.zeros_like(e))
        return (e + 127).clamp(1, 254)
    return torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))


def encode(x, dst: Encoding, dim: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Float tensor ``[n, dim]`` -> (weight uint8 ``[n, wbytes]``, scale uint8 ``[n, sbytes]`` or None)."""
    torch = _torch()
    n = x.shape[0]
    if dst.scale_dtype is None:
        w = x.to(_tdtype(dst.weight_dtype)).contiguous()
        return w.view(torch.uint8).numpy().reshape(n, -1), None
    g = dst.group
    xf = x.to(torch.float32).reshape(n, dim // g, g)
    if dst.weight_dtype == "F8_E4M3":
        sbyte = _group_scales(xf, dst)
        e = sbyte - 127
        inv = ((127 - e) << 23).view(torch.float32)  # 2**-e, exact
        q = (xf * inv.unsqueeze(2)).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
        w = q.reshape(n, dim).view(torch.uint8).numpy()
        return w, sbyte.to(torch.uint8).numpy()
    if dst.weight_dtype == "I8":
        scale = _group_scales(xf, dst)
        q = torch.round(xf / scale.unsqueeze(2)).clamp(-127, 127).to(torch.int8)
        w = q.reshape(n, dim).view(torch.uint8).numpy()
        return w, scale.contiguous().view(torch.uint8).numpy().reshape(n, -1)
    raise UsageError(f"cannot encode to {dst.name}")


def _mid(src: Encoding, dst: Encoding) -> str:
    return "BF16" if dst.weight_dtype == "BF16" and src.weight_dtype in ("F8_E4M3", "BF16") else "F32"


def _passthrough(src: Encoding, dst: Encoding) -> bool:
    return src == dst or (is_fp8_e8m0(src) and is_fp8_e8m0(dst) and src.group == dst.group)  # U8 <-> F8_E8M0: same bytes


def _chunks(n: int, dim: int):
    ch = max(1, CHUNK_ELEMS // max(1, dim))
    for a in range(0, n, ch):
        yield a, min(n, a + ch)


def convert(src: Encoding, dst: Encoding, dim: int, w: np.ndarray, s: np.ndarray | None,
            out_w: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Convert one row block. Same encoding: the bytes pass through unchanged.

    fp8 x e8m0 -> bf16/fp32 uses the lookup tables (numpy only); every other direction runs
    the torch codec over cache-sized row chunks into preallocated outputs. ``out_w`` (a
    contiguous uint8 buffer of at least ``n * weight_row_bytes`` bytes, e.g. a pooled block)
    receives the converted weights where the path allows (not for a pass-through).
    """
    if _passthrough(src, dst):
        return w, s
    n = w.shape[0]
    if s is not None and is_fp8_e8m0(src) and dst.scale_dtype is None and dst.weight_dtype in ("BF16", "F32"):
        bits = lut_decode(w.reshape(n, dim), s.reshape(n, -1), src.group, dst.weight_dtype, out_w)
        return bits.view(np.uint8).reshape(n, -1), None
    if (fast := _compiled()) is not None:
        wv = _out_view(out_w, (n, dst.weight_row_bytes(dim)), np.uint8)
        if (done := fast.quantise(src, dst, dim, w, s, e4m3_e8m0_lut("F32"), wv)) is not None:
            return done
    mid = _mid(src, dst)
    ch = max(1, CHUNK_ELEMS // max(1, dim))
    if n <= ch and out_w is None:
        return encode(decode(src, dim, w, s, mid), dst, dim)
    wo = _out_view(out_w, (n, dst.weight_row_bytes(dim)), np.uint8) if out_w is not None else \
        np.empty((n, dst.weight_row_bytes(dim)), np.uint8)
    so = np.empty((n, dst.scale_row_bytes(dim)), np.uint8) if dst.scale_dtype else None
    for a, b in _chunks(n, dim):
        ww, ss = encode(decode(src, dim, w[a:b], s[a:b] if s is not None else None, mid), dst, dim)
        wo[a:b] = ww
        if so is not None:
            so[a:b] = ss
    return wo, so


def convert_scales(src: Encoding, dst: Encoding, dim: int, w: np.ndarray, s: np.ndarray | None) -> np.ndarray:
    """Only the scale bytes :func:`convert` would give (same arithmetic, no quantised weights)."""
    if _passthrough(src, dst):
        return s
    if dst.scale_dtype is None:
        raise UsageError(f"{dst.name} has no scales")
    if (fast := _compiled()) is not None:
        if (done := fast.quantise(src, dst, dim, w, s, e4m3_e8m0_lut("F32"), scales_only=True)) is not None:
            return done[1]
    torch = _torch()
    n = w.shape[0]
    mid = _mid(src, dst)
    g = dst.group
    so = np.empty((n, dst.scale_row_bytes(dim)), np.uint8)
    for a, b in _chunks(n, dim):
        xf = decode(src, dim, w[a:b], s[a:b] if s is not None else None, mid).to(torch.float32).reshape(b - a, dim // g, g)
        sc = _group_scales(xf, dst)
        so[a:b] = (sc.to(torch.uint8) if dst.weight_dtype == "F8_E4M3" else sc.contiguous()).numpy().view(np.uint8).reshape(b - a, -1)
    return so
