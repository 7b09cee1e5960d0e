"""``engram analyze cka``: models -> per-layer features -> CKA matrices -> a typed result.

Roles: model A is the Engram model (matrix columns, index j), model B the baseline (rows, i),
as ``S[i, j]`` in the paper's Eq. 9. Without MODEL_B, B is A with every Engram module's output
zeroed (``compare="ablated"``), or A itself for a model without Engram (``"self"``: one pass,
exactly symmetric matrix with a unit diagonal). Models are loaded one at a time: A's features
go to a store (memory or memmap), A is freed, then B runs.
"""

from __future__ import annotations

import gc
import resource
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engram_cli.analysis.cka_compute import CkaSettings, MatrixResult, baseline_matrix, compute_matrix, self_check, validate
from engram_cli.analysis.cka_features import FeatureStore, extract, load_items, plan_examples, tokenize, transformed
from engram_cli.errors import UsageError
from engram_cli.progress import ProgressCallback

COMPARE = ("auto", "ablated", "self")


@dataclass
class ModelRequest:
    source: str | None  # None: the bundled demo model
    tokenizer: str | None = None


@dataclass
class LoadOptions:
    device: str = "auto"
    dtype: str = "float32"
    device_map: str | None = None
    engram_path: str | None = None
    layers_path: str | None = None


@dataclass
class ModelSide:
    source: str
    family: str
    n_layers: int
    width: int
    engram_layers: list[int]
    ablated: bool
    load_s: float = 0.0
    extract_s: float = 0.0


@dataclass
class CkaResult:
    settings: CkaSettings
    compare: str
    model_a: ModelSide
    model_b: ModelSide
    texts_source: str
    n_texts: int
    n_candidates: int
    n_examples: int
    main: MatrixResult
    variants: dict[str, MatrixResult] = field(default_factory=dict)
    self_check: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float = 0.0
    device: str = "cpu"


# -- the pipeline ------------------------------------------------------------------------------

def _describe(loaded: Any, view: Any, width: int, ablated: bool, t_load: float, t_extract: float) -> ModelSide:
    return ModelSide(source=loaded.source, family=view.family, n_layers=len(view.layers), width=width,
                     engram_layers=list(view.engram_layer_ids), ablated=ablated, load_s=round(t_load, 3),
                     extract_s=round(t_extract, 3))


def _free() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def _same_source(a: ModelRequest, b: ModelRequest) -> bool:
    pa = Path(a.source).resolve() if a.source else None
    pb = Path(b.source).resolve() if b.source else None
    return pa == pb and a.tokenizer == b.tokenizer


def _extract_side(view: Any, loaded: Any, items: list, plan: Any, s: CkaSettings, spill: Path, name: str,
                  progress: ProgressCallback | None) -> tuple[FeatureStore, float]:
    t0 = time.perf_counter()
    store = extract(view, loaded.tokenizer, items, plan, max_length=s.max_length, forward_batch=s.forward_batch,
                    branch_reduce=s.branch_reduce, device=loaded.device, cache_dir=s.cache_dir, spill_dir=spill,
                    name=name, progress=progress)
    return store, time.perf_counter() - t0


@dataclass
class _Features:
    mode: str
    plan: Any
    store_a: FeatureStore
    store_b: FeatureStore
    side_a: ModelSide
    side_b: ModelSide
    device: Any


def _load(req: ModelRequest, load: LoadOptions) -> tuple[Any, Any, float]:
    from engram_cli.models.loading import load_model
    from engram_cli.models.views import view_for

    t0 = time.perf_counter()
    loaded = load_model(req.source, device=load.device, dtype=load.dtype, device_map=load.device_map, tokenizer=req.tokenizer)
    view = view_for(loaded.model, engram_path=load.engram_path, layers_path=load.layers_path)
    return loaded, view, time.perf_counter() - t0


def _features(model_a: ModelRequest, model_b: ModelRequest | None, s: CkaSettings, load: LoadOptions, compare: str,
              items: list, spill: Path, warnings: list[str], progress: ProgressCallback | None) -> _Features:
    """Model A's features (and B's when B is A ablated), A freed, then model B's: one model in memory at a time."""
    import torch

    from engram_cli.analysis.hooks import engram_ablation
    from engram_cli.models.views import require_engram

    la, va, t_load = _load(model_a, load)
    if model_b is None:
        mode = ("ablated" if va.engram_modules else "self") if compare == "auto" else compare
        if mode == "ablated":
            require_engram(va)
    else:
        mode = "self" if _same_source(model_a, model_b) else "model-b"
        if mode == "self":
            warnings.append("MODEL_B is MODEL_A: the model is compared with itself")
    plan = plan_examples(items, tokenize(items, la.tokenizer, s.max_length, False), s.positions, s.skip_first,
                         s.max_examples, s.seed)
    store_a, t_ext = _extract_side(va, la, items, plan, s, spill, "a", progress)
    side_a = _describe(la, va, store_a.width, False, t_load, t_ext)
    store_b, side_b = store_a, side_a
    if mode == "ablated":
        with engram_ablation(va, va.engram_layer_ids, "zero"):
            store_b, t_ext = _extract_side(va, la, items, plan, s, spill, "b", progress)
        side_b = _describe(la, va, store_b.width, True, 0.0, t_ext)
    device = torch.device("cuda") if str(la.device).startswith("cuda") else torch.device("cpu")
    va = la = None
    _free()
    if mode == "model-b":
        lb, vb, t_load = _load(model_b, load)
        store_b, t_ext = _extract_side(vb, lb, items, plan, s, spill, "b", progress)
        side_b = _describe(lb, vb, store_b.width, False, t_load, t_ext)
        vb = lb = None
        _free()
    return _Features(mode, plan, store_a, store_b, side_a, side_b, device)


