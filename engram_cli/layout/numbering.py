"""Layer numbering: the config id, hash-seed id and tensor-name index of each Engram layer.

Families number their Engram layers differently (formats.md 7.2); a layout keeps all three so
that every table reader and writer matches tensors by the tensor-name index, and the hash is
seeded by the seed id, whatever the config lists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from engram_cli.errors import BadInputError

#: How a family numbers its Engram layers (formats.md 7.2): config id -> (hash-seed id, tensor-name index).
#: ``deepseek``: one 0-based decoder index for all three; ``qwen4-exp``: 1-based ``ple_layer_ids``,
#: tensors ``layers.{id - 1}``, seed = position in ``ple_layer_ids``; ``megatron``: 1-based global
#: layer numbers feed the seed, tensors ``layers.{id - 1}``.
LAYER_NUMBERINGS = ("deepseek", "qwen4-exp", "megatron")

@dataclass(frozen=True)
class LayerIds:
    """The three ids of one Engram layer: what the config lists, what seeds the hash, what names its tensors."""

    config_id: int
    seed_id: int
    tensor_index: int

    def label(self) -> str:
        if self.config_id == self.seed_id == self.tensor_index:
            return str(self.config_id)
        return f"{self.config_id} (seed {self.seed_id}, tensor {self.tensor_index})"

    def to_dict(self) -> dict[str, int]:
        return {"config_id": self.config_id, "seed_id": self.seed_id, "tensor_index": self.tensor_index}


def numbered_ids(numbering: str, config_ids: Sequence[int], order: Sequence[int] | None = None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(seed ids, tensor indices) of ``config_ids`` under a family's numbering.

    ``order``: the config's own list (Qwen4-Exp seeds by position in ``ple_layer_ids`` as written)."""
    ids = [int(x) for x in config_ids]
    if numbering == "deepseek":
        return tuple(ids), tuple(ids)
    if numbering == "qwen4-exp":
        listed = [int(x) for x in (order if order is not None else ids)]
        return tuple(listed.index(i) for i in ids), tuple(i - 1 for i in ids)
    if numbering == "megatron":
        return tuple(ids), tuple(i - 1 for i in ids)
    raise BadInputError(f"unknown layer numbering {numbering!r}", hint=f"one of {', '.join(LAYER_NUMBERINGS)}")
