"""The ``engram`` console command: the root Typer app and its sub-commands.

Command modules import only typer/rich at module level; torch, transformers and other heavy
libraries are imported inside the command functions so ``engram --help`` stays fast.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from engram_cli import __version__

MODULES = ("build_vocab", "hash_cmd", "shard", "ablate", "analyze", "inspect_cmd", "bench_offload")


class EngramGroup(TyperGroup):
    """The root command group: maps every error a command raises to one stderr line and its
    documented exit code (done once here, not by a decorator each command must remember)."""

    def invoke(self, ctx):  # noqa: ANN001 - click's signature
        from engram_cli.cli.output import exit_for

        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except BaseException as exc:  # noqa: BLE001 - the one place errors become exit codes
            if isinstance(exc, (SystemExit, GeneratorExit)):
                raise
            raise exit_for(exc) from None

    def main(self, *args, **kwargs):  # noqa: ANN002, ANN003
        """Usage errors as one line (``error: ...`` + a hint), like every other error."""
        from engram_cli.cli.output import fail

        if not kwargs.get("standalone_mode", True):
            return super().main(*args, **kwargs)
        try:
            rv = super().main(*args, **{**kwargs, "standalone_mode": False})
            raise SystemExit(rv if isinstance(rv, int) else 0)  # typer returns an Exit's code here
        except typer.TyperException as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":
                raise SystemExit(exc.exit_code) from None
            ctx = getattr(exc, "ctx", None)
            where = ctx.command_path if ctx is not None else "engram"
            fail(exc.format_message(), f"see `{where} --help`", exc.exit_code)
            raise SystemExit(exc.exit_code) from None
        except typer.Abort:
            fail("interrupted", None, 130)
            raise SystemExit(130) from None


app = typer.Typer(
    cls=EngramGroup,
    name="engram",
    help="Toolkit for language-model checkpoints with Engram conditional memory.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"engram {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        Optional[bool],
        typer.Option("--version", "-V", callback=_version_callback, is_eager=True, help="Show the version and exit."),
    ] = None,
) -> None:
    """Toolkit for language-model checkpoints with Engram conditional memory."""


def _register() -> None:
    """Each command module exposes ``register(app)``; add one name per module to MODULES."""
    import importlib

    for module_name in MODULES:
        importlib.import_module(f"engram_cli.cli.{module_name}").register(app)


_register()
