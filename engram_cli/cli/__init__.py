"""Typer layer: one module per command (group); heavy imports stay inside functions."""
