"""Strict JSON text for documents: NaN/inf become null, numpy scalars and arrays and paths
are converted. Used by stdout documents and by every file the project writes."""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
from typing import Any


def _default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.integer):
            return int(obj)
        if isinstance(obj, np.floating):
            return float(obj)
        if isinstance(obj, np.bool_):
            return bool(obj)
        if isinstance(obj, np.ndarray):
            return finite(obj.tolist())
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, enum.Enum):
        return obj.value
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return finite(dataclasses.asdict(obj))
    if hasattr(obj, "__fspath__"):
        return os.fspath(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def finite(obj: Any) -> Any:
    """Replace NaN/inf floats by None, recursively, so the document is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def to_json_text(doc: Any, indent: int | None = None) -> str:
    """``doc`` as strict JSON text (UTF-8, non-ASCII kept)."""
    return json.dumps(finite(doc), default=_default, ensure_ascii=False, indent=indent, allow_nan=False)
