"""Orchestrate ``engram bench-offload``: preflight checks, then each section, into one typed result."""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engram_cli.errors import BadInputError, UsageError
from engram_cli.offload import gpu, profile, projection, scenarios
from engram_cli.offload.corpus import Corpus, bundled_corpus, read_trace
from engram_cli.progress import ProgressCallback

TIERS = ("host", "nvme", "gpu")
GB = 1e9


@dataclass(frozen=True)
class OffloadConfig:
    tiers: tuple[str, ...] = ("host", "nvme")
    quick: bool = False
    table_bytes: int | None = None  # None: the default for the mode, bounded by free memory
    file_dir: Path | None = None
    trace: Path | None = None
    layer_ms: float | None = None
    cache_gb: float = 1.0
    validate: bool = False
    export_hot_rows: int = 0
    threads: int = 1
    seed: int = 0


@dataclass
class Preflight:
    table_bytes: int
    file_dir: Path
    corpus: Corpus | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class OffloadResult:
    config: OffloadConfig
    layout_source: str
    fingerprint: dict[str, Any]
    table_bytes: int
    corpus: dict[str, Any]
    host: Any = None
    files: Any = None
    hashing: Any = None
    locality: Any = None
    gpu: Any = None
    backbone: list[Any] = field(default_factory=list)
    projection: scenarios.ProjectionSection | None = None
    validate: Any = None
    skipped: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def parse_tiers(text: str) -> tuple[str, ...]:
    tiers = tuple(dict.fromkeys(t.strip().lower() for t in text.split(",") if t.strip()))
    bad = [t for t in tiers if t not in TIERS]
    if bad or not tiers:
        raise UsageError(f"unknown tier {', '.join(bad) or '(none)'}", hint="--tiers takes host, nvme and gpu, comma-separated")
    return tiers


def default_table_bytes(quick: bool, available: int) -> int:
    """0.5 GB (quick) or 2 GB, at most 40 % of the memory free now, at least 64 MB."""
    return int(max(64e6, min(0.5 * GB if quick else 2 * GB, 0.4 * available)))


def memory_needed(table_bytes: int) -> int:
    """Peak host memory: the table, the THP twin or the pageable copy (<= 1 GiB), and slack."""
    return table_bytes + min(table_bytes, 1 << 30) + (256 << 20)


def check_resources(cfg: OffloadConfig) -> Preflight:
    """Tier, memory and disk checks, before the layout is built and before anything large is allocated."""
    import psutil

    if "gpu" in cfg.tiers:
        gpu.require_cuda("--tiers gpu")
    avail = int(psutil.virtual_memory().available)
    table = cfg.table_bytes if cfg.table_bytes is not None else default_table_bytes(cfg.quick, avail)
    if table < (1 << 20):
        raise UsageError("--table-size must be at least 0.001 GB (1 MiB)")
    if {"host", "gpu"} & set(cfg.tiers) or cfg.table_bytes is not None:
        need = memory_needed(table)
        if need > avail:
            raise BadInputError(f"--table-size {table / GB:.2f} GB needs {need / GB:.2f} GB of memory, "
                                f"but only {avail / GB:.2f} GB is free", hint="pass a smaller --table-size")
    file_dir = Path(cfg.file_dir) if cfg.file_dir is not None else Path(tempfile.gettempdir())
    pre = Preflight(table, file_dir)
    if "nvme" in cfg.tiers:
        if not file_dir.is_dir():
            raise BadInputError(f"file-tier directory {file_dir} does not exist")
        free = shutil.disk_usage(file_dir).free
        if table + (64 << 20) > free:
            raise BadInputError(f"--table-size {table / GB:.2f} GB does not fit on {file_dir}: "
                                f"{free / GB:.2f} GB is free there", hint="pass a smaller --table-size or another --file-dir")
        from engram_cli.offload.files import TMPFS_TYPES, filesystem_of

        fstype, _ = filesystem_of(file_dir)
        if fstype in TMPFS_TYPES:
            pre.warnings.append(f"{file_dir} is on {fstype}: the file tier will measure memory, not storage "
                                "(pass --file-dir on a real disk)")
    llc = profile.llc_bytes()
    if llc and table < 4 * llc:
        pre.warnings.append(f"the table ({table / 1e6:.0f} MB) is under 4x the last-level cache ({llc / 1e6:.0f} MB): "
                            "gathers will hit the cache")
    return pre


