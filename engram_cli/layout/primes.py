"""Prime head sizes for the hash variants (sympy does the primality work, imported only when a
prime is searched: it costs ~0.3 s at import)."""

from __future__ import annotations

from typing import Sequence


def distinct_primes(
    n_layers: int, max_ngram_size: int, n_heads: int, vocab_bases: Sequence[int]
) -> list[list[int]]:
    """DeepSeek rule: per (layer, order, head), the smallest unused prime above a cursor.

    One used-set spans every layer and order; the cursor restarts at ``base - 1`` for each
    (layer, order) and advances to each prime taken. Returns, per layer, the primes in flat
    order-major column order.
    """
    if len(vocab_bases) != max_ngram_size - 1:
        raise ValueError(f"need {max_ngram_size - 1} vocab bases (one per n-gram order), got {len(vocab_bases)}")
    from sympy import nextprime

    used: set[int] = set()
    layers: list[list[int]] = []
    for _ in range(n_layers):
        flat: list[int] = []
        for order_index in range(max_ngram_size - 1):
            cursor = int(vocab_bases[order_index]) - 1
            for _ in range(n_heads):
                candidate = int(nextprime(cursor))
                while candidate in used:
                    candidate = int(nextprime(candidate))
                used.add(candidate)
                flat.append(candidate)
                cursor = candidate
        layers.append(flat)
    return layers


def consecutive_primes_from(base: int, start_index: int, count: int) -> list[int]:
    """Qwen4-Exp rule: primes number ``start_index+1 .. start_index+count`` counted from ``base``.

    The k-th prime (1-based) after ``base - 1``; head g of PLE layer l takes index
    ``l * heads + g``.
    """
    from sympy import nextprime

    primes: list[int] = []
    p = int(base) - 1
    for _ in range(start_index):
        p = int(nextprime(p))
    for _ in range(count):
        p = int(nextprime(p))
        primes.append(p)
    return primes
