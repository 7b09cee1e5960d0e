"""Centred kernel alignment (CKA): estimators and float64 accumulators (pure math, torch).

CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) (Kornblith et al. 2019). Estimators:

- ``full-biased``: HSIC_0 = tr(K H L H) / (n-1)^2 over all n examples.
- ``full-unbiased``: the U-statistic HSIC_1 of Song et al. (2012), written as Kornblith's
  "debiased" centring (zero the diagonal, subtract the corrected row/column means):
  <K~, L~> = n(n-3) HSIC_1. It can be negative, so a CKA cell is *undefined* (NaN) when a
  self-HSIC is not positive; it never crashes.
- ``minibatch-unbiased`` (Nguyen, Raghu & Kornblith 2021; the paper's): HSIC_1 per batch,
  averaged over batches (each batch scaled by its own 1/(b(b-3)), so a smaller last batch
  stays unbiased); CKA from the averaged terms.

Kernels: ``linear`` (K = X X^T) and ``rbf`` (K = exp(-|xi-xj|^2 / (2 t^2 m)), m the median of
all n^2 squared distances of the batch, diagonal included, t = ``rbf_threshold``: Kornblith's
median heuristic).

All layer pairs come from one centred Gram per layer and block: the layers' centred Grams are
stacked as rows of a ``[layers, n*n]`` matrix and a single matrix product gives every pair.
For the linear kernel an equivalent feature-space form (``||Xc^T Yc||_F^2`` with the
Song/Kornblith correction terms) is used when it is cheaper (many examples, narrow layers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

ESTIMATORS = ("minibatch-unbiased", "full-unbiased", "full-biased")
KERNELS = ("linear", "rbf")


def _torch():
    import torch

    return torch


# -- kernels and centring ------------------------------------------------------------------------

def _median_last(v: Any) -> Any:
    """numpy's median (mean of the two middle values for an even count) along the last dim."""
    n = v.shape[-1]
    lo = v.kthvalue((n + 1) // 2, dim=-1).values
    if n % 2:
        return lo
    return (lo + v.kthvalue(n // 2 + 1, dim=-1).values) / 2


def sq_distances(x: Any) -> Any:
    """``[..., n, n]`` squared Euclidean distances of the rows of ``x`` (``[..., n, d]``)."""
    dots = x @ x.transpose(-1, -2)
    sq = dots.diagonal(dim1=-2, dim2=-1)
    return -2 * dots + sq.unsqueeze(-1) + sq.unsqueeze(-2)


def gram(x: Any, kernel: str = "linear", rbf_threshold: float = 1.0) -> Any:
    """Gram matrices ``[..., n, n]`` of ``x`` ``[..., n, d]`` (float64)."""
    x = x.double()
    if kernel == "linear":
        return x @ x.transpose(-1, -2)
    if kernel != "rbf":
        raise ValueError(f"unknown kernel {kernel!r}")
    d2 = sq_distances(x)
    med = _median_last(d2.flatten(-2))
    scale = 2 * rbf_threshold ** 2 * med
    scale = _torch().where(scale > 0, scale, _torch().ones_like(scale))  # all points equal: K = 1
    return _torch().exp(-d2 / scale[..., None, None])


def center_gram(k: Any, unbiased: bool) -> Any:
    """Centre Gram matrices ``[..., n, n]`` (Kornblith's ``center_gram``; a new tensor)."""
    torch = _torch()
    k = k.double().clone()
    n = k.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=k.device)
    if unbiased:
        k.masked_fill_(eye, 0.0)
        means = k.sum(-2) / (n - 2)
        means = means - means.sum(-1, keepdim=True) / (2 * (n - 1))
        k -= means.unsqueeze(-1)
        k -= means.unsqueeze(-2)
        k.masked_fill_(eye, 0.0)
        return k
    means = k.mean(-2)
    k -= means.unsqueeze(-1)
    k -= means.unsqueeze(-2)
    k += means.mean(-1)[..., None, None]
    return k


def hsic_scale(n: int, unbiased: bool) -> float:
    """The factor that turns ``<K~, L~>`` into HSIC_1 (unbiased) or HSIC_0 (biased)."""
    if unbiased:
        if n < 4:
            raise ValueError("the unbiased HSIC needs at least 4 examples")
        return 1.0 / (n * (n - 3))
    return 1.0 / (n - 1) ** 2


# -- HSIC terms of all layer pairs ------------------------------------------------------------

@dataclass
class HsicTerms:
    """HSIC of every pair ``xy [La, Lb]`` and the self terms ``xx [La]``, ``yy [Lb]`` (float64 numpy)."""

    xy: np.ndarray
    xx: np.ndarray
    yy: np.ndarray


def _pairs(ka: Any, kb: Any | None, scale: float) -> HsicTerms:
    """One matrix product over stacked centred Grams ``[L, n*n]``; ``kb=None``: A against itself."""
    a = ka.reshape(ka.shape[0], -1)
    if kb is None:
        xy = a @ a.T
        xy = (xy + xy.T) / 2  # exactly symmetric; the diagonal is the self term bit for bit
        xy = xy.cpu().numpy() * scale
        d = np.diag(xy).copy()
        return HsicTerms(xy, d, d.copy())
    b = kb.reshape(kb.shape[0], -1)
    xy = (a @ b.T).cpu().numpy() * scale
    xx = (a * a).sum(1).cpu().numpy() * scale
    yy = (b * b).sum(1).cpu().numpy() * scale
    return HsicTerms(xy, xx, yy)


def gram_hsic(xa: Any, xb: Any | None, *, unbiased: bool, kernel: str = "linear",
              rbf_threshold: float = 1.0) -> HsicTerms:
    """HSIC terms of all pairs from stacked features ``xa [La, n, da]``, ``xb [Lb, n, db]`` (Gram space).

    ``xb=None`` compares A with itself (symmetric result, exact unit CKA diagonal).
    """
    n = xa.shape[1]
    scale = hsic_scale(n, unbiased)
    ka = center_gram(gram(xa, kernel, rbf_threshold), unbiased)
    kb = None if xb is None else center_gram(gram(xb, kernel, rbf_threshold), unbiased)
    return _pairs(ka, kb, scale)


def _feature_parts(x: Any) -> tuple[Any, Any]:
    xc = x.double() - x.double().mean(-2, keepdim=True)
    return xc, (xc * xc).sum(-1)  # centred features, row squared norms [L, n]


def _debias(dot: Any, ra: Any, rb: Any, n: int) -> Any:
    """Kornblith's ``_debiased_dot_product_similarity_helper``: = n(n-3) HSIC_1 for centred features."""
    return dot - n / (n - 2) * (ra @ rb.T) + ra.sum(-1)[:, None] * rb.sum(-1)[None, :] / ((n - 1) * (n - 2))


def feature_hsic(xa: Any, xb: Any | None, *, unbiased: bool) -> HsicTerms:
    """Linear-kernel HSIC terms of all pairs in feature space (``||Xc^T Yc||_F^2``; cost n*da*db per pair)."""
    torch = _torch()
    n = xa.shape[1]
    scale = hsic_scale(n, unbiased)
    ca, ra = _feature_parts(xa)
    same = xb is None
    cb, rb = (ca, ra) if same else _feature_parts(xb)
    la, lb = ca.shape[0], cb.shape[0]
    dot = torch.empty((la, lb), dtype=torch.float64, device=ca.device)
    for i in range(la):
        cross = torch.einsum("nd,lne->lde", ca[i], cb[i:] if same else cb)  # one layer of A against all of B
        dot[i, (i if same else 0):] = (cross * cross).sum((-1, -2))
    if same:
        dot = torch.triu(dot) + torch.triu(dot, 1).T
    if unbiased:
        dot = _debias(dot, ra, rb, n)
    xy = dot.cpu().numpy() * scale
    if same:
        xy = (xy + xy.T) / 2
        d = np.diag(xy).copy()
        return HsicTerms(xy, d, d.copy())
    xx = _self_feature(ca, ra, n, unbiased) * scale
    yy = _self_feature(cb, rb, n, unbiased) * scale
    return HsicTerms(xy, xx, yy)


def _self_feature(c: Any, r: Any, n: int, unbiased: bool) -> np.ndarray:
    cov = c.transpose(-1, -2) @ c
    dot = (cov * cov).sum((-1, -2))
    if unbiased:
        dot = dot - n / (n - 2) * (r * r).sum(-1) + r.sum(-1) ** 2 / ((n - 1) * (n - 2))
    return dot.cpu().numpy()


def choose_path(n: int, widths_a: tuple[int, int], widths_b: tuple[int, int] | None, kernel: str) -> str:
    """``gram`` or ``feature`` (linear only): the cheaper in multiply-adds for all pairs.

    ``widths_*`` are ``(layers, width)``. Gram: n^2 (La da + Lb db + La Lb); feature: n La Lb da db.
    """
    if kernel != "linear":
        return "gram"
    la, da = widths_a
    lb, db = widths_b or widths_a
    gram_cost = n * n * (la * da + lb * db + la * lb)
    feat_cost = n * (la * lb * da * db + la * da * da + lb * db * db)
    return "feature" if feat_cost < gram_cost else "gram"


class _RowBlocks:
    """Rows of the centred Grams of all layers of one side, block by block (memory L*m*n)."""

    def __init__(self, x: Any, kernel: str, rbf_threshold: float, unbiased: bool):
        torch = _torch()
        self.x, self.kernel, self.unbiased = x.double(), kernel, unbiased
        L, n, _ = self.x.shape
        self.n = n
        self.sq = (self.x * self.x).sum(-1)
        if kernel == "linear":
            rowsum = self.x @ self.x.sum(1, keepdim=True).transpose(-1, -2)  # K 1 = X (X^T 1)
            rowsum, diag = rowsum[..., 0], self.sq
        else:
            self.scale = torch.empty(L, dtype=torch.float64, device=self.x.device)
            rowsum = torch.empty((L, n), dtype=torch.float64, device=self.x.device)
            diag = torch.empty_like(rowsum)
            for layer in range(L):  # the median needs all n^2 distances of a layer (one layer at a time)
                d2 = sq_distances(self.x[layer])
                med = _median_last(d2.flatten())
                s = 2 * rbf_threshold ** 2 * med
                self.scale[layer] = s if s > 0 else 1.0
                k = torch.exp(-d2 / self.scale[layer])
                rowsum[layer], diag[layer] = k.sum(-1), k.diagonal()
                del d2, k
        if unbiased:
            means = (rowsum - diag) / (n - 2)
            self.means = means - means.sum(-1, keepdim=True) / (2 * (n - 1))
        else:
            self.means = rowsum / n
            self.grand = rowsum.sum(-1) / (n * n)

    def rows(self, r0: int, r1: int) -> Any:
        torch = _torch()
        xr = self.x[:, r0:r1]
        k = xr @ self.x.transpose(-1, -2)
        if self.kernel == "rbf":
            d2 = -2 * k + self.sq[:, r0:r1, None] + self.sq[:, None, :]
            k = torch.exp(-d2 / self.scale[:, None, None])
        k -= self.means[:, r0:r1, None]
        k -= self.means[:, None, :]
        if self.unbiased:
            i = torch.arange(r1 - r0, device=k.device)
            k[:, i, i + r0] = 0.0
        else:
            k += self.grand[:, None, None]
        return k


def blocked_gram_hsic(xa: Any, xb: Any | None, *, unbiased: bool, kernel: str = "linear", rbf_threshold: float = 1.0,
                      block_bytes: int = 256 << 20) -> HsicTerms:
    """As :func:`gram_hsic`, streaming row blocks of the centred Grams (memory ``block_bytes``, not L*n^2)."""
    torch = _torch()
    n = xa.shape[1]
    scale = hsic_scale(n, unbiased)
    sa = _RowBlocks(xa, kernel, rbf_threshold, unbiased)
    sb = None if xb is None else _RowBlocks(xb, kernel, rbf_threshold, unbiased)
    la, lb = xa.shape[0], (xa if xb is None else xb).shape[0]
    m = max(1, int(block_bytes // (8 * n * (la + (0 if sb is None else lb)))))
    dev = sa.x.device
    xy = torch.zeros((la, lb), dtype=torch.float64, device=dev)
    xx = torch.zeros(la, dtype=torch.float64, device=dev)
    yy = torch.zeros(lb, dtype=torch.float64, device=dev)
    for r0 in range(0, n, m):
        a = sa.rows(r0, min(n, r0 + m)).reshape(la, -1)
        if sb is None:
            xy += a @ a.T
            continue
        b = sb.rows(r0, min(n, r0 + m)).reshape(lb, -1)
        xy += a @ b.T
        xx += (a * a).sum(1)
        yy += (b * b).sum(1)
    out = xy.cpu().numpy() * scale
    if sb is None:
        out = (out + out.T) / 2
        d = np.diag(out).copy()
        return HsicTerms(out, d, d.copy())
    return HsicTerms(out, xx.cpu().numpy() * scale, yy.cpu().numpy() * scale)


def hsic_terms(xa: Any, xb: Any | None, *, unbiased: bool, kernel: str = "linear", rbf_threshold: float = 1.0,
               path: str = "auto", max_gram_bytes: int = 512 << 20) -> HsicTerms:
    """HSIC terms of all layer pairs of one block of examples; ``path`` auto|gram|feature.

    The Gram path holds every layer's n x n centred Gram at once when they fit ``max_gram_bytes``
    and streams row blocks otherwise.
    """
    if path == "auto":
        wb = None if xb is None else (xb.shape[0], xb.shape[2])
        path = choose_path(xa.shape[1], (xa.shape[0], xa.shape[2]), wb, kernel)
    if path == "feature":
        if kernel != "linear":
            raise ValueError("the feature-space path needs the linear kernel")
        return feature_hsic(xa, xb, unbiased=unbiased)
    n = xa.shape[1]
    layers = xa.shape[0] + (0 if xb is None else xb.shape[0])
    if 8 * n * n * layers > max_gram_bytes:
        return blocked_gram_hsic(xa, xb, unbiased=unbiased, kernel=kernel, rbf_threshold=rbf_threshold,
                                 block_bytes=max_gram_bytes // 2)
    return gram_hsic(xa, xb, unbiased=unbiased, kernel=kernel, rbf_threshold=rbf_threshold)


def hsic_terms_multi(xa: Any, xbs: list[Any | None], *, unbiased: bool, kernel: str = "linear",
                     rbf_threshold: float = 1.0, path: str = "auto") -> list[HsicTerms]:
    """:func:`hsic_terms` of A against several B's (e.g. B and B shuffled); A's Grams built once."""
    if path == "auto":
        shapes = [(x.shape[0], x.shape[2]) for x in xbs if x is not None] or [(xa.shape[0], xa.shape[2])]
        path = choose_path(xa.shape[1], (xa.shape[0], xa.shape[2]), max(shapes), kernel)
    n = xa.shape[1]
    layers = xa.shape[0] + sum(x.shape[0] for x in xbs if x is not None)
    if path == "feature" or 8 * n * n * layers > (512 << 20):
        return [hsic_terms(xa, xb, unbiased=unbiased, kernel=kernel, rbf_threshold=rbf_threshold, path=path) for xb in xbs]
    scale = hsic_scale(n, unbiased)
    ka = center_gram(gram(xa, kernel, rbf_threshold), unbiased)
    return [_pairs(ka, None if xb is None else center_gram(gram(xb, kernel, rbf_threshold), unbiased), scale)
            for xb in xbs]


def _pairs_batched(ka: Any, kb: Any | None, scale: float) -> HsicTerms:
    """:func:`_pairs` for ``g`` equal-size batches at once: Grams ``[L, g, b, b]`` -> terms ``[g, ...]``."""
    a = ka.reshape(ka.shape[0], ka.shape[1], -1).transpose(0, 1)  # [g, La, b*b]
    if kb is None:
        xy = a @ a.transpose(1, 2)
        xy = ((xy + xy.transpose(1, 2)) / 2).cpu().numpy() * scale
        d = np.diagonal(xy, axis1=1, axis2=2).copy()
        return HsicTerms(xy, d, d.copy())
    b = kb.reshape(kb.shape[0], kb.shape[1], -1).transpose(0, 1)
    return HsicTerms((a @ b.transpose(1, 2)).cpu().numpy() * scale, (a * a).sum(-1).cpu().numpy() * scale,
                     (b * b).sum(-1).cpu().numpy() * scale)


def hsic_terms_batched(xa: Any, xbs: list[Any | None], *, unbiased: bool, kernel: str = "linear",
                       rbf_threshold: float = 1.0, path: str = "auto") -> list[HsicTerms]:
    """Per-batch HSIC terms of ``g`` equal-size batches at once: ``xa [La, g, b, da]``, each B
    ``[Lb, g, b, db]`` (or None: A against itself). Returns terms with a leading ``[g]`` axis."""
    la, g, b, da = xa.shape
    if path == "auto":
        shapes = [(x.shape[0], x.shape[3]) for x in xbs if x is not None] or [(la, da)]
        path = choose_path(b, (la, da), max(shapes), kernel)
    if path == "feature":
        per = [hsic_terms_multi(xa[:, i], [None if x is None else x[:, i] for x in xbs], unbiased=unbiased,
                                kernel=kernel, rbf_threshold=rbf_threshold, path=path) for i in range(g)]
        return [HsicTerms(*(np.stack([getattr(p[k], f) for p in per]) for f in ("xy", "xx", "yy")))
                for k in range(len(xbs))]
    scale = hsic_scale(b, unbiased)
    ka = center_gram(gram(xa, kernel, rbf_threshold), unbiased)
    return [_pairs_batched(ka, None if x is None else center_gram(gram(x, kernel, rbf_threshold), unbiased), scale)
            for x in xbs]


# -- from HSIC to CKA -------------------------------------------------------------------------

def cka_from_hsic(xy: np.ndarray, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """CKA ``[..., La, Lb]``; NaN (undefined) where a self-HSIC is not positive (or not finite)."""
    xx = np.asarray(xx, dtype=np.float64)
    yy = np.asarray(yy, dtype=np.float64)
    ok = (np.isfinite(xx) & (xx > 0))[..., :, None] & (np.isfinite(yy) & (yy > 0))[..., None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        den = np.sqrt(np.where(ok, xx[..., :, None] * yy[..., None, :], np.nan))
        return np.where(ok, xy / den, np.nan)


# -- the minibatch accumulator ----------------------------------------------------------------

@dataclass
class MinibatchAccumulator:
    """Sums of per-batch HSIC_1 terms in float64, plus each batch's terms (for the batch bootstrap)."""

    unbiased: bool = True
    kernel: str = "linear"
    rbf_threshold: float = 1.0
    path: str = "auto"
    batches_xy: list[np.ndarray] = field(default_factory=list)
    batches_xx: list[np.ndarray] = field(default_factory=list)
    batches_yy: list[np.ndarray] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)

    def update(self, xa: Any, xb: Any | None) -> None:
        """Add one batch: ``xa [La, b, da]``, ``xb [Lb, b, db]`` (same examples, same order), or ``None``."""
        self.add(hsic_terms(xa, xb, unbiased=self.unbiased, kernel=self.kernel, rbf_threshold=self.rbf_threshold,
                            path=self.path), int(xa.shape[1]))

    def update_batched(self, xa: Any, xb: Any | None) -> None:
        """Add ``g`` equal-size batches at once: ``xa [La, g, b, da]``, ``xb [Lb, g, b, db]`` or ``None``."""
        t = hsic_terms_batched(xa, [xb], unbiased=self.unbiased, kernel=self.kernel, rbf_threshold=self.rbf_threshold,
                               path=self.path)[0]
        self.add_many(t, int(xa.shape[2]))

    def add_many(self, t: HsicTerms, batch_size: int) -> None:
        """Add terms with a leading batch axis (from :func:`hsic_terms_batched`)."""
        for i in range(t.xy.shape[0]):
            self.add(HsicTerms(t.xy[i], t.xx[i], t.yy[i]), batch_size)

    def add(self, t: HsicTerms, batch_size: int) -> None:
        """Add one batch's HSIC terms (already scaled to HSIC_1)."""
        self.batches_xy.append(t.xy)
        self.batches_xx.append(t.xx)
        self.batches_yy.append(t.yy)
        self.batch_sizes.append(batch_size)

    @property
    def n_batches(self) -> int:
        return len(self.batch_sizes)

    def stacked(self) -> HsicTerms:
        """Per-batch terms ``[n_batches, ...]``."""
        return HsicTerms(np.stack(self.batches_xy), np.stack(self.batches_xx), np.stack(self.batches_yy))

    def mean_terms(self) -> HsicTerms:
        s = self.stacked()
        return HsicTerms(s.xy.mean(0), s.xx.mean(0), s.yy.mean(0))

    def cka(self) -> np.ndarray:
        m = self.mean_terms()
        return cka_from_hsic(m.xy, m.xx, m.yy)


def batch_bootstrap(terms: HsicTerms, counts: np.ndarray) -> np.ndarray:
    """CKA ``[n_boot, La, Lb]`` from per-batch terms resampled by ``counts [n_boot, n_batches]``."""
    w = counts / counts.sum(1, keepdims=True)
    nb = terms.xy.shape[0]
    xy = (w @ terms.xy.reshape(nb, -1)).reshape(-1, *terms.xy.shape[1:])
    return cka_from_hsic(xy, w @ terms.xx, w @ terms.yy)
