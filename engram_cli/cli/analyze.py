"""``engram analyze``: the paper's depth analyses (LogitLens, CKA) as one command group."""

from __future__ import annotations

import importlib

import typer

analyze_app = typer.Typer(
    name="analyze",
    help="Depth analyses of Engram models: logit lens and CKA (paper §6.1, Fig. 4).",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

SUBCOMMANDS = ("analyze_logit_lens", "analyze_cka")


def register(app: typer.Typer) -> None:
    for name in SUBCOMMANDS:
        importlib.import_module(f"engram_cli.cli.{name}").register(analyze_app)
    app.add_typer(analyze_app, name="analyze")
