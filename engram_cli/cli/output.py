"""Output discipline shared by every command.

- Results go to stdout: rich tables for people, or exactly one JSON document with ``--json``.
- Progress, logs and warnings go to stderr; progress is off with ``--json``/``--quiet`` or
  when stderr is not a terminal.
- Errors are one line plus a hint on stderr, mapped to the documented exit codes;
  ``ENGRAM_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import sys
import traceback
from typing import Annotated, Any, Callable, Iterator, TypeVar

import typer
from rich.console import Console
from rich.markup import escape as _rich_escape

from engram_cli.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EngramError

JsonOption = Annotated[bool, typer.Option("--json", help="Print exactly one JSON document on stdout.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or log lines on stderr.")]

F = TypeVar("F", bound=Callable[..., Any])


def escape(text: object) -> str:
    """Escape untrusted text (names read from files) before rich renders it."""
    return _rich_escape(str(text))


def stdout_console() -> Console:
    return Console(soft_wrap=False, highlight=False)


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False)


def _json_default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.integer):
            return int(obj)
        if isinstance(obj, np.floating):
            return float(obj)
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if hasattr(obj, "__fspath__"):
        return os.fspath(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _finite(obj: Any) -> Any:
    """Replace NaN/inf floats by None so the document is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


class Output:
    """Where a command's results, logs and progress go."""

    def __init__(self, json_mode: bool = False, quiet: bool = False):
        self.json_mode = json_mode
        self.quiet = quiet or json_mode
        self.out = stdout_console()
        self.err = stderr_console()

    # results -------------------------------------------------------------------------
    def emit_json(self, document: dict[str, Any]) -> None:
        """Write exactly one JSON document (it must carry ``schema``) to stdout."""
        if "schema" not in document:
            raise ValueError("JSON documents must carry a 'schema' field")
        sys.stdout.write(json.dumps(_finite(document), default=_json_default, ensure_ascii=False) + "\n")
        sys.stdout.flush()

    def print(self, *renderables: Any) -> None:
        """Print a human result to stdout (ignored in JSON mode)."""
        if not self.json_mode:
            self.out.print(*renderables)

    # logs ----------------------------------------------------------------------------
    def log(self, message: str) -> None:
        if not self.quiet:
            self.err.print(message)

    def warn(self, message: str) -> None:
        """Warnings always go to stderr, even with --json (never to stdout)."""
        self.err.print(f"[yellow]warning:[/yellow] {message}")

    # progress ------------------------------------------------------------------------
    @property
    def show_progress(self) -> bool:
        return not self.quiet and self.err.is_terminal

    @contextlib.contextmanager
    def progress(self, description: str, *, unit: str = "items") -> Iterator[Callable[[float, float | None, str], None]]:
        """Yield a progress callback ``(completed, total, description)`` rendered on stderr.

        With ``unit="bytes"`` the bar shows sizes and throughput.
        """
        if not self.show_progress:
            yield lambda completed, total, desc="": None
            return
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        columns: list[Any] = [TextColumn("{task.description}"), BarColumn()]
        if unit == "bytes":
            columns += [DownloadColumn(), TransferSpeedColumn()]
        else:
            columns += [MofNCompleteColumn()]
        columns += [TimeElapsedColumn(), TimeRemainingColumn()]
        with Progress(*columns, console=self.err, transient=True) as bar:
            task = bar.add_task(description, total=None)

            def update(completed: float, total: float | None, desc: str = "") -> None:
                bar.update(task, completed=completed, total=total, description=desc or description)

            yield update


def fail(message: str, hint: str | None, code: int) -> typer.Exit:
    """Print a one-line error (and hint) on stderr; return the Exit to raise."""
    err = stderr_console()
    err.print(f"[bold red]error:[/bold red] {escape(message)}")
    if hint:
        err.print(f"[dim]hint:[/dim] {escape(hint)}")
    return typer.Exit(code)


def handle_errors(func: F) -> F:
    """Decorate a command: map domain errors, interrupts and crashes to exit codes."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = os.environ.get("ENGRAM_DEBUG", "") not in ("", "0")
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except EngramError as exc:
            if debug:
                traceback.print_exc()
            raise fail(exc.message, exc.hint, exc.exit_code) from None
        except typer.BadParameter:
            raise
        except KeyboardInterrupt:
            raise fail("interrupted", None, EXIT_INTERRUPTED) from None
        except MemoryError:
            if debug:
                traceback.print_exc()
            raise fail("out of memory", "lower the block or batch size", EXIT_FAILURE) from None
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            if debug:
                traceback.print_exc()
            msg = str(exc).splitlines()[0] if str(exc) else ""
            raise fail(
                f"unexpected {type(exc).__name__}: {msg}",
                "set ENGRAM_DEBUG=1 to see the traceback, and please report it",
                EXIT_FAILURE,
            ) from None

    return wrapper  # type: ignore[return-value]
