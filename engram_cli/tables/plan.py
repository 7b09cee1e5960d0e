"""Plans: every output file, its tensors, their row ranges and byte sizes (pure).

A plan is built from source headers only, printed by ``--dry-run``, then executed one file
at a time by :mod:`engram_cli.tables.execute`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from engram_cli.tables.model import Encoding, Geometry, TableInfo
from engram_cli.tables.policies import Piece
from engram_cli.tables.st_format import DTYPE_SIZE, TensorSpec, build_header

PARTS = ("weight", "scale", "rows", "q8_0")  # rows = weight bytes then scale bytes per row


@dataclass(frozen=True)
class TableSlice:
    """Data of an output tensor taken from a table: global row pieces, concatenated."""

    layer: int
    pieces: tuple[Piece, ...]
    part: str  # one of PARTS
    encoding: Encoding  # output encoding
    pad_rows: int = 0
    heads: tuple[int, int] | None = None

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.pieces) + self.pad_rows


@dataclass(frozen=True)
class TensorCopy:
    """A non-table tensor copied byte for byte from the source."""

    name: str


@dataclass(frozen=True)
class TensorBytes:
    """A small tensor whose bytes the plan holds (NVFP4 ``weight_scale_2``, equal across parts)."""

    data: bytes
    origin: str = ""  # what it stands for, for plan printing


@dataclass(frozen=True)
class TileDequant:
    """A 2-D fp8-e4m3 source tensor with ``tile x tile`` e8m0 block scales (DeepSeek
    ``engram.wkv``), written dequantised to ``dtype``, a few tile rows at a time."""

    weight: str  # source tensor name
    scale: str  # its [ceil(R/tile), ceil(C/tile)] scale tensor
    tile: int = 32
    dtype: str = "BF16"


@dataclass(frozen=True)
class OutTensor:
    name: str
    dtype: str  # safetensors dtype (raw/gguf files: the element dtype of the bytes)
    shape: tuple[int, ...]
    source: Union[TableSlice, TensorCopy, TensorBytes, TileDequant]
    row_bytes: int = 0  # bytes per row as written

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * DTYPE_SIZE.get(self.dtype, 1)


@dataclass(frozen=True)
class OutFile:
    name: str  # relative to the output directory
    format: str  # "safetensors" | "raw" | "gguf"
    tensors: tuple[OutTensor, ...]
    metadata: tuple[tuple[str, str], ...] = ()
    info: tuple[tuple[str, object], ...] = ()  # rank / layer / heads, for tables and the manifest
    gguf_kv: tuple = ()  # ((key, value, vtype, subtype), ...) for gguf files

    @property
    def data_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def header(self) -> tuple[bytes, list[int]]:
        specs = [TensorSpec(t.name, t.dtype, t.shape) for t in self.tensors]
        return build_header(specs, dict(self.metadata) or None)

    @property
    def size(self) -> int:
        if self.format == "safetensors":
            head, _ = self.header()
            return len(head) + self.data_bytes
        return self.data_bytes  # gguf: data only (header computed at write time)


@dataclass(frozen=True)
class ShardPlan:
    target: str
    source: str
    source_format: str
    tables: tuple[TableInfo, ...]
    geometries: tuple[Geometry, ...]
    files: tuple[OutFile, ...]
    dtype: str = "keep"
    policy: str | None = None
    world: int | None = None
    edp: int = 1
    index: dict | None = None  # HF index document, written after the files
    copies: tuple[tuple[str, str], ...] = ()  # (source path, output name) small files copied verbatim
    rewrites: tuple[tuple[str, str, bytes], ...] = ()  # (source path, output name, new content)
    family: str = "deepseek-v4.1"
    ranges: tuple = ()  # per layer: (layer_id, tuple[RankRange]) for plan printing
    extra: dict = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def table_bytes(self) -> int:
        return sum(t.nbytes for t in self.tables)
