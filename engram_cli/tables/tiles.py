"""Projections stored as fp8-e4m3 with ``tile x tile`` e8m0 block scales (DeepSeek
``engram.wkv``), read and dequantised whole tile rows at a time (memory bounded by the block
size). Used by the block module, verification and the GGUF writer alike."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from engram_cli.tables.codecs import dequant_tiles
from engram_cli.tables.plan import TileDequant
from engram_cli.tables.rows import RowReader, block_rows_for, iter_blocks

if TYPE_CHECKING:  # pragma: no cover
    from engram_cli.tables.source_info import Source


def tile_dequant(reader: RowReader, source: Source, td: TileDequant, block_bytes: int, lease_fn=None):
    """Dequantised rows of a tile-scaled fp8 tensor, whole tile rows per block: ``(lease,
    nbytes)`` pairs with ``lease_fn``, else ``(uint8 array, None)``."""
    ck = source.checkpoint
    e, se = ck.entry(td.weight), ck.entry(td.scale)
    rows, cols = e.shape
    out_size = 2 if td.dtype == "BF16" else 4
    step = max(td.tile, block_rows_for(cols * (1 + out_size) * 2, block_bytes) // td.tile * td.tile)
    wpath, spath = str(ck.file_of(td.weight)), str(ck.file_of(td.scale))
    srow = se.shape[1]
    for a, b in iter_blocks(0, rows, step):
        n = (b - a) * cols
        w = np.frombuffer(reader.read_bytes(wpath, e.offset + a * cols, n, memoryview(reader.scratch("tw", n))),
                          np.uint8).reshape(b - a, cols)
        t0, t1 = a // td.tile, -(-b // td.tile)
        ns = (t1 - t0) * srow
        s = np.frombuffer(reader.read_bytes(spath, se.offset + t0 * srow, ns, memoryview(reader.scratch("ts", ns))),
                          np.uint8).reshape(t1 - t0, srow)
        if lease_fn is None:
            yield dequant_tiles(w, s, a, td.tile, td.dtype).view(np.uint8), None
            continue
        lease = lease_fn(n * out_size)
        try:
            dequant_tiles(w, s, a, td.tile, td.dtype, lease.array)
        except BaseException:
            lease.release()
            raise
        yield lease, n * out_size


def tile_dequant_blocks(reader: RowReader, source: Source, td: TileDequant, block_bytes: int):
    """Dequantised rows of a tile-scaled fp8 tensor, whole tile rows per block (uint8 views)."""
    for blk, _ in tile_dequant(reader, source, td, block_bytes):
        yield blk
