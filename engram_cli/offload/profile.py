"""The offload profile: a hardware/software fingerprint and the document body of ``offload.json``.

Engines (and a later run) read the profile; ``stale_fields`` says which fingerprint fields
differ from this machine, so a profile measured elsewhere or before an upgrade is detected.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

FINGERPRINT_KEYS = ("cpu_model", "cpus", "memory_bytes", "kernel", "thp", "numa_nodes", "gpu", "gpu_driver", "cuda",
                    "torch", "numpy", "engram")


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _numa_nodes() -> int | None:
    nodes = Path("/sys/devices/system/node")
    return len(list(nodes.glob("node[0-9]*"))) if nodes.is_dir() else None


def llc_bytes() -> int | None:
    """Size of the largest CPU cache (sysfs), or None."""
    best = None
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = f.read_text().strip()
        except OSError:
            continue
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        val = int(text.rstrip("KMG")) * mult
        best = val if best is None else max(best, val)
    return best


def fingerprint(gpu: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the measurements depend on: CPU, memory, kernel, THP, NUMA, GPU, driver, library versions."""
    import numpy as np
    import psutil
    import torch

    from engram_cli import __version__
    from engram_cli.offload.host import thp_mode

    gpu = gpu or {}
    return {"cpu_model": _cpu_model(), "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "memory_bytes": int(psutil.virtual_memory().total), "kernel": platform.release(), "thp": thp_mode(),
            "numa_nodes": _numa_nodes(), "llc_bytes": llc_bytes(), "gpu": gpu.get("name"), "gpu_driver": gpu.get("driver"),
            "cuda": torch.version.cuda if torch.cuda.is_available() else None, "torch": torch.__version__,
            "numpy": np.__version__, "engram": __version__}


def fingerprint_id(fp: dict[str, Any]) -> str:
    """A short stable id of the fingerprint's keyed fields."""
    blob = json.dumps({k: fp.get(k) for k in FINGERPRINT_KEYS}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def stale_fields(profile: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Fingerprint fields of ``profile`` (an offload.json) that differ from ``current``."""
    old = profile.get("fingerprint", {})
    return [k for k in FINGERPRINT_KEYS if old.get(k) != current.get(k)]


def to_plain(obj: Any) -> Any:
    """Dataclasses to dicts (numpy arrays left out: they go to the .npz), dict keys to strings."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not _is_array_map(getattr(obj, f.name))}
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _is_array_map(value: Any) -> bool:
    import numpy as np

    return isinstance(value, dict) and bool(value) and all(isinstance(v, np.ndarray) for v in value.values())


def _section(value: Any, skipped: str | None) -> Any:
    if value is None:
        return {"skipped": skipped or "not requested"}
    return to_plain(value)


def document_body(result: Any, layout: Any) -> dict[str, Any]:
    """The offload.json body (the CLI adds ``schema`` and ``provenance``)."""
    cfg = result.config
    sections = {
        "locality": _section(result.locality, result.skipped.get("locality")),
        "hashing": _section(result.hashing, result.skipped.get("hashing")),
        "host": _section(result.host, result.skipped.get("host")),
        "nvme": _section(result.files, result.skipped.get("nvme")),
        "gpu": _section(result.gpu, result.skipped.get("gpu")),
        "backbone": to_plain(result.backbone),
        "projection": _section(result.projection, result.skipped.get("projection")),
        "validate": _section(result.validate, None if cfg.validate else "not requested (--validate)"),
    }
    proj = result.projection
    return {
        "fingerprint": result.fingerprint,
        "fingerprint_id": fingerprint_id(result.fingerprint),
        "layout": {"source": result.layout_source, "variant": layout.variant, "layer_ids": list(layout.layer_ids),
                   "columns": layout.n_columns, "row_bytes": layout.bytes_per_row()},
        "config": to_plain(cfg),
        "table_bytes": result.table_bytes,
        "corpus": result.corpus,
        "verdicts": proj.verdicts if proj is not None else {},
        "sections": sections,
        "seconds": result.seconds,
        "warnings": result.warnings,
    }
