"""Small statistics for the offload report: p50/p99/n summaries and a bootstrap CI of a mean.

(CIs come from ``engram_cli.analysis.stats``, the one place bootstrap is written.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from engram_cli.analysis.stats import bootstrap_ci, paired_bootstrap_ci


@dataclass(frozen=True)
class Dist:
    """A sample summary: median, 99th percentile, count, mean and minimum (None when empty)."""

    p50: float | None
    p99: float | None
    n: int
    mean: float | None = None
    min: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def dist(samples: Sequence[float] | np.ndarray) -> Dist:
    """Summarise ``samples`` (NaNs dropped)."""
    arr = np.asarray(samples, dtype=np.float64).reshape(-1)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return Dist(None, None, 0)
    p50, p99 = np.percentile(arr, [50, 99])
    return Dist(float(p50), float(p99), int(arr.size), float(arr.mean()), float(arr.min()))


def ratio(num: float | None, den: float | None) -> float | None:
    """``num / den`` or None when either is missing or the denominator is not positive."""
    if num is None or den is None or not den > 0:
        return None
    return float(num) / float(den)


def mean_ci(values: Sequence[float], *, level: float = 0.95, seed: int = 0, n_boot: int = 2000) -> tuple[float | None, float | None]:
    """Percentile-bootstrap CI of the mean of ``values`` (None, None with fewer than 2 values)."""
    if len(values) < 2:
        return None, None
    ci = bootstrap_ci(values, n_boot=n_boot, seed=seed, level=level)
    return ci.lo, ci.hi


def paired_ratio_ci(num: Sequence[float], den: Sequence[float], *, level: float = 0.95, seed: int = 0,
                    n_boot: int = 2000) -> tuple[float | None, float | None]:
    """Percentile-bootstrap CI of ``mean(num) / mean(den)`` resampling the pairs together."""
    if len(num) < 2 or len(num) != len(den):
        return None, None
    ci = paired_bootstrap_ci(num, den, lambda x, y: float(x.mean() / y.mean()), n_boot=n_boot, seed=seed, level=level)
    return ci.lo, ci.hi
