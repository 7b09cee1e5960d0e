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
  ``|err| <= amax/254`` per group.
- fp32 -> bf16: round to nearest even, relative error ``<= 2**-8``.
"""

from __future__ import annotations

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
    if src.weight_dtype == "F8_E4M3" and src.scale_dtype is None:
        raise UsageError(f"{what}: fp8 without per-row-group scales cannot be converted; use --dtype keep")
    if src.scale_dtype is not None and src.weight_dtype not in ("F8_E4M3", "I8"):
        raise UsageError(f"{what}: unsupported source encoding {src.name}")


def _torch():
    import torch

    return torch


def _tdtype(st: str):
    torch = _torch()
    return {
        "BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32,
        "F8_E4M3": torch.float8_e4m3fn, "I8": torch.int8, "U8": torch.uint8,
    }[st]


def decode(src: Encoding, dim: int, w: np.ndarray, s: np.ndarray | None, out_dtype: str = "F32"):
    """uint8 blocks -> float tensor ``[n, dim]`` in ``out_dtype`` (BF16 or F32)."""
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


def encode(x, dst: Encoding, dim: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Float tensor ``[n, dim]`` -> (weight uint8 ``[n, wbytes]``, scale uint8 ``[n, sbytes]`` or None)."""
    torch = _torch()
    n = x.shape[0]
    if dst.scale_dtype is None:
        w = x.to(_tdtype(dst.weight_dtype)).contiguous()
        return w.view(torch.uint8).numpy().reshape(n, -1), None
    g = dst.group
    xf = x.to(torch.float32).reshape(n, dim // g, g)
    amax = xf.abs().amax(dim=2)
    if dst.weight_dtype == "F8_E4M3":
        ratio = amax / 448.0
        mant, exp = torch.frexp(ratio)  # ratio = mant * 2**exp, mant in [0.5, 1)
        e = torch.where(mant == 0.5, exp - 1, exp).to(torch.int32)
        e = torch.where(amax > 0, e, torch.zeros_like(e))
        sbyte = (e + 127).clamp(1, 254)
        e = sbyte - 127
        inv = ((127 - e) << 23).view(torch.float32)  # 2**-e, exact
        q = (xf * inv.unsqueeze(2)).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
        w = q.reshape(n, dim).view(torch.uint8).numpy()
        return w, sbyte.to(torch.uint8).numpy()
    if dst.weight_dtype == "I8":
        scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
        q = torch.round(xf / scale.unsqueeze(2)).clamp(-127, 127).to(torch.int8)
        w = q.reshape(n, dim).view(torch.uint8).numpy()
        return w, scale.contiguous().view(torch.uint8).numpy().reshape(n, -1)
    raise UsageError(f"cannot encode to {dst.name}")


def convert(src: Encoding, dst: Encoding, dim: int, w: np.ndarray, s: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Convert one row block. Same encoding: the bytes pass through unchanged."""
    if src == dst:
        return w, s
    if src.weight_dtype == "F8_E4M3" and src.scale_dtype in ("F8_E8M0", "U8") and dst.weight_dtype == "F8_E4M3" \
            and dst.scale_dtype in ("F8_E8M0", "U8") and src.group == dst.group:
        return w, s  # U8 <-> F8_E8M0 scales: same bytes
    mid = "BF16" if dst.weight_dtype == "BF16" and src.weight_dtype in ("F8_E4M3", "BF16") else "F32"
    return encode(decode(src, dim, w, s, mid), dst, dim)
