"""``gguf-fix``: rewrite a GGUF's Engram metadata in another dialect (or add missing keys).

Table bytes are copied through unchanged (the table encoding is shared, or the conversion is
refused); only the keys, the projection names (and, where a dialect asks for another dtype,
the projections' element type) and the tensor order change. Hash constants come from the
file itself (any dialect, keys or tensors) or from a layout given for files that lack them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engram_cli.errors import BadInputError, UsageError
from engram_cli.progress import ProgressCallback
from engram_cli.tables import gguf_dialects as D
from engram_cli.tables.gguf_read import GgufFile, GgufTensor, layout_from_gguf, open_reader, read_gguf

_SIZE = {"F32": 4, "F16": 2, "BF16": 2}


@dataclass(frozen=True)
class GgufFixResult:
    file: str
    source_dialect: str
    dialect: str
    added_keys: tuple[str, ...]
    replaced_keys: tuple[str, ...]
    removed_keys: tuple[str, ...]
    renamed: tuple[tuple[str, str], ...]  # (old name, new name) of projections
    cast: tuple[tuple[str, str, str], ...]  # (name, from dtype, to dtype)
    dropped: tuple[str, ...]  # tensors not written (hash constants now held by keys, superseded projections)
    tensors: int
    bytes: int
    xxh3_128: str

    def to_dict(self) -> dict:
        return {"file": self.file, "source_dialect": self.source_dialect, "dialect": self.dialect,
                "added_keys": list(self.added_keys), "replaced_keys": list(self.replaced_keys),
                "removed_keys": list(self.removed_keys), "renamed": [list(r) for r in self.renamed],
                "cast": [list(c) for c in self.cast], "dropped_tensors": list(self.dropped), "tensors": self.tensors,
                "bytes": self.bytes, "xxh3_128": self.xxh3_128}


@dataclass(frozen=True)
class _Out:
    name: str
    src: GgufTensor
    cast_to: str | None = None

    @property
    def ggml_type(self) -> str:
        return self.cast_to or self.src.ggml_type

    @property
    def nbytes(self) -> int:
        if self.cast_to is None:
            return self.src.nbytes
        return self.src.nbytes // _SIZE[self.src.ggml_type] * _SIZE[self.cast_to]


def _projection_index() -> list[tuple[re.Pattern[str], str]]:
    """(regex with a ``layer`` group, projection key) for every dialect's projection names."""
    out = []
    for d in D.DIALECTS.values():
        for p in d.projections:
            rx = re.compile("^" + re.escape(p.name).replace(re.escape("{layer}"), r"(?P<layer>\d+)") + "$")
            out.append((rx, p.key))
    return out


def _table_class(g: GgufFile) -> set[str]:
    out = set()
    for t in g.tables:
        out.add("raw" if t.encoding == D.RAW_ENCODING else "q8_0" if t.storage == "Q8_0" else "other")
    return out


def _plan_tensors(g: GgufFile, d: D.Dialect) -> tuple[list[_Out], list[str], list[tuple[str, str]]]:
    """Every tensor of the output in order, the dropped ones, and the projections renamed."""
    table_names = {t.tensor for t in g.tables}
    index = _projection_index()
    proj: dict[tuple[int, str], list[GgufTensor]] = {}
    others, dropped = [], []
    for t in g.tensors:
        if t.name in table_names:
            continue
        if t.name in D.CONSTANT_TENSORS:
            dropped.append(t.name)
            continue
        hit = next(((int(m.group("layer")), key) for rx, key in index if (m := rx.match(t.name))), None)
        if hit is None:
            others.append(_Out(t.name, t))
        else:
            proj.setdefault(hit, []).append(t)
    by_layer: dict[int, list[_Out]] = {}
    used: set[str] = set()
    for (layer, key), cands in sorted(proj.items()):
        for p in (p for p in d.projections if p.key == key):
            want = None if p.dtype == "keep" else p.dtype
            src = next((c for c in cands if want in (None, c.ggml_type)), cands[0])
            cast = want if want and want != src.ggml_type else None
            if cast and src.ggml_type not in _SIZE:
                raise UsageError(f"{src.name} is {src.ggml_type}; the {d.name} dialect needs {want} (only F32/F16/BF16 are cast)")
            by_layer.setdefault(layer, []).append(_Out(p.name.format(layer=layer), src, cast))
            used.add(src.name)
    dropped += [c.name for cs in proj.values() for c in cs if c.name not in used]
    renamed = [(o.src.name, o.name) for os_ in by_layer.values() for o in os_ if o.src.name != o.name]
    tables = {t.layer: _Out(t.tensor, next(x for x in g.tensors if x.name == t.tensor)) for t in g.tables}
    layers = sorted(set(tables) | set(by_layer))
    if d.tables_last:
        out = others + [o for lay in layers for o in by_layer.get(lay, [])] + [tables[lay] for lay in layers if lay in tables]
    else:
        out = others + [o for lay in layers for o in ([tables[lay]] if lay in tables else []) + by_layer.get(lay, [])]
    return out, dropped, renamed


