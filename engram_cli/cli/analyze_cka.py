"""``engram analyze cka``: layer-by-layer CKA between an Engram model and a baseline (paper Fig. 4b)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from engram_cli.cli.options import (
    BatchSizeOpt,
    BootstrapOpt,
    BranchReduce,
    BranchReduceOpt,
    Device,
    DeviceMapOpt,
    DeviceOpt,
    EngramPathOpt,
    ForceOpt,
    JsonOpt,
    LayersPathOpt,
    MaxLengthOpt,
    ModelArg,
    ModelDtype,
    ModelDtypeOpt,
    OutputOpt,
    QuietOpt,
    SeedOpt,
    SkipFirstOpt,
    ThreadsOpt,
    TokenizerOpt,
)
from engram_cli.cli.output import Output, escape

SCHEMA = "engram.analyze.cka/1"
_CKA = "CKA"
_DATA = "Examples"


class Estimator(str, Enum):
    minibatch_unbiased = "minibatch-unbiased"
    full_unbiased = "full-unbiased"
    full_biased = "full-biased"


class Kernel(str, Enum):
    linear = "linear"
    rbf = "rbf"


class Positions(str, Enum):
    last = "last"
    all = "all"
    mean_pool = "mean-pool"
    entity_final = "entity-final"


class Compare(str, Enum):
    auto = "auto"
    ablated = "ablated"
    self_ = "self"
    twin = "twin"


class CkaPreset(str, Enum):
    engram_paper = "engram-paper"


class GramPath(str, Enum):
    auto = "auto"
    gram = "gram"
    feature = "feature"


# The paper's choices (arXiv 2601.07372 §6.1.2): linear CKA, minibatch unbiased HSIC, final token of
# named entities (Few-NERD there; the bundled entity spans here), top-5 soft alignment, 0-based layers.
PRESETS = {"engram-paper": {"estimator": "minibatch-unbiased", "kernel": "linear", "positions": "entity-final", "k": 5}}
DEFAULTS = {"estimator": "minibatch-unbiased", "kernel": "linear", "positions": "all", "k": 5}


def cka(
    model_a: ModelArg = None,
    model_b: Annotated[Optional[str], typer.Argument(help="Baseline model (default: MODEL_A with its Engram ablated).")] = None,
    compare: Annotated[Compare, typer.Option("--compare", help="Without MODEL_B: 'ablated' (Engram output zeroed), 'self' "
                                             "(the model against itself), 'auto' (ablated if the model has Engram), 'twin' "
                                             "(MODEL_A, default demo model v2, against the bundled no-Engram twin).")] = Compare.auto,
    preset: Annotated[Optional[CkaPreset], typer.Option("--protocol", help="engram-paper: the paper's minibatch-unbiased, "
                                                        "linear, entity-final, k=5 (explicit options win).", rich_help_panel=_CKA)] = None,
    estimator: Annotated[Optional[Estimator], typer.Option("--estimator", help="minibatch-unbiased (paper; default), "
                                                           "full-unbiased or full-biased.", rich_help_panel=_CKA)] = None,
    kernel: Annotated[Optional[Kernel], typer.Option("--kernel", help="linear (default) or rbf (median heuristic).",
                                                     rich_help_panel=_CKA)] = None,
    rbf_threshold: Annotated[float, typer.Option("--rbf-threshold", help="RBF bandwidth as a multiple of the median "
                                                 "distance.", rich_help_panel=_CKA)] = 1.0,
    batch_size: Annotated[int, typer.Option("--cka-batch-size", help="Examples per CKA minibatch (>= 4).", rich_help_panel=_CKA)] = 64,
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over the examples, reshuffled each time (minibatch).",
                                        rich_help_panel=_CKA)] = 1,
    seed: SeedOpt = 0,
    top_k: Annotated[Optional[int], typer.Option("--top-k", help="k of the soft alignment index (paper: 5).",
                                                 rich_help_panel=_CKA)] = None,
    n_boot: BootstrapOpt = None,
    clamp_outliers: Annotated[Optional[float], typer.Option("--clamp-outliers", help="Also report CKA with each feature "
                                                            "clipped to its q / 1-q quantiles.", rich_help_panel=_CKA)] = None,
    remove_top_pcs: Annotated[Optional[int], typer.Option("--remove-top-pcs", help="Also report CKA with the top k principal "
                                                          "components removed.", rich_help_panel=_CKA)] = None,
    gram_path: Annotated[GramPath, typer.Option("--path", help="Gram or feature space (linear); auto picks the cheaper.",
                                                rich_help_panel=_CKA)] = GramPath.auto,
    positions: Annotated[Optional[Positions], typer.Option("--positions", help="all (default), last, mean-pool or "
                                                           "entity-final.", rich_help_panel=_DATA)] = None,
    spans: Annotated[Optional[Path], typer.Option("--spans", help="Entity-span JSONL for entity-final (default: the "
                                                  "bundled set).", rich_help_panel=_DATA)] = None,
    texts: Annotated[Optional[Path], typer.Option("--texts", help="Texts: JSONL with 'text' or plain lines (default: "
                                                  "bundled Wikipedia paragraphs and passages).", rich_help_panel=_DATA)] = None,
    skip_first: SkipFirstOpt = 1,
    max_length: MaxLengthOpt = 256,
    max_examples: Annotated[int, typer.Option("--max-examples", help="Seeded subsample above this many examples (0: all).",
                                              rich_help_panel=_DATA)] = 4096,
    forward_batch: BatchSizeOpt = 8,
    branch_reduce: BranchReduceOpt = BranchReduce.model,
    cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", help="Keep per-layer features as .npy memmaps here.")] = None,
    tokenizer: TokenizerOpt = None,
    device: DeviceOpt = Device.auto,
    model_dtype: ModelDtypeOpt = ModelDtype.float32,
    device_map: DeviceMapOpt = None,
    engram_path: EngramPathOpt = None,
    layers_path: LayersPathOpt = None,
    threads: ThreadsOpt = None,
    output: OutputOpt = None,
    force: ForceOpt = False,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Linear CKA between every layer of an Engram model and a baseline, the paper's soft alignment index (Eq. 9) and its shift.

    Without MODEL_B the baseline is MODEL_A with its Engram output zeroed. Layers are 0-based decoder layers (block outputs).
    Reports a null floor (rows shuffled), a self-check, bootstrap CIs, and writes cka.json, cka.npz and cka.png with -o.
    """
    from engram_cli.analysis.cka_run import CkaSettings, LoadOptions, ModelRequest, run_cka, validate
    from engram_cli.cli.options import start_model_run
    from engram_cli.reports import check_output_dir

    out = Output(json_, quiet)
    chosen = dict(PRESETS[preset.value]) if preset else dict(DEFAULTS)
    for name, value in (("estimator", estimator), ("kernel", kernel), ("positions", positions), ("k", top_k)):
        if value is not None:
            chosen[name] = value.value if isinstance(value, Enum) else value
    settings = CkaSettings(
        estimator=chosen["estimator"], kernel=chosen["kernel"], rbf_threshold=rbf_threshold, batch_size=batch_size,
        epochs=epochs, seed=seed, positions=chosen["positions"], skip_first=skip_first, max_length=max_length,
        max_examples=max_examples or None, forward_batch=forward_batch, k=chosen["k"], n_boot=n_boot, clamp_outliers=clamp_outliers,
        remove_top_pcs=remove_top_pcs, branch_reduce=branch_reduce.value, path=gram_path.value, texts=texts, spans=spans,
        cache_dir=cache_dir, preset=preset.value if preset else None)
    validate(settings)
    check_output_dir(output, force)
    if compare is Compare.twin:
        from engram_cli.models.loading import twin_pair

        (model_a, model_b), compare = twin_pair(model_a, model_b), Compare.auto
    used_threads = start_model_run(device, threads, (model_a, model_b))
    tok = str(tokenizer) if tokenizer else None
    out.log(f"CKA: {escape(model_a or 'the bundled demo model')} vs {escape(model_b or compare.value)} ...")
    with out.progress("CKA") as cb:
        result = run_cka(ModelRequest(model_a, tok), ModelRequest(model_b) if model_b else None, settings,
                         LoadOptions(device=device.value, dtype=model_dtype.value, device_map=device_map,
                                     engram_path=engram_path, layers_path=layers_path),
                         compare=compare.value, progress=cb)
    doc = document(result, used_threads)
    if output is not None:
        _write(output, force, result, doc)
        doc["output"] = str(output)
    for w in result.warnings:
        out.warn(escape(w))
    if json_:
        out.emit_json(doc)
        return
    render(out, result)
    if output is not None:
        out.print(f"wrote {escape(output)}/cka.json, cka.npz and cka.png")


