"""GGUF through the ``gguf`` package: DeepSeek-V4.1 Engram tables and the nine hash keys.

Tables are ``blk.{L}.engram_embd.weight``: raw GGML I8 ``[264, rows]`` (256 e4m3 bytes then
8 e8m0 bytes per row, ``deepseek41.engram.encoding = "e4m3_e8m0_32_row264"``), or Q8_0.
Keys under ``deepseek41.engram.``: layer_ids (i32), head_count, key_length, max_ngram_size
(u32), multipliers, primes, offsets (u64, flattened), token_map (i32), pad_id (u32,
compressed). Element types are passed explicitly (``add_array`` would pick int32).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from engram_cli.errors import BadInputError, UsageError
from engram_cli.tables.model import Encoding, Geometry, Segment, TableInfo
from engram_cli.tables.names import GGUF_PROJ, GGUF_TABLE, render
from engram_cli.tables.plan import OutFile, OutTensor, ShardPlan, TableSlice
from engram_cli.tables.policies import Piece

ARCH = "deepseek41"
PREFIX = f"{ARCH}.engram."
ALIGN = 32
RAW_ENCODING = "e4m3_e8m0_32_row264"
KEY_NAMES = ("layer_ids", "head_count", "key_length", "max_ngram_size", "multipliers", "primes", "offsets",
             "token_map", "pad_id")


def engram_kv(layout: Any) -> list[tuple[str, Any, Any, Any]]:
    """The nine keys with explicit GGUF element types, filled from a layout."""
    from gguf import GGUFValueType as T

    if layout is None:
        raise UsageError("GGUF output needs the Engram layout (primes, multipliers, token map)",
                         hint="pass --layout DIR (engram_layout.json), --config config.json or --preset NAME")
    if layout.token_map is None:
        raise UsageError("the layout has no token map, which GGUF needs (deepseek41.engram.token_map)",
                         hint="build the layout with its tokenizer (engram build-vocab) and pass --layout")
    n = len(layout.layer_ids)
    return [
        (PREFIX + "layer_ids", [int(x) for x in layout.layer_ids], T.ARRAY, T.INT32),
        (PREFIX + "head_count", int(layout.n_heads), T.UINT32, None),
        (PREFIX + "key_length", int(layout.head_dim), T.UINT32, None),
        (PREFIX + "max_ngram_size", int(layout.max_ngram_size), T.UINT32, None),
        (PREFIX + "multipliers", [int(m) for i in range(n) for m in layout.multipliers[i]], T.ARRAY, T.UINT64),
        (PREFIX + "primes", [int(p) for i in range(n) for p in layout.primes[i]], T.ARRAY, T.UINT64),
        (PREFIX + "offsets", [int(o) for i in range(n) for o in layout.offsets[i]], T.ARRAY, T.UINT64),
        (PREFIX + "token_map", [int(x) for x in np.asarray(layout.token_map)], T.ARRAY, T.INT32),
        (PREFIX + "pad_id", int(layout.compressed_pad_id), T.UINT32, None),
    ]


def plan_gguf(src, geos: tuple[Geometry, ...], layout: Any, *, gguf_type: str = "raw", name: str = "engram.gguf",
              with_projections: bool = False) -> ShardPlan:
    from gguf import GGUFValueType as T

    kv = engram_kv(layout)
    if gguf_type not in ("raw", "q8_0"):
        raise UsageError(f"unknown --gguf-type {gguf_type!r}", hint="raw (I8 264-byte rows) or q8_0")
    tensors: list[OutTensor] = []
    for t in src.tables:
        gname = render(GGUF_TABLE, layer=t.layer_id)
        if gguf_type == "raw":
            if not (t.encoding.weight_dtype == "F8_E4M3" and t.encoding.scale_dtype in ("F8_E8M0", "U8") and t.dim == 256):
                raise UsageError(f"layer {t.layer_id}: raw GGUF rows need an fp8-e4m3 [*, 256] table with e8m0 scales "
                                 f"(got {t.encoding.name}); use --gguf-type q8_0")
            tensors.append(OutTensor(gname, "I8", (t.rows, 264), TableSlice(t.layer_id, (Piece(0, t.rows),), "rows", t.encoding), 264))
        else:
            if t.encoding.pack != 1:
                raise UsageError(f"layer {t.layer_id}: {t.encoding.name} tables are not converted to Q8_0")
            if t.dim % 32:
                raise UsageError(f"layer {t.layer_id}: Q8_0 needs a row width divisible by 32")
            rb = t.dim // 32 * 34
            tensors.append(OutTensor(gname, "Q8_0", (t.rows, rb), TableSlice(t.layer_id, (Piece(0, t.rows),), "q8_0", t.encoding), rb))
        if with_projections:
            from engram_cli.tables.planners import projection_tensors

            for key, ot, _scale in projection_tensors(src, t):
                tensors.append(OutTensor(render(GGUF_PROJ[key], layer=t.layer_id), ot.dtype, ot.shape, ot.source, ot.row_bytes))
    if gguf_type == "raw":
        kv.append((PREFIX + "encoding", RAW_ENCODING, T.STRING, None))
    f = OutFile(name, "gguf", tuple(tensors), gguf_kv=tuple(kv))
    from engram_cli.tables.plan import ShardPlan as SP

    return SP(target="gguf", source=str(src.path), source_format=src.format, tables=src.tables, geometries=geos,
              files=(f,), dtype="keep", family=src.family, extra={"gguf_type": gguf_type})


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


# ---------------------------------------------------------------- reading
def _field_value(field) -> Any:
    return field.contents()


def read_engram_keys(reader) -> dict[str, Any]:
    out = {}
    for name, field in reader.fields.items():
        for prefix in (PREFIX, "deepseek4.engram."):
            if name.startswith(prefix):
                out[name[len(prefix):]] = _field_value(field)
    return out


def open_gguf_source(path: Path):
    import gguf

    from engram_cli.tables.source import Source

    if path.is_dir():
        path = next(path.glob("*.gguf"))
    try:
        r = gguf.GGUFReader(str(path))
    except Exception as exc:  # noqa: BLE001 - any parse failure is bad input
        raise BadInputError(f"{path.name}: not a readable GGUF file ({exc})") from None
    keys = read_engram_keys(r)
    tables, geos = [], []
    for t in r.tensors:
        if not (t.name.startswith("blk.") and t.name.endswith(".engram_embd.weight")):
            continue
        layer = int(t.name.split(".")[1])
        if t.tensor_type != gguf.GGMLQuantizationType.I8 or keys.get("encoding") != RAW_ENCODING:
            raise BadInputError(f"{path.name}: tensor {t.name} is {t.tensor_type.name}"
                                f"{'' if keys.get('encoding') else ' without an encoding key'}; only raw "
                                f"{RAW_ENCODING} tables can be read back (Q8_0 is lossy)")
        ne = [int(x) for x in t.shape]  # GGUF order: [264, rows]
        if ne[0] != 264:
            raise BadInputError(f"{path.name}: tensor {t.name} has row width {ne[0]}, expected 264")
        rows = ne[1]
        off = int(t.data_offset)
        enc = Encoding("F8_E4M3", "F8_E8M0", 32)
        tables.append(TableInfo(layer, rows, 256, enc, (Segment(str(path), 0, rows, off, 264, 0, t.name),),
                                (Segment(str(path), 0, rows, off, 264, 256, t.name),), "deepseek-v4.1", "", ()))
    if not tables:
        raise BadInputError(f"{path.name}: no blk.N.engram_embd.weight tensor")
    if "primes" in keys and "layer_ids" in keys:
        ids = [int(x) for x in keys["layer_ids"]]
        primes = [int(x) for x in keys["primes"]]
        per = len(primes) // max(1, len(ids))
        for t in tables:
            if t.layer_id in ids:
                i = ids.index(t.layer_id)
                geos.append(Geometry(t.layer_id, tuple(primes[i * per:(i + 1) * per]), t.rows))
    return Source(path, "gguf", tuple(tables), "deepseek-v4.1", None, frozenset(), None,
                  tuple(geos) if len(geos) == len(tables) else (), keys)


# ---------------------------------------------------------------- gguf-fix
def gguf_fix(path: str | Path, layout: Any, out: str | Path, *, progress=None, block_bytes: int = 64 * 2**20) -> dict:
    """Copy a GGUF with the Engram hash keys added or corrected (tensors copied through)."""
    import gguf
    import xxhash

    from engram_cli.fsutil import atomic_path
    from engram_cli.tables.rows import RowReader, iter_blocks

    path, out = Path(path), Path(out)
    try:
        r = gguf.GGUFReader(str(path))
    except Exception as exc:  # noqa: BLE001
        raise BadInputError(f"{path.name}: not a readable GGUF file ({exc})") from None
    arch_field = r.fields.get("general.architecture")
    arch = _field_value(arch_field) if arch_field else ARCH
    if arch == "deepseek4":
        arch = ARCH
    new_kv = engram_kv(layout)
    have = set(read_engram_keys(r))
    added = [k[len(PREFIX):] for k, *_ in new_kv if k[len(PREFIX):] not in have]
    w = gguf.GGUFWriter(None, arch)
    replace = {k for k, *_ in new_kv}
    for name, field in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture" or name in replace:
            continue
        if name.startswith("deepseek4.engram."):
            continue
        vt = field.types[0]
        sub = field.types[-1] if vt == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(name, _field_value(field), vt, sub_type=sub)
    for key, val, vtype, sub in new_kv:
        w.add_key_value(key, val, vtype, sub_type=sub)
    if "encoding" in have:
        w.add_key_value(PREFIX + "encoding", read_engram_keys(r)["encoding"], gguf.GGUFValueType.STRING)
    for t in r.tensors:
        w.add_tensor_info(t.name, [int(x) for x in t.data.shape], t.data.dtype, int(t.n_bytes), raw_dtype=t.tensor_type)
    head = header_bytes(w)
    total = sum(int(t.n_bytes) for t in r.tensors)
    done = 0
    h = xxhash.xxh3_128()
    with atomic_path(out) as tmp, open(tmp, "wb") as fh, RowReader() as rd:
        fh.write(head)
        h.update(head)
        pos = len(head)
        for t in r.tensors:
            for a, b in iter_blocks(0, int(t.n_bytes), block_bytes):
                chunk = rd.read_bytes(str(path), int(t.data_offset) + a, b - a)
                fh.write(chunk)
                h.update(chunk)
                done += b - a
                if progress:
                    progress(done, total, "copying tensors")
            pad = (-int(t.n_bytes)) % ALIGN
            fh.write(bytes(pad))
            h.update(bytes(pad))
            pos += int(t.n_bytes) + pad
    return {"file": str(out), "added_keys": added, "replaced_keys": sorted(set(KEY_NAMES) - set(added)),
            "tensors": len(r.tensors), "bytes": pos, "xxh3_128": h.hexdigest()}
