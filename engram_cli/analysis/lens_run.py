"""The logit-lens pipeline: stream batches through one or two model views and sum the
per-token statistics of :mod:`engram_cli.analysis.logit_lens` per sequence.

Per batch: one forward pass with read-out hooks (``analysis/capture.py``) that keep only the
selected positions; then chunks of at most ``logit_budget / vocab`` positions go through the
float32 unembedding and log-softmax, one read-out at a time. Peak memory is the captured
states of one batch plus a few ``[chunk, vocab]`` blocks, whatever the number of sequences.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from engram_cli.analysis.lens_texts import LensItem
from engram_cli.analysis.logit_lens import (
    METRICS,
    MIN_LOGP,
    ModelLens,
    Paired,
    ReadOut,
    SeqSums,
    Unembedder,
    first_converged,
    paired,
    readout_for,
    summarise,
    token_metrics,
    vocab_size,
)
from engram_cli.errors import BadInputError
from engram_cli.progress import ProgressCallback

LN2 = float(np.log(2.0))


@dataclass(frozen=True)
class LensSettings:
    points: tuple[str, ...] = ("block",)
    branch_reduce: str = "model"
    final_norm: bool = True
    bits: bool = False
    positions: str = "all"
    skip_first: int = 0
    kl_threshold: float = 0.1  # in the report's unit (nats, or bits with ``bits``)
    batch_size: int = 8
    max_length: int = 256
    n_boot: int = 1000
    seed: int = 0
    logit_budget: int = 1 << 22  # floats per [positions, vocab] block
    heatmap_positions: int = 0  # 0 = no heatmap
    compute_dtype: str = "float32"  # unembedding, log-softmax and metrics ("float64" for reference tests)

    @property
    def threshold_nats(self) -> float:
        return self.kl_threshold * (LN2 if self.bits else 1.0)


@dataclass
class ModelRun:
    """One model (or condition) to analyse: its view, a name, and an optional hook context."""

    name: str
    view: Any
    condition: Callable[[], Any] = contextlib.nullcontext


@dataclass
class Heatmap:
    """Top-1 token of every read-out at the first positions of one sequence (rows: read-outs)."""

    model: str
    item: str
    labels: list[str]
    input_ids: list[int]
    input_tokens: list[str]
    top_tokens: list[list[str]]  # [R][P] decoded top-1 tokens
    top_ids: np.ndarray  # [R, P]
    top_prob: np.ndarray  # [R, P]
    kl: np.ndarray  # [R, P] KL(final||layer) in the report's unit


@dataclass
class LensResult:
    settings: LensSettings
    models: list[ModelLens]
    paired: Paired | None
    heatmaps: list[Heatmap] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def readouts_of(view: Any, points: Sequence[str]) -> list[ReadOut]:
    from engram_cli.analysis.capture import expected_keys

    return [readout_for(p, i) for p, i in expected_keys(view, points, None)]


def _forward(view: Any, ids: Any) -> tuple[Any, bool]:
    """Run the model; returns (final hidden [B,T,D], True) or (logits [B,T,V], False)."""
    if view.backbone is not None:
        return view.backbone(ids), True
    return view.model(input_ids=ids, use_cache=False).logits, False


def _capture_batch(view: Any, run: ModelRun, ids: Any, sel: Any, settings: LensSettings):
    """Selected-position states per read-out key, the final state, and the model's own output."""
    import torch

    from engram_cli.analysis.capture import capture, reduce_branches

    last = ("block", len(view.layers) - 1)
    wanted = {(r.point, r.layer) for r in readouts_of(view, settings.points)}
    states: dict[tuple[str, int], Any] = {}
    final: dict[str, Any] = {}

    def sink(point: str, layer: int, raw: Any) -> None:
        m = sel.to(raw.device)
        if (point, layer) in wanted:
            states[(point, layer)] = reduce_branches(view, raw, settings.branch_reduce)[m]
        if (point, layer) == last:
            final["h"] = reduce_branches(view, raw, "model")[m]

    points = tuple(dict.fromkeys((*settings.points, "block")))
    with torch.no_grad(), run.condition(), capture(view, points, None, "none", sink=sink) as cap:
        out, is_hidden = _forward(view, ids)
        cap.check()
    return states, final["h"], out[sel.to(out.device)], is_hidden


