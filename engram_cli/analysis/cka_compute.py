"""One CKA matrix from two feature getters: the minibatch protocol or a full estimator, the null
floor, bootstrap CIs, the alignment with its control, and the self-check (no models here).

A *getter* maps example indices to features ``[layers, len(idx), width]`` (a store slice), so the
same code serves the raw features, the robustness variants, and tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from engram_cli.analysis import cka as C
from engram_cli.analysis.alignment import Alignment, align, soft_alignment_index
from engram_cli.errors import BadInputError, UsageError
from engram_cli.progress import ProgressCallback


@dataclass
class CkaSettings:
    estimator: str = "minibatch-unbiased"
    kernel: str = "linear"
    rbf_threshold: float = 1.0
    batch_size: int = 64
    epochs: int = 1
    seed: int = 0
    positions: str = "all"
    skip_first: int = 1
    max_length: int = 256
    max_examples: int | None = 4096
    forward_batch: int = 8
    k: int = 5
    n_boot: int | None = None  # None: 1000 (minibatch, cheap) or 200 (full estimators)
    clamp_outliers: float | None = None
    remove_top_pcs: int | None = None
    branch_reduce: str = "model"
    path: str = "auto"
    texts: Path | None = None
    spans: Path | None = None
    cache_dir: Path | None = None
    preset: str | None = None

    @property
    def unbiased(self) -> bool:
        return self.estimator != "full-biased"

    @property
    def boot(self) -> int:
        if self.n_boot is not None:
            return self.n_boot
        return 1000 if self.estimator == "minibatch-unbiased" else 200


def validate(s: CkaSettings) -> None:
    """Refuse settings that cannot work, before any model is loaded (UsageError, exit 2)."""
    if s.estimator not in C.ESTIMATORS:
        raise UsageError(f"unknown estimator {s.estimator!r}", hint=", ".join(C.ESTIMATORS))
    if s.kernel not in C.KERNELS:
        raise UsageError(f"unknown kernel {s.kernel!r}", hint=", ".join(C.KERNELS))
    if s.estimator == "minibatch-unbiased" and s.batch_size < 4:
        raise UsageError(f"--cka-batch-size {s.batch_size} is below 4: the unbiased HSIC needs at least 4 examples per batch")
    if s.epochs < 1 or (s.epochs > 1 and s.estimator != "minibatch-unbiased"):
        raise UsageError("--epochs must be >= 1 and only applies to --estimator minibatch-unbiased")
    if s.path == "feature" and s.kernel != "linear":
        raise UsageError("--path feature needs --kernel linear")
    if s.clamp_outliers is not None and not 0 < s.clamp_outliers < 0.5:
        raise UsageError("--clamp-outliers must be a quantile in (0, 0.5), e.g. 0.001")
    if s.remove_top_pcs is not None and s.remove_top_pcs < 1:
        raise UsageError("--remove-top-pcs must be >= 1")
    if s.k < 1 or s.rbf_threshold <= 0 or s.max_length < 1 or s.forward_batch < 1 or s.skip_first < 0:
        raise UsageError("--top-k, --rbf-threshold, --max-length and --batch-size must be positive")
    if s.max_examples is not None and s.max_examples < 4:
        raise UsageError("--max-examples must be >= 4")


@dataclass
class MatrixResult:
    """One CKA matrix ``[B layers, A layers]`` with its null floor, CIs and alignment."""

    cka: np.ndarray
    null: np.ndarray
    hsic_ab: np.ndarray
    hsic_a: np.ndarray
    hsic_b: np.ndarray
    alignment: Alignment
    ci_lo: np.ndarray | None = None
    ci_hi: np.ndarray | None = None
    soft_ci_lo: np.ndarray | None = None
    soft_ci_hi: np.ndarray | None = None
    n_batches: int = 1
    dropped: int = 0
    ci_note: str = ""

    @property
    def undefined(self) -> list[tuple[int, int]]:
        return [(int(i), int(j)) for i, j in np.argwhere(~np.isfinite(self.cka))]


# -- computing one matrix ----------------------------------------------------------------------

Getter = Callable[[np.ndarray], np.ndarray]


def _quantile_ci(reps: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile CI per cell over the first axis; NaN where fewer than half the replicates are defined."""
    ok = np.isfinite(reps).sum(0) >= reps.shape[0] / 2
    lo = np.full(reps.shape[1:], np.nan)
    hi = np.full(reps.shape[1:], np.nan)
    if ok.any():
        q = np.nanquantile(reps[:, ok], [(1 - level) / 2, (1 + level) / 2], axis=0)
        lo[ok], hi[ok] = q[0], q[1]
    return lo, hi


