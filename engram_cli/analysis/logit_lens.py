"""Logit-lens statistics, streamed: per-token metrics of one chunk of positions at a time,
summed per sequence, never ``[layers, tokens, vocab]`` in memory.

For a read-out state ``h`` the lens distribution is ``log_softmax(W_U · norm(h))`` in float32
(``norm`` = the model's final norm recomputed on that state; off with ``final_norm=False``).
The *final* distribution is the lens of the last decoder layer's output with the final norm and
the model's own branch mapping, so at that read-out KL is exactly 0.

Per token (nats; ``p_L`` final, ``p_l`` the read-out; the gold token is the next input token):

=================  ========================================================
kl_final_layer     KL(p_L ‖ p_l) (tuned-lens' direction; the default)
kl_layer_final     KL(p_l ‖ p_L)
js                 Jensen-Shannon divergence (natural log, in [0, ln 2])
entropy            H(p_l)
ce                 -log p_l(gold)                                  (gold)
top1_agree         argmax p_l == argmax p_L (ties: the lowest id)
rank_final_top1    1 + #{v : p_l(v) > p_l(argmax p_L)}   (1 = top)
rank_gold          1 + #{v : p_l(v) > p_l(gold)}                   (gold)
=================  ========================================================

Means are over valid tokens (``sum / count`` pooled over sequences); CIs resample sequences
(``stats.ratio_bootstrap_ci``). :func:`reference_metrics` is the straightforward
full-materialisation version (scipy, float64) the streaming kernel is tested against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

METRICS = ("kl_final_layer", "kl_layer_final", "js", "entropy", "ce", "top1_agree", "rank_final_top1", "rank_gold")
GOLD_METRICS = frozenset({"ce", "rank_gold"})
NATS_METRICS = frozenset({"kl_final_layer", "kl_layer_final", "js", "entropy", "ce"})  # divided by ln 2 for bits
LABELS = {"kl_final_layer": "KL(final‖layer)", "kl_layer_final": "KL(layer‖final)", "js": "JS", "entropy": "entropy",
          "ce": "CE(next token)", "top1_agree": "top-1 agreement", "rank_final_top1": "rank of final top-1",
          "rank_gold": "rank of gold token"}
LN2 = math.log(2.0)
MIN_LOGP = -1e4  # exp() of it is 0 in float32 and float64: a clamped -inf changes no metric


# -------------------------------------------------------------------------------- kernel
class Unembedder:
    """``norm`` + unembedding in float32 (``float64`` for tests) on the unembedding's device (weights cast once)."""

    def __init__(self, view: Any, dtype: str = "float32"):
        import torch

        self.norm = view.final_norm
        head = view.unembed
        if head is None:
            from engram_cli.errors import BadInputError

            raise BadInputError(f"{type(view.model).__name__}: no output embedding (lm_head) found")
        w = getattr(head, "weight", None)
        self.plain = isinstance(head, torch.nn.Linear) and w is not None
        self.head = head
        self.device = (w if w is not None else next(head.parameters())).device
        self.dtype = getattr(torch, dtype)
        if self.plain:
            self.weight = w.detach().to(self.dtype)
            self.bias = None if head.bias is None else head.bias.detach().to(self.dtype)
        self.vocab = vocab_size(view)

    def logits(self, h: Any, norm: bool) -> Any:
        """``[N, V]`` logits of ``[N, H]`` states, in the compute dtype."""
        import torch.nn.functional as F

        if norm and self.norm is not None:
            h = self.norm(h.to(_device_of(self.norm, h.device)))
        h = h.to(self.device)
        if self.plain:
            return F.linear(h.to(self.dtype), self.weight, self.bias)
        return self.head(h).to(self.dtype)

    def log_probs(self, h: Any, norm: bool) -> Any:
        """Finite float32 log-probs (a masked ``-inf`` logit becomes a very small finite one)."""
        return self.logits(h, norm).log_softmax(-1).clamp_min_(MIN_LOGP)


def vocab_size(view: Any) -> int:
    w = getattr(view.unembed, "weight", None)
    return int(w.shape[0]) if w is not None else int(view.model.config.vocab_size)