# -- documents ---------------------------------------------------------------------------------

def _nan_list(a: Any) -> Any:
    import numpy as np

    if a is None:
        return None
    arr = np.asarray(a, dtype=np.float64)
    return np.where(np.isfinite(arr), arr, np.nan).tolist()  # NaN -> null in the JSON writer


def matrix_doc(m: Any) -> dict[str, Any]:
    import numpy as np

    al = m.alignment
    null = m.null[np.isfinite(m.null)]
    return {
        "cka": _nan_list(m.cka), "ci95_lo": _nan_list(m.ci_lo), "ci95_hi": _nan_list(m.ci_hi), "ci_method": m.ci_note or None,
        "undefined_cells": [list(c) for c in m.undefined],
        "null_floor": {"cka": _nan_list(m.null), "mean_abs": float(np.abs(null).mean()) if null.size else None,
                       "p95_abs": float(np.quantile(np.abs(null), 0.95)) if null.size else None,
                       "max_abs": float(np.abs(null).max()) if null.size else None},
        "hsic": {"ab": _nan_list(m.hsic_ab), "a": _nan_list(m.hsic_a), "b": _nan_list(m.hsic_b)},
        "minibatches": m.n_batches, "dropped_examples": m.dropped,
        "alignment": {
            "k": al.k, "index_base": al.index_base, "soft_index": _nan_list(al.soft_index),
            "soft_index_ci95_lo": _nan_list(m.soft_ci_lo), "soft_index_ci95_hi": _nan_list(m.soft_ci_hi),
            "argmax": [int(x) if x >= 0 else None for x in al.argmax], "diagonal": _nan_list(al.diagonal),
            "shift": _nan_list(al.shift), "baseline_self_index": _nan_list(al.self_index),
            "excess_shift": _nan_list(al.excess),
            "headline": None if al.headline is None else {"layer": al.headline.layer, "soft_index": al.headline.index,
                                                          "shift": al.headline.shift, "text": al.headline.text},
        },
    }


