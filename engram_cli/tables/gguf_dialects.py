"""GGUF dialects of DeepSeek-V4.1 Engram files, as data (formats.md 4 and 7.1).

A dialect is the set of metadata keys (name, element type, what layout quantity it holds),
the table and projection tensor names, and the tensor order a family of readers expects.
Three are written: ``llamacpp`` (llama.cpp #28696, ik_llama.cpp #2455/#2506: the nine keys),
``ds4`` (antirez/ds4 ``deepseek41_metadata.py`` and the strix-llama.cpp runtime: raw
``row264`` tables written last) and ``both`` (the union; where a key name is shared with a
different element type, the llamacpp type is written: every documented value fits either).
The other dialects in the wild are only read: ``mini`` (the mini-ds41 generator's key names),
``pointer`` (``deepseek4.engram.{i}.table_path`` into safetensors shards, hash constants as
tensors) and ``bound`` (fak: hash constants as I64 tensors beside the tables).

Flattening is layer-major, then n-gram order, then head, for keys and tensors alike.
"""

from __future__ import annotations

from dataclasses import dataclass

ARCH = "deepseek41"
PREFIX = f"{ARCH}.engram."
PREFIXES = (PREFIX, "deepseek4.engram.")  # the first published files used the deepseek4 architecture name
ALIGN = 32
RAW_ENCODING = "e4m3_e8m0_32_row264"
RAW_ROW_BYTES = 264
TABLE = "blk.{layer}.engram_embd.weight"

#: Layout quantities a key can hold.
QUANTITIES = ("layer_ids", "head_count", "key_length", "max_ngram_size", "multipliers", "primes", "offsets",
              "token_map", "pad_id", "encoding", "rows", "compressed_vocab_size", "vocab_base")
ETYPE_RANGE = {"u32": (0, 2**32 - 1), "i32": (-(2**31), 2**31 - 1), "u64": (0, 2**64 - 1), "i64": (-(2**63), 2**63 - 1)}


@dataclass(frozen=True)
class Key:
    """One metadata key: name after the prefix, the quantity it holds, its element type."""

    name: str
    quantity: str
    etype: str  # u32 | i32 | u64 | i64 | str
    array: bool = False


@dataclass(frozen=True)
class Projection:
    """An Engram projection of the source (``q_weight``, ``k_weight``, ``wkv.weight``) under a
    dialect's tensor name, written in ``dtype`` (``keep``: BF16/F16/F32 copied, fp8 dequantised to BF16)."""

    key: str
    name: str
    dtype: str = "keep"


@dataclass(frozen=True)
class Dialect:
    name: str
    who: str
    keys: tuple[Key, ...]
    projections: tuple[Projection, ...] = ()
    table_types: tuple[str, ...] = ("raw", "q8_0")  # --gguf-type values the dialect's readers take
    tables_last: bool = False  # tables after every other tensor (ds4's in-place requantiser needs it)
    writable: bool = True
    prefix: str = PREFIX

    def key(self, name: str) -> Key | None:
        return next((k for k in self.keys if k.name == name), None)

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.keys)


LLAMACPP_KEYS = (
    Key("layer_ids", "layer_ids", "i32", True),
    Key("head_count", "head_count", "u32"),
    Key("key_length", "key_length", "u32"),
    Key("max_ngram_size", "max_ngram_size", "u32"),
    Key("multipliers", "multipliers", "u64", True),
    Key("primes", "primes", "u64", True),
    Key("offsets", "offsets", "u64", True),
    Key("token_map", "token_map", "i32", True),
    Key("pad_id", "pad_id", "u32"),
)
DS4_KEYS = (
    Key("encoding", "encoding", "str"),
    Key("layer_ids", "layer_ids", "u32", True),
    Key("rows", "rows", "u32", True),
    Key("compressed_vocab_size", "compressed_vocab_size", "u32"),
    Key("pad_id", "pad_id", "u32"),
    Key("token_map", "token_map", "u32", True),
    Key("primes", "primes", "u32", True),
    Key("multipliers", "multipliers", "u64", True),
)
LLAMACPP_PROJ = (Projection("q_weight", "blk.{layer}.engram_q.weight"), Projection("k_weight", "blk.{layer}.engram_k.weight"),
                 Projection("wkv.weight", "blk.{layer}.engram_wkv.weight"))
DS4_PROJ = (Projection("q_weight", "blk.{layer}.engram_q_norm.weight", "F32"),
            Projection("k_weight", "blk.{layer}.engram_k_norm.weight", "F32"),
            Projection("wkv.weight", "blk.{layer}.engram_kv.weight", "F16"))


def _union(first: tuple[Key, ...], second: tuple[Key, ...]) -> tuple[Key, ...]:
    names = {k.name for k in first}
    return first + tuple(k for k in second if k.name not in names)


