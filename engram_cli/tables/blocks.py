"""The block side of a conversion: rows read from the source, converted, dequantised.

:func:`table_block` gives rows ``[a, b)`` of a table in the encoding an output tensor asks
for (reading into a caller's pooled buffer where it can); :func:`copy_ranges` tells when an
output tensor is a pure byte copy of source ranges; :func:`stream_tensor` feeds one output
tensor, block by block, into a writer (:class:`~engram_cli.tables.writer.Sink`), keeping the
scales a quantisation computed beside the weights for the scale tensor that follows them
(:class:`ScaleMemo`). Used by the executor and by verification alike; memory is bounded by
the block size.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from engram_cli.errors import VerificationError
from engram_cli.tables.codecs import convert, convert_scales, decode
from engram_cli.tables.plan import OutTensor, TableSlice, TensorBytes, TensorCast, TensorCopy, TileDequant
from engram_cli.tables.rows import RowReader, block_rows_for, iter_blocks
from engram_cli.tables.tiles import tile_dequant

if TYPE_CHECKING:  # pragma: no cover
    from engram_cli.tables.source_info import Source
    from engram_cli.tables.writer import Sink


class ScaleMemo:
    """The scale rows a conversion computes beside the weights, kept for the scale tensor of
    the same rows, later in the same file or in a later file of the same run.

    A quantised table is written as its weight tensor, then its scale tensor. Without the memo
    the scale tensor reads the whole source a second time (from disk, for a table larger than
    the page cache) and recomputes every group's scale; with it, the scales come from the
    weight pass (the same codec call, so the same bytes), parked in a spill file in the
    staging folder (1/64 of a bf16 source for fp8 scales, 1/16 for int8's fp32 scales) and
    read back through the writer's pooled buffers: memory stays as it was. One table slice at
    a time."""

    READ_BYTES = 4 * 2**20  # read back in slices of this size

    def __init__(self, wanted: set, spill: Path) -> None:
        self.wanted = wanted  # keys of the scale tensors the plan holds
        self.spill = spill
        self._fd: int | None = None
        self._key: tuple | None = None  # the slice whose scales are complete in the spill file
        self._nbytes = 0

    @staticmethod
    def key_of(sl: TableSlice) -> tuple:
        return (sl.layer, sl.encoding, sl.pieces, sl.heads)

    def start(self, sl: TableSlice) -> bool:
        """Keep the scales of weight slice ``sl`` if a scale tensor of the same rows is planned."""
        if self.key_of(sl) not in self.wanted:
            return False
        self.close()
        self._fd = os.open(self.spill, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self._key, self._nbytes = None, 0
        return True

    def put(self, s: np.ndarray) -> None:
        """Append the next block's scale rows (uint8 ``[n, scale row bytes]``)."""
        data = memoryview(np.ascontiguousarray(s)).cast("B")
        done = 0
        while done < data.nbytes:
            done += os.pwrite(self._fd, data[done:], self._nbytes + done)
        self._nbytes += data.nbytes

    def finish(self, sl: TableSlice) -> None:
        """The weight pass of ``sl`` completed: its scales are whole."""
        self._key = self.key_of(sl)

    def take(self, sl: TableSlice, nbytes: int) -> bool:
        """Whether the scale rows of scale slice ``sl`` (``nbytes`` of them) were kept; then
        :meth:`read` gives them back and :meth:`close` drops them."""
        if self._key != self.key_of(sl):
            return False
        if self._nbytes != nbytes:
            raise VerificationError(f"layer {sl.layer}: kept scales of {self._nbytes} bytes, planned {nbytes}")
        self._key = None
        return True

    def read(self, out: np.ndarray, offset: int) -> None:
        """Fill uint8 ``out`` with the kept bytes at ``offset``."""
        from engram_cli.tables.writer import pread_exact  # here: verification imports blocks, never the writer

        pread_exact(self._fd, memoryview(out).cast("B"), offset, what=self.spill.name)

    def close(self) -> None:
        """Close and remove the spill file (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self.spill.unlink(missing_ok=True)


def table_block(reader: RowReader, t, sl: TableSlice, a: int, b: int, out: np.ndarray | None = None,
                on_scales: Callable[[np.ndarray], None] | None = None) -> np.ndarray:
    """Rows ``[a, b)`` of table ``t`` encoded as ``sl`` asks, as ``uint8 [n, row_bytes]``.

    With ``out`` (a uint8 buffer of at least the block's bytes, e.g. a pooled one) the result
    is always placed in it; source rows that feed a conversion go to the reader's scratch
    buffers, so a block allocates nothing but what a codec needs internally. ``on_scales``
    (weight part of a conversion with scales) is given the block's scale rows."""
    if out is None:
        return _table_block(reader, t, sl, a, b, None, on_scales)
    res = _table_block(reader, t, sl, a, b, out, on_scales)
    if not np.may_share_memory(res, out):
        if res.nbytes > out.nbytes:
            raise VerificationError(f"layer {t.layer_id}: block of {res.nbytes} bytes exceeds its buffer")
        dst = out[: res.nbytes].reshape(res.shape)
        dst[:] = res
        res = dst
    return res


def _table_block(reader: RowReader, t, sl: TableSlice, a: int, b: int, out: np.ndarray | None,
                 on_scales: Callable[[np.ndarray], None] | None = None) -> np.ndarray:
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
        if on_scales is not None:
            if s is None or s.shape[0] != n:
                raise VerificationError(f"layer {t.layer_id}: rows {a}..{b} gave no scale rows to keep")
            on_scales(s)
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


def stream_tensor(sink: Sink, reader: RowReader, tables: dict, source: Source, ot: OutTensor, block_bytes: int,
                  memo: ScaleMemo | None = None) -> None:
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
    scale_bytes = (src.rows - src.pad_rows) * ot.row_bytes
    if ranges is not None:
        for path, off, n in ranges:
            sink.copy(reader.fd(path), off, n)
    elif memo is not None and src.part == "scale" and memo.take(src, scale_bytes):
        step = min(block_bytes, ScaleMemo.READ_BYTES)  # pooled buffers, touched no further than the weight pass did
        for a in range(0, scale_bytes, step):
            n = min(step, scale_bytes - a)
            lease = sink.lease(n)
            try:
                memo.read(lease.array[:n], a)
            except BaseException:
                lease.release()
                raise
            sink.put_lease(lease, n)
        memo.close()
    else:
        keep = (memo is not None and src.part == "weight" and src.encoding != t.encoding
                and src.encoding.scale_dtype is not None and memo.start(src))
        rb = block_rows_for(max(ot.row_bytes, t.row_bytes * (1 if src.encoding == t.encoding else 4)), block_bytes)
        for p in src.pieces:
            for a, b in iter_blocks(p.start, p.stop, rb):
                nbytes = (b - a) * ot.row_bytes
                lease = sink.lease(nbytes)
                try:
                    blk = table_block(reader, t, src, a, b, lease.array, memo.put if keep else None)
                    if blk.nbytes != nbytes:
                        raise VerificationError(f"layer {t.layer_id}: rows {a}..{b} gave {blk.nbytes} bytes, planned {nbytes}")
                except BaseException:
                    lease.release()
                    raise
                sink.put_lease(lease, nbytes)
        if keep:
            memo.finish(src)
    if src.pad_rows:
        sink.zeros(src.pad_rows * ot.row_bytes, block_bytes)
