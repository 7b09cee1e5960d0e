"""GGUF writing through the ``gguf`` package: Engram tables and hash keys in a chosen dialect.

Tables are ``blk.{L}.engram_embd.weight`` (``L`` the tensor-name index): raw GGML I8
``[264, rows]`` (256 e4m3 bytes then 8 e8m0 bytes per row, ``encoding =
"e4m3_e8m0_32_row264"``), or Q8_0. The keys, their element types, the projection names and
the tensor order come from the dialect (:mod:`gguf_dialects`); element types are passed
explicitly (``add_array`` would pick int32). Reading is in :mod:`gguf_read`, metadata
conversion between dialects in :mod:`gguf_fix`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from engram_cli.errors import UsageError
from engram_cli.tables import gguf_dialects as D
from engram_cli.tables.gguf_dialects import ALIGN, ARCH, PREFIX, RAW_ENCODING  # noqa: F401 - re-exported
from engram_cli.tables.model import Geometry
from engram_cli.tables.plan import OutFile, OutTensor, ShardPlan, TableSlice
from engram_cli.tables.policies import Piece

KEY_NAMES = tuple(k.name for k in D.LLAMACPP_KEYS)


def layout_values(layout: Any, rows: list[int] | None = None, encoding: str | None = None) -> dict[str, Any]:
    """Every quantity a dialect key can hold, from a layout (``layer_ids``: tensor-name indices)."""
    if layout is None:
        raise UsageError("GGUF output needs the Engram layout (primes, multipliers, token map)",
                         hint="pass --layout DIR (engram_layout.json), --config config.json or --preset NAME")
    if layout.token_map is None:
        raise UsageError("the layout has no token map, which GGUF needs (deepseek41.engram.token_map)",
                         hint="build the layout with its tokenizer (engram build-vocab) and pass --layout")
    n = len(layout.layer_ids)
    return {
        "layer_ids": [int(x) for x in layout.tensor_ids],
        "head_count": int(layout.n_heads),
        "key_length": int(layout.head_dim),
        "max_ngram_size": int(layout.max_ngram_size),
        "multipliers": [int(m) for i in range(n) for m in layout.multipliers[i]],
        "primes": [int(p) for i in range(n) for p in layout.primes[i]],
        "offsets": [int(o) for i in range(n) for o in layout.offsets[i]],
        "token_map": [int(x) for x in np.asarray(layout.token_map)],
        "pad_id": int(layout.compressed_pad_id),
        "compressed_vocab_size": int(layout.compressed_vocab_size),
        "rows": [int(r) for r in (rows if rows is not None else layout.num_embeddings)],
        "encoding": encoding,
    }


def _vtypes(etype: str):
    from gguf import GGUFValueType as T

    return {"u32": T.UINT32, "i32": T.INT32, "u64": T.UINT64, "i64": T.INT64, "str": T.STRING}[etype]


def engram_kv(layout: Any, dialect: str = "llamacpp", *, rows: list[int] | None = None,
              encoding: str | None = None) -> list[tuple[str, Any, Any, Any]]:
    """The keys of ``dialect`` as ``(name, value, type, element type)``, filled from a layout.

    ``encoding`` (the raw row264 tag) is written whenever the tables are raw, in every dialect."""
    from gguf import GGUFValueType as T

    d = D.dialect(dialect)
    vals = layout_values(layout, rows, encoding)
    keys = list(d.keys)
    if encoding and d.key("encoding") is None:
        keys.append(D.Key("encoding", "encoding", "str"))
    out = []
    for k in keys:
        v = vals[k.quantity]
        if v is None:
            if k.quantity == "encoding":
                continue
            raise UsageError(f"the layout has no {k.quantity}, which the {dialect} dialect needs ({d.prefix}{k.name})")
        if k.etype != "str":
            lo, hi = D.ETYPE_RANGE[k.etype]
            vs = v if k.array else [v]
            if vs and (min(vs) < lo or max(vs) > hi):
                raise UsageError(f"{d.prefix}{k.name}: a value does not fit the {dialect} dialect's {k.etype} "
                                 f"({min(vs)}..{max(vs)})")
        if k.array:
            out.append((d.prefix + k.name, v, T.ARRAY, _vtypes(k.etype)))
        else:
            out.append((d.prefix + k.name, v, _vtypes(k.etype), None))
    return out


def _table_tensor(t, gguf_type: str) -> OutTensor:
    gname = D.TABLE.format(layer=t.layer_id)
    if gguf_type == "raw":
        if not (t.encoding.weight_dtype == "F8_E4M3" and t.encoding.scale_dtype in ("F8_E8M0", "U8") and t.dim == 256):
            raise UsageError(f"layer {t.layer_id}: raw GGUF rows need an fp8-e4m3 [*, 256] table with e8m0 scales "
                             f"(got {t.encoding.name}); use --gguf-type q8_0 (llamacpp dialect)")
        return OutTensor(gname, "I8", (t.rows, D.RAW_ROW_BYTES), TableSlice(t.layer_id, (Piece(0, t.rows),), "rows", t.encoding),
                         D.RAW_ROW_BYTES)
    if t.encoding.pack != 1:
        raise UsageError(f"layer {t.layer_id}: {t.encoding.name} tables are not converted to Q8_0")
    if t.dim % 32:
        raise UsageError(f"layer {t.layer_id}: Q8_0 needs a row width divisible by 32")
    rb = t.dim // 32 * 34
    return OutTensor(gname, "Q8_0", (t.rows, rb), TableSlice(t.layer_id, (Piece(0, t.rows),), "q8_0", t.encoding), rb)


def _projection_tensors(src, t, d: D.Dialect) -> list[OutTensor]:
    from engram_cli.tables.planners import projection_tensors

    found = {key: ot for key, ot, _scale in projection_tensors(src, t)}
    out = []
    for pr in d.projections:
        ot = found.get(pr.key)
        if ot is None:
            continue
        name = pr.name.format(layer=t.layer_id)
        if pr.dtype in ("keep", ot.dtype):
            out.append(OutTensor(name, ot.dtype, ot.shape, ot.source, ot.row_bytes))
        else:
            from engram_cli.tables.plan import TensorCast

            size = {"F32": 4, "F16": 2, "BF16": 2}[pr.dtype]
            out.append(OutTensor(name, pr.dtype, ot.shape, TensorCast(ot.source, ot.dtype, pr.dtype),
                                 ot.shape[-1] * size if ot.shape else size))
    return out


def plan_gguf(src, geos: tuple[Geometry, ...], layout: Any, *, gguf_type: str = "raw", name: str = "engram.gguf",
              with_projections: bool = False, dialect: str = "llamacpp") -> ShardPlan:
    """One GGUF file: the tables (and projections) under ``dialect``'s names, keys and order."""
    d = D.dialect(dialect)
    if gguf_type not in ("raw", "q8_0"):
        raise UsageError(f"unknown --gguf-type {gguf_type!r}", hint="raw (I8 264-byte rows) or q8_0")
    if gguf_type not in d.table_types:
        raise UsageError(f"the {dialect} dialect's readers take {', '.join(d.table_types)} tables, not {gguf_type}",
                         hint="use --gguf-type raw, or --gguf-dialect llamacpp for Q8_0")
    if layout is None and src.format == "gguf":
        layout = src.gguf_layout  # the hash constants the source GGUF carries
    tables, projections = [], []
    for t in src.tables:
        tables.append(_table_tensor(t, gguf_type))
        projections.append(_projection_tensors(src, t, d) if with_projections else [])
    if d.tables_last:
        tensors = [ot for ps in projections for ot in ps] + tables
    else:
        tensors = [ot for tt, ps in zip(tables, projections) for ot in (tt, *ps)]
    rows = _rows_by_layer(layout, src.tables)
    kv = engram_kv(layout, dialect, rows=rows, encoding=RAW_ENCODING if gguf_type == "raw" else None)
    f = OutFile(name, "gguf", tuple(tensors), gguf_kv=tuple(kv))
    return ShardPlan(target="gguf", source=str(src.path), source_format=src.format, tables=src.tables, geometries=geos,
                     files=(f,), dtype="keep", family=src.family, settings=(("gguf_type", gguf_type), ("gguf_dialect", dialect)))