def document(r: Any, threads: int | None = None) -> dict[str, Any]:
    """The ``engram.analyze.cka/1`` document of a :class:`CkaResult`."""
    from dataclasses import asdict

    from engram_cli.reports import provenance

    s = asdict(r.settings)
    s.update({k: (str(v) if v is not None else None) for k, v in s.items() if isinstance(v, Path)})
    return {
        "schema": SCHEMA,
        "provenance": provenance(device=r.device, threads=threads, seeds={"cka": r.settings.seed}),
        "index_base": 0, "layers": "decoder-layer block outputs, 0-based",
        "matrix_axes": {"rows": "model_b layer i (baseline)", "cols": "model_a layer j (Engram model)"},
        "compare": r.compare, "model_a": asdict(r.model_a), "model_b": asdict(r.model_b), "settings": s,
        "examples": {"source": r.texts_source, "texts": r.n_texts, "candidates": r.n_candidates, "used": r.n_examples},
        **matrix_doc(r.main),
        "self_check": r.self_check,
        "robustness": {name: matrix_doc(m) for name, m in r.variants.items()},
        "warnings": r.warnings, "timings_s": r.timings, "peak_rss_mb": r.peak_rss_mb,
    }


def arrays(r: Any) -> dict[str, Any]:
    import numpy as np

    m = r.main
    out = {"cka": m.cka, "null_floor": m.null, "hsic_ab": m.hsic_ab, "hsic_a": m.hsic_a, "hsic_b": m.hsic_b,
           "soft_index": m.alignment.soft_index, "argmax": m.alignment.argmax, "shift": m.alignment.shift}
    if m.alignment.excess is not None:
        out["baseline_self_index"], out["excess_shift"] = m.alignment.self_index, m.alignment.excess
    for key, val in (("ci95_lo", m.ci_lo), ("ci95_hi", m.ci_hi), ("soft_index_ci95_lo", m.soft_ci_lo),
                     ("soft_index_ci95_hi", m.soft_ci_hi)):
        if val is not None:
            out[key] = val
    for name, v in r.variants.items():
        out[f"cka[{name}]"] = v.cka
    return {k: np.asarray(v) for k, v in out.items()}


def _labels(r: Any) -> tuple[str, str]:
    a = f"{Path(r.model_a.source).name} ({r.model_a.family})"
    b = a + " Engram-ablated" if r.compare == "ablated" else f"{Path(r.model_b.source).name} ({r.model_b.family})"
    return a, b