def run_cka(model_a: ModelRequest, model_b: ModelRequest | None, s: CkaSettings, load: LoadOptions | None = None,
            compare: str = "auto", progress: ProgressCallback | None = None, suites_dir: Path | None = None) -> CkaResult:
    """The whole analysis: load, extract (A, then B), CKA matrices, null floor, CIs, alignment."""
    from engram_cli.analysis.spans import bundled_spans_path
    from engram_cli.models.loading import demo_suites_dir

    validate(s)
    if compare not in COMPARE:
        raise UsageError(f"unknown --compare {compare!r}", hint=", ".join(COMPARE))
    if model_b is not None and compare != "auto":
        raise UsageError("--compare applies only without MODEL_B")
    items, source = load_items(s.positions, s.texts, s.spans, suites_dir or demo_suites_dir(), bundled_spans_path())
    warnings: list[str] = []
    with tempfile.TemporaryDirectory(prefix="engram-cka-") as tmp:
        f = _features(model_a, model_b, s, load or LoadOptions(), compare, items, Path(tmp), warnings, progress)
        rows = np.flatnonzero(f.store_a.valid & f.store_b.valid)
        if len(f.plan.examples) > rows.size:
            warnings.append(f"{len(f.plan.examples) - rows.size} example(s) dropped: not placeable in both models "
                            "(truncated by --max-length or no token holds the span end)")
        t0 = time.perf_counter()
        store_a, store_b, symmetric = f.store_a, f.store_b, f.mode == "self"
        get_a = lambda idx: np.asarray(store_a.data[:, rows[idx]])  # noqa: E731
        get_b = None if symmetric else (lambda idx: np.asarray(store_b.data[:, rows[idx]]))
        own = None if get_b is None else baseline_matrix(get_b, rows.size, s, f.device)
        main = compute_matrix(get_a, get_b, rows.size, s, f.device, progress, baseline_self=own)
        check = self_check(get_a, rows.size, s, f.device)
        variants = _variants(store_a, store_b, rows, s, f.device, symmetric)
        timings = {"cka_s": round(time.perf_counter() - t0, 3)}
        f.store_a = f.store_b = store_a = store_b = None
        _free()
    _warn(main, s, warnings, check)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return CkaResult(settings=s, compare=f.mode, model_a=f.side_a, model_b=f.side_b, texts_source=source,
                     n_texts=len(items), n_candidates=f.plan.n_candidates, n_examples=int(rows.size), main=main,
                     variants=variants, self_check=check, warnings=warnings, timings=timings, peak_rss_mb=round(peak, 1),
                     device=str(f.device))


def _variants(store_a: FeatureStore, store_b: FeatureStore, rows: np.ndarray, s: CkaSettings, device: Any,
              symmetric: bool) -> dict[str, MatrixResult]:
    """Re-runs on transformed features (--clamp-outliers, --remove-top-pcs) to show robustness."""
    out: dict[str, MatrixResult] = {}
    for kind, value in (("clamp-outliers", s.clamp_outliers), ("remove-top-pcs", s.remove_top_pcs)):
        if value is None:
            continue
        xa = transformed(store_a, rows, kind, value, s.seed)
        xb = None if symmetric else transformed(store_b, rows, kind, value, s.seed)
        get_b = None if xb is None else (lambda idx, xb=xb: xb[:, idx])
        own = None if get_b is None else baseline_matrix(get_b, rows.size, s, device)
        out[f"{kind}={value:g}"] = compute_matrix(lambda idx, xa=xa: xa[:, idx], get_b, rows.size, s, device,
                                                  bootstrap=s.estimator == "minibatch-unbiased", baseline_self=own)
    return out


def _warn(main: MatrixResult, s: CkaSettings, warnings: list[str], check: dict[str, Any]) -> None:
    if s.k >= main.cka.shape[0]:
        warnings.append(f"--top-k {s.k} >= the baseline's {main.cka.shape[0]} layers: every a_j is a similarity-weighted "
                        "mean of all layers and pulled to the middle (use a smaller --top-k for shallow models)")
    if main.undefined:
        warnings.append(f"{len(main.undefined)} CKA cell(s) undefined: a self-HSIC was not positive (null in JSON, NaN in npz)")
    if s.estimator == "minibatch-unbiased" and main.n_batches < 10 and s.boot > 0:
        warnings.append(f"only {main.n_batches} minibatch(es): the batch bootstrap CI is rough (more examples or a smaller "
                        "--cka-batch-size give more batches)")
    if s.estimator == "minibatch-unbiased" and s.epochs > 1 and s.boot > 0:
        warnings.append("with --epochs > 1 batches share examples: the batch-bootstrap CI treats them as independent and is too narrow")
    if s.estimator == "full-unbiased" and s.boot > 0:
        warnings.append("bootstrap resamples with replacement put duplicate examples into the U-statistic: the full-unbiased CI "
                        "leans towards the biased estimate")
    if not check.get("ok"):
        warnings.append(f"self-check failed: max |CKA(X,X) - 1| = {check.get('max_abs_deviation')}")
