"""bench_shard: `engram shard` throughput vs `cp`, and peak RSS, at one or more table sizes.

Builds a synthetic DeepSeek-V4.1 table (F8_E4M3 [rows, 256] + F8_E8M0 [rows, 8], one shard)
of each size under --workdir, then side by side on the same disk, each mode timed right after
its own `cp` of the same source bytes (the disk and the two shared cores are noisy):
  reshard   same-dtype re-shard (engram shard convert --to hf --engram-only)
  bf16      fp8 + scales -> bf16 (writes 512/264 = 1.94x the source bytes)
  fp32      fp8 + scales -> fp32 (3.88x)
  int8      fp8 + scales -> int8 group-32 (288/264 = 1.09x)
  fp8       bf16 table (same rows, built once) -> fp8-e4m3 + e8m0 (the quantising direction;
            its `cp` copies the bf16 source)
  bf16-int8 the bf16 table -> int8 group-32 + fp32 scales (288/512 = 0.56x)
Ratios are source-bytes throughput over `cp` throughput of the same source; "write ratio"
counts the bytes each side wrote (a conversion that writes 1.94x the bytes at the disk's write
rate has a write ratio of 1 and a ratio of 0.52); "out ratio" is engram's time against a `cp`
(+ sync) of engram's own output files, timed in the same run right after it (the same bytes
written, read from the page cache as the source was): the acceptance figure for conversions. By default both sides are timed until their
output is on disk (`cp` then `sync FILE`; engram with ENGRAM_FSYNC=1): without it `cp` of a
table smaller than the kernel's dirty-page allowance (20% of RAM) only copies into the page
cache and its time says nothing about the disk (--no-flush times that anyway). CPU seconds
(user + sys) of each child are reported beside wall time: they measure the codec's cost where
the disk bounds wall time. Peak RSS and CPU time come from /usr/bin/time when present (else
psutil polling gives peak RSS only). --engram-root runs the children against another checkout
(for a before/after comparison with the same harness; children run with cwd there, since
`python -m` puts the cwd first on sys.path); --repeat N keeps the fastest of N runs.
The children's bytecode is compiled first (`compileall`, as pip does at install time): with
PYTHONDONTWRITEBYTECODE set, as on these machines, a checkout would otherwise recompile every
engram_cli module in every child (about 0.15 s of start-up a user's install never pays).
Everything under --workdir is removed at the end. The last line is the headline: `ratio: <x>`, the
lowest out ratio of all runs (the slowest mode against `cp` of its output bytes).

    nice python benchmarks/bench_shard.py --sizes 1GB 4GB --workdir /tmp/engram-bench  # reshard fp8 bf16-int8 bf16
    nice python benchmarks/bench_shard.py --sizes 4GB --modes bf16 --engram-root /path/to/old/checkout  # before
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engram_cli.tables.st_format import TensorSpec, build_header  # noqa: E402
from engram_cli.tables.units import parse_size  # noqa: E402

MODES = {  # mode -> (extra convert args, source kind, output bytes per source byte)
    "reshard": ([], "fp8", 1.0),
    "bf16": (["--dtype", "bf16"], "fp8", 512 / 264),
    "fp32": (["--dtype", "fp32"], "fp8", 1024 / 264),
    "int8": (["--dtype", "int8"], "fp8", 288 / 264),
    "fp8": (["--dtype", "fp8-e4m3"], "bf16", 264 / 512),
    "bf16-int8": (["--dtype", "int8"], "bf16", 288 / 512),
}


def _write_repeated(f, blk: np.ndarray, total: int) -> None:
    left = total
    while left:
        k = min(left, blk.nbytes)
        f.write(blk[:k].tobytes())
        left -= k


def make_table(d: Path, nbytes: int, kind: str = "fp8") -> Path:
    """One-shard checkpoint of ``nbytes // 264`` rows: fp8 + e8m0 scales, or the same rows as bf16."""
    d.mkdir(parents=True, exist_ok=True)
    rows = nbytes // 264
    rng = np.random.default_rng(0)
    p = d / "model.safetensors"
    if kind == "fp8":
        specs = [TensorSpec("layers.1.engram.embed.weight", "F8_E4M3", (rows, 256)),
                 TensorSpec("layers.1.engram.embed.scale", "F8_E8M0", (rows, 8))]
        block = rng.integers(0, 256, 64 * 2**20, dtype=np.uint8)
        block[(block & 0x7F) == 0x7F] = 0x38
        sblock = rng.integers(120, 134, 8 * 2**20, dtype=np.uint8)
        parts = ((block, rows * 256), (sblock, rows * 8))
    else:
        specs = [TensorSpec("layers.1.engram.embed.weight", "BF16", (rows, 256))]
        x = (rng.standard_normal(32 * 2**20).astype(np.float32) * 2.0**-6).view(np.uint32)
        block = (x >> 16).astype(np.uint16).view(np.uint8)
        parts = ((block, rows * 512),)
    head, _ = build_header(specs, {"format": "pt"})
    with open(p, "wb") as f:
        f.write(head)
        for blk, total in parts:
            _write_repeated(f, blk, total)
    return p


