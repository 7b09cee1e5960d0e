"""The file (NVMe) tier sweep: mmap cold/warm with and without MADV_RANDOM, pread at queue depths, O_DIRECT."""

from __future__ import annotations

import mmap
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engram_cli.errors import VerificationError
from engram_cli.offload import files
from engram_cli.offload.host import split
from engram_cli.offload.stats import Dist, dist, ratio
from engram_cli.offload.verify import checksum
from engram_cli.progress import ProgressCallback


@dataclass(frozen=True)
class FilePlan:
    row_bytes: int = 264
    rows: int = 2048  # rows per cold measurement
    warm_rows: int = 50_000
    batch: int = 384  # rows per warm mmap gather (a decode batch of 16 x 24 rows)
    qds: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128)
    direct: bool = True
    seq_bytes: int = 256 << 20

    @classmethod
    def quick(cls) -> FilePlan:
        return cls(rows=256, warm_rows=10_000, qds=(1, 8, 32, 128), seq_bytes=64 << 20)


@dataclass(frozen=True)
class FileCell:
    """One file-tier figure: per-row latency, rows/s, useful GB/s against the sequential ceiling."""

    method: str  # mmap | pread | pread-direct
    cache: str  # cold | warm
    advice: str | None  # random | normal (mmap only)
    qd: int
    rows: int
    latency_us: Dist
    rows_per_s: float
    gbps: float
    ratio: float | None
    amplification: float | None
    verified_rows: int


@dataclass
class FileResult:
    path: str
    fstype: str | None
    mountpoint: str | None
    on_tmpfs: bool
    file_bytes: int
    row_bytes: int
    seq_gbps: Dist | None = None
    cells: list[FileCell] = field(default_factory=list)
    omitted: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    cold_effective: bool | None = None


class _Run:
    def __init__(self, df: files.DataFile, plan: FilePlan, seed: int):
        self.df, self.plan = df, plan
        self.n_rows = df.nbytes // plan.row_bytes
        self.rng = np.random.default_rng(seed + 1)
        self.seq: float | None = None

    def fresh(self, n: int) -> np.ndarray:
        return self.rng.integers(0, self.n_rows, size=n, dtype=np.int64)

    def verify(self, out: np.ndarray, idx: np.ndarray, what: str) -> int:
        if checksum(out) != checksum(files.expected_rows(idx, self.plan.row_bytes, seed=self.df.seed)):
            raise VerificationError(f"file tier {what}: rows differ from the numpy reference")
        return int(idx.size)

    def cell(self, method: str, cache: str, advice: str | None, qd: int, idx: np.ndarray, out: np.ndarray,
             lat_us: list[float] | np.ndarray, wall_s: float, dev_bytes: int | None) -> FileCell:
        n, rb = idx.size, self.plan.row_bytes
        gbps = n * rb / wall_s / 1e9 if wall_s > 0 else 0.0
        amp = None if dev_bytes is None or cache == "warm" else dev_bytes / (n * rb)
        return FileCell(method, cache, advice, qd, n, dist(lat_us), n / wall_s if wall_s > 0 else 0.0, gbps,
                        ratio(gbps, self.seq), amp, self.verify(out, idx, f"{method} {cache} qd{qd}"))


def _delta(before: int | None) -> int | None:
    after = files.read_bytes_counter()
    return None if before is None or after is None else after - before


