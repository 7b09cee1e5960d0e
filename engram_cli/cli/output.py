"""Output discipline shared by every command.

- Results go to stdout: rich tables for people, or exactly one JSON document with ``--json``.
- Progress, logs and warnings go to stderr; progress is off with ``--json``/``--quiet`` or
  when stderr is not a terminal.
- Errors are one line plus a hint on stderr, mapped to the documented exit codes;
  ``ENGRAM_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import traceback
from typing import Any, Callable, Iterator

import typer
from rich.console import Console
from rich.markup import escape as _rich_escape

from engram_cli.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EngramError
from engram_cli.jsonio import to_json_text

_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x00, 0x20), *range(0x7F, 0xA0)) if c not in (0x09,)}
PIPE_WIDTH = 10_000  # stdout that is not a terminal: never wrap or truncate data


def escape(text: object) -> str:
    """Make untrusted text (names read from files) safe to print: control characters (ESC,
    CR, ...) become ``\\xNN`` and rich markup is escaped."""
    return _rich_escape(str(text).translate(_CONTROL))


def stdout_console() -> Console:
    con = Console(soft_wrap=False, highlight=False)
    if not con.is_terminal:
        con.width = PIPE_WIDTH
    return con


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False)


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
        sys.stdout.write(to_json_text(document) + "\n")
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
        self.err.print(f"[yellow]warning:[/yellow] {message}", soft_wrap=True)  # one line, like errors

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
    """Print a one-line error (and hint) on stderr, never wrapped; return the Exit to raise."""
    err = stderr_console()
    err.print(f"[bold red]error:[/bold red] {escape(' '.join(message.split()))}", soft_wrap=True)
    if hint:
        err.print(f"[dim]hint:[/dim] {escape(' '.join(hint.split()))}", soft_wrap=True)
    return typer.Exit(code)


_OS_HINTS = {
    errno.ENOSPC: ("no space left on device", "free space or choose another output folder"),
    errno.EDQUOT: ("disk quota exceeded", "free space or choose another output folder"),
    errno.EFBIG: ("file too large for this filesystem or ulimit -f", "raise the file-size limit or lower --max-shard-size"),
    errno.EACCES: ("permission denied", "check the permissions of the path"),
    errno.EPERM: ("operation not permitted", "check the permissions of the path"),
    errno.EROFS: ("read-only filesystem", "choose a writable output folder"),
    errno.EMFILE: ("too many open files", "raise ulimit -n"),
}


def exit_for(exc: BaseException) -> typer.Exit:
    """Map any exception a command raised to its one-line message and documented exit code."""
    if os.environ.get("ENGRAM_DEBUG", "") not in ("", "0") and not isinstance(exc, KeyboardInterrupt):
        traceback.print_exception(exc)
    if isinstance(exc, EngramError):
        return fail(exc.message, exc.hint, exc.exit_code)
    if isinstance(exc, KeyboardInterrupt):
        return fail("interrupted", None, EXIT_INTERRUPTED)
    if isinstance(exc, MemoryError):
        return fail("out of memory", "lower the block or batch size", EXIT_FAILURE)
    if isinstance(exc, OSError) and exc.errno is not None:
        what, hint = _OS_HINTS.get(exc.errno, (exc.strerror or "I/O error", "check the path and the disk"))
        where = f": {exc.filename}" if exc.filename else ""
        return fail(f"{what}{where}", hint, EXIT_FAILURE)
    msg = str(exc).splitlines()[0] if str(exc) else ""
    return fail(f"unexpected {type(exc).__name__}: {msg}",
                "set ENGRAM_DEBUG=1 to see the traceback, and please report it", EXIT_FAILURE)
