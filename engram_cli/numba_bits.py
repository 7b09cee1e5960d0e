"""Bit reinterpretation inside numba kernels (LLVM ``bitcast``; no memory round trip).

This module imports numba: import it only from kernel modules, after
:func:`engram_cli.compiled.prepare_numba`.
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic


@intrinsic
def f32_bits(typingctx, x):
    """float32 -> its uint32 bit pattern."""

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(types.float32), codegen


@intrinsic
def bits_f32(typingctx, b):
    """uint32 bit pattern -> float32."""

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.uint32), codegen


@intrinsic
def f64_bits(typingctx, x):
    """float64 -> its int64 bit pattern."""

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen
