"""The paper's soft alignment index (arXiv 2601.07372, Eq. 9), the argmax match and the shift.

``S[i, j]`` is the CKA of baseline layer ``i`` (rows) with Engram-model layer ``j`` (columns),
zero-based decoder-layer indices. For each column j:

    a_j = sum_{i in I_j} S[i, j] * i / sum_{i in I_j} S[i, j],   I_j = the top-k rows of column j

(k = 5 in the paper). Undefined cells (NaN) never enter I_j; negative similarities in I_j (the
unbiased estimator can give them) get weight 0. A column with no positive weight has no index
(NaN). Ties are broken towards the lower layer, so results are deterministic.

The shift compares a_j with the proportional diagonal ``j * (Lb-1)/(La-1)``: for models of equal
depth that is plain ``a_j - j``; for different depths it is the same line the heatmap draws.

The control: Eq. 9 is biased towards the middle at the edges (a_0 >= 0 and a_{L-1} <= L-1 by
construction, and any smooth CKA map pulls the top-k centroid inwards there). So the index of
the baseline against *itself* (``self_index``, B vs B) is the value a_j would take if the
Engram model were the baseline; ``excess = a_j - self_index(diagonal_j)`` (interpolated) is
the part of the shift the baseline does not explain, and the headline picks its largest value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INDEX_BASE = 0
DEFAULT_K = 5


def _top_rows(col: np.ndarray, k: int) -> np.ndarray:
    ok = np.flatnonzero(np.isfinite(col))
    order = ok[np.lexsort((ok, -col[ok]))]  # by similarity, descending; lower layer first on ties
    return order[:k]


def soft_alignment_index(S: np.ndarray, k: int = DEFAULT_K) -> np.ndarray:
    """``a_j`` for every column of ``S [..., rows, cols]`` (rows: baseline layers); NaN where undefined.

    Vectorised over leading dims (bootstrap replicates): a stable sort of ``-S`` down the rows.
    """
    if k < 1:
        raise ValueError("k must be >= 1")
    S = np.asarray(S, dtype=np.float64)
    key = np.where(np.isfinite(S), -S, np.inf)
    order = np.argsort(key, axis=-2, kind="stable")[..., :k, :]
    top = np.take_along_axis(S, order, axis=-2)
    w = np.where(np.isfinite(top), np.clip(top, 0.0, None), 0.0)
    den = w.sum(-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (w * order).sum(-2) / den, np.nan)


def argmax_match(S: np.ndarray) -> np.ndarray:
    """The best-matching baseline layer per column (-1 where the column is all undefined)."""
    S = np.asarray(S, dtype=np.float64)
    out = np.full(S.shape[1], -1, dtype=np.int64)
    for j in range(S.shape[1]):
        rows = _top_rows(S[:, j], 1)
        if rows.size:
            out[j] = int(rows[0])
    return out


def diagonal(n_cols: int, n_rows: int) -> np.ndarray:
    """The proportional diagonal ``j * (n_rows-1)/(n_cols-1)`` (``j`` itself for equal depths)."""
    if n_cols <= 1:
        return np.zeros(n_cols)
    return np.arange(n_cols) * ((n_rows - 1) / (n_cols - 1))


@dataclass
class Headline:
    """The largest shift: Engram-model layer ``layer`` aligns with baseline depth ``index``."""

    layer: int
    index: float
    shift: float
    text: str


@dataclass
class Alignment:
    k: int
    index_base: int
    soft_index: np.ndarray  # a_j, NaN where undefined
    argmax: np.ndarray  # best row per column, -1 where undefined
    diagonal: np.ndarray
    shift: np.ndarray  # a_j - diagonal_j
    headline: Headline | None
    self_index: np.ndarray | None = None  # the baseline against itself, at diagonal_j
    excess: np.ndarray | None = None  # a_j - self_index


def headline(soft: np.ndarray, diag: np.ndarray, excess: np.ndarray | None = None) -> Headline | None:
    """The layer with the largest excess shift (or raw shift without a control): "layer 5 -> 12.1"."""
    key = soft - diag if excess is None else excess
    if not np.isfinite(key).any():
        return None
    j = int(np.nanargmax(key))
    return Headline(layer=j, index=float(soft[j]), shift=float(soft[j] - diag[j]), text=f"layer {j} \u2192 {soft[j]:.1f}")


def align(S: np.ndarray, k: int = DEFAULT_K, baseline_self: np.ndarray | None = None) -> Alignment:
    """Soft index, argmax, shift and headline of a ``[baseline layers, Engram layers]`` matrix.

    ``baseline_self``: the baseline's own ``[B, B]`` CKA matrix, the control for the shift.
    """
    S = np.asarray(S, dtype=np.float64)
    soft = soft_alignment_index(S, k)
    diag = diagonal(S.shape[1], S.shape[0])
    self_at = excess = None
    if baseline_self is not None:
        own = soft_alignment_index(baseline_self, k)
        ok = np.isfinite(own)
        self_at = np.interp(diag, np.flatnonzero(ok), own[ok]) if ok.any() else np.full(diag.shape, np.nan)
        excess = soft - self_at
    return Alignment(k=k, index_base=INDEX_BASE, soft_index=soft, argmax=argmax_match(S), diagonal=diag,
                     shift=soft - diag, headline=headline(soft, diag, excess), self_index=self_at, excess=excess)
