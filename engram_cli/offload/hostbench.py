"""The host-tier sweep: row gathers vs the contiguous-copy ceiling measured in the same run."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from engram_cli.offload import host, indices
from engram_cli.offload.stats import Dist, dist, ratio
from engram_cli.offload.verify import verify_bytes, verify_rows
from engram_cli.progress import ProgressCallback

METHODS = ("numpy", "torch", "threads", "numba")


@dataclass(frozen=True)
class HostPlan:
    """What the host sweep measures (row sizes, rows per call, distributions, budgets)."""

    row_bytes: tuple[int, ...] = (64, 128, 256, 264, 512, 1024, 2048)
    rows: tuple[int, ...] = (24, 96, 384, 1536, 6144, 24576, 98304, 196608)
    methods: tuple[str, ...] = METHODS
    dists: tuple[str, ...] = ("uniform", "zipf", "trace")
    dist_row_bytes: int = 264
    dist_rows: tuple[int, ...] = (384, 6144, 98304)
    budget_rows: int = 1_000_000
    min_iters: int = 5
    max_iters: int = 300
    max_call_bytes: int = 64 << 20
    verify_every: int = 4
    thp: bool = True

    @classmethod
    def quick(cls) -> HostPlan:
        return cls(row_bytes=(64, 264, 2048), rows=(24, 384, 6144, 49152), dist_rows=(384, 24576),
                   budget_rows=100_000, max_iters=40, max_call_bytes=32 << 20)


@dataclass(frozen=True)
class Cell:
    """One measured figure: latency per call and useful GB/s, against its ceiling."""

    method: str
    row_bytes: int
    rows: int
    dist: str
    threads: int
    latency_us: Dist
    gbps: Dist
    ceiling_gbps: float | None
    ratio: float | None
    verified_calls: int
    huge_pages: bool | None = None

    @property
    def ns_per_row(self) -> float | None:
        return None if self.latency_us.p50 is None else 1e3 * self.latency_us.p50 / self.rows


@dataclass
class HostResult:
    table_bytes: int
    llc_bytes: int | None
    threads: int
    torch_threads: int
    thp_mode: str | None
    numba: bool
    cells: list[Cell] = field(default_factory=list)  # gathers (method != "copy")
    ceilings: list[Cell] = field(default_factory=list)  # contiguous copies (method "copy")
    thp: list[Cell] = field(default_factory=list)
    thp_coverage: dict[str, int | None] = field(default_factory=dict)
    omitted: dict[str, str] = field(default_factory=dict)


def _iters(plan: HostPlan, rows: int) -> int:
    return int(min(plan.max_iters, max(plan.min_iters, plan.budget_rows // max(rows, 1))))


def time_calls(fn: Callable[[np.ndarray, np.ndarray], None], idx_list: list[np.ndarray], out: np.ndarray,
               check: Callable[[int, np.ndarray, np.ndarray], None]) -> list[float]:
    """Time ``fn(idx, out)`` once per fresh index array (µs); ``check(i, idx, out)`` runs outside the timing."""
    times = []
    for i, idx in enumerate(idx_list):
        view = out[: idx.size]
        t0 = time.perf_counter_ns()
        fn(idx, view)
        times.append((time.perf_counter_ns() - t0) / 1e3)
        check(i, idx, view)
    return times


def _cell(method: str, rb: int, rows: int, dist_name: str, threads: int, times: list[float], verified: int,
          ceiling: float | None, huge: bool | None = None) -> Cell:
    nbytes = rb * rows
    lat = dist(times)
    gb = dist([nbytes / (t * 1e3) for t in times if t > 0])
    return Cell(method, rb, rows, dist_name, threads, lat, gb, ceiling, ratio(gb.p50, ceiling), verified, huge)


def measure_gather(fn, table: np.ndarray, out: np.ndarray, idx_list: list[np.ndarray], plan: HostPlan,
                   label: str) -> tuple[list[float], int]:
    """Warm up on the first array, time the rest, verify every ``plan.verify_every``-th call."""
    fn(idx_list[0], out[: idx_list[0].size])
    verify_rows(out[: idx_list[0].size], table, idx_list[0], label)
    checked = [1]

    def check(i: int, idx: np.ndarray, view: np.ndarray) -> None:
        if i % plan.verify_every == 0:
            verify_rows(view, table, idx, label)
            checked[0] += 1

    return time_calls(fn, idx_list[1:], out, check), checked[0]


def measure_copy(copy, flat: np.ndarray, out: np.ndarray, rows: int, rb: int, iters: int, seed: int,
                 label: str) -> tuple[list[float], int]:
    """Contiguous copies of ``rows * rb`` bytes from fresh random offsets (the ceiling)."""
    n = rows * rb
    rng = np.random.default_rng(seed)
    offs = rng.integers(0, max(1, (flat.size - n) // rb), size=iters + 1) * rb
    view = out.reshape(-1)[:n].reshape(rows, rb)
    copy(int(offs[0]), view)
    times, checked = [], 0
    for i, off in enumerate(offs[1:]):
        t0 = time.perf_counter_ns()
        copy(int(off), view)
        times.append((time.perf_counter_ns() - t0) / 1e3)
        if i % 4 == 0:
            verify_bytes(view.reshape(-1), flat[int(off): int(off) + n], label)
            checked += 1
    return times, checked


def _methods(plan: HostPlan, numba_ok: bool) -> tuple[str, ...]:
    return tuple(m for m in plan.methods if m != "numba" or numba_ok)


def _thread_count(method: str, threads: int, torch_threads: int) -> int:
    return {"numpy": 1, "torch": torch_threads}.get(method, threads)


class _Sweep:
    """State of one host sweep: the table, the pool, the gather functions per row size, ceilings."""

    def __init__(self, plan: HostPlan, table: host.HostTable, threads: int, pool: ThreadPoolExecutor, seed: int):
        import torch

        self.plan, self.table, self.threads, self.pool, self.seed = plan, table, threads, pool, seed
        self.torch_threads = torch.get_num_threads()
        self.numba_ok = host.numba_available()
        self.ceilings: dict[tuple[int, int, int], Cell] = {}
        self._seed_counter = seed * 1_000_003

    def next_seed(self) -> int:
        self._seed_counter += 1
        return self._seed_counter

    def fn(self, method: str, tab: np.ndarray):
        if method == "numpy":
            return host.gather_numpy(tab)
        if method == "torch":
            return host.gather_torch(tab)
        if method == "threads":
            return host.gather_threads(tab, self.pool, self.threads)
        if method == "numba":
            return host.gather_numba(tab, self.threads)
        raise ValueError(method)

    def ceiling(self, rb: int, rows: int, threads: int, out: np.ndarray) -> Cell:
        key = (rb, rows, threads)
        if key not in self.ceilings:
            copy = host.copy_contiguous(self.table.buf, self.pool if threads > 1 else None, threads)
            times, checked = measure_copy(copy, self.table.buf, out, rows, rb, _iters(self.plan, rows), self.next_seed(),
                                          f"contiguous copy {rb} B x {rows}")
            self.ceilings[key] = _cell("copy", rb, rows, "contiguous", threads, times, checked, None)
        return self.ceilings[key]

    def gather(self, method: str, rb: int, rows: int, dist_name: str, out: np.ndarray, *, zipf_s: float,
               trace: indices.TraceReplay | None, table: host.HostTable | None = None) -> Cell:
        src = (table or self.table).view(rb)
        fn = self.fn(method, src)
        idx_list = indices.index_stream(dist_name, src.shape[0], rows, _iters(self.plan, rows) + 1,
                                        seed=self.next_seed(), zipf_s=zipf_s, trace=trace)
        label = f"{method} gather {rb} B x {rows} ({dist_name})"
        times, checked = measure_gather(fn, src, out, idx_list, self.plan, label)
        tcount = _thread_count(method, self.threads, self.torch_threads)
        ceil = self.ceiling(rb, rows, tcount, out)
        huge = None if table is None else table.huge_pages
        return _cell(method, rb, rows, dist_name, tcount, times, checked, ceil.gbps.p50, huge)


def _cells_total(plan: HostPlan, methods: tuple[str, ...], dists: tuple[str, ...]) -> int:
    main = sum(1 for rb in plan.row_bytes for r in plan.rows if r * rb <= plan.max_call_bytes) * len(methods)
    return main + len(plan.dist_rows) * len(dists) * 2 + (4 if plan.thp else 0)


def run_host(plan: HostPlan, *, table_bytes: int, threads: int, seed: int = 0, trace: np.ndarray | None = None,
             zipf_s: float = 1.0, llc_bytes: int | None = None, progress: ProgressCallback | None = None) -> HostResult:
    """Allocate the table, run the sweep, return every cell with its ceiling."""
    import torch

    report = progress or (lambda *a: None)
    report(0, None, "host: filling the table")
    table = host.make_table(table_bytes, seed=seed)
    res = HostResult(table_bytes, llc_bytes, threads, torch.get_num_threads(), host.thp_mode(), host.numba_available())
    dists = tuple(d for d in plan.dists if d != "trace" or (trace is not None and trace.size))
    if "trace" in plan.dists and "trace" not in dists:
        res.omitted["trace"] = "no trace"
    replay = indices.TraceReplay(np.asarray(trace, dtype=np.int64)) if trace is not None and trace.size else None
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        sw = _Sweep(plan, table, threads, pool, seed)
        methods = _methods(plan, sw.numba_ok)
        if "numba" in plan.methods and not sw.numba_ok:
            res.omitted["numba"] = "numba is not installed"
        total, done = _cells_total(plan, methods, dists), 0
        for rb in plan.row_bytes:
            max_rows = max((r for r in plan.rows if r * rb <= plan.max_call_bytes), default=0)
            if not max_rows:
                continue
            out = np.zeros((max_rows, rb), dtype=np.uint8)
            for rows in plan.rows:
                if rows * rb > plan.max_call_bytes:
                    continue
                for m in methods:
                    report(done, total, f"host: {m} {rb} B x {rows:,} rows")
                    res.cells.append(sw.gather(m, rb, rows, "uniform", out, zipf_s=zipf_s, trace=replay))
                    done += 1
        rb = plan.dist_row_bytes
        out = np.zeros((max(plan.dist_rows), rb), dtype=np.uint8)
        for d in dists:
            for rows in plan.dist_rows:
                for m in ("numpy", "threads"):
                    report(done, total, f"host: {m} {rb} B x {rows:,} rows ({d})")
                    if d != "uniform" or rb not in plan.row_bytes or rows not in plan.rows:
                        res.cells.append(sw.gather(m, rb, rows, d, out, zipf_s=zipf_s, trace=replay))
                    done += 1
        if plan.thp:
            _thp_section(sw, res, table_bytes, seed, report, done, total)
        res.ceilings = list(sw.ceilings.values())
    table.close()
    return res


def _thp_section(sw: _Sweep, res: HostResult, table_bytes: int, seed: int, report, done: int, total: int) -> None:
    """Same gathers from a table advised MADV_HUGEPAGE and one advised MADV_NOHUGEPAGE."""
    if res.thp_mode not in ("always", "madvise"):
        res.omitted["thp"] = f"transparent huge pages are {res.thp_mode or 'not available'}"
        return
    rb, rows_list = sw.plan.dist_row_bytes, sw.plan.dist_rows[-1:]
    size = min(table_bytes, 1 << 30)
    out = np.zeros((max(rows_list), rb), dtype=np.uint8)
    for huge in (True, False):
        t = host.make_table(size, seed=seed + 7, huge_pages=huge)
        res.thp_coverage["huge" if huge else "no_huge"] = host.anon_huge_bytes(t.buf.ctypes.data)
        for rows in rows_list:
            for m in ("numpy", "threads"):
                report(done, total, f"host: THP {'on' if huge else 'off'} {m}")
                res.thp.append(sw.gather(m, rb, rows, "uniform", out, zipf_s=1.0, trace=None, table=t))
                done += 1
        t.close()
