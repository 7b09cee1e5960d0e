"""``engram ablate``: suppress the Engram output and measure what each task retains."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Optional

import typer

from engram_cli.cli.options import (
    BatchSizeOpt,
    Device,
    DeviceMapOpt,
    DeviceOpt,
    EngramPathOpt,
    ForceOpt,
    JsonOpt,
    LayersPathOpt,
    ModelArg,
    ModelDtype,
    ModelDtypeAliasOpt,
    ModelDtypeOpt,
    OutputOpt,
    QuietOpt,
    ThreadsOpt,
    TokenizerOpt,
    pick,
)
from engram_cli.cli.output import Output, escape

SCHEMA = "engram.ablate/2"


class Mode(str, Enum):
    zero = "zero"
    mean = "mean"
    scale = "scale"
    capacity = "capacity"
    none = "none"


def _fmt(v, pct: bool = False) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f}%" if pct else f"{v:.3f}"


def ablate(
    model: ModelArg = None,
    tasks: Annotated[Optional[list[str]], typer.Option("--tasks", "-t", help="Task JSONL file, directory or bundled suite name "
                                                       "(repeatable; default: the bundled suites).")] = None,
    layers: Annotated[str, typer.Option("--layers", help="'all' or zero-based Engram layer ids, e.g. 1,2.")] = "all",
    mode: Annotated[Mode, typer.Option("--mode", help="zero (paper default), mean (per-layer mean output), scale (x alpha) or "
                                            "capacity (every head re-hashed into K rows); none: no ablation, the model's scores and "
                                            "controls as it is (also without Engram, e.g. the demo's twin).")] = Mode.zero,
    alpha: Annotated[float, typer.Option("--alpha", help="Scale factor for --mode scale.")] = 0.0,
    rows: Annotated[Optional[list[str]], typer.Option("--rows", help="K rows per head for --mode capacity (repeatable or a "
                                                      "comma list, e.g. 1,16,256): a dose-response over K.")] = None,
    controls: Annotated[bool, typer.Option("--controls/--no-controls", help="Also score tasks that mark a context or subject "
                                           "span with it removed and mismatched (context dependence, measured floor).")] = True,
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

    Scores every task with and without the ablation on the same items; retained = ablated / baseline, with a
    paired-bootstrap 95 % CI, flipped items, chance-corrected retention (nominal chance and the measured no-context
    floor), context dependence, perplexity on training vs held-out text, next-token KL(base || ablated) and category
    roll-ups next to the paper's values.
    """
    from engram_cli.analysis.hooks import parse_layers
    from engram_cli.reports import check_output_dir

    out = Output(json_mode, quiet)
    dtype = pick(model_dtype, dtype_alias, ModelDtype.float32, "--model-dtype").value
    k_rows = _check_mode(mode, alpha, rows, ngram_order)
    parse_layers(layers)
    check_output_dir(output, force)
    from engram_cli.analysis.ablation import run_ablation
    from engram_cli.analysis.evaluator import Evaluator
    from engram_cli.analysis.tasks import resolve_tasks
    from engram_cli.cli.options import start_model_run
    from engram_cli.models.loading import demo_suites_dir, load_model
    from engram_cli.models.views import require_engram, view_for

    task_list = resolve_tasks(tasks, demo_suites_dir(), limit)
    n_threads = start_model_run(device, threads, (model,))
    out.log(f"loading {escape(model or 'the bundled demo model')} ({n_threads} threads) ...")
    loaded = load_model(model, device=device.value, dtype=dtype, device_map=device_map, tokenizer=tokenizer)
    view = view_for(loaded.model, engram_path=engram_path, layers_path=layers_path)
    if mode is not Mode.none:
        require_engram(view)
    ev = Evaluator(view, loaded.tokenizer, batch_size=batch_size, device=loaded.device)
    with out.progress("scoring") as progress:
        report = run_ablation(view, ev, task_list, layers=layers, mode=mode.value, alpha=alpha, ngram_order=ngram_order,
                              rows=k_rows or None, controls=controls, progress=progress)
    doc = _document(report, loaded.source if model else "bundled demo model", view.family, loaded.device, dtype, n_threads)
    if output is not None:
        _write(output, force, doc)
        doc["output"] = str(output)
    for w in report.warnings:
        out.warn(escape(w))
    if json_mode:
        out.emit_json(doc)
        return
    _render(out, doc, mode is Mode.scale)


