"""Hash a long token stream in bounded chunks, bit-identical to hashing it whole.

An n-gram id at position ``t`` depends on tokens ``t-(n-1) .. t`` only (plus the sequence
starts, dead tokens and EOS resets inside that window), so a chunk ``[a, b)`` hashed together
with its ``max_ngram_size - 1`` preceding tokens gives exactly the ids the whole stream would.
Memory is one chunk of ids whatever the stream length.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from engram_cli.layout.hashing import HashIds
    from engram_cli.layout.layout import EngramLayout

DEFAULT_CHUNK = 1 << 16


def hash_in_chunks(layout: EngramLayout, raw: np.ndarray, *, seq_starts: Iterable[int] | None = None,
                   dead_mask: np.ndarray | None = None, chunk: int = DEFAULT_CHUNK,
                   **hash_kwargs) -> Iterator[tuple[int, HashIds]]:
    """Yield ``(start, ids)`` for consecutive chunks of the 1-D stream ``raw``; ``ids`` (shaped
    as for 1-D input: ``compressed [tokens]``, ``global_ [tokens, layers, columns]``) covers
    positions ``start .. start + len(ids.compressed)``."""
    raw = np.asarray(raw, dtype=np.int64)
    n = raw.shape[0]
    ctx = layout.max_ngram_size - 1
    starts = np.asarray(sorted(set(int(s) for s in seq_starts or ())), dtype=np.int64)
    for a in range(0, n, max(1, chunk)):
        b = min(n, a + chunk)
        w0 = max(0, a - ctx)
        local = starts[(starts >= w0) & (starts < b)] - w0
        ids = layout.hash(raw[w0:b], seq_starts=local.tolist() or None,
                          dead_mask=None if dead_mask is None else dead_mask[w0:b], **hash_kwargs)
        yield a, _drop_context(ids, a - w0)


def _drop_context(ids: HashIds, k: int) -> HashIds:
    if k == 0:
        return ids
    from dataclasses import replace

    return replace(ids, compressed=ids.compressed[k:], global_=ids.global_[k:])  # 1-D input: tokens first