def stream_model(run: ModelRun, items: Sequence[LensItem], settings: LensSettings, pad_id: int, device: Any,
                 progress: ProgressCallback | None = None) -> tuple[list[ReadOut], SeqSums, float | None]:
    """Per-sequence metric sums of one model over ``items`` (identical batches for every model)."""
    import torch

    from engram_cli.analysis.batching import iter_batches

    readouts = readouts_of(run.view, settings.points)
    unemb = Unembedder(run.view, settings.compute_dtype)
    seq = SeqSums.zeros(len(items), len(readouts))
    check: float | None = None
    batches = list(iter_batches([it.ids for it in items], settings.batch_size, pad_id, device))
    with torch.no_grad():
        for done, batch in enumerate(batches, 1):
            check = _stream_batch(run, items, settings, batch, readouts, unemb, seq, check)
            if progress:
                progress(done, len(batches), run.name)
    return readouts, seq, check


def _selection(batch: Any, items: Sequence[LensItem]) -> tuple[Any, Any, Any]:
    """``sel`` [B,T] bool, and per selected row (row-major) its batch row and gold token (-1: none)."""
    import torch

    sel = torch.zeros(batch.ids.shape, dtype=torch.bool)
    gold = torch.full(batch.ids.shape, -1, dtype=torch.long)
    for b, i in enumerate(batch.indices):
        sel[b, items[i].positions] = True
        gold[b, items[i].positions] = torch.tensor(items[i].gold)
    return sel, sel.nonzero()[:, 0], gold[sel]


