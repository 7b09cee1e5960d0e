"""``--to local``: node-local sparse copies, one more output format of the same executor.

Same shard names and sizes as the source, headers copied verbatim, only one rank's rows of
each table (weight and scale) written at their original byte offsets (and a table's NVFP4
``weight_scale_2`` scalars whole); the rest are holes that read as zeros. The index and the
small files beside the shards are copied, and ``engram-local.json`` (schema
``engram.local/1``) records the rank and its rows per layer. Every written region is compared
byte for byte with the source before the file is renamed into place.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from engram_cli.errors import UsageError, VerificationError
from engram_cli.fsutil import atomic_path
from engram_cli.tables.checksums import file_digest
from engram_cli.tables.manifest import ManifestFile, ManifestTensor, TableRef
from engram_cli.tables.model import Geometry, TableInfo
from engram_cli.tables.plan import CopyFile, LocalJson, OutFile, OutTensor, ShardPlan, TableSlice, TensorCopy
from engram_cli.tables.planners import HF_INDEX, source_side_files, table_ranges
from engram_cli.tables.rows import RowReader
from engram_cli.tables.source_info import Source

LOCAL_SCHEMA = "engram.local/1"
SMALL_FILE = 64 * 2**20  # files beside the shards up to this size are copied


def plan_local(src: Source, geos: tuple[Geometry, ...], *, policy: str | None, world: int | None, rank: int | None,
               edp: int = 1) -> ShardPlan:
    ck = src.checkpoint
    if ck is None:
        raise UsageError("--to local needs an HF safetensors checkpoint source")
    if not policy or not world or rank is None:
        raise UsageError("--to local needs --policy, --ranks P and --rank R")
    ranges = table_ranges(policy, geos, src.tables, world, edp)
    if not 0 <= rank < len(ranges.layers[0].ranks):
        raise UsageError(f"--rank {rank} is outside 0..{len(ranges.layers[0].ranks) - 1}")
    by_file: dict[str, list[OutTensor]] = {f: [] for f in ck.files}
    picked = {}
    for t, lr in zip(src.tables, ranges.layers):
        r = lr.ranks[rank]
        picked[lr.layer] = r
        for part, segs, rb in (("weight", t.weight, t.weight_row_bytes), ("scale", t.scale, t.scale_row_bytes)):
            for seg in segs:
                pieces = tuple(type(p)(max(p.start, seg.start), min(p.stop, seg.stop), p.head)
                               for p in r.pieces if min(p.stop, seg.stop) > max(p.start, seg.start))
                if pieces:
                    n = sum(p.rows for p in pieces)
                    ot = OutTensor(seg.tensor, "U8", (n, rb), TableSlice(lr.layer, pieces, part, t.encoding), rb)
                    by_file[Path(seg.path).name].append(ot)
        if t.global_scale is not None:  # every rank needs the NVFP4 scalar(s)
            for name in t.source_names:
                if name.endswith("." + t.global_scale.suffix):
                    e = ck.entry(name)
                    by_file[ck.weight_map[name]].append(OutTensor(name, e.dtype, e.shape, TensorCopy(name), e.nbytes))
    files = tuple(OutFile(f, "sparse", tuple(ts), file_size=ck.headers[f].file_size, head_bytes=ck.headers[f].data_start)
                  for f, ts in by_file.items())
    copies = [CopyFile(ck.index_path, HF_INDEX)] if ck.index_path is not None else []
    copies += [CopyFile(p, p.name) for p in source_side_files(src) if p.stat().st_size < SMALL_FILE]
    doc = {"schema": LOCAL_SCHEMA, "policy": policy, "world": world, "rank": rank,
           "layers": {str(layer): ([r.start, r.stop] if r.contiguous else [[p.start, p.stop] for p in r.pieces])
                      for layer, r in picked.items()}}
    return ShardPlan(target="local", source=str(src.path), source_format="hf", tables=src.tables, geometries=geos,
                     files=files, policy=policy, world=world, edp=edp, family=src.family, ranges=ranges,
                     copies=tuple(copies), local_json=LocalJson(doc), settings=(("rank", rank),))


def _seg_start(t: TableInfo, part: str, tensor: str) -> int:
    for s in (t.weight if part == "weight" else t.scale):
        if s.tensor == tensor:
            return s.start
    return 0


def _regions(f: OutFile, src: Source, tables: dict[int, TableInfo]) -> list[tuple[int, int, ManifestTensor]]:
    """``(offset, nbytes, manifest entry)`` of every byte range the sparse file holds."""
    hd = src.checkpoint.headers[f.name]
    out = []
    for ot in f.tensors:
        e = hd.tensors[ot.name]
        sl = ot.source
        if isinstance(sl, TensorCopy):
            out.append((e.offset, e.nbytes, ManifestTensor(ot.name, e.dtype, e.shape, e.offset, e.nbytes, e.nbytes, copy=True)))
            continue
        t = tables[sl.layer]
        s0 = _seg_start(t, sl.part, ot.name)
        for p in sl.pieces:
            off, n = e.offset + (p.start - s0) * ot.row_bytes, p.rows * ot.row_bytes
            ref = TableRef(sl.layer, sl.part, t.dim, sl.encoding, (p,))
            out.append((off, n, ManifestTensor(ot.name, e.dtype, e.shape, off, n, ot.row_bytes, ref)))
    return out


def write_sparse(path: Path, f: OutFile, src: Source, tables: dict[int, TableInfo], reader: RowReader, block_bytes: int,
                 tick: Callable[[int], None], checksum: str = "xxh3-128") -> ManifestFile:
    """Write one sparse shard at ``path`` (temporary name, checked, renamed): progress in bytes."""
    hd = src.checkpoint.headers[f.name]
    source = str(hd.path)
    regions = [(0, hd.data_start, None)] + _regions(f, src, tables)
    buf = memoryview(reader.scratch("sparse", block_bytes))
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY)
        try:
            os.ftruncate(fd, hd.file_size)  # sparse: unwritten bytes read as zeros
            for off, n, _ in regions:
                for a in range(0, n, block_bytes):
                    k = min(block_bytes, n - a)
                    data = reader.read_bytes(source, off + a, k, buf)
                    if os.pwrite(fd, data, off + a) != k:
                        raise OSError("short write")
                    tick(k)
        finally:
            os.close(fd)
        _compare(tmp, source, f.name, regions, block_bytes)
        digest = file_digest(tmp, block_bytes, None, checksum)
    return ManifestFile(f.name, "sparse", hd.file_size, digest, tuple(t for *_, t in regions[1:]), {}, checksum)


def _compare(tmp: Path, source: str, name: str, regions: list, block_bytes: int) -> None:
    """Every written region equals the source, byte for byte."""
    with RowReader() as a, RowReader() as b:
        for off, n, t in regions:
            for x in range(0, n, block_bytes):
                k = min(block_bytes, n - x)
                if not np.array_equal(np.frombuffer(a.read_bytes(source, off + x, k), np.uint8),
                                      np.frombuffer(b.read_bytes(str(tmp), off + x, k), np.uint8)):
                    what = f"tensor {t.name}" if t is not None else "the header"
                    raise VerificationError(f"{name}: {what} differs from the source after writing")
