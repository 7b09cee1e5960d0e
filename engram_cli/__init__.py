"""engram: the command-line toolkit for checkpoints with Engram conditional memory."""

__version__ = "0.1.0"
