"""The one artefact writer for reports (ablate, analyze, bench-offload).

A report is a directory of JSON documents (each with ``schema`` and ``provenance``), PNG
figures and ``.npz`` matrices, written into a temporary sibling directory and renamed into
place, so it appears whole or not at all. Every figure must be backed by its numbers in a
document or an array file. ``check_output_dir`` runs before any work so a bad ``-o`` fails
in a second, not after minutes of scoring.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from engram_cli import __version__
from engram_cli.errors import UsageError
from engram_cli.fsutil import atomic_dir

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from matplotlib.figure import Figure


def provenance(*, device: str | None = None, dtype: str | None = None, threads: int | None = None,
               seeds: Mapping[str, int] | None = None, **extra: Any) -> dict[str, Any]:
    """Versions, machine and run settings that produced a report."""
    import numpy as np

    doc: dict[str, Any] = {
        "engram": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        doc["torch"] = torch.__version__
        doc["torch_threads"] = torch.get_num_threads()
    doc.update({"device": device, "dtype": dtype, "threads": threads, "seeds": dict(seeds or {})})
    doc.update(extra)
    return doc


def check_output_dir(path: str | os.PathLike[str] | None, force: bool) -> None:
    """Refuse a report directory that cannot be written, before any work is done."""
    if path is None:
        return
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"output path {p} exists and is not a directory")
    if p.is_dir() and any(p.iterdir()) and not force:
        raise UsageError(f"output directory {p} is not empty", hint="pass --force to replace it")
    parent = p.parent if not p.exists() else p
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise UsageError(f"cannot write under {parent}", hint="choose another --output directory")


def write_report(out_dir: str | os.PathLike[str], *, force: bool, documents: Mapping[str, dict[str, Any]],
                 figures: Mapping[str, Figure] | None = None,
                 arrays: Mapping[str, Mapping[str, np.ndarray]] | None = None) -> list[Path]:
    """Write ``<name>.json``, ``<name>.png`` and ``<name>.npz`` into ``out_dir`` atomically."""
    from engram_cli.jsonio import to_json_text

    out = Path(out_dir)
    written: list[Path] = []
    with atomic_dir(out, force=force) as tmp:
        for name, doc in documents.items():
            if "schema" not in doc:
                raise ValueError(f"report document {name} has no schema")
            (tmp / f"{name}.json").write_text(to_json_text(doc, indent=2) + "\n", encoding="utf-8")
            written.append(out / f"{name}.json")
        for name, fig in (figures or {}).items():
            fig.savefig(tmp / f"{name}.png", dpi=120)
            written.append(out / f"{name}.png")
            _close(fig)
        for name, mats in (arrays or {}).items():
            import numpy as np

            with open(tmp / f"{name}.npz", "wb") as fh:
                np.savez_compressed(fh, **dict(mats))
            written.append(out / f"{name}.npz")
    return written


def _close(fig: Figure) -> None:
    try:
        import matplotlib.pyplot as plt

        plt.close(fig)
    except Exception:  # noqa: BLE001 - a figure not managed by pyplot needs no closing
        pass