def _device_of(mod: Any, default: Any) -> Any:
    for p in mod.parameters():
        return p.device
    return default


def token_metrics(lp: Any, lf: Any, pf: Any, top_f: Any, gold: Any) -> Any:
    """``[M, N]`` per-token metrics (order of METRICS; nats) of read-out log-probs ``lp`` ``[N, V]``
    against the final ``lf`` / ``pf = lf.exp()`` / ``top_f``; ``gold`` ``[N]`` (-1 = none, gives 0).

    Log-probs must be finite (:meth:`Unembedder.log_probs` clamps). Fused dot products keep the
    temporaries to two ``[N, V]`` blocks: with ``d = lp - lf`` and the mixture ``m = (p + pf) / 2``,
    KL(f||l) = -<pf, d>, KL(l||f) = <p, d>, H = -<p, lp>, JS = H(m) - (H(p) + H(pf)) / 2.
    """
    import torch
    from torch.linalg import vecdot

    p = lp.exp()
    d = lp - lf
    kl_fl = -vecdot(pf, d)
    kl_lf = vecdot(p, d)
    del d
    ent = -vecdot(p, lp)
    m = p.add_(pf).mul_(0.5)  # p is not needed any more
    js = -vecdot(m, m.clamp_min(1e-38).log_()) - 0.5 * (ent - vecdot(pf, lf))
    del m, p
    agree = (lp.argmax(-1) == top_f).to(lp.dtype)
    rank_top = 1 + (lp > lp.gather(1, top_f[:, None])).sum(-1).to(lp.dtype)
    has = gold >= 0
    at_gold = lp.gather(1, gold.clamp_min(0)[:, None])
    zero = lp.new_zeros(())
    ce = torch.where(has, -at_gold[:, 0], zero)
    rank_gold = torch.where(has, 1 + (lp > at_gold).sum(-1).to(lp.dtype), zero)
    # divergences are >= 0; rounding can leave -1e-7 where the distributions (nearly) coincide
    return torch.stack([kl_fl.clamp_min(0), kl_lf.clamp_min(0), js.clamp_min(0), ent, ce, agree, rank_top, rank_gold])


def reference_metrics(layer_logits: np.ndarray, final_logits: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """Full materialisation: ``[R, M, N]`` from logits ``[R, N, V]``, ``[N, V]`` (float64, scipy)."""
    from scipy.special import log_softmax, rel_entr
    from scipy.stats import entropy

    lf = log_softmax(final_logits.astype(np.float64), axis=-1)
    pf = np.exp(lf)
    top = lf.argmax(-1)
    out = np.zeros((layer_logits.shape[0], len(METRICS), lf.shape[0]))
    for r, logits in enumerate(layer_logits):
        lp = log_softmax(logits.astype(np.float64), axis=-1)
        p = np.exp(lp)
        m = 0.5 * (p + pf)
        out[r, 0] = rel_entr(pf, p).sum(-1)
        out[r, 1] = rel_entr(p, pf).sum(-1)
        out[r, 2] = 0.5 * rel_entr(pf, m).sum(-1) + 0.5 * rel_entr(p, m).sum(-1)
        out[r, 3] = entropy(p, axis=-1)
        out[r, 5] = lp.argmax(-1) == top
        for n in range(lp.shape[0]):
            out[r, 6, n] = 1 + np.sum(lp[n] > lp[n, top[n]])
            if gold[n] >= 0:
                out[r, 4, n] = -lp[n, gold[n]]
                out[r, 7, n] = 1 + np.sum(lp[n] > lp[n, gold[n]])
    return out


def first_converged(kl: Any, agree: Any, threshold: float) -> Any:
    """Per token (columns of ``[R, N]``), the first row with ``kl < threshold`` and agreement; -1 if none."""
    import torch

    ok = (kl < threshold) & (agree > 0.5)
    idx = torch.arange(ok.shape[0], device=ok.device)[:, None].expand_as(ok)
    first = torch.where(ok, idx, ok.shape[0]).min(0).values
    return torch.where(first == ok.shape[0], -1, first)


# -------------------------------------------------------------------------------- accumulation
@dataclass
class SeqSums:
    """Per-sequence sums (float64): the only state that grows with the number of sequences."""

    sums: np.ndarray  # [n_seq, R, M] metric sums (nats)
    n_tokens: np.ndarray  # [n_seq] selected positions
    n_gold: np.ndarray  # [n_seq] selected positions with a gold next token
    conv_sum: np.ndarray  # [n_seq] sum over tokens of layers-to-convergence
    conv_n: np.ndarray  # [n_seq] tokens that converged

    @classmethod
    def zeros(cls, n_seq: int, n_readouts: int) -> SeqSums:
        z = np.zeros(n_seq)
        return cls(np.zeros((n_seq, n_readouts, len(METRICS))), z.copy(), z.copy(), z.copy(), z.copy())

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.sums, self.n_tokens, self.n_gold, self.conv_sum, self.conv_n))