DIALECTS: dict[str, Dialect] = {
    "llamacpp": Dialect("llamacpp", "llama.cpp #28696, ik_llama.cpp #2455/#2506", LLAMACPP_KEYS, LLAMACPP_PROJ),
    "ds4": Dialect("ds4", "antirez/ds4 deepseek41_metadata.py, strix-llama.cpp llama-dsv41-engram", DS4_KEYS, DS4_PROJ,
                   table_types=("raw",), tables_last=True),
    "both": Dialect("both", "every key llamacpp and ds4 readers need", _union(LLAMACPP_KEYS, DS4_KEYS),
                    LLAMACPP_PROJ + DS4_PROJ, tables_last=True),
    # read only
    "mini": Dialect("mini", "mini-ds41-MXFP4 generator", (
        Key("layer_ids", "layer_ids", "u32", True), Key("head_dim", "key_length", "u32"), Key("n_heads", "head_count", "u32"),
        Key("max_ngram_size", "max_ngram_size", "u32"), Key("pad_token_id", "pad_id", "u32"),
        Key("compressed_vocab_size", "compressed_vocab_size", "u32"), Key("num_embeddings", "rows", "u64", True),
        Key("primes", "primes", "u32", True), Key("offsets", "offsets", "u32", True),
        Key("multipliers", "multipliers", "i64", True), Key("token_map", "token_map", "u32", True)), writable=False),
    "pointer": Dialect("pointer", "pointer GGUF (deepseek4.engram.{i}.table_path into safetensors shards)", (
        Key("layer_ids", "layer_ids", "i32", True), Key("num_embeddings", "rows", "u64", True),
        Key("max_ngram_size", "max_ngram_size", "u32"), Key("head_count", "head_count", "u32"),
        Key("head_dim", "key_length", "u32"), Key("vocab_size", "vocab_base", "u32"),
        Key("compressed_vocab_size", "compressed_vocab_size", "u32"), Key("pad_id_compressed", "pad_id", "u32")),
        writable=False, prefix="deepseek4.engram."),
    "bound": Dialect("bound", "fak core_bind_v41 (hash constants as I64 tensors)", LLAMACPP_KEYS[:4] + (LLAMACPP_KEYS[8],),
                     writable=False),
}
WRITABLE = tuple(n for n, d in DIALECTS.items() if d.writable)

#: Every key name any dialect uses -> the quantity it holds (for reading any dialect).
ALIASES: dict[str, str] = {k.name: k.quantity for d in DIALECTS.values() for k in d.keys}

#: Hash constants stored as tensors (pointer and bound GGUFs): name -> (quantity, GGUF dims, outermost last).
CONSTANT_TENSORS = {
    "engram.token_map": ("token_map", "[V]"),
    "engram.multipliers": ("multipliers", "[N, L]"),
    "engram.primes": ("primes", "[H, N-1, L]"),
    "engram.offsets": ("offsets", "[(N-1)*H, L]"),
}
#: Pointer GGUF per-table keys (``{i}`` is the position in layer_ids).
POINTER_KEYS = ("table_path", "weight_offset", "scale_offset")


def dialect(name: str) -> Dialect:
    from engram_cli.errors import UsageError

    if name not in DIALECTS or not DIALECTS[name].writable:
        raise UsageError(f"unknown GGUF dialect {name!r}", hint="choose one of " + ", ".join(WRITABLE))
    return DIALECTS[name]


def detect(keys: set[str], tensors: set[str]) -> str:
    """The dialect a file's Engram keys (names after the prefix) and tensor names follow.

    ``none`` when the file has no Engram key or constant tensor (an older file that lacks them)."""
    if any(k.split(".", 1)[-1] in POINTER_KEYS and k.split(".", 1)[0].isdigit() for k in keys):
        return "pointer"
    if "engram.primes" in tensors:
        return "bound"
    if keys & {"head_dim", "n_heads", "num_embeddings", "pad_token_id"}:
        return "mini"
    llama = keys & {"head_count", "key_length", "offsets"}
    ds4 = keys & {"rows", "compressed_vocab_size"}
    if llama and ds4:
        return "both"
    if ds4:
        return "ds4"
    return "llamacpp" if keys else "none"


def missing_keys(name: str, have: dict[str, str]) -> list[str]:
    """Keys of dialect ``name`` that a file lacks or holds with another element type (``have``:
    key name -> element type as written, e.g. ``{"primes": "u64"}``); a different integer type
    is accepted when the key is an integer array of the same signedness class (readers take
    any integer array whose values fit)."""
    out = []
    for k in DIALECTS[name].keys:
        t = have.get(k.name)
        if t is None:
            out.append(k.name)
        elif (t == "str") != (k.etype == "str"):
            out.append(f"{k.name} ({t}, expected {k.etype})")
    return out
