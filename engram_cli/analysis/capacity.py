"""Capacity ablation: re-hash every Engram head into K rows at inference.

The Engram lookup reads row ``offset[head] + local`` where ``local`` is the head-local hash id
(``0 <= local < prime[head]``). With ``rows=K`` the hook rewrites the lookup to
``offset[head] + (local mod K)``, so each head keeps only its first K rows and unrelated n-grams
share them. ``K >= prime`` changes nothing (bit for bit); ``K = 1`` makes every position of a
head read the same row. A sweep over K asks whether the table memorises at all: if retention
does not fall as K shrinks, the rows carry no n-gram-specific information.

Works on models whose Engram embedding takes head-local ids and holds an ``offsets`` buffer
(the project's reference model, ``MultiHeadEmbedding``).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from engram_cli.errors import UsageError


def parse_rows(values: list[str] | None) -> list[int]:
    """``--rows`` values (repeatable, each a comma list) -> sorted distinct K >= 1."""
    out: set[int] = set()
    for v in values or []:
        for part in str(v).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                k = int(part)
            except ValueError:
                raise UsageError(f"--rows must be positive integers, got {part!r}") from None
            if k < 1:
                raise UsageError(f"--rows must be positive integers, got {k}")
            out.add(k)
    return sorted(out)


def _embedding(view, layer: int) -> Any:
    emb = view.engram_embeddings.get(layer) if view.engram_embeddings else None
    if emb is None or not hasattr(emb, "offsets"):
        raise UsageError(f"--mode capacity needs head-local Engram ids; not supported for {view.family} models",
                         hint="the project's reference model (EngramForCausalLM) supports it")
    return emb


def head_sizes(view, layer: int) -> list[int]:
    """Rows of every head of ``layer``'s table (the primes of the layout)."""
    emb = _embedding(view, layer)
    offs = [int(x) for x in emb.offsets.tolist()]
    total = int(emb.embedding.num_embeddings)
    return [b - a for a, b in zip(offs, offs[1:] + [total])]


@contextlib.contextmanager
def capacity_rows(view, layers: list[int], rows: int) -> Iterator[None]:
    """While active, head-local ids become ``local mod rows`` at ``layers``."""
    if rows < 1:
        raise UsageError(f"--rows must be positive, got {rows}")
    mods = [_embedding(view, layer) for layer in layers]
    handles = []

    def pre_hook(module, args):
        return (args[0] % rows,) + tuple(args[1:])

    try:
        for m in mods:
            handles.append(m.register_forward_pre_hook(pre_hook))
        yield
    finally:
        for h in handles:
            h.remove()
