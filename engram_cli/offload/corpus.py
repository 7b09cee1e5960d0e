"""Token streams for the locality section: the bundled real text and a user's ``--trace`` file.

Bundled text: the held-out Wikipedia paragraphs of the demo model's evaluation suites (package
data) and CPython's own documentation topics (``pydoc_data.topics``, shipped with every
interpreter). A trace file holds either token ids (one sequence per line, integers separated by
spaces or commas) or UTF-8 text (documents separated by blank lines).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engram_cli.errors import BadInputError

_INT_LINE = re.compile(r"^[\s,]*-?\d+([\s,]+-?\d+)*[\s,]*$")


@dataclass(frozen=True)
class Corpus:
    """Documents of raw token ids, with where they came from."""

    name: str
    docs: list[np.ndarray]
    source: str

    @property
    def n_tokens(self) -> int:
        return int(sum(d.size for d in self.docs))


def wikipedia_texts() -> list[str]:
    """Distinct held-out Wikipedia paragraphs from the bundled evaluation suites."""
    from engram_cli.models.loading import demo_suites_dir

    texts: list[str] = []
    for f in sorted(demo_suites_dir().glob("*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines()[1:]:
            rec = json.loads(line)
            t = rec.get("text") or rec.get("context") or ""
            if t.startswith("Passage: "):
                t = t[len("Passage: "):].split("\n")[0]
            if len(t) > 200:
                texts.append(t)
    return list(dict.fromkeys(texts))


def python_docs_texts() -> list[str]:
    """CPython's documentation topics (real technical English, shipped with the interpreter)."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # pragma: no cover - stripped interpreters
        return []
    return [topics[k] for k in sorted(topics)]


def tokenize(texts: list[str], tokenizer: Any) -> list[np.ndarray]:
    encs = tokenizer.encode_batch(texts, add_special_tokens=False)
    return [np.asarray(e.ids, dtype=np.int64) for e in encs if len(e.ids)]


def bundled_corpus(tokenizer: Any, *, seed: int = 0) -> Corpus:
    """Both bundled texts, tokenized, in a seeded shuffled document order."""
    docs = tokenize(wikipedia_texts(), tokenizer) + tokenize(python_docs_texts(), tokenizer)
    order = np.random.default_rng(seed).permutation(len(docs))
    return Corpus("bundled", [docs[i] for i in order], "suites wikipedia paragraphs + pydoc_data topics")


def _decode(raw: bytes, path: Path, lineno: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInputError(f"{path}: line {lineno} is not UTF-8 text", hint="a trace is token ids or UTF-8 text") from None


def read_trace(path: Path, tokenizer: Any, *, vocab_size: int | None = None) -> Corpus:
    """Read ``path``: token ids (one sequence per line) or text (paragraphs); errors name the line."""
    path = Path(path)
    try:
        raw_lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise BadInputError(f"cannot read trace {path}: {exc.strerror or exc}") from None
    lines = [_decode(b, path, i + 1) for i, b in enumerate(raw_lines)]
    first = next((ln for ln in lines if ln.strip()), None)
    if first is None:
        raise BadInputError(f"{path}: the trace is empty")
    if _INT_LINE.match(first):
        docs = _read_ids(lines, path, vocab_size)
    else:
        paras, cur = [], []
        for ln in lines + [""]:
            if ln.strip():
                cur.append(ln)
            elif cur:
                paras.append("\n".join(cur))
                cur = []
        docs = tokenize(paras, tokenizer)
    if not docs or sum(d.size for d in docs) < 2:
        raise BadInputError(f"{path}: the trace has fewer than 2 tokens")
    return Corpus(path.name, docs, str(path))


def _read_ids(lines: list[str], path: Path, vocab_size: int | None) -> list[np.ndarray]:
    docs = []
    for i, ln in enumerate(lines, start=1):
        if not ln.strip():
            continue
        if not _INT_LINE.match(ln):
            bad = next(t for t in re.split(r"[\s,]+", ln.strip()) if t and not re.fullmatch(r"-?\d+", t))
            raise BadInputError(f"{path}: line {i}: {bad[:40]!r} is not a token id")
        ids = np.asarray([int(t) for t in re.split(r"[\s,]+", ln.strip()) if t], dtype=np.int64)
        if ids.min() < 0:
            raise BadInputError(f"{path}: line {i}: token id {int(ids.min())} is negative")
        if vocab_size is not None and ids.max() >= vocab_size:
            raise BadInputError(f"{path}: line {i}: token id {int(ids.max())} is outside the layout's {vocab_size:,} ids")
        docs.append(ids)
    return docs
