"""``engram ablate``: suppress the Engram output and measure what each task retains."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from engram_cli.cli.output import JsonOption, Output, QuietOption, escape, handle_errors


class Mode(str, Enum):
    zero = "zero"
    mean = "mean"
    scale = "scale"


def _fmt(v, pct: bool = False) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f}%" if pct else f"{v:.3f}"


@handle_errors
def ablate(
    model: Annotated[Optional[str], typer.Argument(help="Model directory or .gguf file (default: the bundled demo model).")] = None,
    tasks: Annotated[Optional[list[str]], typer.Option("--tasks", "-t", help="Task JSONL file, directory or bundled suite name (repeatable; default: the bundled suites).")] = None,
    layers: Annotated[str, typer.Option("--layers", help="'all' or zero-based Engram layer ids, e.g. 1,2.")] = "all",
    mode: Annotated[Mode, typer.Option("--mode", help="zero (paper default), mean (per-layer mean output) or scale (x alpha).")] = Mode.zero,
    alpha: Annotated[float, typer.Option("--alpha", help="Scale factor for --mode scale.")] = 0.0,
    ngram_order: Annotated[Optional[int], typer.Option("--ngram-order", help="Only zero this n-gram order's embedding columns.")] = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Write retention.json and retention.png here.")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Use at most N items per task.")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    dtype: Annotated[str, typer.Option("--dtype", help="float32, float16 or bfloat16.")] = "float32",
    device_map: Annotated[Optional[str], typer.Option("--device-map", help="e.g. 'auto' (accelerate) for models larger than one device.")] = None,
    tokenizer: Annotated[Optional[str], typer.Option("--tokenizer", help="Directory with tokenizer.json (default: the model's).")] = None,
    engram_path: Annotated[Optional[str], typer.Option("--engram-path", help="Engram module path inside a decoder layer (unknown architectures).")] = None,
    layers_path: Annotated[Optional[str], typer.Option("--layers-path", help="Path of the decoder-layer list (unknown architectures).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Sequences per forward pass.")] = 32,
    threads: Annotated[Optional[int], typer.Option("--threads", help="CPU threads for torch.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output directory.")] = False,
    json_mode: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Ablate the Engram modules and report retained task performance (paper §6.3, Figure 6).

    Scores every task with and without the ablation on the same items; retained = ablated / baseline, with a paired-bootstrap 95 % CI, flipped items, chance-corrected retention, next-token KL(base || ablated) and category roll-ups next to the paper's values.
    """
    from engram_cli.errors import UsageError

    out = Output(json_mode, quiet)
    if mode is not Mode.scale and alpha != 0.0:
        raise UsageError("--alpha only applies to --mode scale")
    if limit is not None and limit < 1:
        raise UsageError("--limit must be >= 1")
    if batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    import torch

    from engram_cli.analysis.ablation import run_ablation
    from engram_cli.analysis.evaluator import Evaluator
    from engram_cli.analysis.tasks import resolve_tasks
    from engram_cli.models.loading import demo_suites_dir, load_model
    from engram_cli.models.views import require_engram, view_for

    if threads:
        torch.set_num_threads(threads)
    task_list = resolve_tasks(tasks, demo_suites_dir(), limit)
    out.log(f"loading {escape(model or 'the bundled demo model')} ...")
    loaded = load_model(model, device=device, dtype=dtype, device_map=device_map, tokenizer=tokenizer)
    view = require_engram(view_for(loaded.model, engram_path=engram_path, layers_path=layers_path))
    ev = Evaluator(view, loaded.tokenizer, batch_size=batch_size, device=loaded.device)
    with out.progress("scoring") as progress:
        report = run_ablation(view, ev, task_list, layers=layers, mode=mode.value, alpha=alpha,
                              ngram_order=ngram_order, progress=progress)
    report["model"] = loaded.source if model else "bundled demo model"
    report["family"] = view.family
    if output is not None:
        from engram_cli.analysis.plots import retention_figure
        from engram_cli.fsutil import atomic_dir, write_json_atomic

        with atomic_dir(output, force=force) as tmp:
            write_json_atomic(tmp / "retention.json", report)
            retention_figure(report).savefig(tmp / "retention.png")
        report["output"] = str(output)
    for w in report["warnings"]:
        out.warn(escape(w))
    if json_mode:
        out.emit_json(report)
        return
    from rich.table import Table

    if not out.out.is_terminal:  # piped/captured: do not squeeze the tables into 80 columns
        out.out.width = max(out.out.width, 150)
    t = Table(title=f"Engram ablation: {report['mode']}"
                    f"{' alpha=' + str(alpha) if mode is Mode.scale else ''}, layers {report['layers']}"
                    f"{', order ' + str(ngram_order) if ngram_order else ''} ({escape(report['model'])})")
    for col in ("task", "category", "metric", "n", "baseline", "ablated", "retained", "95% CI",
                "chance-corr.", "flipped -/+", "KL"):
        t.add_column(col, justify="right" if col not in ("task", "category", "metric") else "left", no_wrap=True)
    for r in report["tasks"]:
        lo, hi = r["ci95"]
        t.add_row(escape(r["task"]), r["category"], r["metric"], str(r["n"]), _fmt(r["baseline"]), _fmt(r["ablated"]),
                  _fmt(r["retained"], True), f"{_fmt(lo, True)}-{_fmt(hi, True)}" if lo is not None else "-",
                  _fmt(r["chance_corrected"], True), f"{r['flipped_lost']}/{r['flipped_gained']}",
                  _fmt(r["kl_mean"]))
    out.print(t)
    c = Table(title="By category (mean of task retention; paper: factual 29-44 %, reading 81-93 %)")
    for col in ("category", "tasks", "retained", "95% CI", "chance-corr.", "paper"):
        c.add_column(col)
    paper = report["paper_reference"]["categories"]
    for cat, v in report["categories"].items():
        lo, hi = v["ci95"]
        ref = paper.get(cat)
        names = ", ".join(escape(x) for x in v["tasks"])
        if v.get("excluded"):
            names += f" (excluded: {', '.join(escape(x) for x in v['excluded'])})"
        c.add_row(cat, names, _fmt(v["retained"], True),
                  f"{_fmt(lo, True)}-{_fmt(hi, True)}", _fmt(v["chance_corrected"], True),
                  f"{ref[0]*100:.0f}-{ref[1]*100:.0f}%" if ref else "-")
    out.print(c)
    out.print(f"next-token KL(base || ablated), mean over tasks: {report['kl_next_token_mean']:.4f} nats")
    if output is not None:
        out.print(f"wrote {escape(output)}/retention.json and retention.png")


def register(app: typer.Typer) -> None:
    app.command("ablate")(ablate)
