"""The safetensors container, read and written by hand so that tables stream.

Layout: 8-byte little-endian header length N, N bytes of JSON header (padded with spaces to
a multiple of 8), then the data. Each tensor entry is ``{"dtype", "shape", "data_offsets":
[begin, end]}`` relative to the data start; ``"__metadata__"`` holds string metadata.
Reading uses ``os.pread`` into reusable buffers (never mmap: file-backed pages would count
as resident memory); writing streams the data after a header computed up front.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from engram_cli.errors import BadInputError

DTYPE_SIZE: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}
MAX_HEADER = 100_000_000


@dataclass(frozen=True)
class TensorEntry:
    """One tensor in a safetensors file; ``offset`` is absolute in the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    @property
    def itemsize(self) -> int:
        return DTYPE_SIZE[self.dtype]

    @property
    def row_bytes(self) -> int:
        """Bytes of one row (first dimension) for 2-D or more tensors."""
        if not self.shape:
            return self.nbytes
        return self.nbytes // self.shape[0] if self.shape[0] else math.prod(self.shape[1:]) * self.itemsize


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    header_len: int  # N, without the 8-byte prefix
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str] = field(default_factory=dict)
    file_size: int = 0

    @property
    def data_start(self) -> int:
        return 8 + self.header_len


def read_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Parse and validate a safetensors header; errors name the file and the tensor (exit 3)."""
    path = Path(path)
    name = path.name
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise BadInputError(f"{name}: not a safetensors file (only {size} bytes)")
            (n,) = struct.unpack("<Q", prefix)
            if n > MAX_HEADER or 8 + n > size:
                raise BadInputError(
                    f"{name}: corrupt or truncated safetensors header (header length {n}, file {size} bytes)"
                )
            raw = fh.read(n)
    except OSError as exc:
        raise BadInputError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_header(raw, size, name, path)


def _pairs(pairs: list[tuple[str, object]]) -> dict:
    """``object_pairs_hook`` that refuses a key given twice (``json`` would keep the last)."""
    seen: dict = {}
    for k, v in pairs:
        if k in seen:
            raise _Duplicate(k)
        seen[k] = v
    return seen


class _Duplicate(ValueError):
    pass


def _entry(name: str, tname: str, info: object, data_start: int) -> TensorEntry:
    """One header entry, strictly typed: dtype a known string, shape a list of non-negative
    integers, data_offsets two integers ``begin <= end`` spanning exactly the tensor."""
    if not isinstance(info, dict):
        raise BadInputError(f"{name}: malformed header entry for tensor {tname!r}")
    dtype, shape, offs = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZE:
        raise BadInputError(f"{name}: tensor {tname!r} has unsupported dtype {dtype!r}")
    if not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape):
        raise BadInputError(f"{name}: tensor {tname!r} has shape {shape!r}, expected a list of non-negative integers")
    if not isinstance(offs, list) or len(offs) != 2 or not all(type(x) is int and x >= 0 for x in offs) or offs[0] > offs[1]:
        raise BadInputError(f"{name}: tensor {tname!r} has data_offsets {offs!r}, expected [begin, end] with begin <= end")
    begin, end = offs
    expect = math.prod(shape) * DTYPE_SIZE[dtype]
    if end - begin != expect:
        raise BadInputError(f"{name}: tensor {tname!r} spans {end - begin} bytes but {dtype}{list(shape)} needs {expect}")
    return TensorEntry(tname, dtype, tuple(shape), data_start + begin, expect)


def parse_header(raw: bytes, size: int, name: str = "<header>", path: Path | None = None) -> SafetensorsHeader:
    """Validate the JSON header of a ``size``-byte safetensors file (the one place that does).

    Beyond the types: no tensor name twice, ``__metadata__`` a map of strings, and the
    tensors' byte ranges covering the data exactly (from 0, no gap, no overlap, ending at the
    end of the file), as the safetensors library requires."""
    n = len(raw)
    try:
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_pairs)
    except _Duplicate as dup:
        raise BadInputError(f"{name}: corrupt safetensors header: key {str(dup)!r} appears twice") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise BadInputError(f"{name}: corrupt safetensors header (not JSON)") from None
    if not isinstance(doc, dict):
        raise BadInputError(f"{name}: corrupt safetensors header (not an object)")
    metadata = doc.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise BadInputError(f"{name}: __metadata__ must be an object of strings")
    data_start = 8 + n
    tensors = {t: _entry(name, t, info, data_start) for t, info in doc.items()}
    pos = 0
    for e in sorted(tensors.values(), key=lambda e: (e.offset, e.nbytes)):
        rel = e.offset - data_start
        if rel < pos:
            raise BadInputError(f"{name}: tensor {e.name!r} overlaps another tensor (data_offsets from {rel}, previous end {pos})")
        if rel > pos:
            raise BadInputError(f"{name}: {rel - pos} bytes before tensor {e.name!r} belong to no tensor")
        pos = rel + e.nbytes
    if data_start + pos > size:
        last = max(tensors.values(), key=lambda e: e.offset + e.nbytes).name
        raise BadInputError(f"{name}: truncated: tensor {last!r} ends at byte {data_start + pos} but the file has {size}",
                            hint="re-download or re-copy this shard")
    if data_start + pos < size:
        raise BadInputError(f"{name}: {size - data_start - pos} bytes after the last tensor belong to no tensor")
    return SafetensorsHeader(path or Path(name), n, tensors, dict(metadata), size)


@dataclass(frozen=True)
class TensorSpec:
    """A tensor to be written: name, safetensors dtype, shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_SIZE[self.dtype]


def build_header(tensors: list[TensorSpec], metadata: dict[str, str] | None = None) -> tuple[bytes, list[int]]:
    """Header bytes (with the 8-byte prefix) and each tensor's absolute data offset.

    Tensors are laid out in the given order, back to back.
    """
    doc: dict[str, object] = {}
    if metadata:
        doc["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    pos = 0
    rel: list[int] = []
    for t in tensors:
        doc[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [pos, pos + t.nbytes]}
        rel.append(pos)
        pos += t.nbytes
    raw = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    raw += b" " * ((-len(raw)) % 8)
    head = struct.pack("<Q", len(raw)) + raw
    return head, [len(head) + r for r in rel]
