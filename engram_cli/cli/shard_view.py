"""Rendering for ``engram shard``: rich tables for people and the JSON documents (one schema
id per document shape). Sizes are decimal (rich's ``filesize.decimal``: 1 kB = 1000 bytes),
like ``--max-shard-size``; a column headed "bytes" holds plain byte counts."""

from __future__ import annotations

from typing import Any

from engram_cli.cli.output import Output, escape

SCHEMA_CONVERT = "engram.shard.convert/1"
SCHEMA_PLAN = "engram.shard.plan/1"
SCHEMA_RANGES = "engram.shard.ranges/1"
SCHEMA_VERIFY = "engram.shard.verify/1"
SCHEMA_GGUF_FIX = "engram.shard.gguf_fix/1"
MAX_ROWS = 40  # files listed in a table before "... N more"


def size(n: float) -> str:
    from engram_cli.tables.units import format_bytes

    return format_bytes(n)


def count(n: int, noun: str) -> str:
    """``1 file``, ``2 files``."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _table(title: str, *columns: tuple[str, str]):
    from rich.table import Table

    t = Table(title=title)
    for name, justify in columns:
        t.add_column(name, justify=justify, overflow="fold")
    return t


def render_ranges(out: Output, ranges) -> None:
    """A :class:`~engram_cli.tables.policies.RangeSet` as one table."""
    edp = f", EDP={ranges.edp}" if ranges.edp > 1 else ""
    src = f" ({escape(ranges.source)})" if ranges.source else ""
    rt = _table(f"row ranges: {ranges.policy}, P={ranges.world}{edp}{src}", ("layer", "right"), ("rank", "right"),
                ("rows [start, stop)", "left"), ("n rows", "right"), ("heads", "right"), ("pad", "right"))
    for lr in ranges.layers:
        for r in lr.ranks:
            rows = f"{r.start}–{r.stop}" if r.contiguous else f"{len(r.pieces)} pieces ({r.pieces[0].start}–{r.pieces[-1].stop})"
            heads = f"{r.heads[0]}–{r.heads[1]}" if r.heads else ("per head" if r.pieces and r.pieces[0].head is not None else "")
            rank = f"{r.rank}" + (f" (tp {r.tp_rank}, edp {r.edp_rank})" if r.tp_rank is not None else "")
            rt.add_row(str(lr.layer), rank, rows, f"{r.rows:,}", heads, str(r.pad_rows or ""))
    out.print(rt)


def ranges_doc(ranges) -> dict:
    return {"schema": SCHEMA_RANGES, "policy": ranges.policy, "world": ranges.world, "edp": ranges.edp,
            "layout_source": ranges.source, "ranges": ranges.to_list()}


def show_plan(out: Output, prep: Any, json_: bool) -> None:
    """The ``--dry-run`` / ``plan`` result: one JSON document or the rich tables."""
    from engram_cli.tables.api import plan_doc

    plan = prep.plan
    if json_:
        out.emit_json({"schema": SCHEMA_PLAN, "dry_run": True, "layout_source": prep.layout_source, "plan": plan_doc(plan)})
        return
    if plan.ranges:
        render_ranges(out, plan.ranges)
    ft = _table(f"plan: {plan.target} from {escape(plan.source)} ({plan.source_format}), table dtype {plan.dtype}",
                ("file", "left"), ("format", "left"), ("tensors", "right"), ("size", "right"))
    for f in plan.files[:MAX_ROWS]:
        ft.add_row(escape(f.name), f.format, str(len(f.tensors)), size(f.size))
    if len(plan.files) > MAX_ROWS:
        ft.add_row(f"… {len(plan.files) - MAX_ROWS} more", "", "", "")
    out.print(ft)
    sides = plan.side_names()
    out.print(f"{count(len(plan.files), 'file')}, {size(plan.total_bytes)} total; tables {size(plan.table_bytes)}"
              + (f"; also {', '.join(escape(n) for n in sides)}" if sides else ""))
    _omitted_note(out, plan.omitted)


def _omitted_note(out: Output, omitted) -> None:
    if omitted:  # None (not recorded) or empty: nothing to say
        out.print(f"not in this output (recorded in the manifest): {count(len(omitted.tensors), 'other tensor')}, "
                  f"{count(len(omitted.files), 'file')} of the source" + (f" ({escape(', '.join(omitted.files[:5]))})" if omitted.files else ""))


def convert_doc(res: Any) -> dict:
    files = [{"name": f.name, "bytes": f.bytes, **f.checksum_doc()} for f in res.files]
    sides = [f.to_dict() for f in res.side_files]
    return {"schema": SCHEMA_CONVERT, "target": res.plan.target, "out_dir": str(res.out_dir),
            "manifest": str(res.manifest_path), "checksum": res.files[0].checksum if res.files else None,
            "files": files, "side_files": sides, "bytes_written": res.bytes_written, "seconds": round(res.seconds, 3),
            "throughput_bytes_per_s": round(res.throughput), "verified": res.verified, "removed_stale": res.removed,
            "kept_unrelated": res.kept, "previous_manifest_problem": res.previous_problem,
            "omitted": res.plan.omitted.to_dict()}


def render_convert(out: Output, res: Any) -> None:
    algo = res.files[0].checksum if res.files else "checksum"
    t = _table(f"wrote {count(len(res.files), 'file')} to {escape(res.out_dir)}", ("file", "left"), ("size", "right"), (algo, "left"))
    for f in res.files[:MAX_ROWS]:
        t.add_row(escape(f.name), size(f.bytes), f.digest)
    if len(res.files) > MAX_ROWS:
        t.add_row(f"… {len(res.files) - MAX_ROWS} more", "", "")
    out.print(t)
    out.print(f"{size(res.bytes_written)} in {res.seconds:.2f} s ({size(res.throughput)}/s); verify: {res.verified}; "
              f"{count(len(res.side_files), 'side file')}; manifest {escape(res.manifest_path.name)}")
    _omitted_note(out, res.plan.omitted)


def warn_convert(out: Output, res: Any) -> None:
    """What the folder still holds that this run did not write (never removed)."""
    if res.kept:
        out.warn(f"left {count(len(res.kept), 'file')} that no conversion listed: {escape(', '.join(res.kept[:5]))}"
                 + (" …" if len(res.kept) > 5 else ""))
    if res.previous_problem:
        out.warn(f"the previous manifest could not be read ({escape(res.previous_problem)}); only files of this run were replaced")


def verify_doc(rep: Any) -> dict:
    return {"schema": SCHEMA_VERIFY, "verify": rep.to_dict()}


def render_verify(out: Output, rep: Any) -> None:
    decoded = [str(k) for k, v in sorted(rep.comparison.items()) if v == "decoded values"]
    how = ""
    if rep.source_checked:
        how = f", {rep.rows_checked:,} rows equal to the source"
        how += f" (layers {', '.join(decoded)} by decoded values: same values, other scale bytes)" if decoded else " (bytes)"
    out.print(f"[green]ok[/green]: {count(rep.files, 'file')} and {count(rep.side_files, 'side file')}, {size(rep.bytes)} checked{how}")
    _omitted_note(out, rep.omitted)


def gguf_fix_doc(res: Any) -> dict:
    return {"schema": SCHEMA_GGUF_FIX, "gguf_fix": res.to_dict()}


def render_gguf_fix(out: Output, res: Any) -> None:
    d = res.to_dict()
    added, replaced = d.get("added_keys") or [], d.get("replaced_keys") or []
    out.print(f"wrote {escape(d['file'])}: added {escape(', '.join(added)) or 'no keys'}; "
              f"replaced {escape(', '.join(replaced)) or 'no keys'}; {d['tensors']} tensors ({size(d['bytes'])})")
