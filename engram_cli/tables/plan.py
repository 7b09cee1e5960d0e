"""Plans: every output file, its tensors, their row ranges and byte sizes (pure).

A plan is built from source headers only, printed by ``--dry-run``, then executed one file
at a time by :mod:`engram_cli.tables.execute`. Every side file (index, copies, rewrites,
layout, ``engram-local.json``) is a typed field, so the executor and the manifest see all
the plan writes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Union

from engram_cli.tables.model import Encoding, Geometry, TableInfo
from engram_cli.tables.policies import Piece, RangeSet
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
class TensorCast:
    """A projection written in another float dtype (a GGUF dialect asks for F32 or F16): the
    ``source`` (a copy, or a tile dequantisation) converted block by block (tables/gguf_io.py)."""

    source: Union[TensorCopy, TileDequant]
    from_dtype: str
    dtype: str


@dataclass(frozen=True)
class OutTensor:
    name: str
    dtype: str  # safetensors dtype (raw/gguf files: the element dtype of the bytes)
    shape: tuple[int, ...]
    source: Union[TableSlice, TensorCopy, TensorBytes, TileDequant, TensorCast]
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
    format: str  # "safetensors" | "raw" | "gguf" | "sparse"
    tensors: tuple[OutTensor, ...]
    metadata: tuple[tuple[str, str], ...] = ()
    info: tuple[tuple[str, object], ...] = ()  # rank / layer / heads, for tables and the manifest
    gguf_kv: tuple = ()  # ((key, value, vtype, subtype), ...) for gguf files
    file_size: int = 0  # sparse: the size of the source shard it mirrors (unwritten bytes are holes)
    head_bytes: int = 0  # sparse: the source header copied verbatim

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
        if self.format == "sparse":
            return self.file_size
        return self.data_bytes  # gguf: data only (header computed at write time)

    @property
    def work_bytes(self) -> int:
        """Bytes the writer moves (the progress total): a sparse file's header and rows, else its size."""
        return self.head_bytes + self.data_bytes if self.format == "sparse" else self.size


# ---------------------------------------------------------------- side files (written after the data files)
@dataclass(frozen=True)
class IndexFile:
    """``model.safetensors.index.json`` of a sharded HF output."""

    document: dict
    name: str = "model.safetensors.index.json"


@dataclass(frozen=True)
class CopyFile:
    """A small file of the source copied verbatim (``config.json``, tokenizer files, ...)."""

    source: Path
    name: str


@dataclass(frozen=True)
class RewriteFile:
    """A small file of the source written with new content (``config.json`` after ``--split-parts``)."""

    source: Path
    name: str
    content: bytes


@dataclass(frozen=True)
class LayoutFiles:
    """The layout saved beside the output: ``engram_layout.json`` and its token map."""

    layout: Any  # EngramLayout

    @property
    def names(self) -> tuple[str, ...]:
        from engram_cli.layout.store import LAYOUT_FILE, TOKEN_MAP_FILES

        return ((TOKEN_MAP_FILES["safetensors"],) if self.layout.token_map is not None else ()) + (LAYOUT_FILE,)


@dataclass(frozen=True)
class LocalJson:
    """``engram-local.json`` of a node-local sparse copy: the rank and its rows per layer."""

    document: dict
    name: str = "engram-local.json"


@dataclass(frozen=True)
class Omitted:
    """What of the source an output does not hold (targets that keep only the Engram tables)."""

    tensors: tuple[str, ...] = ()
    files: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.tensors or self.files)

    def to_dict(self) -> dict:
        return {"tensors": list(self.tensors), "files": list(self.files)}


Scalar = Union[int, float, str, bool, None]


@dataclass(frozen=True)
class ShardPlan:
    """Every file a conversion writes, with its tensors and where their bytes come from."""

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
    family: str = "deepseek-v4.1"
    ranges: RangeSet | None = None
    index: IndexFile | None = None
    copies: tuple[CopyFile, ...] = ()
    rewrites: tuple[RewriteFile, ...] = ()
    layout_files: LayoutFiles | None = None
    local_json: LocalJson | None = None
    omitted: Omitted = Omitted()
    split_parts: int | None = None
    settings: tuple[tuple[str, Scalar], ...] = ()  # target options recorded in the manifest

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def table_bytes(self) -> int:
        return sum(t.nbytes for t in self.tables)

    def side_names(self) -> list[str]:
        """Names of the side files, in the order they are written (the index last)."""
        names = [c.name for c in self.copies] + [r.name for r in self.rewrites]
        names += list(self.layout_files.names) if self.layout_files else []
        names += [self.local_json.name] if self.local_json else []
        return names + ([self.index.name] if self.index else [])

    def output_names(self) -> list[str]:
        """Every file name the plan writes (data files, then side files; not the manifest)."""
        return [f.name for f in self.files] + self.side_names()

    def with_layout(self, layout: Any) -> ShardPlan:
        """The plan that also saves ``layout`` (copies of the source's own layout files dropped)."""
        lf = LayoutFiles(layout)
        return replace(self, layout_files=lf, copies=tuple(c for c in self.copies if c.name not in lf.names))