def _check_mode(mode: Mode, alpha: float, rows: list[str] | None, ngram_order: int | None) -> list[int]:
    """Option combinations, before any work; returns the capacity K values."""
    from engram_cli.analysis.capacity import parse_rows
    from engram_cli.errors import UsageError

    if mode is not Mode.scale and alpha != 0.0:
        raise UsageError("--alpha only applies to --mode scale")
    k_rows = parse_rows(rows)
    if mode is Mode.capacity and not k_rows:
        raise UsageError("--mode capacity needs --rows K (repeatable or a comma list)")
    if mode is not Mode.capacity and k_rows:
        raise UsageError("--rows only applies to --mode capacity")
    if mode in (Mode.capacity, Mode.none) and ngram_order is not None:
        raise UsageError(f"--ngram-order does not combine with --mode {mode.value}")
    return k_rows


def _write(output, force: bool, doc: dict[str, Any]) -> None:
    from engram_cli.analysis.plots import capacity_figure, retention_figure
    from engram_cli.reports import write_report

    figures = {"retention": retention_figure(doc)} if doc["mode"] != "none" else {}  # nothing is ablated: no figure
    if doc["dose_response"]:
        figures["capacity"] = capacity_figure(doc)
    write_report(output, force=force, documents={"retention": doc}, figures=figures)


def _document(report, model: str, family: str, device: str, dtype: str, threads: int) -> dict[str, Any]:
    from engram_cli.reports import provenance

    return {"schema": SCHEMA, "model": model, "family": family, **report.to_dict(),
            "provenance": provenance(device=device, dtype=dtype, threads=threads, seeds={"bootstrap": report.bootstrap["seed"]},
                                     bootstrap_resamples=report.bootstrap["n_boot"])}


def _ci(ci: list, pct: bool = True) -> str:
    lo, hi = ci
    return f"{_fmt(lo, pct)}-{_fmt(hi, pct)}" if lo is not None else "-"


def _render(out: Output, doc: dict[str, Any], scaled: bool) -> None:
    from rich.table import Table

    t = Table(title=f"Engram ablation: {doc['mode']}"
                    f"{' alpha=' + str(doc['alpha']) if scaled else ''}"
                    f"{' rows=' + str(doc['rows'][0]) if doc['rows'] else ''}, layers {doc['layers']}"
                    f"{', order ' + str(doc['ngram_order']) if doc['ngram_order'] else ''} ({escape(doc['model'])})")
    for col in ("task", "category", "metric", "n", "baseline", "ablated", "retained", "95% CI",
                "chance-corr.", "floor", "floor-corr.", "flipped -/+", "KL"):
        t.add_column(col, justify="right" if col not in ("task", "category", "metric") else "left", no_wrap=True)
    for r in doc["tasks"]:
        t.add_row(escape(r["task"]) + (" *" if r["near_chance"] or r["near_floor"] else ""), r["category"], r["metric"],
                  str(r["n"]), _fmt(r["baseline"]), _fmt(r["ablated"]), _fmt(r["retained"], True), _ci(r["ci95"]),
                  _fmt(r["chance_corrected"], True), _fmt(r["floor"]), _fmt(r["chance_corrected_floor"], True),
                  f"{r['flipped_lost']}/{r['flipped_gained']}", _fmt(r["kl_mean"]))
    out.print(t)
    _render_controls(out, doc)
    _render_categories(out, doc)
    _render_memorisation(out, doc)
    _render_dose(out, doc)
    out.print(f"next-token KL(base || ablated), mean over tasks: {doc['kl_next_token_mean']:.4f} nats")
    if doc.get("output"):
        names = "retention.json" + (", retention.png" if doc["mode"] != "none" else "") + (", capacity.png" if doc["dose_response"] else "")
        out.print(f"wrote {escape(doc['output'])}/ {names}")


