"""Prior-frequency matching of multiple-choice distractors, fixed before any v2 training.

The prior is a unigram model (add-one smoothed) of the v2 training text tokenised with the
CURRENT bundled demo model's tokenizer (GPT-2's BPE, ``engram_cli/data/demo-model``); a choice's
prior is the summed log-probability of its tokens, as the evaluator scores the continuation
(leading space included). Distractors are drawn at random from the answer's bin of the pool
sorted by that prior, so a model that only knows word frequencies scores chance
(:func:`prior_accuracy` measures it both ways; the suite manifest records it).
Nothing here looks at any trained model's results.
"""

from __future__ import annotations

import random
from typing import Sequence

import numpy as np


class UnigramPrior:
    """Add-one-smoothed unigram log-probabilities over a tokenizer's ids."""

    def __init__(self, tokenizer, texts: Sequence[str]):
        self.tok = tokenizer
        vocab = tokenizer.get_vocab_size()
        counts = np.zeros(vocab, dtype=np.float64)
        for enc in tokenizer.encode_batch(list(texts), add_special_tokens=False):
            np.add.at(counts, np.asarray(enc.ids, dtype=np.int64), 1.0)
        self.total_tokens = int(counts.sum())
        self.logp = np.log((counts + 1.0) / (counts.sum() + vocab))
        self._cache: dict[str, float] = {}

    def score(self, continuation: str) -> float:
        """Summed log-probability of the continuation's tokens."""
        if continuation not in self._cache:
            ids = self.tok.encode(continuation, add_special_tokens=False).ids
            self._cache[continuation] = float(self.logp[np.asarray(ids, dtype=np.int64)].sum())
        return self._cache[continuation]


def matched_distractors(answer: str, pool: Sequence[str], score, rng: random.Random, k: int = 3,
                        exclude: Sequence[str] = (), bin_size: int = 8) -> list[str]:
    """``k`` distractors drawn at random from the answer's prior bin.

    The pool (with the answer) is sorted by prior (``score(value)``, the value as a continuation)
    and cut into consecutive bins of ``bin_size``; distractors come from the answer's bin (widened
    to neighbouring bins when ``exclude``, e.g. other words of the passage, leaves fewer than
    ``k``). Within a bin the answer is just another member, so neither "pick the most frequent"
    nor "pick the rarest" beats chance (:func:`prior_accuracy` measures both).
    """
    values = sorted(set(pool) | {answer}, key=lambda v: (score(v), v))
    banned = set(exclude) | {answer}
    b = values.index(answer) // bin_size
    n_bins = (len(values) + bin_size - 1) // bin_size
    for width in range(n_bins):
        lo, hi = max(0, b - width) * bin_size, min(n_bins, b + width + 1) * bin_size
        cands = [v for v in values[lo:hi] if v not in banned]
        if len(cands) >= k:
            return rng.sample(cands, k)
    raise ValueError(f"pool too small for {k} distractors of {answer!r}")


def mc_choices(answer: str, distractors: list[str], rng: random.Random, fmt: str = " {}") -> tuple[list[str], int]:
    choices = distractors + [answer]
    rng.shuffle(choices)
    return [fmt.format(c) for c in choices], choices.index(answer)


def prior_accuracy(items: Sequence[dict], prior: UnigramPrior, pick: str = "max") -> float:
    """Expected accuracy of choosing by unigram prior alone (``max``: the most frequent choice,
    ``min``: the rarest); a tie splits the credit."""
    if not items:
        return float("nan")
    hits = 0.0
    for it in items:
        scores = [prior.score(c) for c in it["choices"]]
        best = max(scores) if pick == "max" else min(scores)
        if scores[it["gold"]] == best:
            hits += 1.0 / sum(1 for s in scores if s == best)
    return hits / len(items)
