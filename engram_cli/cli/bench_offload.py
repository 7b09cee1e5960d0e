"""``engram bench-offload``: measure host / file / GPU offload of Engram tables, project the overhead, check it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from engram_cli.cli.options import ConfigOpt, ForceOpt, JsonOpt, LayoutOpt, OutputOpt, PresetOpt, QuietOpt, ThreadsOpt, TokenizerOpt
from engram_cli.cli.output import Output, escape

SCHEMA = "engram.bench_offload/1"


def bench_offload(
    layout: LayoutOpt = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    tokenizer: TokenizerOpt = None,
    tiers: Annotated[Optional[str], typer.Option("--tiers", help="Comma list of host, nvme, gpu (default: host,nvme, "
                                                 "and gpu when CUDA is available).")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="A smaller sweep (under a minute on 2 cores).")] = False,
    table_size: Annotated[Optional[float], typer.Option("--table-size", min=0.0, help="Table size in GB (1e9 B) for the "
                                                        "host, file and GPU tiers (default 2, --quick 0.5, at most 40% of "
                                                        "free memory).")] = None,
    file_dir: Annotated[Optional[Path], typer.Option("--file-dir", help="Directory for the file tier's table file "
                                                     "(default: the system temp directory); tmpfs is warned.")] = None,
    trace: Annotated[Optional[Path], typer.Option("--trace", help="Token ids (one sequence per line) or UTF-8 text for "
                                                  "the locality section (default: the bundled text).")] = None,
    profile_out: Annotated[Optional[Path], typer.Option("--profile", help="Also write the offload.json profile to this file.")] = None,
    layer_ms: Annotated[Optional[float], typer.Option("--layer-ms", min=0.0, help="Backbone time per layer in ms for the "
                                                      "projection (default: measured on the bundled demo model).")] = None,
    cache_gb: Annotated[float, typer.Option("--cache-gb", min=0.0, help="Hot-cache size per Engram layer (GB) for the "
                                            "projection's cached scenarios; 0 for none.")] = 1.0,
    validate: Annotated[bool, typer.Option("--validate", help="Run the demo model resident vs offloaded and check the "
                                           "projection against the measured overhead.")] = False,
    export_hot_rows: Annotated[int, typer.Option("--export-hot-rows", min=0, help="Write the N hottest rows per head "
                                                 "(hot_rows.npz, a hot-cache seed).")] = 0,
    threads: ThreadsOpt = None,
    output: OutputOpt = None,
    force: ForceOpt = False,
    json_mode: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Measure Engram table offload on this machine and project the overhead per Engram layer.

    Row gathers (host, file, GPU) against ceilings measured in the same run.
    Hashing rate; row locality with the layout's real tokenizer and hash.
    Window, slack, stall and break-evens per Engram layer and scenario.
    Every figure has p50/p99/n; gathered bytes are checked against numpy.
    GPU rows say "skipped: no device" without CUDA.
    -o DIR writes offload.json (engram.bench_offload/1) and the plots.
    """
    from engram_cli.errors import UsageError
    from engram_cli.reports import check_output_dir

    out = Output(json_mode, quiet)
    check_output_dir(output, force)
    if profile_out is not None and profile_out.is_dir():
        raise UsageError(f"--profile {profile_out} is a directory", hint="give a file name such as offload.json")
    if export_hot_rows and output is None:
        raise UsageError("--export-hot-rows needs -o DIR (the rows go to hot_rows.npz)")
    from engram_cli.cli.options import set_torch_threads
    from engram_cli.layout.resolve import TokenMapNeed, layout_tokenizer, resolve_layout
    from engram_cli.offload import gpu
    from engram_cli.offload.run import OffloadConfig, check_resources, load_corpus, parse_tiers, run_offload

    tier_list = parse_tiers(tiers) if tiers else (("host", "nvme", "gpu") if gpu.cuda_available() else ("host", "nvme"))
    n_threads = set_torch_threads(threads)
    cfg = OffloadConfig(tiers=tier_list, quick=quick, table_bytes=None if table_size is None else int(table_size * 1e9),
                        file_dir=file_dir, trace=trace, layer_ms=layer_ms, cache_gb=cache_gb, validate=validate,
                        export_hot_rows=export_hot_rows, threads=n_threads)
    pre = check_resources(cfg)  # exit 5 / 3 here, before the layout is built or anything is allocated
    for w in pre.warnings:
        out.warn(escape(w))
    resolved = resolve_layout(layout, config, preset.value if preset else None, tokenizer=tokenizer,
                              default_preset="deepseek-v4.1-flash", need=TokenMapNeed.need)
    tok = layout_tokenizer(resolved, tokenizer)
    load_corpus(cfg, pre, resolved.layout, tok)
    with out.progress("bench-offload") as cb:
        result = run_offload(cfg, resolved.layout, resolved.source, pre, cb)
    for w in result.warnings[len(pre.warnings):]:
        out.warn(escape(w))
    doc = _document(result, resolved.layout, n_threads)
    _warn_stale(out, profile_out, result.fingerprint)
    _write(doc, result, output, force, profile_out)
    if json_mode:
        out.emit_json(doc)
    else:
        _render(out, doc)
    if result.validate is not None and not result.validate.logits_identical:
        from engram_cli.errors import VerificationError

        raise VerificationError(f"offloaded logits differ from resident ones (max |diff| {result.validate.max_abs_diff:.3g})")