def _render_controls(out: Output, doc: dict[str, Any]) -> None:
    from rich.table import Table

    rows = [(r, c) for r in doc["tasks"] for c in r["controls"]]
    if not rows:
        return
    t = Table(title="Context controls (unablated model): score with the span, removed, and another item's span")
    for col in ("task", "span", "with", "removed", "mismatched", "dependence", "95% CI", "vs mismatched"):
        t.add_column(col, justify="left" if col in ("task", "span") else "right", no_wrap=True)
    for r, c in rows:
        t.add_row(escape(r["task"]), c["span"], _fmt(c["full"]), _fmt(c["removed"]), _fmt(c["mismatched"]),
                  f"{c['dependence']:+.3f}", _ci(c["dependence_ci95"], False),
                  f"{c['mismatch_dependence']:+.3f}" if c["mismatch_dependence"] is not None else "-")
    out.print(t)


def _render_categories(out: Output, doc: dict[str, Any]) -> None:
    from rich.table import Table

    paper = doc["paper_reference"]["categories"] if doc["mode"] == "zero" and not doc["ngram_order"] else {}
    c = Table(title="By category (mean of task retention" + ("; paper: factual 29-44 %, reading 81-93 %)" if paper else ")"))
    for col in ("category", "tasks", "retained", "95% CI", "chance-corr.", "floor-corr.", "paper"):
        c.add_column(col)
    for label, cats in (("informative", doc["categories"]), ("all", doc["categories_all"])):
        for cat, v in cats.items():
            ref = paper.get(cat)
            names = ", ".join(escape(x) for x in v["tasks"])
            if v.get("excluded"):
                names += f" (excluded: {', '.join(escape(x) for x in v['excluded'])})"
            c.add_row(f"{cat} ({label})", names, _fmt(v["retained"], True), _ci(v["ci95"]), _fmt(v["chance_corrected"], True),
                      _fmt(v["chance_corrected_floor"], True), f"{ref[0]*100:.0f}-{ref[1]*100:.0f}%" if ref else "-")
    out.print(c)


def _render_memorisation(out: Output, doc: dict[str, Any]) -> None:
    from rich.table import Table

    if not doc["memorisation"]:
        return
    t = Table(title="Memorisation control: perplexity retention (baseline ppl / ablated ppl) on trained vs held-out text")
    for col in ("task", "text", "n", "baseline ppl", "ablated ppl", "retained", "95% CI"):
        t.add_column(col)
    for m in doc["memorisation"]:
        t.add_row(escape(m["task"]), m["text_split"], str(m["n"]), f"{m['baseline_ppl']:.1f}", f"{m['ablated_ppl']:.1f}",
                  _fmt(m["retained"], True), _ci(m["ci95"]))
    out.print(t)


def _render_dose(out: Output, doc: dict[str, Any]) -> None:
    from rich.table import Table

    if not doc["dose_response"]:
        return
    t = Table(title="Capacity dose-response: retained per K rows per head (informative categories; tasks)")
    t.add_column("K rows")
    cats = sorted({c for p in doc["dose_response"] for c in p["categories"]})
    names = [r["task"] for r in doc["dose_response"][0]["tasks"]]
    for col in cats + names:
        t.add_column(escape(col), justify="right")
    for p in doc["dose_response"]:
        by_task = {r["task"]: r for r in p["tasks"]}
        t.add_row(str(p["rows"]), *[_fmt(p["categories"][c]["retained"], True) if c in p["categories"] else "-" for c in cats],
                  *[_fmt(by_task[n]["retained"], True) for n in names])
    out.print(t)


def register(app: typer.Typer) -> None:
    app.command("ablate")(ablate)
