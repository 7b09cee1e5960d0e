"""``engram ablate``: suppress the Engram output and measure what each task retains."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Optional

import typer

from engram_cli.cli.options import (BatchSizeOpt, Device, DeviceMapOpt, DeviceOpt, EngramPathOpt, ForceOpt, JsonOpt,
                                    LayersPathOpt, ModelArg, ModelDtype, ModelDtypeAliasOpt, ModelDtypeOpt, OutputOpt,
                                    QuietOpt, ThreadsOpt, TokenizerOpt, pick)
from engram_cli.cli.output import Output, escape

SCHEMA = "engram.ablate/1"


class Mode(str, Enum):
    zero = "zero"
    mean = "mean"
    scale = "scale"


def _fmt(v, pct: bool = False) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f}%" if pct else f"{v:.3f}"


def ablate(
    model: ModelArg = None,
    tasks: Annotated[Optional[list[str]], typer.Option("--tasks", "-t", help="Task JSONL file, directory or bundled suite name (repeatable; default: the bundled suites).")] = None,
    layers: Annotated[str, typer.Option("--layers", help="'all' or zero-based Engram layer ids, e.g. 1,2.")] = "all",
    mode: Annotated[Mode, typer.Option("--mode", help="zero (paper default), mean (per-layer mean output) or scale (x alpha).")] = Mode.zero,
    alpha: Annotated[float, typer.Option("--alpha", help="Scale factor for --mode scale.")] = 0.0,
    ngram_order: Annotated[Optional[int], typer.Option("--ngram-order", min=2, help="Only zero this n-gram order's embedding columns.")] = None,
    output: OutputOpt = None,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Use at most N items per task.")] = None,
    device: DeviceOpt = Device.auto,
    model_dtype: ModelDtypeOpt = ModelDtype.float32,
    dtype_alias: ModelDtypeAliasOpt = None,
    device_map: DeviceMapOpt = None,
    tokenizer: TokenizerOpt = None,
    engram_path: EngramPathOpt = None,
    layers_path: LayersPathOpt = None,
    batch_size: BatchSizeOpt = 32,
    threads: ThreadsOpt = None,
    force: ForceOpt = False,
    json_mode: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Ablate the Engram modules and report retained task performance (paper §6.3, Figure 6).

    Scores every task with and without the ablation on the same items; retained = ablated / baseline, with a paired-bootstrap 95 % CI, flipped items, chance-corrected retention, next-token KL(base || ablated) and category roll-ups next to the paper's values.
    """
    from engram_cli.analysis.hooks import parse_layers
    from engram_cli.errors import UsageError
    from engram_cli.reports import check_output_dir

    out = Output(json_mode, quiet)
    dtype = pick(model_dtype, dtype_alias, ModelDtype.float32, "--model-dtype").value
    if mode is not Mode.scale and alpha != 0.0:
        raise UsageError("--alpha only applies to --mode scale")
    parse_layers(layers)
    check_output_dir(output, force)
    from engram_cli.analysis.ablation import run_ablation
    from engram_cli.analysis.evaluator import Evaluator
    from engram_cli.analysis.tasks import resolve_tasks
    from engram_cli.cli.options import set_torch_threads
    from engram_cli.models.loading import demo_suites_dir, load_model, resolve_device
    from engram_cli.models.views import require_engram, view_for

    resolve_device(device.value)  # exit 5 before loading anything
    task_list = resolve_tasks(tasks, demo_suites_dir(), limit)
    n_threads = set_torch_threads(threads)
    out.log(f"loading {escape(model or 'the bundled demo model')} ({n_threads} threads) ...")
    loaded = load_model(model, device=device.value, dtype=dtype, device_map=device_map, tokenizer=tokenizer)
    view = require_engram(view_for(loaded.model, engram_path=engram_path, layers_path=layers_path))
    ev = Evaluator(view, loaded.tokenizer, batch_size=batch_size, device=loaded.device)
    with out.progress("scoring") as progress:
        report = run_ablation(view, ev, task_list, layers=layers, mode=mode.value, alpha=alpha,
                              ngram_order=ngram_order, progress=progress)
    doc = _document(report, loaded.source if model else "bundled demo model", view.family, loaded.device, dtype, n_threads)
    if output is not None:
        from engram_cli.analysis.plots import retention_figure
        from engram_cli.reports import write_report

        write_report(output, force=force, documents={"retention": doc}, figures={"retention": retention_figure(doc)})
        doc["output"] = str(output)
    for w in report.warnings:
        out.warn(escape(w))
    if json_mode:
        out.emit_json(doc)
        return
    _render(out, doc, mode is Mode.scale)


def _document(report, model: str, family: str, device: str, dtype: str, threads: int) -> dict[str, Any]:
    from engram_cli.reports import provenance

    return {"schema": SCHEMA, "model": model, "family": family, **report.to_dict(),
            "provenance": provenance(device=device, dtype=dtype, threads=threads, seeds={"bootstrap": report.bootstrap["seed"]},
                                     bootstrap_resamples=report.bootstrap["n_boot"])}


def _render(out: Output, doc: dict[str, Any], scaled: bool) -> None:
    from rich.table import Table

    t = Table(title=f"Engram ablation: {doc['mode']}"
                    f"{' alpha=' + str(doc['alpha']) if scaled else ''}, layers {doc['layers']}"
                    f"{', order ' + str(doc['ngram_order']) if doc['ngram_order'] else ''} ({escape(doc['model'])})")
    for col in ("task", "category", "metric", "n", "baseline", "ablated", "retained", "95% CI",
                "chance-corr.", "flipped -/+", "KL"):
        t.add_column(col, justify="right" if col not in ("task", "category", "metric") else "left", no_wrap=True)
    for r in doc["tasks"]:
        lo, hi = r["ci95"]
        t.add_row(escape(r["task"]), r["category"], r["metric"], str(r["n"]), _fmt(r["baseline"]), _fmt(r["ablated"]),
                  _fmt(r["retained"], True), f"{_fmt(lo, True)}-{_fmt(hi, True)}" if lo is not None else "-",
                  _fmt(r["chance_corrected"], True), f"{r['flipped_lost']}/{r['flipped_gained']}",
                  _fmt(r["kl_mean"]))
    out.print(t)
    c = Table(title="By category (mean of task retention; paper: factual 29-44 %, reading 81-93 %)")
    for col in ("category", "tasks", "retained", "95% CI", "chance-corr.", "paper"):
        c.add_column(col)
    paper = doc["paper_reference"]["categories"]
    for cat, v in doc["categories"].items():
        lo, hi = v["ci95"]
        ref = paper.get(cat)
        names = ", ".join(escape(x) for x in v["tasks"])
        if v.get("excluded"):
            names += f" (excluded: {', '.join(escape(x) for x in v['excluded'])})"
        c.add_row(cat, names, _fmt(v["retained"], True),
                  f"{_fmt(lo, True)}-{_fmt(hi, True)}", _fmt(v["chance_corrected"], True),
                  f"{ref[0]*100:.0f}-{ref[1]*100:.0f}%" if ref else "-")
    out.print(c)
    out.print(f"next-token KL(base || ablated), mean over tasks: {doc['kl_next_token_mean']:.4f} nats")
    if doc.get("output"):
        out.print(f"wrote {escape(doc['output'])}/retention.json and retention.png")


def register(app: typer.Typer) -> None:
    app.command("ablate")(ablate)