def timed(cmd: list[str], env: dict | None = None, cwd: str | None = None) -> tuple[float, int, float, float]:
    """Seconds, peak RSS (bytes), user and sys CPU seconds (NaN if unknown) of a child process."""
    t0 = time.perf_counter()
    if Path("/usr/bin/time").exists():
        r = subprocess.run(["/usr/bin/time", "-f", "%M %U %S", *cmd], capture_output=True, text=True, env=env, cwd=cwd)
        dt = time.perf_counter() - t0
        if r.returncode:
            raise SystemExit(f"failed: {' '.join(cmd)}\n{r.stderr[-2000:]}")
        rss, user, sys_ = r.stderr.strip().splitlines()[-1].split()
        return dt, int(rss) * 1024, float(user), float(sys_)
    import psutil

    proc = psutil.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=cwd)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, proc.memory_info().rss)
        except psutil.Error:
            pass
        time.sleep(0.02)
    dt = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return dt, peak, float("nan"), float("nan")


def _settle(path: Path) -> None:
    """Drop an output (its dirty pages go with it) and let writeback finish before the next run."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    os.sync()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", nargs="+", default=["1GB", "4GB"])
    ap.add_argument("--modes", nargs="+", default=["reshard", "fp8", "bf16-int8", "bf16"], choices=list(MODES))
    ap.add_argument("--workdir", default="/tmp/engram-bench")
    ap.add_argument("--engram-root", default=str(ROOT), help="checkout whose engram_cli the children run")
    ap.add_argument("--no-flush", dest="flush", action="store_false",
                    help="stop the clock when the process exits, even if its output is still only in the page cache")
    ap.add_argument("--repeat", type=int, default=1, help="time each side N times and keep the fastest")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    if not (Path(a.engram_root) / "engram_cli" / "__init__.py").is_file():
        ap.error(f"--engram-root {a.engram_root}: not a checkout with engram_cli/ (e.g. `git worktree add /tmp/engram-before HEAD~1`)")
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    root = str(Path(a.engram_root).resolve())
    env = dict(os.environ, PYTHONPATH=root)  # and cwd=root: `python -m` puts the cwd first on sys.path
    if a.flush:
        env["ENGRAM_FSYNC"] = "1"
    eng = [sys.executable, "-m", "engram_cli", "shard", "convert"]
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(root) / "engram_cli")], check=True,
                   stdout=subprocess.DEVNULL)  # what pip does at install time (see the docstring)
    print(f"engram root: {Path(a.engram_root).resolve()}; timed until on disk: {a.flush}; bytecode compiled", flush=True)
    results = []
    try:
        for size in a.sizes:
            n = parse_size(size)
            srcs: dict[str, Path] = {}
            for mode in a.modes:
                args, kind, _ = MODES[mode]
                if kind not in srcs:
                    srcs[kind] = work / f"src-{kind}-{size}"
                    make_table(srcs[kind], n, kind)
                src = srcs[kind]
                f = src / "model.safetensors"
                b = f.stat().st_size
                cp = ["cp", str(f), str(work / "cp.safetensors")]
                if a.flush:
                    cp = ["sh", "-c", 'cp "$1" "$2" && sync "$2"', "sh", *cp[1:]]
                out = work / f"out-{mode}"
                best_cp, best, best_cp_out = None, None, None
                for _ in range(max(1, a.repeat)):
                    os.sync()
                    subprocess.run(["cat", str(f)], stdout=subprocess.DEVNULL, check=True)  # same cache state for all
                    r_cp = timed(cp)
                    _settle(work / "cp.safetensors")
                    r = timed([*eng, str(src), "-o", str(out), "--to", "hf", "--engram-only", *args, "--quiet", "--force"],
                              env, cwd=root)
                    outs = sorted(str(p) for p in out.glob("*.safetensors"))
                    out_bytes = sum(Path(p).stat().st_size for p in outs)
                    r_cp_out = time_cp_of(outs, work / "cp-out", a.flush)
                    _settle(out)
                    best_cp_out = r_cp_out if best_cp_out is None or r_cp_out < best_cp_out else best_cp_out
                    best_cp = r_cp if best_cp is None or r_cp[0] < best_cp[0] else best_cp
                    best = r if best is None or r[0] < best[0] else best
                t_cp, cpu_cp = best_cp[0], best_cp[2] + best_cp[3]
                t, rss, user, sys_ = best
                res = {"size": size, "mode": mode, "source_bytes": b, "out_bytes": out_bytes,
                       "cp_s": round(t_cp, 3), "cp_GBps": b / t_cp / 1e9, "s": round(t, 3), "GBps_source": b / t / 1e9,
                       "ratio_to_cp": t_cp / t, "write_ratio_to_cp": (out_bytes / t) / (b / t_cp),
                       "cp_out_s": round(best_cp_out, 3), "out_ratio_to_cp": best_cp_out / t,
                       "user_s": round(user, 2), "sys_s": round(sys_, 2), "cp_cpu_s": round(cpu_cp, 2),
                       "peak_rss_MiB": rss / 2**20}
                results.append(res)
                print(json.dumps(res), flush=True)
            for s in srcs.values():
                shutil.rmtree(s)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{'size':>6} {'mode':>9} {'cp GB/s':>8} {'GB/s src':>9} {'ratio':>6} {'write ratio':>11} {'out ratio':>9} "
          f"{'wall s':>7} {'user s':>7} {'sys s':>6} {'cp CPU s':>8} {'peak RSS':>9}")
    for r in results:
        print(f"{r['size']:>6} {r['mode']:>9} {r['cp_GBps']:8.2f} {r['GBps_source']:9.2f} {r['ratio_to_cp']:6.2f} "
              f"{r['write_ratio_to_cp']:11.2f} {r['out_ratio_to_cp']:9.2f} {r['s']:7.1f} {r['user_s']:7.1f} {r['sys_s']:6.1f} "
              f"{r['cp_cpu_s']:8.1f} {r['peak_rss_MiB']:7.0f}Mi")
    worst = min(results, key=lambda r: r["out_ratio_to_cp"])
    print(f"ratio: {worst['out_ratio_to_cp']:.2f} (slowest: {worst['mode']} at {worst['size']}, vs cp of the same output bytes)")


def time_cp_of(files: list[str], dest: Path, flush: bool) -> float:
    """Seconds to ``cp`` (+ ``sync`` when ``flush``) ``files`` into ``dest``, from the page cache like the source."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cat", *files], stdout=subprocess.DEVNULL, check=True)
    script = 'd="$1"; shift; cp "$@" "$d"/' + (' && sync "$d"/*' if flush else "")
    t0 = time.perf_counter()
    subprocess.run(["sh", "-c", script, "sh", str(dest), *files], check=True)
    dt = time.perf_counter() - t0
    _settle(dest)
    return dt


if __name__ == "__main__":
    main()