# -------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class ReadOut:
    """One read-out point. ``layer`` zero-based (-1 = embed); ``depth`` = decoder layers applied
    (embed 0, pre-Engram of layer i = i, post-Engram i + 0.5, block output i + 1)."""

    point: str
    layer: int
    label: str
    depth: float


def readout_for(point: str, layer: int) -> ReadOut:
    if point == "embed":
        return ReadOut(point, layer, "embed", 0.0)
    if point == "block":
        return ReadOut(point, layer, f"L{layer}", layer + 1.0)
    suffix = "pre" if point == "pre_engram" else "post"
    return ReadOut(point, layer, f"L{layer}.{suffix}-engram", layer + (0.0 if suffix == "pre" else 0.5))


@dataclass
class Curve:
    """Per read-out mean and CI (None where undefined) of one metric, in the report's unit."""

    metric: str
    mean: list[float | None]
    lo: list[float | None]
    hi: list[float | None]


@dataclass
class Convergence:
    """Layers to convergence: decoder layers applied before a token's first read-out (embed or block)
    with KL(final‖layer) below the threshold and top-1 agreement; mean over converged tokens."""

    threshold: float
    mean: float | None
    lo: float | None
    hi: float | None
    never_fraction: float


@dataclass
class ModelLens:
    name: str
    family: str
    n_layers: int
    engram_layers: list[int]
    readouts: list[ReadOut]
    curves: dict[str, Curve]
    convergence: Convergence
    n_sequences: int
    n_tokens: int
    n_gold_tokens: int
    final_check: float | None  # max |lens final logits - model logits| on the first chunk
    seq: SeqSums = field(repr=False)


@dataclass
class PairedCurve:
    metric: str
    labels: list[str]
    delta: list[float | None]
    lo: list[float | None]
    hi: list[float | None]
    area: float | None
    area_lo: float | None
    area_hi: float | None


@dataclass
class Paired:
    """A - B on identical token streams, paired bootstrap over sequences; area = trapezoid over depth."""

    a: str
    b: str
    curves: dict[str, PairedCurve]
    convergence_delta: float | None
    convergence_lo: float | None
    convergence_hi: float | None


# -------------------------------------------------------------------------------- summaries
def _scale(metric: str, bits: bool) -> float:
    return 1.0 / LN2 if bits and metric in NATS_METRICS else 1.0


def _nums(x: np.ndarray) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in np.asarray(x, dtype=np.float64)]


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    d = den.sum()
    return num.sum(0) / d if d > 0 else np.full(num.shape[1:], np.nan)


