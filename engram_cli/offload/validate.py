"""The end-to-end check: the demo model with its Engram tables resident vs offloaded, same token streams.

Offloaded means a file on disk read by a prefetch thread (CPU only) or registered host memory
gathered over UVA on a side stream (CUDA). Both arms decode the same real-text streams
(teacher-forced, KV cache), in alternating order; the logits of every step must be identical.
The projection for the demo geometry, fed with the fetch curve and layer times measured in the
same run, is set against the measured overhead.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engram_cli.offload import backbone, prefetch, projection
from engram_cli.offload.stats import mean_ci, paired_ratio_ci
from engram_cli.progress import ProgressCallback


@dataclass(frozen=True)
class ValidatePlan:
    batch: int = 8
    prefill: int = 32
    steps: int = 48
    repeats: int = 7

    @classmethod
    def quick(cls) -> ValidatePlan:
        return cls(batch=4, prefill=16, steps=16, repeats=3)


@dataclass
class Arm:
    tokens_per_s: list[float]
    mean: float
    ci: tuple[float | None, float | None]


@dataclass
class ValidateResult:
    device: str
    placement: str
    batch: int
    prefill: int
    steps: int
    repeats: int
    resident: Arm
    offloaded: Arm
    measured_overhead_pct: float
    measured_ci_pct: tuple[float | None, float | None]
    projected_overhead_pct: float
    projection_error_pp: float
    logits_identical: bool
    max_abs_diff: float
    fetch_curve: projection.FetchCurve | None
    timing: dict[str, float] = field(default_factory=dict)
    unique: float = 1.0
    notes: list[str] = field(default_factory=list)


def token_streams(tokenizer: Any, batch: int, length: int, seed: int = 0) -> np.ndarray:
    """``[batch, length]`` windows of the bundled Wikipedia text in the model's tokenizer."""
    from engram_cli.offload.corpus import wikipedia_texts

    ids = np.concatenate([np.asarray(tokenizer.encode(t), dtype=np.int64) for t in wikipedia_texts()])
    starts = np.random.default_rng(seed).integers(0, ids.size - length, size=batch)
    return np.stack([ids[s : s + length] for s in starts])


def decode(model: Any, streams: Any, prefill: int, steps: int, inst: Any = None, keep: bool = False) -> tuple[list[float], list[Any]]:
    """Teacher-forced decode with a KV cache; µs per step and (optionally) each step's logits."""
    import torch

    m, cuda = model.model, streams.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    times, logits = [], []
    with torch.no_grad():
        ids = streams[:, :prefill]
        if inst is not None:
            inst.step(ids, ids)
        _, past, _ = m(ids, full_ids=ids)
        for s in range(steps):
            pos = prefill + s
            step, full = streams[:, pos:pos + 1], streams[:, :pos + 1]
            sync()
            t0 = time.perf_counter_ns()
            if inst is not None:
                inst.step(step, full)
            hidden, past, _ = m(step, full_ids=full, past_key_values=past)
            lg = model.lm_head(hidden[:, -1])
            sync()
            times.append((time.perf_counter_ns() - t0) / 1e3)
            if keep:
                logits.append(lg.detach().cpu())
    return times, logits


def _ab(model: Any, streams: Any, plan: ValidatePlan, inst: Any, report: ProgressCallback) -> tuple[list[float], list[float]]:
    """Alternating resident / offloaded repeats; total µs of each repeat's decode steps."""
    res, off = [], []
    for r in range(plan.repeats):
        for arm in (("res", "off") if r % 2 == 0 else ("off", "res")):
            report(r, plan.repeats, f"validate: repeat {r + 1}/{plan.repeats} ({'resident' if arm == 'res' else 'offloaded'})")
            if arm == "off":
                inst.attach()
            try:
                times, _ = decode(model, streams, plan.prefill, plan.steps, inst if arm == "off" else None)
            finally:
                inst.detach()
            (res if arm == "res" else off).append(float(np.sum(times)))
    return res, off


def _fetch_curve(model: Any, inst: Any, streams: Any, row_bytes: int, seed: int) -> projection.FetchCurve | None:
    """Fit ``alpha + n * row_bytes / R`` to the prefetcher's one-layer fetch times at several sizes."""
    m = model.model
    local = type(m).hash_ids(m, streams).cpu().numpy()[:, :, 0]  # [B, T, C] of the first Engram layer
    flat = local.reshape(-1, local.shape[-1])
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for n in (1, 4, 16, 64, min(256, flat.shape[0])):
        lat = [inst.prefetcher.fetch_us(0, flat[rng.integers(0, flat.shape[0], size=n)][None]) for _ in range(9)]
        xs.append(n * flat.shape[1])
        ys.append(float(np.median(lat[1:])))
    return projection.fit_fetch_curve(xs, ys, row_bytes, "measured: the validation prefetcher, one layer")


def _unique(model: Any, streams: Any, prefill: int) -> float:
    m = model.model
    local = type(m).hash_ids(m, streams).cpu().numpy()[:, prefill:]  # [B, S, L, C]
    fr = [np.unique(local[:, s, li] + np.arange(local.shape[-1]) * (1 << 40)).size / local[:, s, li].size
          for s in range(local.shape[1]) for li in range(local.shape[2])]
    return float(np.mean(fr)) if fr else 1.0