def _document(result: Any, layout: Any, threads: int) -> dict[str, Any]:
    from engram_cli.offload.profile import document_body
    from engram_cli.reports import provenance

    dev = "cuda" if result.gpu is not None else "cpu"
    return {"schema": SCHEMA, **document_body(result, layout),
            "provenance": provenance(device=dev, threads=threads, seeds={"indices": result.config.seed, "bootstrap": result.config.seed})}


def _warn_stale(out: Output, profile_out: Path | None, current: dict[str, Any]) -> None:
    """Say which fingerprint fields of the profile about to be replaced differ from this run."""
    if profile_out is None or not profile_out.is_file():
        return
    import json

    from engram_cli.offload.profile import stale_fields

    try:
        old = json.loads(profile_out.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if isinstance(old, dict) and isinstance(old.get("fingerprint"), dict):
        stale = stale_fields(old, current)
        if stale:
            out.warn(f"the profile at {escape(profile_out)} was measured with another {', '.join(stale)}; replacing it")


def _write(doc: dict[str, Any], result: Any, output: Path | None, force: bool, profile_out: Path | None) -> None:
    if output is not None:
        from engram_cli.offload.plots import figures
        from engram_cli.reports import write_report

        arrays = {"hot_rows": result.locality.hot_rows} if result.locality is not None and result.locality.hot_rows else {}
        write_report(output, force=force, documents={"offload": doc}, figures=figures(result), arrays=arrays)
        doc["output"] = str(output)
    if profile_out is not None:
        from engram_cli.fsutil import write_json_atomic

        write_json_atomic(profile_out, doc)


def _f(v: Any, fmt: str = "{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def _table(title: str, cols: list[str]):
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for i, c in enumerate(cols):
        t.add_column(c, justify="left" if i == 0 else "right", no_wrap=True)
    return t


def _render_host(out: Output, host: dict[str, Any], row_bytes: int) -> None:
    sizes = sorted({c["row_bytes"] for c in host["cells"]})
    rb = min(sizes, key=lambda s: abs(s - row_bytes)) if sizes else row_bytes
    t = _table(f"Host gather, {rb} B rows ({host['table_bytes'] / 1e9:.2f} GB table, {host['threads']} threads; "
               "ratio = gather / contiguous copy of the same bytes)",
               ["method", "dist", "rows", "thr", "p50 µs", "p99 µs", "n", "ns/row", "GB/s", "ceiling", "ratio", "checked"])
    for c in host["cells"] + host["thp"]:
        if c["row_bytes"] != rb:
            continue
        dist = c["dist"] + ({True: " THP", False: " noTHP"}.get(c.get("huge_pages"), ""))
        lat = c["latency_us"]
        t.add_row(c["method"], dist, f"{c['rows']:,}", str(c["threads"]), _f(lat["p50"]), _f(lat["p99"]), str(lat["n"]),
                  _f(None if lat["p50"] is None else 1e3 * lat["p50"] / c["rows"]), _f(c["gbps"]["p50"], "{:.2f}"),
                  _f(c["ceiling_gbps"], "{:.2f}"), _f(c["ratio"], "{:.3f}"), str(c["verified_calls"]))
    out.print(t)


def _render_files(out: Output, f: dict[str, Any]) -> None:
    seq = (f.get("seq_gbps") or {}).get("p50")
    t = _table(f"File tier on {escape(f['fstype'])} ({f['row_bytes']} B rows; ratio = useful GB/s / cold sequential "
               f"{_f(seq, '{:.2f}')} GB/s)", ["method", "cache", "advice", "QD", "rows", "p50 µs", "p99 µs", "rows/s",
                                               "GB/s", "ratio", "amplif.", "checked"])
    for c in f["cells"]:
        lat = c["latency_us"]
        t.add_row(c["method"], c["cache"], c["advice"] or "-", str(c["qd"]), f"{c['rows']:,}", _f(lat["p50"]),
                  _f(lat["p99"]), f"{c['rows_per_s']:,.0f}", _f(c["gbps"], "{:.4f}"), _f(c["ratio"], "{:.4f}"),
                  _f(c["amplification"], "{:.1f}x"), str(c["verified_rows"]))
    out.print(t)


def _render_locality(out: Output, loc: dict[str, Any]) -> None:
    gbs = loc["cache_gb_per_layer"]
    picks = sorted({min(range(len(gbs)), key=lambda i: abs(gbs[i] - g)) for g in (0.1, 1.0)})
    cols = ["layer", "order", "zipf", "compulsory", "top1%", "uniq B=64", "uniq 2k"]
    cols += [f"static/LRU @{gbs[i]:.2g} GB" for i in picks]
    t = _table(f"Locality: {escape(loc['corpus'])} ({loc['n_tokens']:,} tokens; cache built on {loc['build_tokens']:,}, "
               f"scored on {loc['score_tokens']:,})", cols)
    for s in loc["stats"]:
        row = [str(s["layer_id"]), f"{s['order']}-gram", _f(s["zipf_slope"], "{:.2f}"), _f(100 * s["compulsory_miss"], "{:.0f}%"),
               _f(100 * s["top1pct_share"], "{:.0f}%"), _f(_get(s["unique_decode"], 64), "{:.2f}"),
               _f(_get(s["unique_prefill"], 2048), "{:.2f}")]
        row += [f"{100 * s['static_hit'][i]:.0f}% / {100 * s['lru_hit'][i]:.0f}%" for i in picks]
        t.add_row(*row)
    out.print(t)


def _get(d: dict[str, Any], key: int) -> Any:
    return d.get(str(key), d.get(key))


def _render_projection(out: Output, p: dict[str, Any]) -> None:
    for key, rows in p["projections"].items():
        g = p["geometries"][key]
        t = _table(f"Projection: {g['name']} (layers {g['layer_ids']}, {g['rows_per_token']} rows x {g['row_bytes']} B)",
                   ["scenario", "layer", "rows", "window µs", "fetch p50", "fetch p99", "slack µs", "stall µs",
                    "overhead %", "break-even hit", "break-even GB/s"])
        for pr in rows:
            for lp in pr["layers"]:
                t.add_row(pr["scenario"]["name"], str(lp["layer_id"]), f"{lp['rows']:,.0f}", _f(lp["window_us"], "{:.0f}"),
                          _f(lp["fetch_p50_us"], "{:.0f}"), _f(lp["fetch_p99_us"], "{:.0f}"), _f(lp["slack_us"], "{:.0f}"),
                          _f(lp["stall_us"], "{:.0f}"), _f(pr["overhead_pct"], "{:.1f}"),
                          _f(100 * lp["breakeven_hit"], "{:.0f}%"), _f(lp["breakeven_gbps"], "{:.1f}"))
        out.print(t)
    out.print(f"fetch curve: {escape(p['fetch_p50']['label'])}: alpha {p['fetch_p50']['alpha_us']:.1f} µs, "
              f"{p['fetch_p50']['gbps']:.2f} GB/s; layer times: {escape(p['timing_source'])}; kappa {p['kappa']:.3f} "
              f"({escape(p['kappa_source'])})")


def _render_validate(out: Output, v: dict[str, Any]) -> None:
    r, o = v["resident"], v["offloaded"]
    ci = v["measured_ci_pct"]
    out.print(f"validate ({escape(v['placement'])}, {v['device']}): resident {r['mean']:.0f} tok/s "
              f"[{_f(r['ci'][0], '{:.0f}')}, {_f(r['ci'][1], '{:.0f}')}], offloaded {o['mean']:.0f} tok/s "
              f"[{_f(o['ci'][0], '{:.0f}')}, {_f(o['ci'][1], '{:.0f}')}]; overhead measured {v['measured_overhead_pct']:+.1f}% "
              f"[{_f(ci[0], '{:+.1f}')}, {_f(ci[1], '{:+.1f}')}], projected {_f(v['projected_overhead_pct'], '{:+.1f}')}% "
              f"(error {_f(v['projection_error_pp'], '{:+.1f}')} pp); logits identical: {v['logits_identical']}")


def _skipped(section: dict[str, Any]) -> bool:
    """Sections that did not run are ``{"skipped": reason}``."""
    return isinstance(section.get("skipped"), str)


def _render_gpu(out: Output, g: dict[str, Any], row_bytes: int) -> None:
    dev = g["device"]
    big = max((c["nbytes"] for c in g["bulk"]), default=0)
    t = _table(f"GPU link ({escape(dev.get('name'))}, {big / 2**20:.0f} MiB copies; exact-size registration "
               f"{g['registration'].get('registered_bytes', 0):,} B, pin_memory would take "
               f"{g['registration'].get('pin_memory_would_allocate', 0):,} B)", ["mode", "GB/s p50", "p99", "n"])
    for c in g["bulk"]:
        if c["nbytes"] == big:
            t.add_row(c["mode"], _f(c["gbps"]["p50"], "{:.2f}"), _f(c["gbps"]["p99"], "{:.2f}"), str(c["gbps"]["n"]))
    out.print(t)
    sizes = sorted({c["row_bytes"] for c in g["gathers"]})
    rb = min(sizes, key=lambda s: abs(s - row_bytes)) if sizes else row_bytes
    t = _table(f"GPU row gather, {rb} B rows (ratio against the named ceiling)",
               ["mode", "grid", "rows", "p50 µs", "p99 µs", "n", "GB/s", "ceiling", "ratio", "checked"])
    for c in g["gathers"]:
        if c["row_bytes"] == rb:
            lat = c["latency_us"]
            t.add_row(c["mode"], c["grid"] or "-", f"{c['rows']:,}", _f(lat["p50"]), _f(lat["p99"]), str(lat["n"]),
                      _f(c["gbps"]["p50"], "{:.2f}"), f"{c['ceiling']} {_f(c['ceiling_gbps'], '{:.1f}')}",
                      _f(c["ratio"], "{:.3f}"), str(c["verified_calls"]))
    out.print(t)
    t = _table("Interference: bf16 matmul beside a gather loop", ["mode", "grid", "matmul alone µs", "with µs", "slowdown",
                                                                  "gather GB/s"])
    for c in g["interference"]:
        t.add_row(c["mode"], c["grid"] or "-", _f(c["matmul_alone_us"]["p50"], "{:.0f}"), _f(c["matmul_with_us"]["p50"], "{:.0f}"),
                  _f(c["slowdown_pct"], "{:+.1f}%"), _f(c["gather_gbps"]["p50"], "{:.2f}"))
    out.print(t)


def _render(out: Output, doc: dict[str, Any]) -> None:
    sec = doc["sections"]
    proj = sec["projection"]
    tag = "" if _skipped(proj) else (" (modelled)" if proj["fetch_p50"]["modelled"] else " (measured)")
    for key, lines in doc["verdicts"].items():
        out.print(f"[bold]{escape(proj['geometries'][key]['name'])}{tag}[/bold]")
        for line in lines:
            out.print(f"  {escape(line)}")
    if not _skipped(sec["host"]):
        _render_host(out, sec["host"], doc["layout"]["row_bytes"])
    if not _skipped(sec["nvme"]):
        _render_files(out, sec["nvme"])
    if not _skipped(sec["hashing"]):
        h = sec["hashing"]
        dec = ", ".join(f"B={b}: {d['p50']:.0f} µs" for b, d in h["decode_us"].items() if d["p50"] is not None)
        out.print(f"hashing: {h['tokens_per_s']['p50']:,.0f} tokens/s (p50 over {h['tokens_per_s']['n']} chunks of "
                  f"{h['chunk_tokens']:,}); decode step: {dec}")
    if not _skipped(sec["locality"]):
        _render_locality(out, sec["locality"])
    if _skipped(sec["gpu"]):
        out.print(f"GPU tier: skipped: {escape(sec['gpu']['skipped'])}")
    else:
        _render_gpu(out, sec["gpu"], doc["layout"]["row_bytes"])
    if not _skipped(proj):
        _render_projection(out, proj)
    if not _skipped(sec["validate"]):
        _render_validate(out, sec["validate"])
    if doc.get("output"):
        out.print(f"report: {escape(doc['output'])}")


def register(app: typer.Typer) -> None:
    app.command("bench-offload")(bench_offload)
