"""Small statistics for the offload report: p50/p99/n summaries and a bootstrap CI of a mean.

(offload does not import ``analysis``; the CI uses scipy's bootstrap rather than a hand-written one.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np


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
    """Percentile-bootstrap CI of the mean of ``values`` (None, None with fewer than 2 values or no spread)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size < 2:
        return None, None
    if np.all(arr == arr[0]):
        return float(arr[0]), float(arr[0])
    from scipy.stats import bootstrap

    res = bootstrap((arr,), np.mean, confidence_level=level, n_resamples=n_boot, method="percentile",
                    random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def paired_ratio_ci(num: Sequence[float], den: Sequence[float], *, level: float = 0.95, seed: int = 0,
                    n_boot: int = 2000) -> tuple[float | None, float | None]:
    """Percentile-bootstrap CI of ``mean(num) / mean(den)`` resampling the pairs together."""
    a, b = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    if a.size < 2 or a.size != b.size:
        return None, None
    from scipy.stats import bootstrap

    res = bootstrap((a, b), lambda x, y: np.mean(x) / np.mean(y), paired=True, vectorized=False,
                    confidence_level=level, n_resamples=n_boot, method="percentile",
                    random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)