def compute_matrix(get_a: Getter, get_b: Getter | None, n: int, s: CkaSettings, device: Any,
                   progress: ProgressCallback | None = None, bootstrap: bool = True,
                   baseline_self: np.ndarray | None = None) -> MatrixResult:
    """CKA of all layer pairs over examples ``0..n-1`` (``get_b=None``: A against itself).

    ``baseline_self`` (B against itself) is the control of the alignment shift; for ``get_b=None``
    the matrix is its own control.
    """
    import torch

    from engram_cli.analysis.stats import bootstrap_indices

    def t(x: np.ndarray) -> Any:
        return torch.from_numpy(np.ascontiguousarray(x)).to(device=device, dtype=torch.float64)

    rng = np.random.default_rng(s.seed)
    null_perm = rng.permutation(n)  # B's rows shuffled against A's: the null floor
    get_null = get_b or get_a
    kw = dict(unbiased=s.unbiased, kernel=s.kernel, rbf_threshold=s.rbf_threshold, path=s.path)
    min_n = 4 if s.unbiased else 2
    if n < min_n:
        raise BadInputError(f"only {n} example(s) are valid in both models; CKA needs at least {min_n}")
    if s.estimator == "minibatch-unbiased":
        acc, acc_null, dropped = _minibatches(get_a, get_b, get_null, null_perm, n, s, t, kw, progress)
        terms, null_terms = acc.mean_terms(), acc_null.mean_terms()
        n_batches = acc.n_batches
        reps = None
        if bootstrap and s.boot > 0:
            counts = np.zeros((s.boot, n_batches))
            np.add.at(counts, (np.arange(s.boot)[:, None], bootstrap_indices(n_batches, s.boot, s.seed)), 1.0)
            reps = C.batch_bootstrap(acc.stacked(), counts)
    else:
        xa = t(get_a(np.arange(n)))
        xb = None if get_b is None else t(get_b(np.arange(n)))
        terms, null_terms = C.hsic_terms_multi(xa, [xb, t(get_null(null_perm))], **kw)
        n_batches, dropped, reps = 1, 0, None
        if bootstrap and s.boot > 0:
            reps = np.empty((s.boot, xa.shape[0], (xa if xb is None else xb).shape[0]))
            for r, idx in enumerate(bootstrap_indices(n, s.boot, s.seed)):
                ii = torch.from_numpy(idx).to(xa.device)
                tb = C.hsic_terms(xa[:, ii], None if xb is None else xb[:, ii], **kw)
                reps[r] = C.cka_from_hsic(tb.xy, tb.xx, tb.yy)
                if progress:
                    progress(r + 1, s.boot, "bootstrap")
    S = C.cka_from_hsic(terms.xy, terms.xx, terms.yy).T  # rows: B layers, cols: A layers
    own = S if get_b is None else baseline_self
    res = MatrixResult(cka=S, null=C.cka_from_hsic(null_terms.xy, null_terms.xx, null_terms.yy).T,
                       hsic_ab=terms.xy.T, hsic_a=terms.xx, hsic_b=terms.yy, alignment=align(S, s.k, own),
                       n_batches=n_batches, dropped=dropped)
    if reps is not None:
        reps = reps.transpose(0, 2, 1)
        res.ci_lo, res.ci_hi = _quantile_ci(reps)
        res.soft_ci_lo, res.soft_ci_hi = _quantile_ci(soft_alignment_index(reps, s.k))
        res.ci_note = ("percentile bootstrap over minibatches (blocks of examples)" if s.estimator == "minibatch-unbiased"
                       else "percentile bootstrap over examples")
    return res


