"""Decimal size units, as huggingface_hub's ``parse_size_to_int`` ("5GB" == 5 * 10**9)."""

from __future__ import annotations

import re

from engram_cli.errors import UsageError

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
    """Human size with binary units (GiB), for display only."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"  # pragma: no cover
