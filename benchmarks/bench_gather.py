"""Row gathers: the project's multithreaded host gather against single-thread numpy fancy indexing and
against the contiguous-copy ceiling measured in the same run; on a GPU, the UVA gather against the
SM host-read ceiling (an SM kernel streaming the same registered table; goal >= 0.8).

Fresh random indices for every timed call, a table far larger than the last-level cache, every
result checked against numpy fancy indexing (outside the timing), p50 of the per-call times.

    python benchmarks/bench_gather.py [--table-gb 1] [--row-bytes 264] [--rows 384,6144,98304] [--threads N]

Ends with ``ratio: <x> (multithreaded host gather vs single-thread numpy ...)``.
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engram_cli.offload import host, indices  # noqa: E402
from engram_cli.offload.hostbench import HostPlan, measure_copy, measure_gather  # noqa: E402
from engram_cli.offload.stats import dist  # noqa: E402


def host_rows(table: host.HostTable, rb: int, rows: int, threads: int, iters: int, pool: ThreadPoolExecutor, seed: int) -> dict:
    """GB/s (p50) of numpy, the thread pool, numba and the contiguous copy, for one rows-per-call size."""
    tab = table.view(rb)
    plan = HostPlan(verify_every=1)
    out = np.zeros((rows, rb), dtype=np.uint8)
    fns = {"numpy": host.gather_numpy(tab), "threads": host.gather_threads(tab, pool, threads)}
    if host.numba_available():
        fns["numba"] = host.gather_numba(tab, threads)
    res = {}
    for i, (name, fn) in enumerate(fns.items()):
        idx = indices.index_stream("uniform", tab.shape[0], rows, iters + 1, seed=seed * 100 + i)
        times, _ = measure_gather(fn, tab, out, idx, plan, name)
        res[name] = rows * rb / (dist(times).p50 * 1e3)
    copy = host.copy_contiguous(table.buf, pool, threads)
    times, _ = measure_copy(copy, table.buf, out, rows, rb, iters, seed, "contiguous copy")
    res["copy"] = rows * rb / (dist(times).p50 * 1e3)
    return res


def gpu_part(table: host.HostTable, rb: int, rows: int, iters: int) -> tuple[float, float, str] | None:
    """(UVA gather GB/s, SM host-read ceiling GB/s, kernel name) or None without CUDA."""
    import torch

    from engram_cli.offload import gpu

    if not gpu.cuda_available():
        return None
    reg = gpu.register_host(table.buf)
    try:
        view = table.view(rb)
        words = gpu.uva_view(view, reg).view(torch.int32)
        flat = gpu.uva_view(table.buf[: table.nbytes // 4 * 4], reg).view(torch.int32)
        out = torch.empty((rows, rb // 4), dtype=torch.int32, device="cuda")
        use_triton = gpu.triton_available()
        if use_triton:
            from engram_cli.offload import triton_gather

            sm2 = torch.cuda.get_device_properties(0).multi_processor_count // 2

            def gather(i):
                triton_gather.gather(words, i, out, sm2)
        else:
            def gather(i):
                torch.index_select(words, 0, i, out=out)
        rng = np.random.default_rng(7)
        idx = [torch.from_numpy(rng.integers(0, view.shape[0], size=rows)).cuda() for _ in range(iters + 1)]
        gather(idx[0])
        ok = np.array_equal(out.cpu().numpy().view(np.uint8), view[idx[0].cpu().numpy()])
        if not ok:
            raise SystemExit("UVA gather returned wrong rows")
        g = [rows * rb / (gpu.time_events(lambda i=i: gather(i)) * 1e3) for i in idx[1:]]
        n = (64 << 20) // 4
        dst = torch.empty(n, dtype=torch.int32, device="cuda")
        offs = rng.integers(0, (flat.numel() - n) // 1024, size=iters + 1) * 1024
        c = [n * 4 / (gpu.time_events(lambda o=int(o): torch.bitwise_not(flat[o:o + n], out=dst)) * 1e3) for o in offs]
        return float(np.median(g)), float(np.median(c[1:])), "triton, SM/2 grid" if use_triton else "index_select"
    finally:
        torch.cuda.synchronize()
        reg.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table-gb", type=float, default=1.0)
    ap.add_argument("--row-bytes", type=int, default=264)
    ap.add_argument("--rows", default="384,6144,98304")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--iters", type=int, default=30)
    args = ap.parse_args()
    rows_list = [int(r) for r in args.rows.split(",")]
    table = host.make_table(int(args.table_gb * 1e9), seed=0)
    print(f"table {args.table_gb:g} GB, {args.row_bytes} B rows, {args.threads} threads, {args.iters} fresh calls each; "
          f"numba {'on' if host.numba_available() else 'off'}; GB/s = 1e9 B/s (p50)")
    print(f"{'rows':>8} {'numpy':>8} {'threads':>8} {'numba':>8} {'copy':>8}  mt/numpy  mt/copy")
    last = None
    with ThreadPoolExecutor(args.threads) as pool:
        for k, rows in enumerate(rows_list):
            r = host_rows(table, args.row_bytes, rows, args.threads, args.iters, pool, k)
            mt = "numba" if "numba" in r else "threads"
            last = (rows, mt, r[mt] / r["numpy"], r[mt] / r["copy"])
            print(f"{rows:>8,} {r['numpy']:>8.2f} {r['threads']:>8.2f} {r.get('numba', float('nan')):>8.2f} "
                  f"{r['copy']:>8.2f}  {last[2]:>8.2f}  {last[3]:>7.3f}")
    g = gpu_part(table, args.row_bytes, rows_list[-1], args.iters)
    if g is None:
        print("gpu: skipped: no device")
    else:
        print(f"gpu: UVA gather ({g[2]}) {g[0]:.2f} GB/s vs SM host-read ceiling {g[1]:.2f} GB/s: "
              f"{g[0] / g[1]:.3f} (goal >= 0.8)")
    table.close()
    rows, mt, vs_numpy, vs_copy = last
    print(f"ratio: {vs_numpy:.2f} ({mt} multithreaded host gather vs single-thread numpy fancy indexing, "
          f"{args.row_bytes} B x {rows:,} rows; {vs_copy:.3f} of the contiguous-copy ceiling)")


if __name__ == "__main__":
    main()
