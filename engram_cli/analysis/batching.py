"""Deterministic batching of token sequences, shared by the evaluator and the analyses.

Sequences are right-padded (causal models: a real position never sees a later pad) with a
boolean mask of real tokens; the order is stable (ties keep input order), so two models or two
conditions fed the same list see identical batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence


@dataclass(frozen=True)
class Batch:
    """One padded batch: ``ids`` / ``mask`` ``[B, W]``, and which input sequences it holds."""

    indices: list[int]
    ids: Any
    mask: Any
    lengths: list[int]


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, device: Any = "cpu") -> tuple[Any, Any]:
    """Right-padded ``ids`` (long) and ``mask`` (bool, True at real tokens), both ``[B, max_len]``."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, :len(s)] = True
    return ids.to(device), mask.to(device)


def length_order(lengths: Sequence[int]) -> list[int]:
    """Indices by decreasing length, ties in input order (a stable sort)."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


def fixed_batches(lengths: Sequence[int], batch_size: int, *, sort: bool = True) -> list[list[int]]:
    """Consecutive groups of ``batch_size`` indices, longest first when ``sort`` (less padding)."""
    order = length_order(lengths) if sort else list(range(len(lengths)))
    size = max(1, int(batch_size))
    return [order[b:b + size] for b in range(0, len(order), size)]


def budget_groups(rows: Sequence[int], batch_size: int, max_rows: int) -> list[list[int]]:
    """Groups in input order of at most ``batch_size`` items whose ``rows`` sum to at most ``max_rows``.

    An item larger than ``max_rows`` forms a group of its own.
    """
    groups: list[list[int]] = []
    total = 0
    for i, r in enumerate(rows):
        r = max(1, int(r))
        if groups and len(groups[-1]) < batch_size and total + r <= max_rows:
            groups[-1].append(i)
            total += r
        else:
            groups.append([i])
            total = r
    return groups


def iter_batches(seqs: Sequence[Sequence[int]], batch_size: int, pad_id: int, device: Any = "cpu", *,
                 sort: bool = True, max_tokens: int | None = None) -> Iterator[Batch]:
    """Padded batches of ``seqs``: fixed size, or (``max_tokens``) also bounded by batch x width."""
    if max_tokens is None:
        groups = fixed_batches([len(s) for s in seqs], batch_size, sort=sort)
    else:
        order = length_order([len(s) for s in seqs]) if sort else list(range(len(seqs)))
        groups, width = [], 0
        for i in order:
            w = max(width, len(seqs[i]))
            if groups and len(groups[-1]) < batch_size and (len(groups[-1]) + 1) * w <= max_tokens:
                groups[-1].append(i)
                width = w
            else:
                groups.append([i])
                width = len(seqs[i])
    for g in groups:
        ids, mask = pad_batch([seqs[i] for i in g], pad_id, device)
        yield Batch(indices=list(g), ids=ids, mask=mask, lengths=[len(seqs[i]) for i in g])
