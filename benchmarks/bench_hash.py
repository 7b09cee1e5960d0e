"""Hashing throughput: engram's kernels against the straightforward per-order implementation.

Input: real text tokenised with the bundled DeepSeek tokenizer and compressed with its token
map (the bundled evaluation texts, ~82K tokens, repeated to --tokens; or --text FILE), hashed
with the real DeepSeek-V4.1-Flash layout (2 layers x 24 columns, real primes and multipliers).
Every implementation returns global row ids, checked identical to the straightforward loop's
(the baseline computes head-local ids per head and adds the offsets, as the demo's
MultiHeadEmbedding does), timed side by side in one run (best of --repeats): the
straightforward loop, the numpy kernel (1 and 2 threads), the compiled numba kernel (1 and 2
threads, int64 and int32 ids), the torch kernel (CPU; CUDA when available). Then, in fresh
processes: the numba kernel's first call with an empty cache (import + compile), with the
cache written (import + cache load), and warm; and `engram build-vocab` on the bundled tokenizer.

    python benchmarks/bench_hash.py [--tokens 1000000] [--repeats 3] [--device cuda]

Ends with ``ratio: <x> (numba kernel, 2 threads, vs straightforward numpy)``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.straightforward_hash import straightforward_hash  # noqa: E402
from engram_cli.layout import build_token_map, hashing, layout_from_preset, load_tokenizer  # noqa: E402


def best_of(fn, repeats):
    best, out = float("inf"), None
    for _ in range(repeats):
        out = None
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def real_tokens(n: int, text_file: str | None) -> tuple[np.ndarray, str]:
    """``n`` raw token ids of real text (repeated when the text is shorter)."""
    tok = load_tokenizer(None)
    if text_file:
        texts, what = [Path(text_file).read_text(encoding="utf-8")], text_file
    else:
        texts, what = [], "bundled evaluation texts"
        for f in sorted(glob.glob(str(ROOT / "engram_cli/data/suites/*.jsonl"))):
            for line in open(f, encoding="utf-8"):
                texts.extend(v for v in json.loads(line).values() if isinstance(v, str) and len(v) > 20)
    ids = np.concatenate([np.asarray(e.ids, dtype=np.int64) for e in tok.encode_batch(texts, add_special_tokens=False)])
    reps = -(-n // ids.size)
    return np.tile(ids, reps)[:n], f"{what}: {ids.size:,} tokens" + (f", repeated {reps}x" if reps > 1 else "")


STARTUP = """
import time, numpy as np
t0 = time.perf_counter()
from engram_cli.layout import hash_numba  # prepares numba as engram does (no SciPy BLAS)
t1 = time.perf_counter()
args = (np.arange(40_000, dtype=np.int64).reshape(1, -1) % 99_000, 2, {m}, {p}, {o}, 8)
hash_numba.hash_global(*args)
t2 = time.perf_counter()
hash_numba.hash_global(*args)
t3 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2)
"""


def numba_startup(layout) -> list[tuple[str, float]]:
    """Import, first call and warm call of the numba kernel in fresh processes: empty cache, then cached."""
    code = STARTUP.format(m=[list(x) for x in layout.multipliers], p=[list(x) for x in layout.primes],
                          o=[list(x) for x in layout.offsets])
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONPATH=str(ROOT))
        for what in ("empty cache (compile)", "cache on disk (load)"):
            out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            imp, first, warm = (float(v) for v in out.stdout.split())
            rows += [(f"numba import, {what}", imp), (f"first call (40K tokens), {what}", first), ("warm call (40K tokens)", warm)]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--text", help="a UTF-8 text file to tokenise instead of the bundled texts")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="torch rows: cpu, cuda, or both when available")
    ap.add_argument("--skip-build-vocab", action="store_true")
    ap.add_argument("--skip-startup", action="store_true")
    args = ap.parse_args()

    tok_map = build_token_map(load_tokenizer(None))
    layout = layout_from_preset("deepseek-v4.1-flash", tok_map)  # real primes, multipliers, token map
    raw, what = real_tokens(args.tokens, args.text)
    comp = layout.compress(raw)[None, :]
    params = (layout.compressed_pad_id, layout.multipliers, layout.primes, layout.offsets, layout.n_heads)
    n = comp.shape[1]
    print(f"layout: {layout.variant}, {len(layout.layer_ids)} layers x {layout.n_columns} columns; {n:,} tokens "
          f"({what}); best of {args.repeats}; {os.cpu_count()} CPUs")

    t_base, (_, ref) = best_of(lambda: straightforward_hash(comp, *params), args.repeats)
    rows = [("straightforward numpy (demo style)", t_base)]

    def row(name, fn, dtype=np.int64, to_numpy=lambda a: a):
        t, got = best_of(fn, args.repeats)
        got = to_numpy(got)
        assert got.dtype == dtype and np.array_equal(got, ref), f"{name}: ids differ"
        rows.append((name, t))
        return t

    for th in (1, 2):
        row(f"engram numpy kernel, {th} thread{'s' * (th > 1)}, int64",
            lambda th=th: hashing.hash_cpu(comp, *params, threads=th, kernel="numpy"))
    t_ratio = None
    if hashing.numba_enabled():
        for dt in ("int64", "int32"):  # compile, or load from the cache, before timing
            hashing.hash_cpu(comp[:, :1000], *params, kernel="numba", id_dtype=dt)
        for dt in ("int64", "int32"):
            for th in (1, 2):
                t = row(f"engram numba kernel, {th} thread{'s' * (th > 1)}, {dt}",
                        lambda th=th, dt=dt: hashing.hash_cpu(comp, *params, threads=th, kernel="numba", id_dtype=dt),
                        np.dtype(dt))
                t_ratio = t if (th, dt) == (2, "int64") else t_ratio
    else:
        print("numba is not importable (or ENGRAM_NO_NUMBA is set): no compiled rows")
    torch_rows(comp, params, ref, row, args.device)

    print(f"{'implementation':48s} {'seconds':>9s} {'tokens/s':>14s} {'vs baseline':>12s}")
    for name, t in rows:
        print(f"{name:48s} {t:9.3f} {n / t:14,.0f} {t_base / t:11.2f}x")
    if hashing.numba_enabled() and not args.skip_startup:
        print("numba kernel start-up (fresh processes, V4.1-Flash layout):")
        for name, t in numba_startup(layout):
            print(f"  {name:52s} {t:7.3f} s")
    if not args.skip_build_vocab:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "engram_cli", "build-vocab", "--quiet", "--json"], check=True, capture_output=True)
        print(f"engram build-vocab (bundled DeepSeek tokenizer, whole command): {time.perf_counter() - t0:.2f} s")
    if t_ratio is not None:
        print(f"ratio: {t_base / t_ratio:.2f} (numba kernel, 2 threads, int64, vs straightforward numpy)")
    else:
        print(f"ratio: {t_base / rows[2][1]:.2f} (numpy kernel, 2 threads, vs straightforward numpy; numba unavailable)")


def torch_rows(comp, params, ref, row, device: str) -> None:
    try:
        import torch
    except ImportError:
        return
    tc = torch.from_numpy(comp)
    if device in ("auto", "cpu"):
        row(f"engram torch kernel (cpu, {torch.get_num_threads()} threads), int64", lambda: hashing.hash_torch(tc, *params).numpy())
    if device in ("auto", "cuda") and torch.cuda.is_available():
        dc = tc.cuda()
        hashing.hash_torch(dc, *params)  # warm-up
        torch.cuda.synchronize()

        def on_gpu(dt):
            out = hashing.hash_torch(dc, *params, id_dtype=dt)
            torch.cuda.synchronize()
            return out

        for dt in ("int64", "int32"):
            row(f"engram torch kernel ({torch.cuda.get_device_name()}), {dt}, ids on the device", lambda dt=dt: on_gpu(dt),
                np.dtype(dt), lambda g: g.cpu().numpy())
    elif device == "cuda":
        print("no CUDA device: no GPU rows")


if __name__ == "__main__":
    main()
