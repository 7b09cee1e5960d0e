"""Demo v2 training-time measurements: perplexity, copy accuracy and the bigram bar to beat.

These run inside the training script (models/ may not import analysis/); the ablation and the
suites are measured afterwards with ``engram ablate``. The interpolated bigram is the baseline the
issue sets: held-out perplexity of the model must be clearly below it on the same tokens.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def perplexity(model, tok, texts: Sequence[str], batch: int = 8) -> float:
    """Perplexity over ``texts`` (each scored from its second token, as ``engram ablate`` does)."""
    import torch
    import torch.nn.functional as F

    seqs = [tok.encode(t, add_special_tokens=False).ids for t in texts]
    nll, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for b in range(0, len(seqs), batch):
            group = [s for s in seqs[b:b + batch] if len(s) >= 2]
            width = max(len(s) for s in group)
            x = torch.zeros(len(group), width, dtype=torch.long)
            mask = torch.zeros(len(group), width, dtype=torch.bool)
            for i, s in enumerate(group):
                x[i, :len(s)] = torch.tensor(s)
                mask[i, :len(s) - 1] = True
            logits = model(x).logits[:, :-1]
            tgt = x[:, 1:]
            lp = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tgt.reshape(-1), reduction="none")
            nll += float(lp[mask[:, :-1].reshape(-1)].sum())
            count += int(mask[:, :-1].sum())
    return math.exp(nll / max(1, count))


def copy_accuracy(model, seqs: list[list[int]], batch: int = 16) -> float:
    """Greedy next-token accuracy on the second copy of ``S + newline + S`` (its first token excluded)."""
    import torch

    hits, total = 0, 0
    model.eval()
    with torch.no_grad():
        for b in range(0, len(seqs), batch):
            x = torch.tensor(seqs[b:b + batch])
            half = (x.shape[1] - 1) // 2
            pred = model(x).logits.argmax(-1)
            # position p predicts token p+1; the second copy's tokens 2.. are at half+2 .. 2*half
            p = pred[:, half + 1:2 * half]
            t = x[:, half + 2:2 * half + 1]
            hits += int((p == t).sum())
            total += t.numel()
    return hits / max(1, total)


def bigram_perplexity(train: np.ndarray, tests: list[list[int]], vocab: int, dev_fraction: float = 0.05) -> dict:
    """Interpolated bigram ``lam * c(v,w)/c(v) + (1 - lam) * p1(w)`` (add-one unigram ``p1``).

    ``lam`` is chosen on the last ``dev_fraction`` of ``train`` (fitted on the rest), then the
    model is refitted on all of ``train`` and scored on ``tests`` (from each text's second token).
    """
    cut = int(len(train) * (1 - dev_fraction))
    fit, dev = train[:cut], train[cut:]
    best = min((_bigram_nll(fit, [dev.tolist()], vocab, lam), lam) for lam in np.linspace(0.05, 0.95, 19))
    lam = float(best[1])
    nll, n = _bigram_nll(train, tests, vocab, lam, total=True)
    return {"perplexity": math.exp(nll / max(1, n)), "lambda": round(lam, 3), "train_tokens": int(len(train))}


def _bigram_nll(train: np.ndarray, tests: list[list[int]], vocab: int, lam: float, total: bool = False):
    uni = np.bincount(train, minlength=vocab).astype(np.float64)
    p1 = (uni + 1.0) / (uni.sum() + vocab)
    first = np.bincount(train[:-1], minlength=vocab).astype(np.float64)  # c(v): v as the first of a pair
    keys = train[:-1] * vocab + train[1:]
    uk, uc = np.unique(keys, return_counts=True)
    nll, n = 0.0, 0
    for seq in tests:
        s = np.asarray(seq, dtype=np.int64)
        if len(s) < 2:
            continue
        q = s[:-1] * vocab + s[1:]
        pos = np.searchsorted(uk, q)
        pos = np.minimum(pos, len(uk) - 1)
        c = np.where(uk[pos] == q, uc[pos], 0).astype(np.float64)
        ctx = first[s[:-1]]
        p2 = np.where(ctx > 0, c / np.maximum(ctx, 1.0), 0.0)
        p = lam * p2 + (1 - lam) * p1[s[1:]]
        nll -= float(np.log(p).sum())
        n += len(s) - 1
    return (nll, n) if total else nll / max(1, n)
