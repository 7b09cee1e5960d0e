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
    """Parse and validate a safetensors header; errors name the file and the tensor."""
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
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadInputError(f"{name}: corrupt safetensors header (not JSON)") from None
    if not isinstance(doc, dict):
        raise BadInputError(f"{name}: corrupt safetensors header (not an object)")
    metadata = doc.pop("__metadata__", None) or {}
    data_start = 8 + n
    tensors: dict[str, TensorEntry] = {}
    for tname, info in doc.items():
        try:
            dtype = str(info["dtype"])
            shape = tuple(int(s) for s in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise BadInputError(f"{name}: malformed header entry for tensor {tname!r}") from None
        if dtype not in DTYPE_SIZE:
            raise BadInputError(f"{name}: tensor {tname!r} has unsupported dtype {dtype}")
        expect = math.prod(shape) * DTYPE_SIZE[dtype]
        if end - begin != expect or begin < 0:
            raise BadInputError(
                f"{name}: tensor {tname!r} spans {end - begin} bytes but {dtype}{list(shape)} needs {expect}"
            )
        if data_start + end > size:
            raise BadInputError(
                f"{name}: truncated: tensor {tname!r} ends at byte {data_start + end} but the file has {size}",
                hint="re-download or re-copy this shard",
            )
        tensors[tname] = TensorEntry(tname, dtype, shape, data_start + begin, expect)
    return SafetensorsHeader(path, n, tensors, dict(metadata), size)


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


def file_size_for(tensors: list[TensorSpec], metadata: dict[str, str] | None = None) -> int:
    head, _ = build_header(tensors, metadata)
    return len(head) + sum(t.nbytes for t in tensors)
