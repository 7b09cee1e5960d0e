"""Hashing throughput: engram's kernel against the straightforward per-order implementation.

Same inputs (random compressed ids from the real DeepSeek-V4.1-Flash layout: 2 layers x 24
columns), the same output (global row ids; the baseline computes head-local ids per head
and adds the offsets, as the demo's MultiHeadEmbedding does), checked identical, timed side
by side in one run. Also times the torch
kernel (CPU, and CUDA when available) and `engram build-vocab` on the bundled tokenizer.

    python benchmarks/bench_hash.py [--tokens 1000000] [--repeats 3]

Ends with ``ratio: <x> (engram numpy kernel vs straightforward numpy)``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.straightforward_hash import straightforward_hash  # noqa: E402
from engram_cli.layout import hashing, layout_from_preset  # noqa: E402


def best_of(fn, repeats):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-build-vocab", action="store_true")
    args = ap.parse_args()

    layout = layout_from_preset("deepseek-v4.1-flash")  # real primes and multipliers
    rng = np.random.default_rng(0)
    comp = rng.integers(0, layout.compressed_vocab_size, size=(1, args.tokens), dtype=np.int64)
    avail = hashing.available_lookbacks(comp.shape, layout.max_ngram_size)
    params = (layout.compressed_pad_id, layout.multipliers, layout.primes, layout.offsets, layout.n_heads)
    n = args.tokens
    print(f"layout: {layout.variant}, {len(layout.layer_ids)} layers x {layout.n_columns} columns; {n:,} tokens; "
          f"best of {args.repeats}; {os.cpu_count()} CPUs")

    t_base, (l0, g0) = best_of(lambda: straightforward_hash(comp, *params), args.repeats)
    t_ours, g1 = best_of(lambda: hashing.hash_numpy(comp, avail, *params), args.repeats)
    assert np.array_equal(g0, g1), "outputs differ"
    del l0, g0
    t_one, g2 = best_of(lambda: hashing.hash_numpy(comp, avail, *params, threads=1), args.repeats)
    assert np.array_equal(g2, g1), "outputs differ"
    del g2
    workers = min(os.cpu_count() or 1, 8)
    rows = [("straightforward numpy (demo style)", t_base), ("engram numpy kernel, 1 thread", t_one),
            (f"engram numpy kernel, {workers} threads", t_ours)]

    try:
        import torch

        tc = torch.from_numpy(comp)
        ta = torch.from_numpy(avail)
        t_torch, gt = best_of(lambda: hashing.hash_torch(tc, ta, *params), args.repeats)
        assert np.array_equal(gt.numpy(), g1), "torch outputs differ"
        rows.append((f"engram torch kernel (cpu, {torch.get_num_threads()} threads)", t_torch))
        if torch.cuda.is_available():
            dc, da = tc.cuda(), ta.cuda()
            hashing.hash_torch(dc, da, *params)
            torch.cuda.synchronize()

            def on_gpu():
                out = hashing.hash_torch(dc, da, *params)
                torch.cuda.synchronize()
                return out

            t_gpu, gg = best_of(on_gpu, args.repeats)
            assert np.array_equal(gg.cpu().numpy(), g1), "cuda outputs differ"
            rows.append((f"engram torch kernel ({torch.cuda.get_device_name()})", t_gpu))
    except ImportError:
        pass

    print(f"{'implementation':48s} {'seconds':>9s} {'tokens/s':>14s} {'vs baseline':>12s}")
    for name, t in rows:
        print(f"{name:48s} {t:9.3f} {n / t:14,.0f} {t_base / t:11.2f}x")

    if not args.skip_build_vocab:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "engram_cli", "build-vocab", "--quiet", "--json"],
                       check=True, capture_output=True)
        print(f"engram build-vocab (bundled DeepSeek tokenizer, whole command): {time.perf_counter() - t0:.2f} s")
    print(f"ratio: {t_base / t_ours:.2f} (engram numpy kernel, {workers} threads, vs straightforward numpy)")


if __name__ == "__main__":
    main()
