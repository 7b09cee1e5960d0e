"""Checksums of gathered bytes against a numpy reference (a wrong-row bug must not pass as fast)."""

from __future__ import annotations

import numpy as np

from engram_cli.errors import VerificationError


def checksum(buf: np.ndarray) -> int:
    """xxh3-64 of the bytes of a C-contiguous array."""
    import xxhash

    return xxhash.xxh3_64_intdigest(memoryview(np.ascontiguousarray(buf)).cast("B"))


def verify_rows(out: np.ndarray, table: np.ndarray, idx: np.ndarray, what: str) -> None:
    """Raise VerificationError unless ``out`` holds exactly ``table[idx]`` (numpy fancy indexing)."""
    if checksum(out) != checksum(table[idx]):
        raise VerificationError(f"{what}: gathered rows differ from the numpy reference ({idx.size} rows)")


def verify_bytes(out: np.ndarray, ref: np.ndarray, what: str) -> None:
    """Raise VerificationError unless the two buffers hold the same bytes."""
    if checksum(out) != checksum(ref):
        raise VerificationError(f"{what}: copied bytes differ from the source")
