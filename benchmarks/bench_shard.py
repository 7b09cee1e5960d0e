"""bench_shard: `engram shard` throughput vs `cp`, and peak RSS at two table sizes.

Builds a synthetic DeepSeek-V4.1 table (F8_E4M3 [rows, 256] + F8_E8M0 [rows, 8], one shard)
of each size under --workdir, then side by side on the same disk:
  cp              the source shard (same bytes)
  shard hf        same-dtype re-shard (engram shard convert --to hf --engram-only)
  shard bf16      fp8 + scales -> bf16 (output is ~2x the bytes)
Peak RSS of each child comes from /usr/bin/time -f %M when present, else psutil polling.
Everything under --workdir is removed at the end.

    python benchmarks/bench_shard.py --sizes 1GB 4GB --workdir /tmp/engram-bench
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


def make_table(d: Path, nbytes: int) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    rows = nbytes // 264
    specs = [TensorSpec("layers.1.engram.embed.weight", "F8_E4M3", (rows, 256)),
             TensorSpec("layers.1.engram.embed.scale", "F8_E8M0", (rows, 8))]
    head, _ = build_header(specs, {"format": "pt"})
    rng = np.random.default_rng(0)
    block = rng.integers(0, 256, 64 * 2**20, dtype=np.uint8)
    block[(block & 0x7F) == 0x7F] = 0x38
    sblock = rng.integers(120, 134, 8 * 2**20, dtype=np.uint8)
    p = d / "model.safetensors"
    with open(p, "wb") as f:
        f.write(head)
        for blk, total in ((block, rows * 256), (sblock, rows * 8)):
            left = total
            while left:
                k = min(left, blk.nbytes)
                f.write(blk[:k].tobytes())
                left -= k
    return p


def timed(cmd: list[str]) -> tuple[float, int]:
    """Seconds and peak RSS (bytes) of a child process."""
    t0 = time.perf_counter()
    if shutil.which("time") or Path("/usr/bin/time").exists():
        r = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True)
        dt = time.perf_counter() - t0
        if r.returncode:
            raise SystemExit(f"failed: {' '.join(cmd)}\n{r.stderr[-2000:]}")
        return dt, int(r.stderr.strip().splitlines()[-1]) * 1024
    import psutil

    proc = psutil.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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
    return dt, peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", nargs="+", default=["1GB", "4GB"])
    ap.add_argument("--workdir", default="/tmp/engram-bench")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    eng = [sys.executable, "-m", "engram_cli", "shard", "convert"]
    results = []
    try:
        for size in a.sizes:
            n = parse_size(size)
            src = work / f"src-{size}"
            f = make_table(src, n)
            b = f.stat().st_size
            os.sync()
            subprocess.run(["cat", str(f)], stdout=subprocess.DEVNULL, check=True)  # same cache state for all
            t_cp, rss_cp = timed(["cp", str(f), str(work / "cp.safetensors")])
            (work / "cp.safetensors").unlink()
            t_hf, rss_hf = timed([*eng, str(src), "-o", str(work / "hf"), "--to", "hf", "--engram-only", "--quiet", "--force"])
            shutil.rmtree(work / "hf")
            t_bf, rss_bf = timed([*eng, str(src), "-o", str(work / "bf16"), "--to", "hf", "--engram-only", "--dtype", "bf16",
                                  "--quiet", "--force"])
            shutil.rmtree(work / "bf16")
            res = {"size": size, "bytes": b, "cp_s": t_cp, "cp_GBps": b / t_cp / 1e9,
                   "reshard_s": t_hf, "reshard_GBps": b / t_hf / 1e9, "reshard_ratio_to_cp": t_cp / t_hf,
                   "bf16_s": t_bf, "bf16_GBps_source": b / t_bf / 1e9, "bf16_ratio_to_cp": t_cp / t_bf,
                   "peak_rss_reshard_MiB": rss_hf / 2**20, "peak_rss_bf16_MiB": rss_bf / 2**20}
            results.append(res)
            shutil.rmtree(src)
            print(json.dumps(res), flush=True)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{'size':>6} {'cp GB/s':>8} {'reshard GB/s':>13} {'ratio':>6} {'bf16 GB/s':>10} {'ratio':>6} {'RSS reshard':>12} {'RSS bf16':>9}")
    for r in results:
        print(f"{r['size']:>6} {r['cp_GBps']:8.2f} {r['reshard_GBps']:13.2f} {r['reshard_ratio_to_cp']:6.2f} "
              f"{r['bf16_GBps_source']:10.2f} {r['bf16_ratio_to_cp']:6.2f} {r['peak_rss_reshard_MiB']:10.0f}Mi {r['peak_rss_bf16_MiB']:7.0f}Mi")
    last = results[-1]
    print(f"ratio: {last['reshard_ratio_to_cp']:.2f} (same-dtype re-shard throughput vs cp, {last['size']})")


if __name__ == "__main__":
    main()