def _ratio_ci(num: np.ndarray, den: np.ndarray, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``stats.ratio_bootstrap_ci``; NaN (no CI) with ``n_boot == 0``."""
    from engram_cli.analysis.stats import ratio_bootstrap_ci

    if n_boot <= 0:
        k = 1 if num.ndim == 1 else num.shape[1]
        return np.full(k, np.nan), np.full(k, np.nan)
    return ratio_bootstrap_ci(num, den, n_boot=n_boot, seed=seed)


def summarise(name: str, family: str, n_layers: int, engram_layers: list[int], readouts: list[ReadOut], seq: SeqSums, *,
              bits: bool, threshold: float, n_boot: int, seed: int, final_check: float | None) -> ModelLens:
    """Means and bootstrap CIs (over sequences) of every metric per read-out."""
    curves = {}
    for m, metric in enumerate(METRICS):
        den = seq.n_gold if metric in GOLD_METRICS else seq.n_tokens
        num = seq.sums[:, :, m]
        lo, hi = _ratio_ci(num, den, n_boot, seed)
        k = _scale(metric, bits)
        curves[metric] = Curve(metric, _nums(_ratio(num, den) * k), _nums(lo * k), _nums(hi * k))
    conv_mean = _ratio(seq.conv_sum[:, None], seq.conv_n)
    clo, chi = _ratio_ci(seq.conv_sum, seq.conv_n, n_boot, seed)
    total = seq.n_tokens.sum()
    never = float(1 - seq.conv_n.sum() / total) if total else 0.0
    conv = Convergence(threshold, _nums(conv_mean)[0], _nums(clo)[0], _nums(chi)[0], never)
    return ModelLens(name, family, n_layers, engram_layers, readouts, curves, conv, int(seq.sums.shape[0]),
                     int(total), int(seq.n_gold.sum()), final_check, seq)


def trapezoid_weights(x: Sequence[float]) -> np.ndarray:
    """Weights ``w`` with ``w @ y == numpy.trapezoid(y, x)`` (x increasing)."""
    x = np.asarray(x, dtype=np.float64)
    w = np.zeros_like(x)
    if x.size > 1:
        d = np.diff(x)
        w[:-1] += d / 2
        w[1:] += d / 2
    return w


def paired(a: ModelLens, b: ModelLens, *, bits: bool, n_boot: int, seed: int) -> Paired:
    """Delta curves A - B on the read-outs both have (same sequences and positions)."""
    from engram_cli.analysis.stats import paired_bootstrap_ci

    kb = {(r.point, r.layer): j for j, r in enumerate(b.readouts)}
    common = [(i, kb[(r.point, r.layer)]) for i, r in enumerate(a.readouts) if (r.point, r.layer) in kb]
    ia, ib = [i for i, _ in common], [j for _, j in common]
    labels = [a.readouts[i].label for i in ia]
    w = trapezoid_weights([a.readouts[i].depth for i in ia])
    curves = {}
    for m, metric in enumerate(METRICS):
        den = a.seq.n_gold if metric in GOLD_METRICS else a.seq.n_tokens
        num = a.seq.sums[:, ia, m] - b.seq.sums[:, ib, m]
        k = _scale(metric, bits)
        lo, hi = _ratio_ci(num, den, n_boot, seed)
        alo, ahi = _ratio_ci(num @ w, den, n_boot, seed)
        area = _ratio((num @ w)[:, None], den)
        curves[metric] = PairedCurve(metric, labels, _nums(_ratio(num, den) * k), _nums(lo * k), _nums(hi * k),
                                     _nums(area * k)[0], _nums(alo * k)[0], _nums(ahi * k)[0])
    # layers to convergence: difference of the pooled means (tokens that never converge are left out
    # of each model's mean), paired bootstrap over sequences
    def conv_delta(ix: np.ndarray, _: np.ndarray) -> float | None:
        i = ix.astype(np.int64)
        na, nb = a.seq.conv_n[i].sum(), b.seq.conv_n[i].sum()
        return float(a.seq.conv_sum[i].sum() / na - b.seq.conv_sum[i].sum() / nb) if na > 0 and nb > 0 else None

    units = np.arange(a.seq.conv_n.shape[0], dtype=np.float64)
    cd = conv_delta(units, units)
    ci = paired_bootstrap_ci(units, units, conv_delta, n_boot=n_boot, seed=seed) if n_boot > 0 else None
    cl, ch = (ci.lo, ci.hi) if ci is not None else (None, None)
    return Paired(a.name, b.name, curves, cd, cl, ch)