def _stream_batch(run: ModelRun, items: Sequence[LensItem], settings: LensSettings, batch: Any,
                  readouts: list[ReadOut], unemb: Unembedder, seq: SeqSums, check: float | None) -> float | None:
    """Add one batch's per-sequence sums to ``seq``; returns the final-logits check (first chunk)."""
    import torch

    keys = [(r.point, r.layer) for r in readouts]
    last = ("block", len(run.view.layers) - 1)
    shared = settings.final_norm and settings.branch_reduce == "model" and last in keys
    conv_idx = [k for k, r in enumerate(readouts) if r.point in ("embed", "block")]
    conv_depth = torch.tensor([readouts[k].depth for k in conv_idx], dtype=torch.float64)
    chunk = max(1, settings.logit_budget // max(1, unemb.vocab))
    sel, rows, gold = _selection(batch, items)
    states, final_h, out, is_hidden = _capture_batch(run.view, run, batch.ids, sel, settings)
    n_b = len(batch.indices)
    sums = torch.zeros(n_b, len(readouts), len(METRICS), dtype=torch.float64)
    conv_s, conv_n = torch.zeros(n_b, dtype=torch.float64), torch.zeros(n_b, dtype=torch.float64)
    for r0 in range(0, rows.numel(), chunk):
        r1 = min(rows.numel(), r0 + chunk)
        final_logits = unemb.logits(final_h[r0:r1], norm=True)
        if check is None:  # relative: max |lens final - model logits| / (1 + max |logit|)
            own = unemb.logits(out[r0:r1], norm=False) if is_hidden else out[r0:r1].to(unemb.device, unemb.dtype)
            check = float((own - final_logits).abs().max() / (1 + final_logits.abs().max()))
        lf = final_logits.log_softmax(-1).clamp_min_(MIN_LOGP)
        del final_logits
        pf, top, g = lf.exp(), lf.argmax(-1), gold[r0:r1].to(unemb.device)
        mets = []
        for key in keys:
            lp = lf if (shared and key == last) else unemb.log_probs(states[key][r0:r1], settings.final_norm)
            mets.append(token_metrics(lp, lf, pf, top, g))
            del lp
        met = torch.stack(mets)  # [R, M, chunk]
        idx = rows[r0:r1]
        sums.index_add_(0, idx, met.permute(2, 0, 1).double().cpu())
        if conv_idx:
            first = first_converged(met[conv_idx, 0], met[conv_idx, 5], settings.threshold_nats).cpu()
            ok = first >= 0
            conv_s.index_add_(0, idx, torch.where(ok, conv_depth[first.clamp_min(0)], 0.0))
            conv_n.index_add_(0, idx, ok.double())
    at = np.asarray(batch.indices)
    seq.sums[at] += sums.numpy()
    seq.conv_sum[at] += conv_s.numpy()
    seq.conv_n[at] += conv_n.numpy()
    seq.n_tokens[at] += sel.sum(1).double().numpy()
    seq.n_gold[at] += (gold >= 0).double().new_zeros(n_b).index_add_(0, rows, (gold >= 0).double()).numpy()
    return check


def heatmap(run: ModelRun, item: LensItem, settings: LensSettings, decode: Callable[[list[int]], str] = str) -> Heatmap:
    """Top-1 tokens, their probabilities and KL(final||layer) at the first positions of ``item``."""
    import torch

    with torch.no_grad():
        return _heatmap(run, item, settings, decode)


def _heatmap(run: ModelRun, item: LensItem, settings: LensSettings, decode: Callable[[list[int]], str]) -> Heatmap:
    import torch

    ids = item.ids[:settings.heatmap_positions]
    view = run.view
    x = torch.tensor([ids], device=_device(view))
    sel = torch.ones(x.shape, dtype=torch.bool)
    readouts = readouts_of(view, settings.points)
    states, final_h, _, _ = _capture_batch(view, run, x, sel, settings)
    unemb = Unembedder(view, settings.compute_dtype)
    lf = unemb.log_probs(final_h, norm=True)
    pf = lf.exp()
    top_ids, top_prob, kl = [], [], []
    for r in readouts:
        lp = unemb.log_probs(states[(r.point, r.layer)], settings.final_norm)
        p, i = lp.exp().max(-1)
        top_ids.append(i.cpu().numpy())
        top_prob.append(p.cpu().numpy())
        kl.append(torch.linalg.vecdot(pf, lf - lp).cpu().numpy() / (LN2 if settings.bits else 1.0))
    tops = np.stack(top_ids)
    return Heatmap(run.name, item.id, [r.label for r in readouts], list(ids), [decode([i]) for i in ids],
                   [[decode([int(i)]) for i in row] for row in tops], tops,
                   np.stack(top_prob).astype(np.float64), np.stack(kl).astype(np.float64))


def _device(view: Any) -> Any:
    return next(view.model.parameters()).device


def check_pair(a: ModelRun, b: ModelRun) -> None:
    """Refuse a paired lens of models with different depths or vocabularies (exit 3)."""
    la, lb = len(a.view.layers), len(b.view.layers)
    if la != lb:
        raise BadInputError(f"paired logit lens needs equal layer counts: {a.name} has {la} decoder layers, {b.name} {lb}",
                            hint="compare models of the same depth (engram analyze cka compares different depths)")
    va, vb = vocab_size(a.view), vocab_size(b.view)
    if va != vb:
        raise BadInputError(f"paired logit lens needs one tokenizer: {a.name} has a vocabulary of {va}, {b.name} {vb}")


def analyse(runs: Sequence[ModelRun], items: Sequence[LensItem], settings: LensSettings, pad_id: int,
            progress: ProgressCallback | None = None, decode: Callable[[list[int]], str] = str) -> LensResult:
    """The lens of every run on the same token streams; paired deltas (first - second) for two."""
    if len(runs) == 2:
        check_pair(runs[0], runs[1])
    models, warnings = [], []
    for k, run in enumerate(runs):
        def prog(done: float, total: float | None, desc: str, k: int = k) -> None:
            if progress:
                progress(k * (total or 0) + done, len(runs) * (total or 0), desc)

        readouts, seq, check = stream_model(run, items, settings, pad_id, _device(run.view), prog)
        models.append(summarise(run.name, run.view.family, len(run.view.layers), run.view.engram_layer_ids, readouts,
                                seq, bits=settings.bits, threshold=settings.kl_threshold, n_boot=settings.n_boot,
                                seed=settings.seed, final_check=check))
        half = next(run.view.model.parameters()).dtype.itemsize < 4
        if check is not None and check > (3e-2 if half else 1e-4):
            warnings.append(f"{run.name}: the lens's final logits differ from the model's own output by up to "
                            f"{check:.3g} (final norm or output mapping not found: pass a known architecture)")
    pair = paired(models[0], models[1], bits=settings.bits, n_boot=settings.n_boot, seed=settings.seed) \
        if len(models) == 2 else None
    maps = [heatmap(run, items[0], settings, decode) for run in runs] if settings.heatmap_positions else []
    return LensResult(settings, models, pair, maps, warnings)


# -------------------------------------------------------------------------------- one call for the CLI
@dataclass(frozen=True)
class LensRequest:
    """What to load and read: MODEL, then MODEL_B or ``compare="ablated"`` (MODEL with Engram zeroed)."""

    model: str | None = None
    model_b: str | None = None
    compare: str | None = None
    texts: Any = None  # Path | None
    limit: int | None = None
    device: str = "auto"
    dtype: str = "float32"
    device_map: str | None = None
    tokenizer: str | None = None
    engram_path: str | None = None
    layers_path: str | None = None


@dataclass
class LensReport:
    result: LensResult
    sources: list[str]
    texts_source: str
    n_texts: int
    n_items: int
    device: str


def validate(req: LensRequest, settings: LensSettings) -> None:
    """Everything that can be checked before loading a model."""
    from engram_cli.analysis.capture import BRANCH_REDUCE, POINTS
    from engram_cli.analysis.lens_texts import POSITIONS
    from engram_cli.errors import UsageError

    if req.model_b is not None and req.compare is not None:
        raise UsageError("give MODEL_B or --compare ablated, not both")
    if req.compare not in (None, "ablated"):
        raise UsageError(f"unknown --compare {req.compare!r}", hint="ablated")
    bad = [p for p in settings.points if p not in POINTS]
    if bad or not settings.points:
        raise UsageError(f"unknown read-out point(s) {', '.join(bad) or '(none)'}", hint=f"any of {', '.join(POINTS)}")
    if settings.branch_reduce not in BRANCH_REDUCE:
        raise UsageError(f"unknown --branch-reduce {settings.branch_reduce!r}", hint=", ".join(BRANCH_REDUCE))
    if settings.positions not in POSITIONS:
        raise UsageError(f"unknown --positions {settings.positions!r}", hint=", ".join(POSITIONS))
    if settings.kl_threshold <= 0 or settings.skip_first < 0 or settings.max_length < 2 or settings.batch_size < 1:
        raise UsageError("--kl-threshold must be > 0, --skip-first >= 0, --max-length >= 2, --batch-size >= 1")
    if req.limit is not None and req.limit < 1:
        raise UsageError("--limit must be >= 1")


def run_logit_lens(req: LensRequest, settings: LensSettings, progress: ProgressCallback | None = None) -> LensReport:
    """Load, read the texts, and run the lens (one model, two models, or a model and its ablation)."""
    from engram_cli.analysis.hooks import engram_ablation, resolve_layers
    from engram_cli.analysis.lens_texts import build_items, load_texts
    from engram_cli.models.loading import load_model
    from engram_cli.models.views import require_engram, view_for

    validate(req, settings)
    texts, source = load_texts(req.texts, settings.positions, req.limit)

    def load(spec: str | None):
        loaded = load_model(spec, device=req.device, dtype=req.dtype, device_map=req.device_map, tokenizer=req.tokenizer)
        return loaded, view_for(loaded.model, engram_path=req.engram_path, layers_path=req.layers_path)

    a, view_a = load(req.model)
    name_a = a.source if req.model else "bundled demo model"
    runs = [ModelRun(name_a, view_a)]
    items = build_items(texts, a.tokenizer, settings.positions, skip_first=settings.skip_first,
                        max_length=settings.max_length)
    warnings = []
    if req.model_b is not None:
        b, view_b = load(req.model_b)
        runs.append(ModelRun(b.source, view_b))
        check_pair(runs[0], runs[1])
        if b.tokenizer is None:
            warnings.append(f"{b.source} has no tokenizer: assuming it shares {name_a}'s")
        else:
            items_b = build_items(texts, b.tokenizer, settings.positions, skip_first=settings.skip_first,
                                  max_length=settings.max_length)
            diff = next((x.id for x, y in zip(items, items_b) if x.ids != y.ids or x.positions != y.positions),
                        None if len(items) == len(items_b) else "count")
            if diff is not None:
                raise BadInputError(f"the two models tokenize the texts differently (first at {diff})",
                                    hint="a paired logit lens needs identical token streams: one tokenizer")
    elif req.compare == "ablated":
        layers = resolve_layers(require_engram(view_a), "all")
        runs.append(ModelRun(f"{name_a} (Engram ablated)", view_a, lambda: engram_ablation(view_a, layers)))
    pad = a.tokenizer.eos_id if a.tokenizer.eos_id is not None else 0
    result = analyse(runs, items, settings, pad, progress, a.tokenizer.decode)
    result.warnings[:0] = warnings
    return LensReport(result, [r.name for r in runs], source, len(texts), len(items), a.device)
