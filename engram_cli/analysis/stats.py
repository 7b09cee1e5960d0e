"""Bootstrap confidence intervals, written once for ablate and the analyses.

Percentile bootstrap (Efron): resample the units (items, sequences) with replacement
``n_boot`` times from a seeded ``numpy.random.Generator`` and take the ``(1-level)/2`` and
``(1+level)/2`` quantiles of the statistic (numpy's linear interpolation). Resamples whose
statistic is undefined (None or not finite) are dropped; when more than half are, the CI is
undefined (``CI(None, None)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

N_BOOT = 1000


@dataclass(frozen=True)
class CI:
    """A confidence interval; ``lo``/``hi`` are None when it is undefined."""

    lo: float | None
    hi: float | None
    level: float = 0.95

    def to_list(self) -> list[float | None]:
        return [self.lo, self.hi]


def bootstrap_indices(n: int, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """``[n_boot, n]`` unit indices drawn with replacement (deterministic for a seed)."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _quantiles(vals: Sequence[float | None], n_boot: int, level: float) -> CI:
    arr = np.asarray([v for v in vals if v is not None and np.isfinite(v)], dtype=np.float64)
    if arr.size == 0 or arr.size < n_boot / 2:
        return CI(None, None, level)
    lo, hi = np.quantile(arr, [(1 - level) / 2, (1 + level) / 2])
    return CI(float(lo), float(hi), level)


def bootstrap_ci(values: Sequence[float] | np.ndarray, stat: Callable[[np.ndarray], float | None] = np.mean, *,
                 n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95) -> CI:
    """CI of ``stat(values)``, resampling the values."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return CI(None, None, level)
    idx = bootstrap_indices(x.shape[0], n_boot, seed)
    if stat is np.mean:
        return _quantiles(x[idx].mean(axis=1).tolist(), n_boot, level)
    return _quantiles([stat(x[i]) for i in idx], n_boot, level)


def paired_bootstrap_ci(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
                        stat: Callable[[np.ndarray, np.ndarray], float | None], *, n_boot: int = N_BOOT, seed: int = 0,
                        level: float = 0.95) -> CI:
    """CI of ``stat(a, b)``, resampling the pairs ``(a[i], b[i])`` together."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape[0] != y.shape[0]:
        raise ValueError("paired samples must have the same length")
    if x.size == 0:
        return CI(None, None, level)
    return _quantiles([stat(x[i], y[i]) for i in bootstrap_indices(x.shape[0], n_boot, seed)], n_boot, level)


def ratio_bootstrap_ci(num: np.ndarray, den: np.ndarray, *, n_boot: int = N_BOOT, seed: int = 0,
                       level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Per column k, the CI of ``sum(num[:, k]) / sum(den)`` resampling the units (rows).

    ``num`` is ``[n_units, k]`` (e.g. per-sequence sums of a per-layer statistic), ``den``
    ``[n_units]`` (e.g. per-sequence token counts). Returns ``(lo[k], hi[k])``; NaN where
    undefined. Vectorised: one ``[n_boot, n_units]`` count matrix, one matrix product.
    """
    num = np.asarray(num, dtype=np.float64)
    num = num[:, None] if num.ndim == 1 else num
    den = np.asarray(den, dtype=np.float64)
    n, k = num.shape
    if n == 0:
        return np.full(k, np.nan), np.full(k, np.nan)
    idx = bootstrap_indices(n, n_boot, seed)
    counts = np.zeros((n_boot, n), dtype=np.float64)
    np.add.at(counts, (np.arange(n_boot)[:, None], idx), 1.0)
    d = counts @ den
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (counts @ num) / d[:, None]
    r[d <= 0] = np.nan
    ok = np.isfinite(r).sum(axis=0) >= n_boot / 2
    lo = np.full(k, np.nan)
    hi = np.full(k, np.nan)
    if ok.any():
        q = np.nanquantile(r[:, ok], [(1 - level) / 2, (1 + level) / 2], axis=0)
        lo[ok], hi[ok] = q[0], q[1]
    return lo, hi


def mean_of_ratios_ci(pairs: Sequence[tuple[np.ndarray, np.ndarray]], *, n_boot: int = N_BOOT, seed: int = 1,
                      level: float = 0.95) -> CI:
    """CI of the mean over groups of ``mean(b_g) / mean(a_g)`` (e.g. a category's mean task
    retention), resampling the items of every group independently; a resample where a group's
    ``a`` mean is not positive is undefined."""
    if not pairs:
        return CI(None, None, level)
    rng = np.random.default_rng(seed)
    per_group = []
    for a, b in pairs:
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        idx = rng.integers(0, a.shape[0], size=(n_boot, a.shape[0]))
        ma, mb = a[idx].mean(axis=1), b[idx].mean(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            per_group.append(np.where(ma > 0, mb / ma, np.nan))
    stacked = np.vstack(per_group)
    return _quantiles(stacked.mean(axis=0).tolist(), n_boot, level)