def load_corpus(cfg: OffloadConfig, pre: Preflight, layout: Any, tokenizer: Any) -> None:
    """The ``--trace`` (errors name the line) or the bundled text, into ``pre.corpus``."""
    pre.corpus = (read_trace(cfg.trace, tokenizer, vocab_size=layout.vocab_size) if cfg.trace
                  else bundled_corpus(tokenizer, seed=cfg.seed))


class _Sections:
    """Runs one section at a time, timing it and reporting progress."""

    def __init__(self, res: OffloadResult, progress: ProgressCallback | None):
        self.res, self.progress = res, progress or (lambda *a: None)

    def __call__(self, name: str, fn, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        t0 = time.perf_counter()
        self.progress(0, None, f"{name}: starting")
        try:
            return fn(*args, **kwargs)
        finally:
            self.res.seconds[name] = round(time.perf_counter() - t0, 2)


def _locality(cfg: OffloadConfig, layout: Any, corpus: Corpus, progress: ProgressCallback | None) -> tuple[Any, np.ndarray]:
    from engram_cli.offload.locality import LocalityPlan, analyze, hash_corpus

    tr = hash_corpus(layout, corpus)
    plan = LocalityPlan(samples=24 if cfg.quick else 64)
    loc = analyze(tr, corpus, plan, row_bytes=layout.bytes_per_row(), export_hot_rows=cfg.export_hot_rows,
                  seed=cfg.seed, progress=progress)
    return loc, tr.ids[:, 0].reshape(-1)


def _zipf_s(loc: Any) -> float:
    slopes = [s.zipf_slope for s in (loc.stats if loc else []) if s.zipf_slope is not None and s.layer_id == loc.layer_ids[0]]
    return float(min(2.0, max(0.5, -np.mean(slopes)))) if slopes else 1.0


def _timing_model(cfg: OffloadConfig, res: OffloadResult, progress: ProgressCallback | None) -> scenarios.TimingModel:
    """``--layer-ms``, else per-layer times of the bundled demo model at every scenario's step size."""
    if cfg.layer_ms is not None:
        return scenarios.TimingModel(f"--layer-ms {cfg.layer_ms:g}", constant_layer_us=cfg.layer_ms * 1e3)
    from engram_cli.offload import backbone

    model = backbone.load_demo("cuda" if "gpu" in cfg.tiers else "cpu").model
    tm = scenarios.TimingModel(f"measured: bundled demo model ({model.config.num_hidden_layers} layers, hidden "
                               f"{model.config.hidden_size}) on {next(model.parameters()).device.type}; pass --layer-ms for your backbone")
    prefill = scenarios.PREFILL_QUICK_MEASURED if cfg.quick else scenarios.PREFILL
    if cfg.quick:
        tm.source += "; --quick: prefill measured at 512 and 2k, 8k extrapolated log-log"
    steps = [("decode", b) for b in scenarios.DECODE_TABLE] + [("prefill", t) for t in prefill]
    for i, (kind, tokens) in enumerate(steps):
        if progress:
            progress(i, len(steps), f"backbone: {kind} {tokens} tokens")
        st = backbone.measure_step(model, kind, tokens, reps=2 if cfg.quick else 3, seed=cfg.seed)
        res.backbone.append(st)
        tm.points[(kind, tokens)] = (st.layer_us.p50 or 0.0, st.embed_us.p50 or 0.0, st.tail_us.p50 or 0.0)
    return tm


def _projection(cfg: OffloadConfig, res: OffloadResult, layout: Any, progress: ProgressCallback | None) -> None:
    fetch, kappa, ksrc = None, 0.0, "not measured (no GPU): interference taken as 0"
    if res.gpu is not None:
        fetch = scenarios.gpu_fetch(res.gpu, 264)
        inter = [c for c in res.gpu.interference if c.slowdown_pct is not None and (c.grid in ("sm/2", None))]
        if inter:
            kappa, ksrc = max(0.0, inter[0].slowdown_pct / 100.0), f"measured: matmul slowdown beside {inter[0].mode}"
    if fetch is None and res.host is not None:
        fetch = scenarios.host_fetch(res.host, 264)
    if fetch is None:
        res.skipped["projection"] = "no fetch curve: run the host or gpu tier"
        return
    timing = _timing_model(cfg, res, progress)
    res.projection = scenarios.build_projection(dict(projection.GEOMETRIES), fetch, timing, res.hashing, res.locality,
                                                cache_gb=cfg.cache_gb, kappa=kappa, kappa_source=ksrc)
    if fetch[0].modelled:
        res.projection.notes.append("CPU only: the fetch curve is modelled (host gather measured here + a cited link); "
                                    "rerun on the target box with --tiers gpu for a measured one")


def run_offload(cfg: OffloadConfig, layout: Any, layout_source: str, pre: Preflight,
                progress: ProgressCallback | None = None) -> OffloadResult:
    """Run every requested section; GPU sections say ``skipped: no device`` without CUDA."""
    from engram_cli.offload import filebench, gpubench, hashrate, hostbench

    if pre.corpus is None:
        raise ValueError("load_corpus() first")
    res = OffloadResult(cfg, layout_source, profile.fingerprint(), pre.table_bytes,
                        {"name": pre.corpus.name, "source": pre.corpus.source, "documents": len(pre.corpus.docs),
                         "tokens": pre.corpus.n_tokens}, warnings=list(pre.warnings))
    run = _Sections(res, progress)
    res.locality, replay = run("locality", _locality, cfg, layout, pre.corpus, progress)
    stream = np.concatenate(pre.corpus.docs)
    res.hashing = run("hashing", hashrate.run_hashing, layout, stream, calls=10 if cfg.quick else 30, seed=cfg.seed)
    if "host" in cfg.tiers:
        plan = hostbench.HostPlan.quick() if cfg.quick else hostbench.HostPlan()
        res.host = run("host", hostbench.run_host, plan, table_bytes=pre.table_bytes, threads=cfg.threads, seed=cfg.seed,
                       trace=replay, zipf_s=_zipf_s(res.locality), llc_bytes=profile.llc_bytes(), progress=progress)
    if "nvme" in cfg.tiers:
        fplan = filebench.FilePlan.quick() if cfg.quick else filebench.FilePlan()
        res.files = run("nvme", filebench.run_files, fplan, pre.file_dir, pre.table_bytes, seed=cfg.seed, progress=progress)
        res.warnings += [w for w in res.files.warnings if "tmpfs" not in w]  # preflight already warned about tmpfs
    if gpu.cuda_available() and ("gpu" in cfg.tiers):
        gplan = gpubench.GpuPlan.quick() if cfg.quick else gpubench.GpuPlan()
        res.gpu = run("gpu", gpubench.run_gpu, gplan, table_bytes=pre.table_bytes, threads=cfg.threads, seed=cfg.seed,
                      progress=progress)
        res.fingerprint = profile.fingerprint(res.gpu.device)
    else:
        res.skipped["gpu"] = "no device" if not gpu.cuda_available() else "not requested (--tiers)"
    run("projection", _projection, cfg, res, layout, progress)
    if cfg.validate:
        from engram_cli.offload.validate import ValidatePlan, run_validate

        vplan = ValidatePlan.quick() if cfg.quick else ValidatePlan()
        res.validate = run("validate", run_validate, vplan, device="cuda" if gpu.cuda_available() else "cpu",
                           workdir=pre.file_dir, seed=cfg.seed, progress=progress)
    return res
