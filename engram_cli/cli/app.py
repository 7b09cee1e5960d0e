"""The ``engram`` console command: the root Typer app and its sub-commands.

Command modules import only typer/rich at module level; torch, transformers and other heavy
libraries are imported inside the command functions so ``engram --help`` stays fast.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from engram_cli import __version__

app = typer.Typer(
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
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Show the version and exit."),
    ] = None,
) -> None:
    """Toolkit for language-model checkpoints with Engram conditional memory."""


def _register() -> None:
    from engram_cli.cli import build_vocab, hash_cmd

    app.command("build-vocab")(build_vocab.build_vocab)
    app.command("hash")(hash_cmd.hash_command)
    # Command groups: each module exposes register(app). Add one name per module.
    import importlib

    for module_name in ("ablate", "shard"):
        importlib.import_module(f"engram_cli.cli.{module_name}").register(app)


_register()


def main() -> None:
    """Console-script entry point."""
    app(prog_name="engram")


if __name__ == "__main__":  # pragma: no cover
    main()
