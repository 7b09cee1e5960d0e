"""Whether the compiled (numba) kernels may run: numba importable and ``ENGRAM_NO_NUMBA`` unset
or 0. Checked at every call (tests flip it) and cheap: nothing is imported here."""

from __future__ import annotations

import importlib.util
import os


def numba_enabled() -> bool:
    if os.environ.get("ENGRAM_NO_NUMBA", "").strip() not in ("", "0"):
        return False
    return importlib.util.find_spec("numba") is not None
