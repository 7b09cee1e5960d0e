"""The console-script entry point: SIGTERM is handled like Ctrl-C (temporary files removed,
exit 130) from the very first instruction, before the commands are even imported."""

from __future__ import annotations

import signal


def _sigterm_as_interrupt(signum, frame) -> None:  # noqa: ANN001
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        from engram_cli.cli.app import app
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    app(prog_name="engram")
