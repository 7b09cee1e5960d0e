"""The record of an opened source of Engram tables (:class:`Source`), apart from the code
that opens each format (:mod:`engram_cli.tables.source`, ``gguf_read``), so that readers and
planners can share it without importing one another."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import xxhash

from engram_cli.tables.model import Geometry, TableInfo

if TYPE_CHECKING:  # pragma: no cover
    from engram_cli.layout.layout import EngramLayout
    from engram_cli.tables.checkpoint import Checkpoint
    from engram_cli.tables.manifest import Manifest


@dataclass(frozen=True)
class Source:
    path: Path
    format: str  # hf | engram | gguf
    tables: tuple[TableInfo, ...]
    family: str
    checkpoint: Checkpoint | None = None
    table_tensors: frozenset[str] = frozenset()
    manifest: Manifest | None = None
    geometries: tuple[Geometry, ...] = ()  # known without a layout (manifest, GGUF keys)
    gguf_layout: EngramLayout | None = None  # what a GGUF's hash constants pin (gguf_read.layout_from_gguf)

    def fingerprint(self) -> dict:
        """Cheap identity of the source: file names, sizes and headers hashed (xxh3-128)."""
        h = xxhash.xxh3_128()
        files: list[Path] = []
        if self.checkpoint is not None:
            files = [self.checkpoint.root / f for f in self.checkpoint.files]
            for f in self.checkpoint.files:
                hd = self.checkpoint.headers[f]
                h.update(f.encode())
                h.update(str(hd.file_size).encode())
                with open(hd.path, "rb") as fh:
                    h.update(fh.read(hd.data_start))
        else:
            files = sorted({Path(s.path) for t in self.tables for s in t.weight + t.scale})
            for p in files:
                h.update(p.name.encode())
                h.update(str(p.stat().st_size).encode())
            if self.manifest:
                h.update(json.dumps([f.to_dict() for f in self.manifest.files], sort_keys=True).encode())
        return {"path": str(self.path), "format": self.format, "files": len(files),
                "bytes": sum(p.stat().st_size for p in files), "xxh3_128": h.hexdigest()}