def _identical(model: Any, streams: Any, plan: ValidatePlan, inst: Any) -> tuple[bool, float]:
    import torch

    _, ref = decode(model, streams, plan.prefill, plan.steps, None, keep=True)
    inst.attach()
    try:
        _, got = decode(model, streams, plan.prefill, plan.steps, inst, keep=True)
    finally:
        inst.detach()
    same = all(torch.equal(a, b) for a, b in zip(ref, got))
    diff = max(float((a - b).abs().max()) for a, b in zip(ref, got)) if ref else 0.0
    return same, diff


def _projected(model: Any, plan: ValidatePlan, curve: projection.FetchCurve | None, unique: float, res_step_us: float,
               hash_us: float) -> tuple[float, dict[str, float]]:
    """Projected overhead % (stalls over the measured resident step) for the demo geometry."""
    tables = prefetch.engram_tables(model)
    g = projection.Geometry("demo model", tuple(i for i, _, _ in tables), int(tables[0][2].size),
                            int(tables[0][1].shape[1] * tables[0][1].itemsize), len(model.model.layers))
    st = backbone.measure_step(model, "decode", plan.batch, reps=5)
    timing = projection.Timing(layer_us=st.layer_us.p50 or 0.0, embed_us=st.embed_us.p50 or 0.0,
                               tail_us=(st.tail_us.p50 or 0.0) + hash_us)
    info = {"layer_us": timing.layer_us, "embed_us": timing.embed_us, "tail_us": st.tail_us.p50 or 0.0,
            "hash_us": hash_us, "resident_step_us": res_step_us}
    if curve is None:
        return float("nan"), info
    p = projection.project(g, projection.Scenario("validate", "decode", plan.batch, unique), timing, curve)
    info["stall_us"] = p.stall_us
    return 100.0 * p.stall_us / res_step_us, info


def _hash_us(model: Any, streams: Any, plan: ValidatePlan) -> float:
    m = model.model
    full = streams[:, : plan.prefill + plan.steps // 2]
    lat = []
    for _ in range(7):
        t0 = time.perf_counter_ns()
        type(m).hash_ids(m, full)
        lat.append((time.perf_counter_ns() - t0) / 1e3)
    return float(np.median(lat[1:]))


def run_validate(plan: ValidatePlan, *, device: str = "auto", workdir: Path | None = None, seed: int = 0,
                 progress: ProgressCallback | None = None) -> ValidateResult:
    """Resident vs offloaded demo model: tokens/s with CIs, measured vs projected overhead, identical logits."""
    import torch

    report = progress or (lambda *a: None)
    dev = "cuda" if device != "cpu" and torch.cuda.is_available() else "cpu"
    report(0, None, "validate: loading the demo model")
    loaded = backbone.load_demo(dev)
    model = loaded.model
    streams = torch.from_numpy(token_streams(loaded.tokenizer, plan.batch, plan.prefill + plan.steps, seed)).to(dev)
    placement = "uva" if dev == "cuda" else "file"
    tmp = Path(tempfile.mkdtemp(prefix=".engram-validate-", dir=workdir))
    inst = prefetch.install(model, placement, tmp / "engram_tables.bin")
    try:
        report(0, None, "validate: checking logits")
        same, diff = _identical(model, streams, plan, inst)
        res, off = _ab(model, streams, plan, inst, report)
        tables = prefetch.engram_tables(model)
        curve = _fetch_curve(model, inst, streams, int(tables[0][1].shape[1] * tables[0][1].itemsize), seed)
    finally:
        inst.close()
        tmp.rmdir() if tmp.exists() and not any(tmp.iterdir()) else None
    tokens = plan.batch * plan.steps
    res_tps, off_tps = [tokens / (t / 1e6) for t in res], [tokens / (t / 1e6) for t in off]
    lo, hi = paired_ratio_ci(off, res, seed=seed)
    measured = 100.0 * (np.mean(off) / np.mean(res) - 1.0)
    unique = _unique(model, streams, plan.prefill)
    projected, info = _projected(model, plan, curve, unique, float(np.mean(res)) / plan.steps, _hash_us(model, streams, plan))
    notes = ["file placement: the table file was just written, so its pages are in the page cache (warm)"] if placement == "file" else []
    return ValidateResult(
        dev, "file on disk, one prefetch thread" if placement == "file" else "registered host memory, UVA gather on a side stream",
        plan.batch, plan.prefill, plan.steps, plan.repeats,
        Arm(res_tps, float(np.mean(res_tps)), mean_ci(res_tps, seed=seed)),
        Arm(off_tps, float(np.mean(off_tps)), mean_ci(off_tps, seed=seed)),
        float(measured), (None if lo is None else 100.0 * (lo - 1.0), None if hi is None else 100.0 * (hi - 1.0)),
        float(projected), float(projected - measured), same, diff, curve, info, unique, notes)
