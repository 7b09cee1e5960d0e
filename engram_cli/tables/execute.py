"""Execute a plan: every output format through one executor.

The output folder is checked before any work (:mod:`engram_cli.tables.outdir`); every data
file is then written into a staging folder, one at a time, under a temporary name renamed
into place (:mod:`engram_cli.tables.writer` for safetensors, raw and GGUF files fed by
:mod:`engram_cli.tables.blocks`; :mod:`engram_cli.tables.local` for sparse node-local
copies), then the side files (copies, rewrites, layout, ``engram-local.json``, the index),
then the manifest; with ``verify="full"`` the staged output is verified against the source;
finally the staged files are swapped into the output folder, the manifest last. Memory is
bounded by the block size whatever the table size.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from engram_cli.errors import UsageError, VerificationError
from engram_cli.fsutil import atomic_path
from engram_cli.jsonio import to_json_text
from engram_cli.layout.store import save_layout
from engram_cli.progress import ProgressCallback
from engram_cli.tables.blocks import ScaleMemo, stream_tensor
from engram_cli.tables.checksums import checksum_algorithm, file_digest
from engram_cli.tables.codecs import codec_threads
from engram_cli.tables.manifest import MANIFEST, DequantRef, ManifestFile, ManifestTensor, SideFile, TableRef, build_manifest
from engram_cli.tables.outdir import OutputDir, abort, begin, commit, prepare_output
from engram_cli.tables.plan import OutFile, OutTensor, ShardPlan, TableSlice, TensorCopy, TileDequant
from engram_cli.tables.rows import DEFAULT_BLOCK_BYTES, BufferPool, RowReader
from engram_cli.tables.source_info import Source
from engram_cli.tables.st_format import read_header
from engram_cli.tables.writer import Sink, write_atomic, write_small


@dataclass
class ShardResult:
    plan: ShardPlan
    out_dir: Path
    files: list[ManifestFile]
    side_files: list[SideFile]
    manifest_path: Path
    seconds: float
    bytes_written: int
    verified: str
    removed: list[str] = field(default_factory=list)  # files of the previous conversion the new one does not write
    kept: list[str] = field(default_factory=list)  # files in the folder that no conversion wrote: left alone
    previous_problem: str | None = None  # why the previous manifest could not be read (only planned names replaced)

    @property
    def throughput(self) -> float:
        return self.bytes_written / self.seconds if self.seconds > 0 else 0.0


# ------------------------------------------------------------------ data files
def _manifest_tensor(ot: OutTensor, offset: int, t) -> ManifestTensor:
    src = ot.source
    table = dq = None
    if isinstance(src, TileDequant):
        dq = DequantRef(src.weight, src.scale, src.tile)
    elif isinstance(src, TableSlice):
        table = TableRef(src.layer, src.part, t.dim, src.encoding, src.pieces, src.pad_rows, src.heads)
    return ManifestTensor(ot.name, ot.dtype, ot.shape, offset, ot.nbytes, ot.row_bytes, table, dq, isinstance(src, TensorCopy))


def _write_body(f: OutFile, sink: Sink, source: Source, reader: RowReader, tables: dict, block_bytes: int,
                memo: ScaleMemo | None = None) -> list[int]:
    """Header, then every tensor at its planned offset; returns the offsets."""
    if f.format == "safetensors":
        head, offsets = f.header()
        sink.put(head)
    elif f.format == "gguf":
        from engram_cli.tables.gguf_io import write_gguf_header

        offsets = write_gguf_header(f, sink)
    else:
        offsets, pos = [], 0
        for ot in f.tensors:
            offsets.append(pos)
            pos += ot.nbytes
    for i, ot in enumerate(f.tensors):
        if f.format == "gguf":
            sink.zeros(offsets[i] - sink.pos, block_bytes)
        if sink.pos != offsets[i]:
            raise VerificationError(f"{f.name}: tensor {ot.name} starts at {sink.pos}, planned {offsets[i]}")
        stream_tensor(sink, reader, tables, source, ot, block_bytes, memo)
        if sink.pos != offsets[i] + ot.nbytes:
            raise VerificationError(f"{f.name}: tensor {ot.name} wrote {sink.pos - offsets[i]} bytes, planned {ot.nbytes}")
    if f.format == "gguf":
        from engram_cli.tables.gguf_io import ALIGN

        sink.zeros((-sink.pos) % ALIGN, block_bytes)
    return offsets


def write_file(path: Path, f: OutFile, source: Source, reader: RowReader, tables: dict, block_bytes: int,
               progress: Callable[[int], None], checksum: str = "xxh3-128", pool: BufferPool | None = None,
               memo: ScaleMemo | None = None) -> ManifestFile:
    """One data file of any format at ``path`` (temporary name, then renamed); ``memo`` carries
    a quantisation's scales from its weight tensor to its scale tensor, in this file or a later one."""
    if f.format == "sparse":
        from engram_cli.tables.local import write_sparse

        return write_sparse(path, f, source, tables, reader, block_bytes, progress, checksum)
    size, digest, offsets = write_atomic(path, lambda sink: _write_body(f, sink, source, reader, tables, block_bytes, memo),
                                         progress=progress, checksum=checksum, pool=pool, block_bytes=block_bytes)
    tensors = tuple(_manifest_tensor(ot, off, tables.get(getattr(ot.source, "layer", None))) for ot, off in zip(f.tensors, offsets))
    return ManifestFile(f.name, f.format, size, digest, tensors, dict(f.info), checksum)


