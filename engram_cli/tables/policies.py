"""Named shard policies: which global rows each rank holds (pure functions).

- ``vllm-head``: ``ceil(C/P)`` contiguous hash columns per rank (C = hash heads, 24 for V4.1);
  its rows are the prefix-sum interval of those heads. P leaving a rank without heads is
  rejected. With EDP, shard index = ``tp_rank * edp + edp_rank`` over ``P * edp`` shards.
- ``sglang-floor``: rows ``[N*r//P, N*(r+1)//P)``.
- ``ref-ceil``: ``part = ceil(N/P)``, rows ``[r*part, min(N, (r+1)*part))``; the last rank's
  tensor is padded to ``part`` rows (DeepSeek's reference ``ParallelEngramEmbedding``).
- ``megatron-ep``: every head table split separately: ``base = R//P``, ``rem = R%P``,
  ``start = r*base + min(r, rem)``, ``count = base + (r < rem)`` (Megatron EP).

Padding rows after the last head (Qwen4-Exp pads the table to a divisor) follow each engine's
rule (:data:`PADDING`, formats.md 7.2): vLLM's last head shard ends at the sum of primes and
Megatron drops them (no hash id reaches them); the row-based policies keep them, as the
reference does. Every policy covers every row below the sum of primes exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass

from engram_cli.errors import UsageError
from engram_cli.tables.model import Geometry

POLICIES = ("vllm-head", "sglang-floor", "ref-ceil", "megatron-ep")
HEAD_POLICIES = ("vllm-head", "megatron-ep")
#: What each policy's engine does with rows beyond the sum of primes (recorded in the manifest).
PADDING = {"vllm-head": "dropped", "megatron-ep": "dropped", "sglang-floor": "kept", "ref-ceil": "kept"}
MAX_RANKS = 65_536


@dataclass(frozen=True)
class Piece:
    """Global rows ``[start, stop)``; ``head`` set when the piece is (part of) one head table."""

    start: int
    stop: int
    head: int | None = None

    @property
    def rows(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class RankRange:
    rank: int
    pieces: tuple[Piece, ...]
    heads: tuple[int, int] | None = None  # [h0, h1) hash columns, when the policy assigns heads
    pad_rows: int = 0  # zero rows appended to the rank's tensor (ref-ceil)
    tp_rank: int | None = None
    edp_rank: int | None = None

    @property
    def start(self) -> int:
        return self.pieces[0].start if self.pieces else 0

    @property
    def stop(self) -> int:
        return self.pieces[-1].stop if self.pieces else 0

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.pieces)

    @property
    def contiguous(self) -> bool:
        return all(a.stop == b.start for a, b in zip(self.pieces, self.pieces[1:]))

    def to_dict(self) -> dict:
        d = {"rank": self.rank, "rows": [self.start, self.stop] if self.contiguous else None, "n_rows": self.rows,
             "heads": list(self.heads) if self.heads else None, "pad_rows": self.pad_rows}
        if not self.contiguous or (self.pieces and self.pieces[0].head is not None and self.heads is None):
            d["pieces"] = [[p.start, p.stop, p.head] for p in self.pieces]
        if self.tp_rank is not None:
            d["tp_rank"], d["edp_rank"] = self.tp_rank, self.edp_rank
        return d


def valid_head_shards(n_heads: int) -> list[int]:
    """Shard counts that leave no rank without hash heads under ``vllm-head``."""
    return [p for p in range(1, n_heads + 1) if (p - 1) * (-(-n_heads // p)) < n_heads]


def ranks_for(policy: str, geo: Geometry, world: int, *, edp: int = 1) -> list[RankRange]:
    """Row ranges of every rank of one table under ``policy``."""
    if world < 1 or edp < 1:
        raise UsageError("--ranks and --edp must be at least 1")
    if world * edp > MAX_RANKS:
        raise UsageError(f"--ranks {world} x --edp {edp} is more than {MAX_RANKS:,} ranks", hint="a sanity limit; no engine shards that wide")
    if edp != 1 and policy != "vllm-head":
        raise UsageError("--edp applies to the vllm-head policy only")
    n = geo.rows
    if policy == "sglang-floor":
        return [RankRange(r, (Piece(n * r // world, n * (r + 1) // world),)) for r in range(world)]
    if policy == "ref-ceil":
        part = -(-n // world)
        out = []
        for r in range(world):
            a, b = min(n, r * part), min(n, (r + 1) * part)
            out.append(RankRange(r, (Piece(a, b),), pad_rows=part - (b - a)))
        return out
    if not geo.head_sizes:
        raise UsageError(f"policy {policy} needs the hash-head sizes", hint="pass --layout DIR, --config or --preset")
    offs, sizes = geo.offsets, geo.head_sizes
    c = len(sizes)
    end_of_heads = offs[-1] + sizes[-1]
    if policy == "vllm-head":
        shards = world * edp
        part = -(-c // shards)
        if (shards - 1) * part >= c:
            raise UsageError(
                f"vllm-head with {shards} shards leaves ranks without hash heads ({c} heads, {part} per rank)",
                hint="valid shard counts: " + ", ".join(map(str, valid_head_shards(c))),
            )
        out = []
        for tp in range(world):
            for dp in range(edp):
                r = tp * edp + dp
                h0, h1 = r * part, min(c, (r + 1) * part)
                a = offs[h0]
                b = offs[h1] if h1 < c else end_of_heads  # padding rows dropped (vLLM)
                out.append(RankRange(r, (Piece(a, b),), heads=(h0, h1),
                                     tp_rank=tp if edp > 1 else None, edp_rank=dp if edp > 1 else None))
        return out
    if policy == "megatron-ep":
        out = []
        for r in range(world):
            pieces = []
            for h, (o, size) in enumerate(zip(offs, sizes)):
                base, rem = divmod(size, world)
                s = r * base + min(r, rem)
                cnt = base + (1 if r < rem else 0)
                pieces.append(Piece(o + s, o + s + cnt, h))
            out.append(RankRange(r, tuple(pieces)))  # padding rows dropped (Megatron)
        return out
    raise UsageError(f"unknown policy {policy!r}", hint="choose one of " + ", ".join(POLICIES))


@dataclass(frozen=True)
class LayerRanges:
    """The rank ranges of one table."""

    layer: int
    ranks: tuple[RankRange, ...]

    def to_dict(self) -> dict:
        return {"layer": self.layer, "ranks": [r.to_dict() for r in self.ranks]}


@dataclass(frozen=True)
class RangeSet:
    """Row ranges of every rank of every table under one policy (what ``shard ranges`` prints)."""

    policy: str
    world: int
    edp: int
    layers: tuple[LayerRanges, ...]
    source: str = ""  # where the geometry came from, for printing

    def to_list(self) -> list[dict]:
        return [lr.to_dict() for lr in self.layers]


def layout_ranges(layout, policy: str, world: int, edp: int = 1, source: str = "") -> RangeSet:
    """Ranges of every table of a layout (row counts from its ``num_embeddings``), no checkpoint needed."""
    layers = []
    for i, lid in enumerate(layout.tensor_ids):  # tables are named by the tensor index (layers.{i})
        g = Geometry(int(lid), tuple(int(p) for p in layout.primes[i]), int(layout.num_embeddings[i]))
        layers.append(LayerRanges(int(lid), tuple(ranks_for(policy, g, world, edp=edp))))
    return RangeSet(policy, world, edp, tuple(layers), source)
