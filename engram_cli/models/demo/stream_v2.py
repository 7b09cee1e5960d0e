"""Demo v2 training stream: real text, facts, invented-entity reading and synthetic copy data.

An epoch is a pure function of ``(corpus, tokenizer, epoch, config)``: the text documents of
``corpus_v2.epoch_documents`` plus copy documents made in token space, shuffled with a seeded
``random.Random`` and joined with ``<|endoftext|>``. Every position is trained; the class of a
position (``OTHER``, ``ANSWER``, ``COPY``) only labels it for the logged losses.

Copy data (what makes induction heads form at small scale): a span ``S`` then ``"\\n"`` then
``S`` again, where ``S`` is either 8–40 random token ids or a random 8–40-token slice of real
training text; the second copy is labelled ``COPY``. :func:`copy_probe` builds the held-out
random sequences on which copy accuracy is measured.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from engram_cli.models.demo.corpus_v2 import ANSWER, COPY, OTHER, epoch_documents

EOS = "<|endoftext|>"


def encode_docs(tok, docs: list[list[tuple[str, int]]]) -> list[tuple[list[int], list[int]]]:
    """Token ids and position classes of each ``[(text, class)]`` document."""
    flat = [(d, k, text, cls) for d, doc in enumerate(docs) for k, (text, cls) in enumerate(doc) if text]
    encs = tok.encode_batch([t for _, _, t, _ in flat], add_special_tokens=False)
    out: list[tuple[list[int], list[int]]] = [([], []) for _ in docs]
    for (d, _, _, cls), enc in zip(flat, encs):
        out[d][0].extend(enc.ids)
        out[d][1].extend([cls] * len(enc.ids))
    return out


def copy_documents(rng: random.Random, n: int, vocab_size: int, newline: int, real: list[list[int]],
                   min_len: int = 8, max_len: int = 40) -> list[tuple[list[int], list[int]]]:
    """``n`` copy documents: half random ids, half slices of real text (``real``: token lists)."""
    out = []
    pool = [r for r in real if len(r) > max_len]
    for i in range(n):
        length = rng.randint(min_len, max_len)
        if i % 2 == 0 or not pool:
            span = [rng.randrange(1, vocab_size) for _ in range(length)]
        else:
            src = pool[rng.randrange(len(pool))]
            start = rng.randrange(len(src) - length)
            span = src[start:start + length]
        out.append((span + [newline] + span, [OTHER] * (length + 1) + [COPY] * length))
    return out


def copy_probe(seed: int, n: int, vocab_size: int, newline: int, length: int = 30, first: int = 1) -> list[list[int]]:
    """Held-out random copy sequences ``S + newline + S``, ids in ``[first, vocab_size)`` (a seed never used for training data)."""
    rng = random.Random(seed)
    seqs = []
    for _ in range(n):
        span = [rng.randrange(first, vocab_size) for _ in range(length)]
        seqs.append(span + [newline] + span)
    return seqs


def epoch_stream(tok, corpus, epoch: int, cfg: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(ids int64, classes int8)`` of one epoch."""
    docs = encode_docs(tok, epoch_documents(corpus, epoch, cfg.fact_repeats, cfg.reading_items))
    newline = tok.encode("\n", add_special_tokens=False).ids[0]
    real = [ids for ids, _ in docs[:len(corpus.train_text)]]
    rng = random.Random(cfg.seed * 7 + epoch)
    docs += copy_documents(rng, cfg.copy_docs, tok.get_vocab_size(), newline, real)
    rng.shuffle(docs)
    eos = tok.token_to_id(EOS)
    ids: list[int] = []
    cls: list[int] = []
    for i, c in docs:
        ids += i + [eos]
        cls += c + [OTHER]
    return np.asarray(ids, dtype=np.int64), np.asarray(cls, dtype=np.int8)


def class_counts(cls: np.ndarray) -> dict[str, int]:
    return {"tokens": int(cls.size), "answer": int((cls == ANSWER).sum()), "copy": int((cls == COPY).sum())}
