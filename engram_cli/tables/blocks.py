"""The block side of a conversion: rows read from the source, converted, dequantised.

:func:`table_block` gives rows ``[a, b)`` of a table in the encoding an output tensor asks
for (reading into a caller's pooled buffer where it can); :func:`copy_ranges` tells when an
output tensor is a pure byte copy of source ranges; :func:`stream_tensor` feeds one output
tensor, block by block, into a writer (:class:`~engram_cli.tables.writer.Sink`). Used by the
executor and by verification alike; memory is bounded by the block size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from engram_cli.errors import VerificationError
from engram_cli.tables.codecs import convert, convert_scales, decode
from engram_cli.tables.plan import OutTensor, TableSlice, TensorBytes, TensorCast, TensorCopy, TileDequant
from engram_cli.tables.rows import RowReader, block_rows_for, iter_blocks
from engram_cli.tables.tiles import tile_dequant

if TYPE_CHECKING:  # pragma: no cover
    from engram_cli.tables.source_info import Source
    from engram_cli.tables.writer import Sink


def table_block(reader: RowReader, t, sl: TableSlice, a: int, b: int, out: np.ndarray | None = None) -> np.ndarray:
    """Rows ``[a, b)`` of table ``t`` encoded as ``sl`` asks, as ``uint8 [n, row_bytes]``.

    With ``out`` (a uint8 buffer of at least the block's bytes, e.g. a pooled one) the result
    is always placed in it; source rows that feed a conversion go to the reader's scratch
    buffers, so a block allocates nothing but what a codec needs internally."""
    if out is None:
        return _table_block(reader, t, sl, a, b, None)
    res = _table_block(reader, t, sl, a, b, out)
    if not np.may_share_memory(res, out):
        if res.nbytes > out.nbytes:
            raise VerificationError(f"layer {t.layer_id}: block of {res.nbytes} bytes exceeds its buffer")
        dst = out[: res.nbytes].reshape(res.shape)
        dst[:] = res
        res = dst
    return res


def _table_block(reader: RowReader, t, sl: TableSlice, a: int, b: int, out: np.ndarray | None) -> np.ndarray:
    same = sl.encoding == t.encoding
    part = sl.part
    n = b - a
    pooled = out is not None

    def w_in():  # source rows that feed a codec: the reader's scratch when the result has a buffer of its own
        return reader.weight(t, a, b, reader.scratch("w", n * t.weight_row_bytes) if pooled else None)

    def s_in():
        if not t.scale:
            return None
        return reader.scale(t, a, b, reader.scratch("s", n * t.scale_row_bytes) if pooled else None)

    if part == "q8_0":
        from engram_cli.tables.gguf_io import quantize_q8_0

        x = decode(t.encoding, t.dim, w_in(), s_in(), "F32")
        return quantize_q8_0(x.numpy())
    if same:
        if part == "weight":
            return reader.weight(t, a, b, out)
        if part == "scale":
            return reader.scale(t, a, b, out)
        if not t.scale:
            return reader.weight(t, a, b, out)
        if out is None:
            return np.concatenate([reader.weight(t, a, b), reader.scale(t, a, b)], axis=1)
        wrb, srb = t.weight_row_bytes, t.scale_row_bytes
        o = out[: n * (wrb + srb)].reshape(n, wrb + srb)
        reader.weight(t, a, b, o[:, :wrb])
        reader.scale(t, a, b, o[:, wrb:])
        return o
    if part == "scale":  # the scale tensor of a converted table: scales only, weights not re-quantised
        return convert_scales(t.encoding, sl.encoding, t.dim, w_in(), s_in())
    w, s = convert(t.encoding, sl.encoding, t.dim, w_in(), s_in(), out if part == "weight" else None)
    if part == "weight":
        return w
    if s is None:
        return w
    if out is None:
        return np.concatenate([w, s], axis=1)
    o = out[: n * (w.shape[1] + s.shape[1])].reshape(n, w.shape[1] + s.shape[1])
    np.concatenate([w, s], axis=1, out=o)
    return o


def copy_ranges(reader: RowReader, t, sl: TableSlice) -> list[tuple[str, int, int]] | None:
    """The source byte ranges an output table tensor consists of when it is a pure byte copy
    (same encoding, a weight or scale part, or rows of a table without scales, stored
    contiguously), else None."""
    if sl.encoding != t.encoding:
        return None
    if sl.part == "weight" or (sl.part == "rows" and not t.scale):
        segs, rb = t.weight, t.weight_row_bytes
    elif sl.part == "scale" and t.scale:
        segs, rb = t.scale, t.scale_row_bytes
    else:
        return None
    out: list[tuple[str, int, int]] = []
    for p in sl.pieces:
        r = reader.byte_ranges(segs, p.start, p.stop, rb)
        if r is None:
            return None
        for path, off, n in r:
            if out and out[-1][0] == path and out[-1][1] + out[-1][2] == off:
                out[-1] = (path, out[-1][1], out[-1][2] + n)
            else:
                out.append((path, off, n))
    return out


def stream_tensor(sink: Sink, reader: RowReader, tables: dict, source: Source, ot: OutTensor, block_bytes: int) -> None:
    src = ot.source
    if isinstance(src, TensorCopy):
        e = source.checkpoint.entry(src.name)
        sink.copy(reader.fd(str(source.checkpoint.file_of(src.name))), e.offset, e.nbytes)
        return
    if isinstance(src, TensorBytes):
        sink.put(src.data)
        return
    if isinstance(src, TileDequant):
        for lease, nbytes in tile_dequant(reader, source, src, block_bytes, sink.lease):
            sink.put_lease(lease, nbytes)
        return
    if isinstance(src, TensorCast):
        from engram_cli.tables.gguf_io import cast_blocks

        for blk in cast_blocks(reader, source, src, block_bytes):
            sink.put(blk)
        return
    t = tables[src.layer]
    ranges = copy_ranges(reader, t, src)
    if ranges is not None:
        for path, off, n in ranges:
            sink.copy(reader.fd(path), off, n)
    else:
        rb = block_rows_for(max(ot.row_bytes, t.row_bytes * (1 if src.encoding == t.encoding else 4)), block_bytes)
        for p in src.pieces:
            for a, b in iter_blocks(p.start, p.stop, rb):
                nbytes = (b - a) * ot.row_bytes
                lease = sink.lease(nbytes)
                try:
                    blk = table_block(reader, t, src, a, b, lease.array)
                    if blk.nbytes != nbytes:
                        raise VerificationError(f"layer {t.layer_id}: rows {a}..{b} gave {blk.nbytes} bytes, planned {nbytes}")
                except BaseException:
                    lease.release()
                    raise
                sink.put_lease(lease, nbytes)
    if src.pad_rows:
        sink.zeros(src.pad_rows * ot.row_bytes, block_bytes)