def quick_check(path: Path, f: OutFile, w: ManifestFile) -> None:
    """Re-open what was written: size, and the safetensors header against the plan."""
    if path.stat().st_size != w.bytes:
        raise VerificationError(f"{f.name}: {path.stat().st_size} bytes on disk, {w.bytes} written")
    if f.format == "safetensors":
        h = read_header(path)
        for ot in f.tensors:
            e = h.tensors.get(ot.name)
            if e is None or e.dtype != ot.dtype or e.shape != tuple(ot.shape):
                raise VerificationError(f"{f.name}: tensor {ot.name} does not match the plan after writing")


# ------------------------------------------------------------------ side files
def _write_side_files(plan: ShardPlan, staging: Path, algo: str) -> list[SideFile]:
    """Copies, rewrites, layout, ``engram-local.json`` and the index (last), each checksummed."""
    out: list[SideFile] = []
    for c in plan.copies:
        with atomic_path(staging / c.name) as tmp:
            shutil.copyfile(c.source, tmp)
        out.append(SideFile(c.name, "copy", (staging / c.name).stat().st_size, file_digest(staging / c.name, algorithm=algo), algo))
    for r in plan.rewrites:
        out.append(SideFile(r.name, "rewrite", *write_small(staging / r.name, r.content, algo), algo))
    if plan.layout_files is not None:
        save_layout(plan.layout_files.layout, staging)
        for name in plan.layout_files.names:
            p = staging / name
            out.append(SideFile(name, "layout", p.stat().st_size, file_digest(p, algorithm=algo), algo))
    for role, doc in (("local", plan.local_json), ("index", plan.index)):
        if doc is not None:
            text = (to_json_text(doc.document, indent=2) + "\n").encode()
            out.append(SideFile(doc.name, role, *write_small(staging / doc.name, text, algo), algo))
    return out


# ------------------------------------------------------------------ the executor
SCALE_SPILL = ".engram-scales.tmp"  # ScaleMemo's file in the staging folder (a name no output has)

def _write_all(plan: ShardPlan, source: Source, od: OutputDir, block_bytes: int, progress: ProgressCallback | None,
               verify: str, algo: str) -> list[ManifestFile]:
    total = sum(f.work_bytes for f in plan.files)
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total, "writing")

    tables = {t.layer_id: t for t in source.tables}
    pool = BufferPool(block_bytes, Sink.POOL_BLOCKS)  # shared by every file: buffers allocated once per run
    memo = ScaleMemo({ScaleMemo.key_of(ot.source) for f in plan.files for ot in f.tensors
                      if isinstance(ot.source, TableSlice) and ot.source.part == "scale"}, od.staged(SCALE_SPILL))
    written = []
    try:
        with RowReader() as reader, codec_threads(1):
            for f in plan.files:
                w = write_file(od.staged(f.name), f, source, reader, tables, block_bytes, tick, algo, pool, memo)
                if verify != "none":
                    quick_check(od.staged(f.name), f, w)
                written.append(w)
    finally:
        memo.close()
    return written


def execute(plan: ShardPlan, source: Source, out_dir: str | Path | None, *, force: bool = False,
            block_bytes: int = DEFAULT_BLOCK_BYTES, progress: ProgressCallback | None = None,
            verify: str = "quick", checksum: str = "xxh3-128") -> ShardResult:
    """Write every file of ``plan`` into ``out_dir`` (see the module docstring); ``verify`` is
    ``quick`` (sizes, headers), ``full`` (checksums and rows against the source) or ``none``."""
    if out_dir is None:
        raise UsageError("--output is required (or pass --dry-run)")
    algo = checksum_algorithm(checksum)
    od = prepare_output(out_dir, source.path, plan.output_names(), force)
    t0 = time.perf_counter()
    try:
        begin(od)
        files = _write_all(plan, source, od, block_bytes, progress, verify, algo)
        sides = _write_side_files(plan, od.staging, algo)
        layout = plan.layout_files.layout.to_dict() if plan.layout_files else None
        man = build_manifest(plan, files, sides, source.fingerprint(), layout)
        man.write(od.staging)
        if verify == "full":
            from engram_cli.tables.verify import verify_output

            rep = verify_output(od.staging, source=source, progress=progress, block_bytes=block_bytes)
            if not rep.ok:
                raise VerificationError(f"verification failed: {rep.summary()}", hint="the output was not written")
        commit(od)
    except BaseException:
        abort(od)
        raise
    return ShardResult(plan, od.path, files, sides, od.path / MANIFEST, time.perf_counter() - t0,
                       sum(f.bytes for f in files), verify, od.removed, od.kept, od.previous_problem)
