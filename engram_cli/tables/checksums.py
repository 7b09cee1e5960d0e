"""Per-file checksums: the ``--checksum`` choices, streaming hashers and whole-file digests.

A manifest entry records ``"checksum": "xxh3-128"`` with the digest under ``"xxh3_128"``
(the default), or ``"checksum": "sha256"`` with ``"sha256"``; an entry without
``"checksum"`` (manifests written before the option existed) is xxh3-128.
"""

from __future__ import annotations

import hashlib
from enum import Enum
from pathlib import Path

import xxhash

from engram_cli.errors import UsageError


class Checksum(str, Enum):
    """``--checksum``: xxh3 (xxh3-128, fast) or sha256."""

    xxh3 = "xxh3"
    sha256 = "sha256"

    @property
    def algorithm(self) -> str:
        return ALGORITHMS[self.value][0]


# --checksum choice -> (algorithm name recorded per file, manifest key of the hex digest)
ALGORITHMS = {"xxh3": ("xxh3-128", "xxh3_128"), "sha256": ("sha256", "sha256")}
DIGEST_KEY = {algo: key for algo, key in ALGORITHMS.values()}


def checksum_algorithm(choice: str | Checksum) -> str:
    """``xxh3``/``sha256`` (the CLI choice) or an algorithm name -> the recorded algorithm name."""
    choice = choice.value if isinstance(choice, Checksum) else choice
    if choice in ALGORITHMS:
        return ALGORITHMS[choice][0]
    if choice in DIGEST_KEY:
        return choice
    raise UsageError(f"unknown --checksum {choice!r}", hint="xxh3 (xxh3-128, the default) or sha256")


def new_hasher(algorithm: str):
    """A streaming hasher (``update``/``hexdigest``) for a recorded algorithm name."""
    algorithm = checksum_algorithm(algorithm)
    return xxhash.xxh3_128() if algorithm == "xxh3-128" else hashlib.sha256()


def file_digest(path: Path, block: int = 16 * 2**20, tick=None, algorithm: str = "xxh3-128") -> str:
    """Hex digest of a whole file, read in ``block``-byte pieces (``tick(n)`` after each)."""
    h = new_hasher(algorithm)
    mv = memoryview(bytearray(block))
    with open(path, "rb", buffering=0) as fh:
        while True:
            n = fh.readinto(mv)
            if not n:
                break
            h.update(mv[:n])
            if tick:
                tick(n)
    return h.hexdigest()
