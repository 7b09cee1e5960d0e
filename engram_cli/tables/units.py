"""Decimal size units, as huggingface_hub's ``parse_size_to_int`` ("5GB" == 5 * 10**9)."""

from __future__ import annotations

import re

from engram_cli.errors import UsageError

DEFAULT_BLOCK_BYTES = 64 * 2**20  # rows are streamed in blocks of this many bytes (--block-size)
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


def parse_size(text: str | int) -> int:
    """Parse ``"5GB"``/``"500MB"``/``"1000"`` into bytes (decimal units only)."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).upper() if m else None
    if not m or unit not in _UNITS:
        raise UsageError(
            f"cannot parse size {text!r}",
            hint="use decimal units: B, KB, MB, GB or TB (e.g. 5GB = 5,000,000,000 bytes)",
        )
    value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise UsageError(f"size must be positive, got {text!r}")
    return value


def format_bytes(n: float) -> str:
    """Human size in decimal units (1 kB = 1000 bytes, like ``--max-shard-size``), for display only."""
    from rich.filesize import decimal

    return decimal(int(n))