def _write(output: Path, force: bool, r: Any, doc: dict[str, Any]) -> None:
    from engram_cli.analysis.plots_cka import cka_figure
    from engram_cli.reports import write_report

    a, b = _labels(r)
    m = r.main
    fig = cka_figure(m.cka, m.alignment.soft_index, m.alignment.diagonal, label_a=a, label_b=b, null=m.null,
                     soft_lo=m.soft_ci_lo, soft_hi=m.soft_ci_hi, k=m.alignment.k, self_index=m.alignment.self_index,
                     title=f"CKA ({r.settings.estimator}, {r.settings.kernel}, {r.settings.positions}, n={r.n_examples})")
    write_report(output, force=force, documents={"cka": doc}, figures={"cka": fig}, arrays={"cka": arrays(r)})


# -- rendering ---------------------------------------------------------------------------------

def _f(v: Any, nd: int = 3) -> str:
    import math

    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{nd}f}"


def _headline_line(compare: str, al: Any) -> str:
    if compare == "self":
        return ("headline: none: the model against itself is the control run (its excess over its own index is 0 by "
                "construction; a_j - j shows the index's own bias on this model)")
    if al.headline is None:
        return "headline: undefined (no defined soft alignment index)"
    h = al.headline
    if al.excess is None:
        return f"headline: {h.text} (largest shift a_j - j; 0-based decoder layers)"
    return (f"headline: {h.text} (Engram-model layer {h.layer} \u2192 soft alignment index over baseline layers, the "
            f"largest excess over the baseline's own index: self-index {_f(al.self_index[h.layer], 2)}, excess "
            f"{_f(al.excess[h.layer], 2)}; 0-based decoder layers)")


def render(out: Output, r: Any) -> None:
    import numpy as np
    from rich.table import Table

    m, al = r.main, r.main.alignment
    a, b = _labels(r)
    t = Table(title=f"CKA per {escape(a)} layer j vs {escape(b)} layers i (0-based decoder layers, k={al.k})")
    for col in ("j", "best i", "CKA(best)", "CKA(i=j)", "a_j", "a_j 95% CI", "shift a_j-j", "B self a", "excess",
                "null |max|"):
        t.add_column(col, justify="right", no_wrap=True)
    for j in range(m.cka.shape[1]):
        best = int(al.argmax[j])
        diag_i = int(round(al.diagonal[j]))
        lo = None if m.soft_ci_lo is None else m.soft_ci_lo[j]
        hi = None if m.soft_ci_hi is None else m.soft_ci_hi[j]
        col_null = np.abs(m.null[:, j][np.isfinite(m.null[:, j])])
        t.add_row(str(j), str(best) if best >= 0 else "-", _f(m.cka[best, j]) if best >= 0 else "-", _f(m.cka[diag_i, j]),
                  _f(al.soft_index[j], 2), f"{_f(lo, 2)}-{_f(hi, 2)}" if lo is not None else "-", _f(al.shift[j], 2),
                  _f(None if al.self_index is None else al.self_index[j], 2), _f(None if al.excess is None else al.excess[j], 2),
                  _f(float(col_null.max()) if col_null.size else None))
    out.print(t)
    out.print(_headline_line(r.compare, al))
    nd = matrix_doc(m)["null_floor"]
    out.print(f"null floor (B rows shuffled): mean |CKA| {_f(nd['mean_abs'], 4)}, 95th pct {_f(nd['p95_abs'], 4)}; "
              f"self-check max |CKA(X,X)-1| = {r.self_check.get('max_abs_deviation')}")
    out.print(f"{r.n_examples} examples ({escape(r.settings.positions)}) from {escape(r.texts_source)}; "
              f"{r.settings.estimator}, {r.settings.kernel}, {m.n_batches} batch(es); compare: {r.compare}; "
              f"{len(m.undefined)} undefined cell(s)")
    for name, v in r.variants.items():
        diff = np.nanmax(np.abs(v.cka - m.cka)) if np.isfinite(v.cka - m.cka).any() else float("nan")
        vh = v.alignment.headline.text if v.alignment.headline else "undefined"
        out.print(f"robustness {escape(name)}: headline {vh}, max |dCKA| vs raw {_f(float(diff), 4)}")


def register(analyze_app: typer.Typer) -> None:
    analyze_app.command("cka")(cka)