def sequential_ceiling(fd: int, nbytes: int, seq_bytes: int, rng: np.random.Generator) -> Dist:
    """Cold sequential 4 MiB reads (the file tier's ceiling), GB/s per read."""
    files.drop_cache(fd)
    seq_bytes = min(seq_bytes, nbytes)
    start = int(rng.integers(0, max(1, (nbytes - seq_bytes) // files.BLOCK))) * files.BLOCK
    rates = []
    for off in range(start, start + seq_bytes, 4 << 20):
        n = min(4 << 20, start + seq_bytes - off)
        t0 = time.perf_counter()
        os.pread(fd, n, off)
        rates.append(n / (time.perf_counter() - t0) / 1e9)
    return dist(rates)


def _mmap_cells(run: _Run, fd: int, res: FileResult) -> None:
    rb = run.plan.row_bytes
    out = np.zeros((run.plan.rows, rb), dtype=np.uint8)
    for advice in ("random", "normal"):
        files.drop_cache(fd)
        idx = run.fresh(run.plan.rows)
        before = files.read_bytes_counter()
        t0 = time.perf_counter()
        lat = files.mmap_rows(fd, run.df.nbytes, rb, idx, out, random_advice=advice == "random")
        res.cells.append(run.cell("mmap", "cold", advice, 1, idx, out, lat, time.perf_counter() - t0, _delta(before)))


def _pread_cells(run: _Run, fd: int, res: FileResult, cache: str, qds: tuple[int, ...], direct_fd: int | None) -> None:
    rb = run.plan.row_bytes
    n = run.plan.rows if cache == "cold" else min(run.plan.warm_rows, 20 * run.plan.rows)
    out = np.zeros((n, rb), dtype=np.uint8)
    for method, use_fd in (("pread", fd), ("pread-direct", direct_fd)):
        if use_fd is None or (method == "pread-direct" and cache == "warm"):
            continue
        for qd in qds:
            if cache == "cold":
                files.drop_cache(fd)
            idx, times = run.fresh(n), np.zeros(n)
            reader = files.direct_rows if method == "pread-direct" else files.pread_rows
            before = files.read_bytes_counter()
            t0 = time.perf_counter()
            with ThreadPoolExecutor(max_workers=qd) as pool:
                futs = [pool.submit(reader, use_fd, rb, idx, out, lo, hi, times) for lo, hi in split(n, qd)]
                got = [f.result() for f in futs]
            wall = time.perf_counter() - t0
            dev = _delta(before)
            if method == "pread-direct" and not dev:
                dev = int(sum(got))
            res.cells.append(run.cell(method, cache, None, qd, idx, out, times, wall, dev))


def _warm_mmap(run: _Run, fd: int, res: FileResult) -> None:
    rb, b = run.plan.row_bytes, run.plan.batch
    m = mmap.mmap(fd, run.df.nbytes, access=mmap.ACCESS_READ)
    try:
        view = np.frombuffer(m, dtype=np.uint8, count=run.n_rows * rb).reshape(-1, rb)
        out = np.zeros((b, rb), dtype=np.uint8)
        lat, total, checked = [], 0.0, 0
        for _ in range(max(1, run.plan.warm_rows // b)):
            idx = run.fresh(b)
            t0 = time.perf_counter_ns()
            np.take(view, idx, axis=0, out=out)
            dt = (time.perf_counter_ns() - t0) / 1e3
            lat.append(dt / b)
            total += dt / 1e6
            checked += run.verify(out, idx, "mmap warm")
        del view
    finally:
        m.close()
    n = b * len(lat)
    res.cells.append(FileCell("mmap", "warm", None, 1, n, dist(lat), n / total, n * rb / total / 1e9,
                              ratio(n * rb / total / 1e9, run.seq), None, checked))


def run_files(plan: FilePlan, directory: Path, nbytes: int, *, seed: int = 0,
              progress: ProgressCallback | None = None) -> FileResult:
    """Write the table file under ``directory``, run the sweep, delete the file."""
    report = progress or (lambda *a: None)
    fstype, mount = files.filesystem_of(directory)
    path = Path(directory) / f".engram-offload-{os.getpid()}.bin"
    df = files.DataFile(path, nbytes - nbytes % 8, seed, fstype, mount)
    res = FileResult(str(path), fstype, mount, df.on_tmpfs, df.nbytes, plan.row_bytes)
    if df.on_tmpfs:
        res.warnings.append(f"{directory} is on {fstype}: the file tier measures memory, not storage")
    try:
        files.write_table_file(path, df.nbytes, seed=seed,
                               progress=lambda done: report(done, df.nbytes, "file: writing the table file"))
        run = _Run(df, plan, seed)
        fd = os.open(path, os.O_RDONLY)
        direct_fd = files.open_direct(path) if plan.direct else None
        if plan.direct and direct_fd is None:
            res.omitted["pread-direct"] = f"O_DIRECT is not supported on {fstype or 'this filesystem'}"
        try:
            report(0, None, "file: sequential ceiling")
            res.seq_gbps = sequential_ceiling(fd, df.nbytes, plan.seq_bytes, run.rng)
            run.seq = res.seq_gbps.p50
            report(0, None, "file: cold mmap rows")
            _mmap_cells(run, fd, res)
            report(0, None, "file: cold pread rows")
            _pread_cells(run, fd, res, "cold", plan.qds, direct_fd)
            report(0, None, "file: warm page cache")
            files.warm_cache(fd, df.nbytes)
            _warm_mmap(run, fd, res)
            _pread_cells(run, fd, res, "warm", (1, max(plan.qds)), None)
        finally:
            os.close(fd)
            if direct_fd is not None:
                os.close(direct_fd)
    finally:
        path.unlink(missing_ok=True)
    amps = [c.amplification for c in res.cells if c.cache == "cold" and c.method == "mmap"]
    res.cold_effective = None if not amps or any(a is None for a in amps) else any(a > 0 for a in amps)
    if res.cold_effective is False:
        res.warnings.append("the page cache was not dropped (no storage reads seen): cold figures are warm ones")
    return res
