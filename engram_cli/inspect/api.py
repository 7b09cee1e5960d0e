"""``inspect_path``: open any Engram-bearing path, check it, judge engine compatibility."""

from __future__ import annotations

from pathlib import Path

from engram_cli.inspect.checks import all_checks
from engram_cli.inspect.compat import compatibility
from engram_cli.inspect.model import InspectReport
from engram_cli.inspect.open import open_any
from engram_cli.progress import ProgressCallback


def inspect_path(path: str | Path, progress: ProgressCallback | None = None) -> InspectReport:
    """Describe ``path`` from its headers: format, tables, implied layout, checks, engines."""
    if progress:
        progress(0, 3, "reading headers")
    found = open_any(path)
    if found.layout is not None:
        rows = []
        for t in found.tables:
            i = found.layout.index_of_tensor(t.layer)
            ids = found.layout.layer(i) if i is not None else None
            rows.append(t if ids is None else type(t)(**{**t.__dict__, "config_id": ids.config_id, "seed_id": ids.seed_id}))
        found = type(found)(**{**found.__dict__, "tables": tuple(rows)})
    if progress:
        progress(1, 3, "checking")
    checks = tuple(all_checks(found))
    if progress:
        progress(2, 3, "engines")
    compat = tuple(compatibility(found))
    if progress:
        progress(3, 3, "done")
    return InspectReport(found, checks, compat)