def _rows_by_layer(layout: Any, tables) -> list[int] | None:
    """Rows of each layout layer's table as written (the ``rows`` key), by tensor-name index."""
    if layout is None:
        return None
    have = {t.layer_id: t.rows for t in tables}
    return [int(have.get(tid, n)) for tid, n in zip(layout.tensor_ids, layout.num_embeddings)]


def _writer_for(f: OutFile):
    import gguf

    w = gguf.GGUFWriter(None, ARCH)
    for key, val, vtype, sub in f.gguf_kv:
        w.add_key_value(key, val, vtype, sub_type=sub)
    for ot in f.tensors:
        if ot.dtype == "I8":
            w.add_tensor_info(ot.name, ot.shape, np.dtype(np.int8), ot.nbytes)
        elif ot.dtype == "Q8_0":
            w.add_tensor_info(ot.name, ot.shape, np.dtype(np.uint8), ot.nbytes, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            raw = {"BF16": gguf.GGMLQuantizationType.BF16, "F16": gguf.GGMLQuantizationType.F16,
                   "F32": gguf.GGMLQuantizationType.F32}[ot.dtype]
            w.add_tensor_info(ot.name, ot.shape, np.dtype(np.float16), ot.nbytes, raw_dtype=raw)
    return w


def header_bytes(w) -> bytes:
    from gguf.gguf_writer import WriterState

    bio = io.BytesIO()
    w.fout = [bio]
    w.state = WriterState.EMPTY
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    data = bio.getvalue()
    return data + bytes((-len(data)) % ALIGN)


def write_gguf_header(f: OutFile, sink) -> list[int]:
    """Write header, KV and tensor infos through ``sink``; return absolute tensor offsets."""
    head = header_bytes(_writer_for(f))
    sink.put(head)
    offs, pos = [], len(head)
    for ot in f.tensors:
        offs.append(pos)
        pos += -(-ot.nbytes // ALIGN) * ALIGN
    return offs


def quantize_q8_0(x: np.ndarray) -> np.ndarray:
    import gguf

    return np.asarray(gguf.quants.quantize(np.ascontiguousarray(x, dtype=np.float32), gguf.GGMLQuantizationType.Q8_0))


def open_gguf_source(path: Path):
    """A source over the lossless Engram tables of a GGUF of any dialect (see :mod:`gguf_read`)."""
    from engram_cli.tables.gguf_read import read_gguf, source_from_gguf

    return source_from_gguf(read_gguf(path))


def cast_blocks(reader, source, tc, block_bytes: int):
    """The bytes of a :class:`TensorCast`, block by block: the source tensor (copied, or
    dequantised from fp8 tiles to F32) converted to ``tc.dtype``; exit 3 when a finite value
    does not fit (F16 overflow)."""
    import torch

    from engram_cli.tables.plan import TensorCopy, TileDequant

    dt = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
    inner = tc.source
    if isinstance(inner, TileDequant):
        from dataclasses import replace

        from engram_cli.tables.tiles import tile_dequant_blocks

        blocks, src_dt = tile_dequant_blocks(reader, source, replace(inner, dtype="F32"), block_bytes), torch.float32
    elif isinstance(inner, TensorCopy):
        blocks, src_dt = _copy_blocks(reader, source, inner.name, block_bytes), dt[tc.from_dtype]
    else:
        raise UsageError(f"cannot cast a {type(inner).__name__} source")
    for blk in blocks:
        x = torch.frombuffer(bytearray(np.ascontiguousarray(blk).tobytes()), dtype=src_dt)
        y = x.to(dt[tc.dtype])
        if bool((torch.isinf(y) & torch.isfinite(x)).any()):
            from engram_cli.errors import BadInputError

            raise BadInputError(f"a value of {getattr(inner, 'name', getattr(inner, 'weight', '?'))} exceeds the "
                                f"{tc.dtype} range; the dialect's {tc.dtype} projection cannot hold it")
        yield y.view(torch.int16 if tc.dtype in ("F16", "BF16") else torch.int32).numpy().view(np.uint8)


def _copy_blocks(reader, source, name: str, block_bytes: int):
    e = source.checkpoint.entry(name)
    path = str(source.checkpoint.file_of(name))
    step = max(e.itemsize, block_bytes // e.itemsize * e.itemsize)
    for a in range(0, e.nbytes, step):
        n = min(step, e.nbytes - a)
        yield np.frombuffer(reader.read_bytes(path, e.offset + a, n), np.uint8)
