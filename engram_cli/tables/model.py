"""What a table is, independent of where it lives.

A table is ``weight [rows, dim]`` plus optional per-row-group ``scale [rows, dim/group]``.
Each part is stored as one or more :class:`Segment` (contiguous global row ranges at a byte
offset in some file, with a row stride), which covers split weight/scale tensors, Qwen
``shard_i`` pieces, per-rank and per-head files, packed 264-byte rows and GGUF tensors alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engram_cli.tables.st_format import DTYPE_SIZE


@dataclass(frozen=True)
class Encoding:
    """How a row is stored: weight dtype, and optional per-row group scales."""

    weight_dtype: str  # safetensors dtype string (F8_E4M3, BF16, F32, I8, ...)
    scale_dtype: str | None = None  # F8_E8M0 / U8 (power-of-two bytes), F32 (int8 scales), F8_E4M3 (NVFP4)
    group: int = 32
    pack: int = 1  # values per stored weight element: 2 for NVFP4 (two e2m1 nibbles per U8 byte)

    @property
    def name(self) -> str:
        if self.pack == 2 and self.weight_dtype == "U8" and self.scale_dtype == "F8_E4M3":
            return "nvfp4"
        if self.scale_dtype is None:
            return {"BF16": "bf16", "F32": "fp32", "F16": "fp16"}.get(self.weight_dtype, self.weight_dtype.lower())
        if self.weight_dtype == "F8_E4M3":
            return "fp8-e4m3"
        if self.weight_dtype == "I8":
            return "int8"
        return f"{self.weight_dtype.lower()}+{self.scale_dtype.lower()}"

    def weight_cols(self, dim: int) -> int:
        """Stored weight elements per row (``dim`` values, ``pack`` per element)."""
        return dim // self.pack

    def weight_row_bytes(self, dim: int) -> int:
        return self.weight_cols(dim) * DTYPE_SIZE[self.weight_dtype]

    def groups(self, dim: int) -> int:
        return dim // self.group if self.scale_dtype else 0

    def scale_row_bytes(self, dim: int) -> int:
        return self.groups(dim) * DTYPE_SIZE[self.scale_dtype] if self.scale_dtype else 0

    def to_dict(self) -> dict:
        d = {"name": self.name, "weight_dtype": self.weight_dtype, "scale_dtype": self.scale_dtype, "group": self.group}
        if self.pack != 1:
            d["pack"] = self.pack
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Encoding:
        return cls(d["weight_dtype"], d.get("scale_dtype"), int(d.get("group", 32)), int(d.get("pack", 1)))


@dataclass(frozen=True)
class Segment:
    """Global rows ``[start, stop)`` of one table part stored in ``path``.

    Row ``start`` begins at byte ``offset + col``; consecutive rows are ``stride`` bytes apart.
    """

    path: str
    start: int
    stop: int
    offset: int
    stride: int
    col: int = 0
    tensor: str = ""

    @property
    def rows(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class GlobalScale:
    """A per-tensor scalar that every row part of a table shares: NVFP4 ``weight_scale_2``.

    Held as its raw bytes (checked bit-equal across the source parts) and written unchanged
    beside every output part.
    """

    dtype: str  # safetensors dtype, F32 in NVFP4 exports
    shape: tuple[int, ...]  # () or (1,)
    data: bytes
    suffix: str = "weight_scale_2"

    @property
    def value(self) -> float:
        import numpy as np

        dt = {"F32": np.float32, "BF16": None, "F16": np.float16, "F64": np.float64}.get(self.dtype)
        if dt is None:  # bf16: the upper half of an fp32
            return float(np.frombuffer(b"\0\0" + self.data[:2], np.float32)[0])
        return float(np.frombuffer(self.data, dt)[0])

    def to_dict(self) -> dict:
        return {"name": self.suffix, "dtype": self.dtype, "shape": list(self.shape), "hex": self.data.hex(),
                "value": self.value}

    @classmethod
    def from_dict(cls, d: dict) -> GlobalScale:
        return cls(d["dtype"], tuple(d.get("shape", ())), bytes.fromhex(d["hex"]), d.get("name", "weight_scale_2"))


@dataclass(frozen=True)
class TableInfo:
    """One Engram table found in a source."""

    layer_id: int
    rows: int
    dim: int
    encoding: Encoding
    weight: tuple[Segment, ...]
    scale: tuple[Segment, ...] = ()
    family: str = "deepseek-v4.1"
    prefix: str = ""
    source_names: tuple[str, ...] = field(default_factory=tuple)  # every source tensor name of this table
    global_scale: GlobalScale | None = None  # NVFP4 weight_scale_2 (equal across parts)

    @property
    def weight_row_bytes(self) -> int:
        return self.encoding.weight_row_bytes(self.dim)

    @property
    def scale_row_bytes(self) -> int:
        return self.encoding.scale_row_bytes(self.dim)

    @property
    def row_bytes(self) -> int:
        return self.weight_row_bytes + self.scale_row_bytes

    @property
    def nbytes(self) -> int:
        return self.rows * self.row_bytes

    def summary(self) -> dict:
        return {
            "layer": self.layer_id,
            "rows": self.rows,
            "dim": self.dim,
            "encoding": self.encoding.to_dict(),
            "family": self.family,
            "bytes": self.nbytes,
        }


@dataclass(frozen=True)
class Geometry:
    """Hash-head structure of one table: head sizes (primes) in flat order-major order."""

    layer_id: int
    head_sizes: tuple[int, ...]
    rows: int  # table rows (>= sum(head_sizes); larger when padded, e.g. Qwen4-Exp)

    @property
    def offsets(self) -> tuple[int, ...]:
        out, acc = [], 0
        for s in self.head_sizes:
            out.append(acc)
            acc += s
        return tuple(out)

    @property
    def n_heads(self) -> int:
        return len(self.head_sizes)

    @property
    def pad_rows(self) -> int:
        return self.rows - sum(self.head_sizes)
