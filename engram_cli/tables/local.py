"""Node-local sparse copies: same shard names and sizes, headers copied verbatim, only one
rank's rows of each table (weight and scale) written at their original byte offsets (and a
table's NVFP4 ``weight_scale_2`` scalars whole), plus ``engram-local.json``; every written
region is compared byte for byte with the source."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from engram_cli.errors import UsageError, VerificationError
from engram_cli.fsutil import atomic_path, write_json_atomic
from engram_cli.progress import ProgressCallback
from engram_cli.tables.manifest import WrittenFile, WrittenTensor, build_manifest, write_manifest
from engram_cli.tables.model import Geometry
from engram_cli.tables.plan import OutFile, OutTensor, ShardPlan, TableSlice, TensorCopy
from engram_cli.tables.planners import table_ranges
from engram_cli.tables.rows import DEFAULT_BLOCK_BYTES, RowReader, iter_blocks
from engram_cli.tables.source import Source

LOCAL_JSON = "engram-local.json"


def plan_local(src: Source, geos: tuple[Geometry, ...], *, policy: str | None, world: int | None, rank: int | None,
               edp: int = 1) -> ShardPlan:
    if src.checkpoint is None:
        raise UsageError("--to local needs an HF safetensors checkpoint source")
    if not policy or not world or rank is None:
        raise UsageError("--to local needs --policy, --ranks P and --rank R")
    ranges = table_ranges(policy, geos, src.tables, world, edp)
    if not 0 <= rank < len(ranges[0][1]):
        raise UsageError(f"--rank {rank} is outside 0..{len(ranges[0][1]) - 1}")
    by_file: dict[str, list[OutTensor]] = {f: [] for f in src.checkpoint.files}
    picked = {}
    for t, (layer, rr) in zip(src.tables, ranges):
        r = rr[rank]
        picked[layer] = r
        for part, segs, rb in (("weight", t.weight, t.weight_row_bytes), ("scale", t.scale, t.scale_row_bytes)):
            for seg in segs:
                pieces = tuple(type(p)(max(p.start, seg.start), min(p.stop, seg.stop), p.head)
                               for p in r.pieces if p.stop > seg.start and p.start < seg.stop and min(p.stop, seg.stop) > max(p.start, seg.start))
                if pieces:
                    fname = Path(seg.path).name
                    n = sum(p.rows for p in pieces)
                    by_file[fname].append(OutTensor(seg.tensor, "U8", (n, rb), TableSlice(layer, pieces, part, t.encoding), rb))
        if t.global_scale is not None:  # every rank needs the NVFP4 scalar(s)
            for name in t.source_names:
                if name.endswith("." + t.global_scale.suffix):
                    e = src.checkpoint.entry(name)
                    by_file[src.checkpoint.weight_map[name]].append(OutTensor(name, e.dtype, e.shape, TensorCopy(name), e.nbytes))
    files = tuple(OutFile(f, "sparse", tuple(ts), info=(("size", src.checkpoint.headers[f].file_size),))
                  for f, ts in by_file.items())
    return ShardPlan(target="local", source=str(src.path), source_format="hf", tables=src.tables, geometries=geos,
                     files=files, policy=policy, world=world, edp=edp, family=src.family,
                     ranges=tuple((l, tuple(rr)) for l, rr in ranges), extra={"rank": rank, "local": picked})


def execute_local(plan: ShardPlan, src: Source, out_dir: str | Path, *, force: bool = False,
                  block_bytes: int = DEFAULT_BLOCK_BYTES, progress: ProgressCallback | None = None,
                  checksum: str = "xxh3"):
    from engram_cli.tables.execute import ShardResult, prepare_out_dir
    from engram_cli.tables.verify import file_digest

    from engram_cli.tables.manifest import checksum_algorithm

    algo = checksum_algorithm(checksum)
    out = Path(out_dir)
    ck = src.checkpoint
    planned = {f.name for f in plan.files} | {LOCAL_JSON}
    if ck.index_path is not None:
        planned.add(ck.index_path.name)
    shards = set(ck.files) | ({ck.index_path.name} if ck.index_path else set())
    small = [p for p in ck.root.iterdir() if p.is_file() and p.name not in shards
             and p.name != LOCAL_JSON and p.name != "engram-shards.json" and not p.name.startswith(".") and p.stat().st_size < 64 * 2**20]
    planned |= {p.name for p in small}
    stale = prepare_out_dir(out, src.path, planned, force)
    t0 = time.perf_counter()
    total = sum(sum(t.nbytes for t in f.tensors) for f in plan.files)
    done = 0
    written: list[WrittenFile] = []
    tables = {t.layer_id: t for t in src.tables}
    with RowReader() as rd, RowReader() as back:
        for f in plan.files:
            hd = ck.headers[f.name]
            with atomic_path(out / f.name) as tmp:
                wts = []
                with open(tmp, "r+b" if tmp.exists() else "wb") as fh:
                    fh.truncate(hd.file_size)  # sparse: unwritten bytes read as zeros
                    fh.seek(0)
                    fh.write(rd.read_bytes(str(hd.path), 0, hd.data_start))
                    for ot in f.tensors:
                        e = hd.tensors[ot.name]
                        sl = ot.source
                        if isinstance(sl, TensorCopy):
                            fh.seek(e.offset)
                            fh.write(rd.read_bytes(str(hd.path), e.offset, e.nbytes))
                            wts.append((ot, e.offset))
                            continue
                        first = None
                        for p in sl.pieces:
                            for a, b in iter_blocks(p.start, p.stop, max(1, block_bytes // ot.row_bytes)):
                                off = e.offset + (a - _seg_start(tables[sl.layer], sl.part, ot.name)) * ot.row_bytes
                                first = off if first is None else first
                                data = rd.read_bytes(str(hd.path), off, (b - a) * ot.row_bytes)
                                fh.seek(off)
                                fh.write(data)
                                done += b - a
                                if progress:
                                    progress(done * ot.row_bytes, total, "writing rows")
                        wts.append((ot, first))
                # byte-for-byte check of every written region against the source
                for ot, first in wts:
                    e = hd.tensors[ot.name]
                    if isinstance(ot.source, TensorCopy):
                        if bytes(rd.read_bytes(str(hd.path), e.offset, e.nbytes)) != bytes(back.read_bytes(str(tmp), e.offset, e.nbytes)):
                            raise VerificationError(f"{f.name}: tensor {ot.name} differs from the source after writing")
                        continue
                    for p in ot.source.pieces:
                        off = e.offset + (p.start - _seg_start(tables[ot.source.layer], ot.source.part, ot.name)) * ot.row_bytes
                        for a, b in iter_blocks(0, p.rows * ot.row_bytes, block_bytes):
                            x = np.frombuffer(rd.read_bytes(str(hd.path), off + a, b - a), np.uint8)
                            y = np.frombuffer(back.read_bytes(str(tmp), off + a, b - a), np.uint8)
                            if not np.array_equal(x, y):
                                raise VerificationError(f"{f.name}: tensor {ot.name} rows differ from the source after writing")
                back.close()
                digest = file_digest(tmp, block_bytes, None, algo)
            tensors = []
            for ot, _first in wts:
                e = hd.tensors[ot.name]
                sl = ot.source
                if isinstance(sl, TensorCopy):
                    tensors.append(WrittenTensor(ot.name, e.dtype, e.shape, e.offset, e.nbytes, e.nbytes, None))
                    continue
                s0 = _seg_start(tables[sl.layer], sl.part, ot.name)
                for p in sl.pieces:
                    tensors.append(WrittenTensor(ot.name, e.dtype, e.shape, e.offset + (p.start - s0) * ot.row_bytes,
                                                 p.rows * ot.row_bytes, ot.row_bytes,
                                                 {"layer": sl.layer, "part": sl.part, "dim": tables[sl.layer].dim,
                                                  "encoding": sl.encoding.to_dict(), "pieces": [[p.start, p.stop, p.head]],
                                                  "pad_rows": 0, "heads": None, "rows": [p.start, p.stop]}))
            written.append(WrittenFile(f.name, "sparse", hd.file_size, digest, tuple(tensors), {}, algo))
    if ck.index_path is not None:
        with atomic_path(out / ck.index_path.name) as tmp:
            shutil.copyfile(ck.index_path, tmp)
    for p in small:
        with atomic_path(out / p.name) as tmp:
            shutil.copyfile(p, tmp)
    picked = plan.extra["local"]
    local_doc = {"policy": plan.policy, "world": plan.world, "rank": plan.extra["rank"],
                 "layers": {str(l): ([r.start, r.stop] if r.contiguous else [[p.start, p.stop] for p in r.pieces])
                            for l, r in picked.items()}}
    write_json_atomic(out / LOCAL_JSON, local_doc)
    for n in stale:
        if (out / n).is_file():
            (out / n).unlink()
    doc = build_manifest(plan, written, src.fingerprint(), None)
    doc["local"] = local_doc
    doc["options"] = {"rank": plan.extra["rank"]}
    mpath = write_manifest(out, doc)
    return ShardResult(plan, out, written, mpath, time.perf_counter() - t0, total, "full", stale)


def _seg_start(t, part: str, tensor: str) -> int:
    for s in (t.weight if part == "weight" else t.scale):
        if s.tensor == tensor:
            return s.start
    return 0


