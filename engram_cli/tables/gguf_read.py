"""Read a GGUF of any Engram dialect (formats.md 4, 7.1): keys, hash constants, tables.

Headers and the small hash-constant tensors only; table rows stay where they are. Raw
``row264`` tables (I8 ``[264, rows]``) and BF16/F16/F32 tables are lossless sources; Q8_0
and K-quant tables are listed but cannot be converted back. A pointer GGUF's tables live in
safetensors shards named by ``deepseek4.engram.{i}.table_path``: the path is resolved
relative to the GGUF's folder and refused when it leads out of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engram_cli.errors import BadInputError
from engram_cli.tables import gguf_dialects as D
from engram_cli.tables.gguf_bounds import check_gguf_bounds
from engram_cli.tables.model import Encoding, Segment, TableInfo

_ETYPES = {"UINT8": "u8", "INT8": "i8", "UINT16": "u16", "INT16": "i16", "UINT32": "u32", "INT32": "i32",
           "UINT64": "u64", "INT64": "i64", "FLOAT32": "f32", "FLOAT64": "f64", "BOOL": "bool", "STRING": "str"}
_PLAIN = {"BF16": ("BF16", 2), "F16": ("F16", 2), "F32": ("F32", 4)}


@dataclass(frozen=True)
class GgufKey:
    name: str  # full key name
    etype: str  # element type: u32, i32, u64, i64, str, ...
    array: bool
    value: Any


@dataclass(frozen=True)
class GgufTensor:
    name: str
    ggml_type: str
    dims: tuple[int, ...]  # GGUF order (innermost first)
    offset: int  # absolute byte offset in the file
    nbytes: int


@dataclass(frozen=True)
class GgufTable:
    """One Engram table a GGUF holds or points to."""

    layer: int  # tensor-name index (blk.N), or layer_ids[i] for pointer tables
    tensor: str  # GGUF tensor name, or the safetensors tensor a pointer leads to
    rows: int
    dim: int
    storage: str  # ggml type (I8, Q8_0, BF16, ...) or "safetensors"
    encoding: str  # e4m3_e8m0_32_row264, q8_0, bf16, fp8-e4m3+e8m0 (pointer), ...
    nbytes: int
    info: TableInfo | None  # readable (lossless) tables only
    note: str = ""


@dataclass(frozen=True)
class HashConstants:
    """Whatever hash constants the file carries, flattened layer-major (None: absent)."""

    values: dict[str, Any]
    source: dict[str, str]  # quantity -> "key NAME" or "tensor NAME"

    def get(self, quantity: str) -> Any:
        return self.values.get(quantity)


@dataclass(frozen=True)
class GgufFile:
    path: Path
    size: int
    arch: str
    prefix: str
    dialect: str
    alignment: int
    keys: dict[str, GgufKey]  # Engram keys by name after the prefix
    tensors: tuple[GgufTensor, ...]
    tables: tuple[GgufTable, ...]
    constants: HashConstants
    n_keys: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def tables_last(self) -> bool:
        names = [t.name for t in self.tensors]
        mine = {t.tensor for t in self.tables}
        idx = [i for i, n in enumerate(names) if n in mine]
        return bool(idx) and idx == list(range(len(names) - len(idx), len(names)))

    def key_types(self) -> dict[str, str]:
        return {k: v.etype for k, v in self.keys.items()}


def open_reader(path: Path):
    import gguf

    check_gguf_bounds(path)  # the reader trusts counts: a flipped one would make it allocate without bound
    try:
        return gguf.GGUFReader(str(path))
    except Exception as exc:  # noqa: BLE001 - any parse failure is bad input
        size = path.stat().st_size if path.exists() else 0
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "reshape" in msg or "out of bounds" in msg or "index" in msg:
            msg = f"the file ends early ({size} bytes): truncated"
        raise BadInputError(f"{path.name}: not a readable GGUF file ({msg})") from None


def _key(field) -> GgufKey:
    main = field.types[0].name
    array = main == "ARRAY"
    et = _ETYPES.get((field.types[-1] if array else field.types[0]).name, "?")
    return GgufKey(field.name, et, array, field.contents())


def read_gguf(path: str | Path) -> GgufFile:
    """Parse a GGUF's header, its Engram keys and hash constants, and describe its tables.

    The gguf package decodes fields lazily, so a corrupt string or count can fail after the
    reader opened: any such failure is bad input (exit 3), never an unexpected error."""
    try:
        return _read_gguf(Path(path))
    except (UnicodeDecodeError, ValueError, IndexError, KeyError, TypeError, OverflowError, AttributeError) as exc:
        msg = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise BadInputError(f"{Path(path).name}: not a readable GGUF file ({type(exc).__name__}: {msg[:120]})") from None


def _read_gguf(path: Path) -> GgufFile:
    if path.is_dir():
        found = sorted(path.glob("*.gguf"))
        if len(found) != 1:
            raise BadInputError(f"{path}: expected one .gguf file, found {len(found)}")
        path = found[0]
    r = open_reader(path)
    size = path.stat().st_size
    arch_f = r.fields.get("general.architecture")
    arch = str(arch_f.contents()) if arch_f is not None else ""
    prefixes = tuple(dict.fromkeys(((f"{arch}.engram.",) if arch else ()) + D.PREFIXES))
    keys: dict[str, GgufKey] = {}
    prefix = ""
    for name, f in r.fields.items():
        for p in prefixes:
            if name.startswith(p):
                keys.setdefault(name[len(p):], _key(f))
                prefix = prefix or p
    tensors = tuple(GgufTensor(t.name, t.tensor_type.name, tuple(int(x) for x in t.shape), int(t.data_offset),
                               int(t.n_bytes)) for t in r.tensors)
    for t in tensors:
        if t.offset + t.nbytes > size:
            raise BadInputError(f"{path.name}: tensor {t.name} ends at byte {t.offset + t.nbytes:,} but the file has "
                                f"{size:,} bytes (truncated)")
    dialect = D.detect(set(keys), {t.name for t in tensors})
    consts = _constants(r, keys)
    tables, notes = _tables(path, tensors, keys, consts, dialect)
    return GgufFile(path, size, arch, prefix or D.PREFIX, dialect, int(r.alignment), keys, tensors, tuple(tables),
                    consts, len(r.fields) - 3, tuple(notes))


def _constants(r, keys: dict[str, GgufKey]) -> HashConstants:
    values: dict[str, Any] = {}
    source: dict[str, str] = {}
    for name, k in keys.items():
        q = D.ALIASES.get(name)
        if q is not None and q not in values:
            values[q] = np.asarray(k.value, dtype=np.int64) if q == "token_map" else k.value
            source[q] = f"key {k.name} ({'array of ' if k.array else ''}{k.etype})"
    by_name = {t.name: t for t in r.tensors}
    for tname, (q, dims) in D.CONSTANT_TENSORS.items():
        t = by_name.get(tname)
        if t is None or q in values:
            continue
        arr = np.asarray(t.data).astype(np.int64)
        values[q] = arr.reshape(-1) if q == "token_map" else [int(x) for x in arr.reshape(-1)]
        source[q] = f"tensor {tname} {t.tensor_type.name} {dims}"
    return HashConstants(values, source)


def _tables(path: Path, tensors, keys, consts: HashConstants, dialect: str) -> tuple[list[GgufTable], list[str]]:
    notes: list[str] = []
    if dialect == "pointer":
        return _pointer_tables(path, keys, consts), notes
    out = []
    enc_key = keys.get("encoding")
    for t in tensors:
        if not (t.name.startswith("blk.") and t.name.endswith(".engram_embd.weight")):
            continue
        try:
            layer = int(t.name.split(".")[1])
        except ValueError:
            raise BadInputError(f"{path.name}: tensor {t.name!r} has no layer number") from None
        if len(t.dims) != 2:
            raise BadInputError(f"{path.name}: tensor {t.name} has {len(t.dims)} dimensions, expected [width, rows]")
        width, rows = t.dims
        if t.ggml_type == "I8":
            if width != D.RAW_ROW_BYTES:
                raise BadInputError(f"{path.name}: I8 tensor {t.name} has row width {width}, expected {D.RAW_ROW_BYTES}")
            if enc_key is not None and enc_key.value != D.RAW_ENCODING:
                out.append(GgufTable(layer, t.name, rows, 0, "I8", str(enc_key.value), t.nbytes, None,
                                     f"encoding {enc_key.value!r} is not read"))
                continue
            if enc_key is None:
                notes.append(f"{t.name}: I8 [264, rows] without an encoding key, read as {D.RAW_ENCODING}")
            info = TableInfo(layer, rows, 256, Encoding("F8_E4M3", "F8_E8M0", 32),
                             (Segment(str(path), 0, rows, t.offset, 264, 0, t.name),),
                             (Segment(str(path), 0, rows, t.offset, 264, 256, t.name),), "deepseek-v4.1", "", ())
            out.append(GgufTable(layer, t.name, rows, 256, "I8", D.RAW_ENCODING, t.nbytes, info))
        elif t.ggml_type in _PLAIN:
            dt, size = _PLAIN[t.ggml_type]
            info = TableInfo(layer, rows, width, Encoding(dt), (Segment(str(path), 0, rows, t.offset, width * size, 0, t.name),),
                             (), "deepseek-v4.1", "", ())
            out.append(GgufTable(layer, t.name, rows, width, t.ggml_type, dt.lower(), t.nbytes, info))
        else:
            out.append(GgufTable(layer, t.name, rows, width, t.ggml_type, t.ggml_type.lower(), t.nbytes, None,
                                 f"{t.ggml_type} is lossy: not converted back"))
    return out, notes


def resolve_pointer(gguf_path: Path, target: str, what: str) -> Path:
    """A pointer GGUF's ``table_path``, resolved relative to the GGUF's folder; exit 3 when it
    leads out of that folder (an absolute path is taken when it lies inside it)."""
    from engram_cli.pathguard import safe_join

    base = gguf_path.parent
    p = Path(target)
    if p.is_absolute():
        try:
            target = str(p.resolve().relative_to(base.resolve()))
        except ValueError:
            raise BadInputError(f"{what}: {target!r} lies outside {base}",
                                hint="place the safetensors shards in the GGUF's folder (pointer paths never leave it)") from None
    return safe_join(base, target, what)


def _pointer_tables(path: Path, keys: dict[str, GgufKey], consts: HashConstants) -> list[GgufTable]:
    from engram_cli.tables.st_format import read_header

    ids = [int(x) for x in consts.get("layer_ids") or []]
    out = []
    for i, layer in enumerate(ids):
        k = {n: keys.get(f"{i}.{n}") for n in D.POINTER_KEYS}
        if k["table_path"] is None or k["weight_offset"] is None:
            raise BadInputError(f"{path.name}: pointer GGUF lacks deepseek4.engram.{i}.table_path or .weight_offset")
        shard = resolve_pointer(path, str(k["table_path"].value), f"{path.name}: deepseek4.engram.{i}.table_path")
        if not shard.is_file():
            raise BadInputError(f"{path.name}: table {i} points to {shard}, which does not exist")
        hd = read_header(shard)
        by_off = {e.offset: e for e in hd.tensors.values()}
        w = by_off.get(int(k["weight_offset"].value))
        s = by_off.get(int(k["scale_offset"].value)) if k["scale_offset"] is not None else None
        if w is None or len(w.shape) != 2:
            raise BadInputError(f"{path.name}: weight_offset of table {i} is not the start of a 2-D tensor in {shard.name}")
        rows, dim = w.shape
        enc = Encoding(w.dtype, s.dtype if s else None, dim // s.shape[1] if s else 32)
        if s is not None and (len(s.shape) != 2 or s.shape[0] != rows or dim % s.shape[1]):
            raise BadInputError(f"{path.name}: scale_offset of table {i} leads to {s.name} {list(s.shape)}, not [{rows}, groups]")
        seg_w = (Segment(str(shard), 0, rows, w.offset, w.row_bytes, 0, w.name),)
        seg_s = (Segment(str(shard), 0, rows, s.offset, s.row_bytes, 0, s.name),) if s else ()
        info = TableInfo(layer, rows, dim, enc, seg_w, seg_s, "deepseek-v4.1", "", (w.name,) + ((s.name,) if s else ()))
        out.append(GgufTable(layer, f"{shard.name}:{w.name}", rows, dim, "safetensors", enc.name, info.nbytes, info,
                             f"rows in {shard.name}"))
    return out


def _split(flat: Any, n_layers: int, what: str, path: Path) -> list[tuple[int, ...]]:
    vals = [int(x) for x in flat]
    if n_layers == 0 or len(vals) % n_layers:
        raise BadInputError(f"{path.name}: {what} has {len(vals)} values, not a multiple of the {n_layers} Engram layers")
    per = len(vals) // n_layers
    return [tuple(vals[i * per:(i + 1) * per]) for i in range(n_layers)]


def layout_from_gguf(g: GgufFile) -> Any | None:
    """The :class:`EngramLayout` a GGUF's hash constants pin (None when layer ids, primes or
    multipliers are missing). Head count, n-gram size and offsets are derived when a dialect
    leaves them out (ds4); the raw pad id is the first raw id mapped to the compressed pad."""
    from engram_cli.layout.layout import EngramLayout, exclusive_cumsum

    c = g.constants
    if any(c.get(q) is None for q in ("layer_ids", "primes", "multipliers")):
        return None
    ids = [int(x) for x in c.get("layer_ids")]
    primes = _split(c.get("primes"), len(ids), "primes", g.path)
    mults = _split(c.get("multipliers"), len(ids), "multipliers", g.path)
    n = int(c.get("max_ngram_size") or len(mults[0]))
    cols = len(primes[0])
    heads = int(c.get("head_count") or (cols // max(1, n - 1)))
    if heads * (n - 1) != cols:
        raise BadInputError(f"{g.path.name}: {cols} primes per layer do not fit {n - 1} n-gram orders x {heads} heads")
    by_layer = {t.layer: t for t in g.tables}
    dim = int(c.get("key_length") or next((t.dim for t in g.tables if t.dim), 0) or 256)
    rows = c.get("rows")
    rows = [int(x) for x in rows] if rows is not None else [by_layer[i].rows if i in by_layer else sum(p) for i, p in zip(ids, primes)]
    tm = c.get("token_map")
    cvocab = c.get("compressed_vocab_size")
    cvocab = int(cvocab) if cvocab is not None else (int(np.max(tm)) + 1 if tm is not None and len(tm) else 0)
    pad = int(c.get("pad_id") or 0)
    raw_pad = int(np.flatnonzero(tm == pad)[0]) if tm is not None and (tm == pad).any() else pad
    raw = any(t.encoding == D.RAW_ENCODING for t in g.tables)
    base = c.get("vocab_base")
    try:
        return EngramLayout(
            variant="deepseek-v4.1", layer_ids=tuple(ids), max_ngram_size=n, n_heads=heads, head_dim=dim,
            primes=tuple(primes), offsets=tuple(exclusive_cumsum(p) for p in primes), multipliers=tuple(mults),
            num_embeddings=tuple(rows), vocab_size=int(len(tm)) if tm is not None else cvocab,
            compressed_vocab_size=cvocab, pad_id=raw_pad, compressed_pad_id=pad,
            vocab_bases=(int(base),) * (n - 1) if base else (), seed=0,
            table_dtype="fp8-e4m3+e8m0" if raw else "bf16", token_map=tm,
            tokenizer={"source": f"GGUF {g.path.name} ({g.dialect})"})
    except (TypeError, ValueError) as exc:
        raise BadInputError(f"{g.path.name}: hash constants do not form a layout ({exc})") from None


def source_from_gguf(g: GgufFile):
    """A :class:`Source` over the lossless tables of a GGUF (exit 3 when a table is lossy)."""
    from engram_cli.tables.model import Geometry
    from engram_cli.tables.source_info import Source

    bad = [t for t in g.tables if t.info is None]
    if bad:
        t = bad[0]
        raise BadInputError(f"{g.path.name}: table {t.tensor} is {t.encoding}; only raw {D.RAW_ENCODING} and "
                            f"BF16/F16/F32 tables can be read back ({t.note})")
    if not g.tables:
        raise BadInputError(f"{g.path.name}: no Engram table (blk.N.engram_embd.weight or deepseek4.engram.N.table_path)")
    layout = layout_from_gguf(g)
    geos = []
    if layout is not None:
        for t in g.tables:
            i = layout.index_of_tensor(t.layer)
            if i is not None and sum(layout.primes[i]) <= t.rows:
                geos.append(Geometry(t.layer, tuple(layout.primes[i]), t.rows))
    tables = tuple(sorted((t.info for t in g.tables), key=lambda t: t.layer_id))
    geos.sort(key=lambda x: x.layer_id)
    return Source(g.path, "gguf", tables, "deepseek-v4.1", None, frozenset(), None,
                  tuple(geos) if len(geos) == len(tables) else (), layout)
