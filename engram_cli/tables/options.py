"""The options of one ``engram shard`` conversion: enums for every choice and one frozen
:class:`ShardOptions`, built by keyword and validated once, here, before any work."""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path

from engram_cli.errors import UsageError
from engram_cli.pathguard import check_name
from engram_cli.tables.checksums import Checksum
from engram_cli.tables.policies import MAX_RANKS
from engram_cli.tables.units import DEFAULT_BLOCK_BYTES, parse_size


class Target(str, Enum):
    """``--to``: the output format."""

    hf = "hf"
    ranks = "ranks"
    heads = "heads"
    packed = "packed"
    gguf = "gguf"
    local = "local"


class SourceFormat(str, Enum):
    """``--from``: how to read the source."""

    auto = "auto"
    hf = "hf"
    engram = "engram"
    gguf = "gguf"


class Family(str, Enum):
    """``--family``: checkpoint key names of the tables."""

    deepseek_v41 = "deepseek-v4.1"
    deepseek_demo = "deepseek-demo"
    qwen4_exp = "qwen4-exp"


class Policy(str, Enum):
    """``--policy``: which rows each rank holds."""

    vllm_head = "vllm-head"
    sglang_floor = "sglang-floor"
    ref_ceil = "ref-ceil"
    megatron_ep = "megatron-ep"


class TableDtype(str, Enum):
    """``--table-dtype``: the encoding tables are written in."""

    keep = "keep"
    bf16 = "bf16"
    fp32 = "fp32"
    fp8_e4m3 = "fp8-e4m3"
    int8 = "int8"


class HeadFormat(str, Enum):
    """``--head-format`` (heads): safetensors, or rows (Mooncake objects as files)."""

    safetensors = "safetensors"
    rows = "rows"


class Packing(str, Enum):
    """``--packing`` (packed): rows (weight then scale bytes per row) or split."""

    rows = "rows"
    split = "split"


class GgufType(str, Enum):
    """``--gguf-type``: raw I8 264-byte rows or Q8_0."""

    raw = "raw"
    q8_0 = "q8_0"


class GgufDialect(str, Enum):
    """``--gguf-dialect`` / ``gguf-fix --dialect``: whose keys and tensor names (tables/gguf_dialects.py)."""

    llamacpp = "llamacpp"
    ds4 = "ds4"
    both = "both"


class VerifyMode(str, Enum):
    """``--verify``: after writing, check sizes and headers (quick), everything (full), or nothing."""

    quick = "quick"
    full = "full"
    none = "none"


ENUMS = {"to": Target, "from_": SourceFormat, "family": Family, "policy": Policy, "table_dtype": TableDtype,
         "head_format": HeadFormat, "packing": Packing, "gguf_type": GgufType, "gguf_dialect": GgufDialect,
         "verify": VerifyMode, "checksum": Checksum}
FLAGS = {"to": "--to", "from_": "--from", "table_dtype": "--table-dtype", "head_format": "--head-format",
         "gguf_type": "--gguf-type", "gguf_dialect": "--gguf-dialect"}


def _enum(name: str, value: object) -> Enum | None:
    kind = ENUMS[name]
    if value is None or isinstance(value, kind):
        return value
    try:
        return kind(value.value if isinstance(value, Enum) else value)
    except ValueError:
        flag = FLAGS.get(name, "--" + name.replace("_", "-"))
        raise UsageError(f"unknown {flag} {value!r}", hint="choose one of " + ", ".join(m.value for m in kind)) from None


@dataclass(frozen=True, kw_only=True)
class ShardOptions:
    """Everything one conversion (or plan) needs; strings are accepted for enums and sizes."""

    source: Path
    to: Target = Target.hf
    from_: SourceFormat = SourceFormat.auto
    family: Family | None = None
    key: str | None = None
    scale_key: str | None = None
    layout: Path | None = None
    config: Path | None = None
    preset: str | None = None
    table_dtype: TableDtype = TableDtype.keep
    max_shard_size: int = 5 * 10**9
    ranks: int | None = None
    policy: Policy | None = None
    edp: int = 1
    rank: int | None = None
    head_format: HeadFormat = HeadFormat.safetensors
    packing: Packing = Packing.rows
    split_parts: int | None = None
    engram_only: bool = False
    gguf_type: GgufType = GgufType.raw
    gguf_name: str = "engram.gguf"
    gguf_dialect: GgufDialect = GgufDialect.llamacpp
    with_projections: bool = False
    # execution
    output: Path | None = None
    force: bool = False
    block_bytes: int = DEFAULT_BLOCK_BYTES
    verify: VerifyMode = VerifyMode.quick
    checksum: Checksum = Checksum.xxh3

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name in ENUMS:
                object.__setattr__(self, f.name, _enum(f.name, getattr(self, f.name)))
        for name in ("source", "layout", "config", "output"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, Path):
                object.__setattr__(self, name, Path(v))
        if isinstance(self.preset, Enum):
            object.__setattr__(self, "preset", self.preset.value)
        for name in ("max_shard_size", "block_bytes"):
            object.__setattr__(self, name, parse_size(getattr(self, name)))
        self._check_numbers()
        self._check_combinations()
        check_name(self.gguf_name, "--gguf-name")
        if "/" in self.gguf_name or "\\" in self.gguf_name:
            raise UsageError(f"--gguf-name {self.gguf_name!r} must be a file name, not a path", hint="the file goes into -o")

    def _check_numbers(self) -> None:
        for name, low in (("ranks", 1), ("edp", 1), ("rank", 0), ("split_parts", 1)):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < low):
                raise UsageError(f"--{name.replace('_', '-')} must be an integer >= {low}, got {v!r}")
        if self.ranks is not None and self.ranks * self.edp > MAX_RANKS:
            raise UsageError(f"--ranks {self.ranks} x --edp {self.edp} is more than {MAX_RANKS:,} ranks",
                             hint="a sanity limit; no engine shards that wide")

    def _check_combinations(self) -> None:
        to = self.to
        if to is Target.ranks and (not self.ranks or self.policy is None):
            raise UsageError("--to ranks needs --ranks P and --policy", hint="policies: " + ", ".join(p.value for p in Policy))
        if to is Target.local and (self.policy is None or not self.ranks or self.rank is None):
            raise UsageError("--to local needs --policy, --ranks P and --rank R")
        if to is Target.packed and (self.policy is None) != (self.ranks is None):
            raise UsageError("--policy and --ranks go together")
        if self.rank is not None and self.ranks is not None and self.rank >= self.ranks * self.edp:
            raise UsageError(f"--rank {self.rank} is outside 0..{self.ranks * self.edp - 1}")
        if self.scale_key is not None and self.key is None:
            raise UsageError("--scale-key goes with --key")
