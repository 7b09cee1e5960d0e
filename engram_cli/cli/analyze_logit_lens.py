"""``engram analyze logit-lens``: how prediction-ready each layer is (paper §6.1.1, Fig. 4a)."""

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

SCHEMA = "engram.analyze.logit_lens/1"
_LENS = "Lens"
_DATA = "Texts and positions"


class Compare(str, Enum):
    ablated = "ablated"
    twin = "twin"


class Point(str, Enum):
    embed = "embed"
    block = "block"
    pre_engram = "pre_engram"
    post_engram = "post_engram"


class Positions(str, Enum):
    all = "all"
    last = "last"
    answer = "answer"
    entity_final = "entity-final"


class Metric(str, Enum):
    kl_final_layer = "kl_final_layer"
    kl_layer_final = "kl_layer_final"
    js = "js"
    entropy = "entropy"
    ce = "ce"
    top1_agree = "top1_agree"
    rank_final_top1 = "rank_final_top1"
    rank_gold = "rank_gold"


def logit_lens(
    model: ModelArg = None,
    model_b: Annotated[Optional[str], typer.Argument(help="A second model on the same token streams (paired deltas A - B).")] = None,
    compare: Annotated[Optional[Compare], typer.Option("--compare", help="Without MODEL_B: 'ablated' compares MODEL with "
                                                       "its Engram output zeroed; 'twin' compares MODEL (default: demo "
                                                       "model v2) with the bundled no-Engram twin.")] = None,
    points: Annotated[Optional[list[Point]], typer.Option("--points", help="Read-out points (repeatable): block (default), "
                                                          "embed, pre_engram, post_engram.", rich_help_panel=_LENS)] = None,
    branch_reduce: BranchReduceOpt = BranchReduce.model,
    final_norm: Annotated[bool, typer.Option("--final-norm/--no-final-norm", help="Recompute the final norm on each "
                                             "read-out (off: raw unembedding).", rich_help_panel=_LENS)] = True,
    bits: Annotated[bool, typer.Option("--bits", help="Report KL, JS, entropy and CE in bits (default nats).",
                                       rich_help_panel=_LENS)] = False,
    metric: Annotated[Metric, typer.Option("--metric", help="The metric plotted and compared in the table.",
                                           rich_help_panel=_LENS)] = Metric.kl_final_layer,
    kl_threshold: Annotated[float, typer.Option("--kl-threshold", help="Convergence: KL(final||layer) below this (report "
                                                "unit) with top-1 agreement.", rich_help_panel=_LENS)] = 0.1,
    heatmap: Annotated[bool, typer.Option("--heatmap", help="Also write logit_lens_heatmap.png (layer x position top-1 "
                                          "tokens of the first text).", rich_help_panel=_LENS)] = False,
    heatmap_positions: Annotated[int, typer.Option("--heatmap-positions", min=1, help="Positions in the heatmap.",
                                                   rich_help_panel=_LENS)] = 24,
    texts: Annotated[Optional[Path], typer.Option("--texts", help="JSONL (text, or context + choices/gold or answers; spans "
                                                  "for entity-final) or plain lines (default: the bundled suites).",
                                                  rich_help_panel=_DATA)] = None,
    positions: Annotated[Positions, typer.Option("--positions", help="all, last, answer (task items) or entity-final "
                                                 "(span file).", rich_help_panel=_DATA)] = Positions.all,
    skip_first: SkipFirstOpt = 0,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="At most N texts per file.",
                                                 rich_help_panel=_DATA)] = None,
    max_length: MaxLengthOpt = 256,
    n_boot: BootstrapOpt = None,
    seed: SeedOpt = 0,
    output: OutputOpt = None,
    device: DeviceOpt = Device.auto,
    model_dtype: ModelDtypeOpt = ModelDtype.float32,
    device_map: DeviceMapOpt = None,
    tokenizer: TokenizerOpt = None,
    engram_path: EngramPathOpt = None,
    layers_path: LayersPathOpt = None,
    batch_size: BatchSizeOpt = 8,
    threads: ThreadsOpt = None,
    force: ForceOpt = False,
    json_mode: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Project every layer's residual stream through the final norm and LM head: how close is it to the final prediction?

    Per read-out: KL(final||layer) (default), KL(layer||final), JS, entropy, CE to the next token, top-1 agreement
    and ranks; means over tokens with bootstrap CIs over sequences; layers to convergence. With MODEL_B or
    --compare ablated: paired deltas with CIs and the area between the curves (paper §6.1.1, Fig. 4a).
    """
    from engram_cli.analysis.lens_run import LensRequest, LensSettings, validate
    from engram_cli.reports import check_output_dir

    out = Output(json_mode, quiet)
    settings = LensSettings(
        points=tuple(p.value for p in points) if points else ("block",), branch_reduce=branch_reduce.value,
        final_norm=final_norm, bits=bits, positions=positions.value, skip_first=skip_first, kl_threshold=kl_threshold,
        batch_size=batch_size, max_length=max_length, n_boot=1000 if n_boot is None else n_boot, seed=seed,
        heatmap_positions=heatmap_positions if heatmap else 0)
    if compare is Compare.twin:
        from engram_cli.models.loading import twin_pair

        (model, model_b), compare = twin_pair(model, model_b), None
    req = LensRequest(model=model, model_b=model_b, compare=compare.value if compare else None, texts=texts, limit=limit,
                      device=device.value, dtype=model_dtype.value, device_map=device_map,
                      tokenizer=str(tokenizer) if tokenizer else None, engram_path=engram_path, layers_path=layers_path)
    validate(req, settings)
    check_output_dir(output, force)
    from engram_cli.analysis.lens_run import run_logit_lens
    from engram_cli.cli.options import start_model_run

    n_threads = start_model_run(device, threads, (model,))
    out.log(f"loading {escape(model or 'the bundled demo model')} ({n_threads} threads) ...")
    with out.progress("logit lens", unit="batches") as progress:
        report = run_logit_lens(req, settings, progress)
    doc = document(report, model_dtype.value, n_threads, metric.value)
    if output is not None:
        _write(output, force, doc, report, metric.value)
        doc["output"] = str(output)
    for w in report.result.warnings:
        out.warn(escape(w))
    if json_mode:
        out.emit_json(doc)
        return
    _render(out, doc, metric.value)


def document(report: Any, dtype: str, threads: int, metric: str) -> dict[str, Any]:
    """The ``engram.analyze.logit_lens/1`` document."""
    from engram_cli.reports import provenance

    res, s = report.result, report.result.settings

    def model_doc(m) -> dict[str, Any]:
        return {"name": m.name, "family": m.family, "n_layers": m.n_layers, "engram_layers": m.engram_layers,
                "readouts": [vars(r) for r in m.readouts], "n_sequences": m.n_sequences, "n_tokens": m.n_tokens,
                "n_gold_tokens": m.n_gold_tokens, "final_logits_check": m.final_check,
                "metrics": {k: {"mean": c.mean, "ci95": [list(x) for x in zip(c.lo, c.hi)]} for k, c in m.curves.items()},
                "layers_to_convergence": vars(m.convergence)}

    paired = None
    if res.paired is not None:
        p = res.paired
        paired = {"a": p.a, "b": p.b, "labels": next(iter(p.curves.values())).labels,
                  "metrics": {k: {"delta": c.delta, "ci95": [list(x) for x in zip(c.lo, c.hi)], "area": c.area,
                                  "area_ci95": [c.area_lo, c.area_hi]} for k, c in p.curves.items()},
                  "layers_to_convergence_delta": {"delta": p.convergence_delta,
                                                  "ci95": [p.convergence_lo, p.convergence_hi]}}
    return {
        "schema": SCHEMA, "primary_metric": metric,
        "settings": {"points": list(s.points), "branch_reduce": s.branch_reduce, "final_norm": s.final_norm,
                     "units": "bits" if s.bits else "nats", "positions": s.positions, "skip_first": s.skip_first,
                     "kl_threshold": s.kl_threshold, "max_length": s.max_length, "batch_size": s.batch_size,
                     "layer_index_base": 0, "final_distribution": "lens of the last block output, final norm on, "
                     "branch_reduce=model", "compare": "ablated" if len(report.sources) == 2 and
                     report.sources[1].endswith("(Engram ablated)") else None},
        "texts": {"source": report.texts_source, "n_texts": report.n_texts, "n_sequences": report.n_items},
        "models": [model_doc(m) for m in res.models], "paired": paired,
        "heatmaps": [{"model": h.model, "item": h.item, "labels": h.labels, "input_ids": h.input_ids,
                      "input_tokens": h.input_tokens, "top_tokens": h.top_tokens, "top_ids": h.top_ids.tolist(),
                      "top_prob": h.top_prob.tolist(), "kl_final_layer": h.kl.tolist()} for h in res.heatmaps],
        "warnings": list(res.warnings),
        "provenance": provenance(device=report.device, dtype=dtype, threads=threads, seeds={"bootstrap": s.seed},
                                 bootstrap_resamples=s.n_boot),
    }


def _write(output: Path, force: bool, doc: dict[str, Any], report: Any, metric: str) -> None:
    from engram_cli.analysis.plots_lens import heatmap_figure, lens_figure
    from engram_cli.reports import write_report

    res = report.result
    figures = {"logit_lens": lens_figure(res, metric)}
    if res.heatmaps:
        figures["logit_lens_heatmap"] = heatmap_figure(res.heatmaps, res.settings.bits)
    arrays = {}
    for k, m in enumerate(res.models):  # per-sequence sums (nats), for re-analysis
        tag = "ab"[k]
        arrays.update({f"{tag}_sums": m.seq.sums, f"{tag}_n_tokens": m.seq.n_tokens, f"{tag}_n_gold": m.seq.n_gold,
                       f"{tag}_conv_sum": m.seq.conv_sum, f"{tag}_conv_n": m.seq.conv_n})
    write_report(output, force=force, documents={"logit_lens": doc}, figures=figures, arrays={"logit_lens": arrays})


def _f(v: float | None, nd: int = 4) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def _ci(ci: list) -> str:
    lo, hi = ci
    return "-" if lo is None or hi is None else f"{lo:.4f}..{hi:.4f}"


def _render(out: Output, doc: dict[str, Any], metric: str) -> None:
    from rich.table import Table

    from engram_cli.analysis.logit_lens import LABELS

    unit = doc["settings"]["units"]
    models = doc["models"]
    a = models[0]
    t = Table(title=f"Logit lens ({unit}; positions {doc['settings']['positions']}, {a['n_tokens']} tokens in "
                    f"{a['n_sequences']} sequences): {escape(a['name'])}")
    t.add_column("read-out", no_wrap=True)
    if len(models) == 1:
        cols = [m for m in LABELS]
        for c in cols:
            t.add_column(LABELS[c], justify="right", no_wrap=True)
        t.add_column(f"{LABELS[metric]} 95% CI", justify="right", no_wrap=True)
        for i, r in enumerate(a["readouts"]):
            t.add_row(r["label"], *[_f(a["metrics"][c]["mean"][i], 2 if c.startswith("rank") else 4) for c in cols],
                      _ci(a["metrics"][metric]["ci95"][i]))
    else:
        b, p = models[1], doc["paired"]
        for col in ("A", "B", "A - B", "95% CI (paired)"):
            t.add_column(f"{LABELS[metric]} {col}" if col in ("A", "B") else col, justify="right", no_wrap=True)
        index_b = {x["label"]: j for j, x in enumerate(b["readouts"])}
        for k, label in enumerate(p["labels"]):
            i = next(j for j, x in enumerate(a["readouts"]) if x["label"] == label)
            t.add_row(label, _f(a["metrics"][metric]["mean"][i]), _f(b["metrics"][metric]["mean"][index_b[label]]),
                      _f(p["metrics"][metric]["delta"][k]), _ci(p["metrics"][metric]["ci95"][k]))
    out.print(t)
    for m in models:
        c = m["layers_to_convergence"]
        out.print(f"{escape(m['name'])}: layers to convergence (KL < {c['threshold']} {unit} and top-1 agreement) "
                  f"{_f(c['mean'], 2)} [{_ci([c['lo'], c['hi']])}], never {100 * c['never_fraction']:.1f}% of tokens; "
                  f"final logits check {_f(m['final_logits_check'], 8)}")
    if doc["paired"]:
        p = doc["paired"]
        pm, cd = p["metrics"][metric], p["layers_to_convergence_delta"]
        out.print(f"A = {escape(p['a'])}, B = {escape(p['b'])}: area between the {LABELS[metric]} curves (A - B, "
                  f"over depth) {_f(pm['area'])} [{_ci(pm['area_ci95'])}]; layers to convergence A - B "
                  f"{_f(cd['delta'], 2)} [{_ci(cd['ci95'])}]")
    if doc.get("output"):
        names = "logit_lens.json, logit_lens.png, logit_lens.npz" + (", logit_lens_heatmap.png" if doc["heatmaps"] else "")
        out.print(f"wrote {escape(doc['output'])}/: {names}")


def register(analyze_app: typer.Typer) -> None:
    analyze_app.command("logit-lens")(logit_lens)
