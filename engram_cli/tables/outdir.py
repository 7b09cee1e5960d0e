"""The output folder of a conversion: checked before any work, written through a staging
folder, swapped in at the end, so that no state after a kill reads as a complete output.

Every file of a run (data files, side files, the manifest) is written into a fresh hidden
staging folder inside the output (``OUT/.engram-staging-PID.tmp``, same filesystem, so the
final moves are renames). Until the run has written and checked everything, the folder holds
exactly what it held before (a previous conversion stays complete and valid). The commit then
removes, in this order, the index (or single ``model.safetensors``) to be replaced, the files
the previous manifest listed that the new run does not write, and the previous manifest; moves
the new files in, then the new manifest, then the index last. A kill during the commit leaves
no manifest or no index: visibly incomplete (``shard verify`` fails, HF readers find no
index). Only files the previous manifest listed (or names the run writes) are ever removed or
replaced; anything else in the folder is left and reported. An interrupted run's staging
folder and temporary files are removed by the next run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

from engram_cli.errors import BadInputError, UsageError
from engram_cli.pathguard import check_name, inside
from engram_cli.tables.manifest import MANIFEST, Manifest

STAGING_PREFIX = ".engram-staging-"


def _leftover(name: str) -> bool:
    """A temporary file or staging folder of an interrupted run of this command."""
    return name.startswith(".") and name.endswith(".tmp")


@dataclass
class OutputDir:
    """A prepared output folder: its staging folder and what the previous conversion listed."""

    path: Path
    staging: Path
    planned: tuple[str, ...]
    previous: tuple[str, ...] = ()  # every file the previous manifest listed
    previous_problem: str | None = None  # why a previous manifest could not be read
    created: bool = False  # the run created the output folder (an abort removes it again)
    removed: list[str] = field(default_factory=list)  # previous files the new run does not write
    kept: list[str] = field(default_factory=list)  # files left alone: not from a conversion

    def staged(self, name: str) -> Path:
        return self.staging / name


def prepare_output(out: str | os.PathLike[str], source_path: Path, planned: list[str], force: bool) -> OutputDir:
    """Refuse an output that holds something else or a conversion (without ``--force``); create
    the staging folder and clear leftovers of interrupted runs. Called before any work."""
    out = Path(out)
    for name in planned:
        check_name(name, "output file")
        if "/" in name or "\\" in name:
            raise UsageError(f"output file name {name!r} must not contain a folder")
    src = Path(source_path).resolve()
    if (inside(src, out) if src.is_dir() else out.resolve() == src.parent):
        raise UsageError(f"output {out} is inside the source {source_path}", hint="write to another directory")
    if out.exists() and not out.is_dir():
        raise UsageError(f"output {out} exists and is not a directory")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    entries = [p.name for p in out.iterdir()]
    previous, problem = (), None
    if MANIFEST in entries:
        if not force:
            raise UsageError(f"output {out} already holds a conversion", hint="pass --force to replace it")
        try:
            previous = tuple(Manifest.load(out).names())
        except BadInputError as exc:  # ManifestError, or a name the path guard refuses
            problem = exc.message  # nothing it lists can be trusted: only planned names are replaced
    elif not force and not all(n in planned or _leftover(n) for n in entries):
        raise UsageError(f"output directory {out} is not empty", hint="pass --force to replace it")
    for n in entries:
        if _leftover(n):
            p = out / n
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
    staging = out / f"{STAGING_PREFIX}{os.getpid()}.tmp"  # created by begin(), inside the caller's cleanup
    return OutputDir(out, staging, tuple(planned), previous, problem, created)


def begin(od: OutputDir) -> None:
    """Create the (empty) staging folder; call it inside the block whose failure calls :func:`abort`."""
    od.staging.mkdir()


def abort(od: OutputDir) -> None:
    """Drop the staging folder: the output folder is left as it was (removed if the run made it)."""
    shutil.rmtree(od.staging, ignore_errors=True)
    if od.created:
        with contextlib.suppress(OSError):
            od.path.rmdir()  # only when empty


def _marker(name: str) -> bool:
    """A file whose presence makes a folder read as a complete HF checkpoint."""
    return name.endswith(".index.json") or name == "model.safetensors"


@contextlib.contextmanager
def _interrupts_deferred():
    """SIGINT and SIGTERM wait until the swap (a few renames) is done, so an interrupt never
    leaves it half-way (a SIGKILL can; the order of the swap covers that). Their handlers are
    swapped for one that only records the signal, which is raised again afterwards (masking
    the signal would not do: other threads, e.g. BLAS workers, would still take it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    sigs = (signal.SIGINT, signal.SIGTERM)
    old = {s: signal.getsignal(s) for s in sigs}
    for s in sigs:
        signal.signal(s, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        if caught:
            signal.raise_signal(caught[0])  # delivered now, to the handler that was in place


def commit(od: OutputDir) -> None:
    """Swap the staged files in: remove the old index (and a single ``model.safetensors``), the
    files of the previous conversion the new one does not write, the old manifest; move the
    new files in, then the manifest, then the index (or ``model.safetensors``) last. A kill at
    any point leaves either the old output, or a folder with no manifest or no index."""
    with _interrupts_deferred():
        _swap(od)
    od.kept = sorted(p.name for p in od.path.iterdir()
                     if p.name not in set(od.previous) | set(od.planned) and p.name != MANIFEST and not _leftover(p.name))


def _swap(od: OutputDir) -> None:
    out, planned = od.path, set(od.planned)
    replaceable = set(od.previous) | planned
    for name in sorted(n for n in replaceable if _marker(n)):
        (out / name).unlink(missing_ok=True)
    for name in od.previous:
        if name not in planned and (out / name).is_file():
            (out / name).unlink()
            od.removed.append(name)
    (out / MANIFEST).unlink(missing_ok=True)
    for name in [n for n in od.planned if not _marker(n)]:
        os.replace(od.staged(name), out / name)
    os.replace(od.staged(MANIFEST), out / MANIFEST)
    for name in [n for n in od.planned if _marker(n)]:
        os.replace(od.staged(name), out / name)
    shutil.rmtree(od.staging, ignore_errors=True)