def _writer(g: GgufFile, r, kv: list, outs: list[_Out]):
    import gguf

    arch = g.arch if g.arch and g.arch != "deepseek4" else D.ARCH
    w = gguf.GGUFWriter(None, arch)
    engram = tuple(D.PREFIXES) + (f"{g.arch}.engram.",)
    for name, field in r.fields.items():
        if name.startswith("GGUF.") or name in ("general.architecture", "general.alignment") or name.startswith(engram):
            continue
        vt = field.types[0]
        sub = field.types[-1] if vt == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(name, field.contents(), vt, sub_type=sub)
    for key, val, vtype, sub in kv:
        w.add_key_value(key, val, vtype, sub_type=sub)
    for o in outs:
        shape = tuple(reversed(o.src.dims))
        w.add_tensor_info(o.name, shape, np.dtype(np.float32), o.nbytes, raw_dtype=gguf.GGMLQuantizationType[o.ggml_type])
    return w


def _cast(data: memoryview, src: str, dst: str, name: str) -> bytes:
    import torch

    dt = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
    x = torch.frombuffer(bytearray(data), dtype=dt[src])
    y = x.to(dt[dst])
    if dst == "F16" and bool((torch.isinf(y) & torch.isfinite(x)).any()):
        raise BadInputError(f"{name}: a value exceeds the F16 range; it cannot be written as F16")
    return y.numpy().tobytes() if dst != "BF16" else y.view(torch.int16).numpy().tobytes()


def gguf_fix(path: str | Path, layout: Any | None, out: str | Path, *, dialect: str | None = None,
             progress: ProgressCallback | None = None, block_bytes: int = 64 * 2**20) -> GgufFixResult:
    """Write ``out``: the GGUF ``path`` with its Engram keys in ``dialect`` (default: the
    file's own when it is a written dialect, else llamacpp) filled from ``layout`` or the file."""
    import xxhash

    from engram_cli.fsutil import atomic_path
    from engram_cli.tables.gguf_io import ALIGN, engram_kv, header_bytes
    from engram_cli.tables.rows import RowReader, iter_blocks

    path, out = Path(path), Path(out)
    g = read_gguf(path)
    if g.dialect == "pointer":
        raise UsageError(f"{path.name} is a pointer GGUF: its tables live in safetensors shards",
                         hint=f"write a GGUF with the tables: engram shard convert {path} --to gguf -o DIR")
    layout = layout if layout is not None else layout_from_gguf(g)
    if layout is None:
        raise UsageError(f"{path.name} carries no Engram hash constants (layer ids, primes, multipliers)",
                         hint="pass --layout DIR, --config config.json or --preset NAME")
    target = dialect or (g.dialect if g.dialect in D.WRITABLE else "llamacpp")
    d = D.dialect(target)
    classes = _table_class(g)
    allowed = set(d.table_types) | ({"other"} if "q8_0" in d.table_types else set())
    if not classes <= allowed:
        raise UsageError(f"the {target} dialect's readers take {', '.join(d.table_types)} tables; {path.name} holds "
                         f"{', '.join(sorted(classes - allowed))} tables, so the table bytes would change",
                         hint=f"convert from the source checkpoint: engram shard convert SRC --to gguf --gguf-dialect {target}")
    by_tensor = {t.layer: t.rows for t in g.tables}
    bad = [f"blk.{tid}: {by_tensor[tid]} rows, layout {n}" for tid, n in zip(layout.tensor_ids, layout.num_embeddings)
           if tid in by_tensor and by_tensor[tid] != n] + [f"blk.{t}: not in the layout" for t in sorted(set(by_tensor) - set(layout.tensor_ids))]
    if bad:  # hash keys that do not fit the tables would load and give wrong row ids
        raise BadInputError(f"{path.name}: the layout does not fit its tables ({'; '.join(bad[:3])})", hint="pass the layout of this model")
    rows = [int(by_tensor.get(tid, n)) for tid, n in zip(layout.tensor_ids, layout.num_embeddings)]
    kv = engram_kv(layout, target, rows=rows, encoding=D.RAW_ENCODING if classes == {"raw"} else None)
    outs, dropped, renamed = _plan_tensors(g, d)
    r = open_reader(path)
    head = header_bytes(_writer(g, r, kv, outs))
    new_keys = [k[0][len(d.prefix):] for k in kv]
    total = sum(o.nbytes for o in outs)
    done, h = 0, xxhash.xxh3_128()
    with atomic_path(out) as tmp, open(tmp, "wb") as fh, RowReader() as rd:
        fh.write(head)
        h.update(head)
        pos = len(head)
        for o in outs:
            unit = _SIZE.get(o.src.ggml_type, 1) * max(1, o.src.dims[0] if o.cast_to else 1)
            step = max(unit, block_bytes // unit * unit)
            for a, b in iter_blocks(0, o.src.nbytes, step):
                chunk = rd.read_bytes(str(path), o.src.offset + a, b - a)
                data = _cast(chunk, o.src.ggml_type, o.cast_to, o.name) if o.cast_to else chunk
                fh.write(data)
                h.update(data)
                done += len(data)
                if progress:
                    progress(done, total, "copying tensors")
            pad = bytes((-o.nbytes) % ALIGN)
            fh.write(pad)
            h.update(pad)
            pos += o.nbytes + len(pad)
    old = set(g.keys)
    return GgufFixResult(str(out), g.dialect, target, tuple(k for k in new_keys if k not in old),
                         tuple(k for k in new_keys if k in old), tuple(sorted(old - set(new_keys))), tuple(renamed),
                         tuple((o.name, o.src.ggml_type, o.cast_to) for o in outs if o.cast_to), tuple(dropped),
                         len(outs), pos, h.hexdigest())
