"""The GPU tier: bulk link ceilings, row gathers (UVA, staging, HBM, hot cache) and interference.

Runs only with CUDA (``gpu.require_cuda``). Every gather call gets fresh indices (uploaded before
timing), is timed with CUDA events (staging: wall clock, since it has a CPU stage), and every
``verify_every``-th result is checked against numpy fancy indexing of the host table.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from engram_cli.offload import gpu, host
from engram_cli.offload.stats import Dist, dist, ratio
from engram_cli.offload.verify import verify_rows
from engram_cli.progress import ProgressCallback

GRIDS = ("full", "sm/2", "64", "32", "16")


@dataclass(frozen=True)
class GpuPlan:
    bulk_sizes: tuple[int, ...] = (4 << 10, 64 << 10, 1 << 20, 16 << 20, 64 << 20, 256 << 20)
    trials: int = 5
    row_bytes: tuple[int, ...] = (64, 128, 256, 264, 512, 1024, 2048)
    rows: tuple[int, ...] = (24, 96, 384, 1536, 6144, 24576, 98304, 196608)
    grids: tuple[str, ...] = GRIDS
    iters: int = 20
    verify_every: int = 5
    hbm_bytes: int = 4 << 30
    hot_cache_rows: int = 1 << 20
    matmul_n: int = 4096
    interference_rows: int = 24576

    @classmethod
    def quick(cls) -> GpuPlan:
        return cls(bulk_sizes=(64 << 10, 4 << 20, 64 << 20), trials=3, row_bytes=(264,), rows=(24, 384, 6144, 98304),
                   grids=("full", "sm/2", "32"), iters=8, hbm_bytes=1 << 30, hot_cache_rows=1 << 18, matmul_n=2048)


@dataclass(frozen=True)
class BulkCell:
    mode: str  # ce-h2d-pinned | ce-h2d-pageable | ce-d2h-pinned | ce-d2h-pageable | sm-h2d | sm-d2h | hbm-d2d
    nbytes: int
    gbps: Dist


@dataclass(frozen=True)
class GpuCell:
    mode: str  # uva-index_select | uva-triton | staging | hbm | hot-cache
    grid: str | None
    row_bytes: int
    rows: int
    latency_us: Dist
    gbps: Dist
    ceiling: str
    ceiling_gbps: float | None
    ratio: float | None
    verified_calls: int


@dataclass(frozen=True)
class InterferenceCell:
    mode: str
    grid: str | None
    matmul_alone_us: Dist
    matmul_with_us: Dist
    slowdown_pct: float | None
    gather_gbps: Dist


@dataclass
class GpuResult:
    device: dict[str, Any] = field(default_factory=dict)
    registration: dict[str, Any] = field(default_factory=dict)
    bulk: list[BulkCell] = field(default_factory=list)
    gathers: list[GpuCell] = field(default_factory=list)
    interference: list[InterferenceCell] = field(default_factory=list)
    ceilings: dict[str, float | None] = field(default_factory=dict)
    omitted: dict[str, str] = field(default_factory=dict)


def grid_programs(grid: str, sm_count: int) -> int | None:
    """Programs for a grid cap name: None (uncapped) for "full", SM/2, or the number."""
    if grid == "full":
        return None
    if grid == "sm/2":
        return max(1, sm_count // 2)
    return int(grid)


class _Ctx:
    """Buffers shared by the GPU measurements: the registered table, its UVA view, scratch space."""

    def __init__(self, table: host.HostTable, plan: GpuPlan, threads: int, seed: int):
        import torch

        self.torch, self.plan, self.table, self.threads = torch, plan, table, threads
        self.rng = np.random.default_rng(seed + 99)
        self.reg = gpu.register_host(table.buf)
        self.uva = gpu.uva_view(table.buf, self.reg)  # uint8 [nbytes] on "cuda"
        self.sm_count = torch.cuda.get_device_properties(0).multi_processor_count
        cap = max(plan.bulk_sizes)
        self.dev_a = torch.empty(cap, dtype=torch.uint8, device="cuda")
        self.dev_b = torch.empty(cap, dtype=torch.uint8, device="cuda")
        self.scratch_np = np.zeros(cap, dtype=np.uint8)  # registered D2H target
        self.scratch_reg = gpu.register_host(self.scratch_np)
        self.scratch_uva = gpu.uva_view(self.scratch_np, self.scratch_reg)
        self.pageable = np.zeros(min(table.nbytes, 1 << 30), dtype=np.uint8)
        self.pageable[:] = table.buf[: self.pageable.size]

    def close(self) -> None:
        self.torch.cuda.synchronize()
        del self.uva, self.scratch_uva
        self.reg.close()
        self.scratch_reg.close()

    def offset(self, nbytes: int, limit: int) -> int:
        return int(self.rng.integers(0, max(1, (limit - nbytes) // 4096))) * 4096

    def words(self, rb: int) -> tuple[Any, np.ndarray]:
        """(UVA int32 [rows, rb/4], host uint8 [rows, rb]) views of the table for one row size."""
        view = self.table.view(rb)
        return self.uva[: view.size].view(self.torch.int32).view(view.shape[0], rb // 4), view


def _bulk_modes(ctx: _Ctx, size: int) -> dict[str, tuple[Callable[[int], Any], int]]:
    """mode -> (copy at a source offset, the bytes offsets may range over)."""
    t = ctx.torch
    table_t, scratch_t, pageable_t = (t.from_numpy(a) for a in (ctx.table.buf, ctx.scratch_np, ctx.pageable))
    a, b = ctx.dev_a[:size], ctx.dev_b[:size]
    w = size // 4
    return {
        "ce-h2d-pinned": (lambda o: a.copy_(table_t[o:o + size], non_blocking=True), ctx.table.nbytes),
        "ce-h2d-pageable": (lambda o: a.copy_(pageable_t[o:o + size]), ctx.pageable.size),
        "ce-d2h-pinned": (lambda o: scratch_t[:size].copy_(a, non_blocking=True), size),
        "ce-d2h-pageable": (lambda o: pageable_t[:size].copy_(a), size),
        "sm-h2d": (lambda o: t.bitwise_not(ctx.uva[o:o + size].view(t.int32), out=a.view(t.int32)[:w]), ctx.table.nbytes),
        "sm-d2h": (lambda o: t.bitwise_not(a.view(t.int32), out=ctx.scratch_uva[:size].view(t.int32)), size),
        "hbm-d2d": (lambda o: b.copy_(a), size),
    }


def run_bulk(ctx: _Ctx, res: GpuResult, report: ProgressCallback) -> None:
    """nvbandwidth-style bulk copies per mode and size; GB/s per trial (fresh source offsets)."""
    for size in ctx.plan.bulk_sizes:
        loops = int(max(2, min(256, (256 << 20) // size)))
        for mode, (fn, limit) in _bulk_modes(ctx, size).items():
            report(0, None, f"gpu: bulk {mode} {size:,} B")
            offs = [[ctx.offset(size, limit) for _ in range(loops)] for _ in range(ctx.plan.trials + 1)]
            rates = []
            for i, trial in enumerate(offs):  # trial 0 warms up
                us = gpu.time_events(lambda fn=fn, trial=trial: [fn(o) for o in trial])
                if i:
                    rates.append(size * loops / (us * 1e3))
            res.bulk.append(BulkCell(mode, size, dist(rates)))
    for mode in ("sm-h2d", "ce-h2d-pinned", "hbm-d2d"):
        vals = [c.gbps.p50 for c in res.bulk if c.mode == mode and c.nbytes >= (1 << 20) and c.gbps.p50]
        res.ceilings[mode] = max(vals) if vals else None


def _timed(ctx: _Ctx, call: Callable[[int], Any], n: int, check: Callable[[int], None], wall: bool) -> tuple[list[float], int]:
    """Call 0 warms up; calls 1..n-1 are timed (events, or wall clock for CPU stages); checks every k-th."""
    call(0)
    ctx.torch.cuda.synchronize()
    check(0)
    times, verified = [], 1
    for i in range(1, n):
        if wall:
            t0 = time.perf_counter_ns()
            call(i)
            ctx.torch.cuda.synchronize()
            times.append((time.perf_counter_ns() - t0) / 1e3)
        else:
            times.append(gpu.time_events(lambda i=i: call(i)))
        if i % ctx.plan.verify_every == 0:
            check(i)
            verified += 1
    return times, verified


def _cell(mode: str, grid: str | None, rb: int, rows: int, times: list[float], verified: int, ceiling: str,
          ceilings: dict[str, float | None]) -> GpuCell:
    gb = dist([rows * rb / (x * 1e3) for x in times if x > 0])
    ceil = ceilings.get(ceiling)
    return GpuCell(mode, grid, rb, rows, dist(times), gb, ceiling, ceil, ratio(gb.p50, ceil), verified)


class _RowSize:
    """Per row size: UVA/host views, HBM copy of a prefix, a hot cache, a pinned staging buffer."""

    def __init__(self, ctx: _Ctx, rb: int, max_rows: int):
        t = ctx.torch
        self.ctx, self.rb = ctx, rb
        self.uva_w, self.host = ctx.words(rb)
        self.n_rows = self.host.shape[0]
        self.out = t.empty((max_rows, rb // 4), dtype=t.int32, device="cuda")
        self.hbm_rows = int(min(self.n_rows, ctx.plan.hbm_bytes // rb))
        self.hbm = t.empty((self.hbm_rows, rb // 4), dtype=t.int32, device="cuda")
        self.hbm.copy_(t.from_numpy(self.host[: self.hbm_rows]).view(t.int32))  # a CE copy from the pinned table
        ids = np.unique(ctx.rng.integers(0, self.n_rows, size=ctx.plan.hot_cache_rows))
        self.cache_ids_np = ids
        self.cache_ids = t.from_numpy(ids).cuda()
        self.cache = t.index_select(self.uva_w, 0, self.cache_ids)
        self.staging_np = np.zeros((max_rows, rb), dtype=np.uint8)
        self.staging_reg = gpu.register_host(self.staging_np)
        self.staging_t = t.from_numpy(self.staging_np.reshape(-1))

    def close(self) -> None:
        self.ctx.torch.cuda.synchronize()
        self.staging_reg.close()

    def check(self, rows: int, idx_np: list[np.ndarray], label: str) -> Callable[[int], None]:
        def run(i: int) -> None:
            got = self.out[:rows].cpu().numpy().view(np.uint8).reshape(rows, self.rb)
            verify_rows(got, self.host, idx_np[i], label)
        return run


def _gather_calls(rs: _RowSize, rows: int, pool: ThreadPoolExecutor) -> list[tuple[str, str | None, Callable, list, bool, str]]:
    """(mode, grid, call(i), host index arrays, wall-clock?, ceiling) for one rows-per-call size."""
    ctx, t = rs.ctx, rs.ctx.torch
    n = ctx.plan.iters + 1
    uni = [ctx.rng.integers(0, rs.n_rows, size=rows) for _ in range(n)]
    uni_d = [t.from_numpy(i).cuda() for i in uni]
    hbm = [ctx.rng.integers(0, rs.hbm_rows, size=rows) for _ in range(n)]
    hbm_d = [t.from_numpy(i).cuda() for i in hbm]
    hot = [rs.cache_ids_np[ctx.rng.integers(0, rs.cache_ids_np.size, size=rows)] for _ in range(n)]
    hot_d = [t.from_numpy(i).cuda() for i in hot]
    out = rs.out[:rows]
    gfn = host.gather_threads(rs.host, pool, ctx.threads)
    nbytes = rows * rs.rb

    def staging(i: int) -> None:
        gfn(uni[i], rs.staging_np[:rows])
        rs.out.view(t.uint8).view(-1)[:nbytes].copy_(rs.staging_t[:nbytes], non_blocking=True)

    calls = [("uva-index_select", None, lambda i: t.index_select(rs.uva_w, 0, uni_d[i], out=out), uni, False, "sm-h2d"),
             ("staging", None, staging, uni, True, "ce-h2d-pinned"),
             ("hbm", None, lambda i: t.index_select(rs.hbm, 0, hbm_d[i], out=out), hbm, False, "hbm-d2d"),
             ("hot-cache", None, lambda i: t.index_select(rs.cache, 0, t.searchsorted(rs.cache_ids, hot_d[i]), out=out),
              hot, False, "hbm-d2d")]
    if gpu.triton_available():
        from engram_cli.offload import triton_gather

        for g in ctx.plan.grids:
            progs = grid_programs(g, ctx.sm_count)
            calls.append(("uva-triton", g, lambda i, p=progs: triton_gather.gather(rs.uva_w, uni_d[i], out, p), uni, False,
                          "sm-h2d"))
    return calls


def run_gathers(ctx: _Ctx, res: GpuResult, report: ProgressCallback) -> None:
    """Modes A (UVA: index_select and the Triton kernel per grid cap), B (staging), C (HBM), D (hot cache)."""
    if not gpu.triton_available():
        res.omitted["uva-triton"] = "triton is not installed (grid caps need it)"
    max_bytes = 64 << 20
    with ThreadPoolExecutor(max_workers=max(1, ctx.threads)) as pool:
        for rb in ctx.plan.row_bytes:
            rows_list = [r for r in ctx.plan.rows if r * rb <= max_bytes]
            if not rows_list:
                continue
            rs = _RowSize(ctx, rb, max(rows_list))
            try:
                for rows in rows_list:
                    for mode, grid, call, idx, wall, ceil in _gather_calls(rs, rows, pool):
                        report(0, None, f"gpu: {mode}{'/' + grid if grid else ''} {rb} B x {rows:,}")
                        label = f"gpu {mode} {rb} B x {rows}"
                        times, ok = _timed(ctx, call, len(idx), rs.check(rows, idx, label), wall)
                        res.gathers.append(_cell(mode, grid, rb, rows, times, ok, ceil, res.ceilings))
            finally:
                rs.close()
                del rs


def run_interference(ctx: _Ctx, res: GpuResult, report: ProgressCallback) -> None:
    """Slowdown of a bf16 matmul loop while a gather loop runs on a side stream, per mode and grid cap."""
    t = ctx.torch
    n, rb, rows = ctx.plan.matmul_n, 264, ctx.plan.interference_rows
    a = t.randn(n, n, device="cuda", dtype=t.bfloat16)
    b = t.randn(n, n, device="cuda", dtype=t.bfloat16)
    c = t.empty(n, n, device="cuda", dtype=t.bfloat16)

    def mm_loop() -> None:
        for _ in range(20):
            t.mm(a, b, out=c)

    mm_loop()
    alone = [gpu.time_events(mm_loop) for _ in range(ctx.plan.trials)]
    uva_w, host_view = ctx.words(rb)
    pool = [t.from_numpy(ctx.rng.integers(0, host_view.shape[0], size=rows)).cuda() for _ in range(64)]
    out = t.empty((rows, rb // 4), dtype=t.int32, device="cuda")
    modes: list[tuple[str, str | None, Callable[[Any], Any]]] = [
        ("uva-index_select", None, lambda i: t.index_select(uva_w, 0, i, out=out))]
    if gpu.triton_available():
        from engram_cli.offload import triton_gather

        for g in ctx.plan.grids:
            p = grid_programs(g, ctx.sm_count)
            modes.append(("uva-triton", g, lambda i, p=p: triton_gather.gather(uva_w, i, out, p)))
    side = t.cuda.Stream()
    for mode, grid, fn in modes:
        report(0, None, f"gpu: interference {mode}{'/' + grid if grid else ''}")
        one = gpu.time_events(lambda fn=fn: fn(pool[0]))
        k = int(min(4000, max(2, np.ceil(np.median(alone) / max(one, 1.0)) + 2)))
        with_mm, g_rates = [], []
        for trial in range(ctx.plan.trials):
            g0, g1 = t.cuda.Event(enable_timing=True), t.cuda.Event(enable_timing=True)
            side.wait_stream(t.cuda.current_stream())
            with t.cuda.stream(side):
                g0.record(side)
                for j in range(k):
                    fn(pool[(trial * k + j) % len(pool)])
                g1.record(side)
            with_mm.append(gpu.time_events(mm_loop))
            t.cuda.synchronize()
            g_rates.append(k * rows * rb / (g0.elapsed_time(g1) * 1e6))
        ma, mw = dist(alone), dist(with_mm)
        slow = None if not ma.p50 else 100.0 * (mw.p50 / ma.p50 - 1.0)
        res.interference.append(InterferenceCell(mode, grid, ma, mw, slow, dist(g_rates)))


def run_gpu(plan: GpuPlan, *, table_bytes: int, threads: int, seed: int = 0,
            progress: ProgressCallback | None = None) -> GpuResult:
    """The whole GPU tier on a registered host table of ``table_bytes``."""
    gpu.require_cuda()
    report = progress or (lambda *a: None)
    res = GpuResult()
    report(0, None, "gpu: filling and registering the table")
    table = host.make_table(table_bytes, seed=seed + 3)
    ctx = _Ctx(table, plan, threads, seed)
    try:
        res.registration = {"requested_bytes": ctx.reg.nbytes, "registered_bytes": ctx.reg.nbytes,
                            "pin_memory_would_allocate": ctx.reg.pin_memory_would_allocate,
                            "method": "cudaHostRegister (portable, mapped) on an anonymous mmap",
                            "uva_pointer": ctx.reg.device_ptr_source}
        run_bulk(ctx, res, report)
        run_gathers(ctx, res, report)
        run_interference(ctx, res, report)
        res.device = gpu.device_info()  # after the load: PCIe links downtrain when idle
    finally:
        ctx.close()
        table.close()
    return res