def baseline_matrix(get_b: Getter, n: int, s: CkaSettings, device: Any) -> np.ndarray:
    """The baseline's own CKA matrix (B vs B, same batches): the control of the alignment shift."""
    return compute_matrix(get_b, None, n, s, device, bootstrap=False).cka


def _minibatches(get_a: Getter, get_b: Getter | None, get_null: Getter, null_perm: np.ndarray, n: int, s: CkaSettings,
                 t: Callable[[np.ndarray], Any], kw: dict, progress: ProgressCallback | None,
                 chunk_bytes: int = 256 << 20) -> tuple[C.MinibatchAccumulator, C.MinibatchAccumulator, int]:
    """The minibatch protocol: per epoch a seeded permutation cut into batches of ``batch_size``
    (a last batch below 4 examples is dropped and counted); equal-size batches go through the
    kernels ``g`` at a time (``g`` bounded by ``chunk_bytes`` of float64 features)."""
    acc, acc_null = C.MinibatchAccumulator(), C.MinibatchAccumulator()
    la, _, da = get_a(np.arange(1)).shape
    lb, _, db = get_null(np.arange(1)).shape
    g_max = max(1, chunk_bytes // (8 * s.batch_size * (la * da + 2 * lb * db)))
    sels, dropped = [], 0
    for e in range(s.epochs):
        perm = np.random.default_rng([s.seed, e]).permutation(n)  # reshuffled every epoch, seeded
        for b0 in range(0, n, s.batch_size):
            sel = np.sort(perm[b0:b0 + s.batch_size])
            if sel.size < 4:
                dropped += sel.size
            else:
                sels.append(sel)
    done = 0
    while done < len(sels):
        size = sels[done].size
        chunk = [sels[done]]
        while len(chunk) < g_max and done + len(chunk) < len(sels) and sels[done + len(chunk)].size == size:
            chunk.append(sels[done + len(chunk)])
        idx = np.concatenate(chunk)

        def four(x: Any, g: int = len(chunk), b: int = size) -> Any:  # [L, g*b, d] -> [L, g, b, d]
            return x.reshape(x.shape[0], g, b, x.shape[-1])

        xb = None if get_b is None else four(t(get_b(idx)))
        main, null = C.hsic_terms_batched(four(t(get_a(idx))), [xb, four(t(get_null(null_perm[idx])))], **kw)
        acc.add_many(main, size)
        acc_null.add_many(null, size)
        done += len(chunk)
        if progress:
            progress(done, len(sels), "CKA batches")
    return acc, acc_null, dropped


def self_check(get_a: Getter, n: int, s: CkaSettings, device: Any) -> dict[str, Any]:
    """CKA(X, X) of every A layer through the two-sided (cross) code path on one batch: should be 1."""
    import torch

    m = min(n, max(s.batch_size, 4) if s.estimator == "minibatch-unbiased" else 512)
    x = torch.from_numpy(np.ascontiguousarray(get_a(np.arange(m)))).to(device=device, dtype=torch.float64)
    t = C.hsic_terms(x, x.clone(), unbiased=s.unbiased, kernel=s.kernel, rbf_threshold=s.rbf_threshold, path=s.path)
    diag = np.diag(C.cka_from_hsic(t.xy, t.xx, t.yy))
    dev = float(np.nanmax(np.abs(diag - 1))) if np.isfinite(diag).any() else None
    return {"examples": m, "max_abs_deviation": dev, "ok": dev is not None and dev < 1e-6,
            "undefined_layers": [int(i) for i in np.flatnonzero(~np.isfinite(diag))]}
