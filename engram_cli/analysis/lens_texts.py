"""Texts for the logit lens, and which positions of each token sequence are read.

Sources: the bundled held-out suites (default: each task item becomes its context followed by
its gold answer, a perplexity item its text), a user file (``--texts``: JSON Lines with
``text`` or task-style ``context`` + ``choices``/``gold`` or ``answers``, or plain text lines),
and for ``entity-final`` an entity-span file (``analysis/spans.py``; the bundled span set by
default).

Positions (zero-based token indices; the gold token of position t is token t+1):

- ``all``: every position that has a next token;
- ``last``: the last context token for task items (gold = the first answer token), the last
  token otherwise (no gold);
- ``answer``: the positions that predict the answer tokens of task items;
- ``entity-final``: the token holding each entity span's last character.

``skip_first`` drops positions below N (BOS / attention-sink tokens).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from engram_cli.errors import BadInputError, UsageError

POSITIONS = ("all", "last", "answer", "entity-final")
DEFAULT_LIMITS = {"suites": 16, "spans": 128}  # texts per bundled file when --limit is not given (CPU-friendly)


@dataclass(frozen=True)
class LensText:
    """One text: ``context`` (+ ``answer`` for task items), or entity ``spans`` over ``context``."""

    id: str
    context: str
    answer: str | None = None
    spans: tuple[Any, ...] = ()


@dataclass(frozen=True)
class LensItem:
    """A token sequence and the positions read from it, with their gold next tokens (-1: none)."""

    id: str
    ids: list[int]
    positions: list[int]
    gold: list[int]


def _from_task_item(obj: dict, where: str) -> LensText | None:
    oid = str(obj.get("id", where))
    if "context" in obj:
        ctx = obj["context"]
        if "choices" in obj and isinstance(obj.get("gold"), int) and 0 <= obj["gold"] < len(obj["choices"]):
            ans = obj["choices"][obj["gold"]]
        elif isinstance(obj.get("answers"), list) and obj["answers"]:
            ans = obj["answers"][0]
        else:
            ans = obj.get("answers", obj.get("answer"))
        if not isinstance(ctx, str) or not isinstance(ans, str):
            raise BadInputError(f"{where}: a task item needs a string 'context' and a gold answer "
                                "('choices' + 'gold', 'answers' or 'answer')")
        # the evaluator's convention: the answer's own leading space carries the separation
        return LensText(oid, ctx, ans)
    if "text" in obj:
        if not isinstance(obj["text"], str) or not obj["text"]:
            raise BadInputError(f"{where}: 'text' must be a non-empty string")
        return LensText(oid, obj["text"])
    if "output_type" in obj or "task" in obj:  # a suite header line
        return None
    raise BadInputError(f"{where}: expected 'text' or 'context' in each JSON object")


def read_texts(path: Path, limit: int | None = None) -> list[LensText]:
    """Texts from a JSONL file (objects) or a plain text file (one text per non-empty line)."""
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"))
        if not files:
            raise BadInputError(f"{path}: no .jsonl files")
        return [t for f in files for t in read_texts(f, limit)]
    if not path.is_file():
        raise BadInputError(f"texts file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise BadInputError(f"{path}: not UTF-8 text") from None
    out: list[LensText] = []
    for no, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        where = f"{path}:{no}"
        if path.suffix == ".jsonl":
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise BadInputError(f"{where}: invalid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise BadInputError(f"{where}: expected a JSON object")
            item = _from_task_item(obj, where)
        else:
            item = LensText(where, raw)
        if item is not None:
            out.append(item)
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise BadInputError(f"{path}: no texts")
    return out


def load_texts(path: Path | None, positions: str, limit: int | None = None) -> tuple[list[LensText], str]:
    """The texts and a description of their source."""
    from engram_cli.analysis import spans as spanmod

    if positions not in POSITIONS:
        raise UsageError(f"unknown --positions {positions!r}", hint=f"one of {', '.join(POSITIONS)}")
    if positions == "entity-final":
        src = path or spanmod.bundled_spans_path()
        recs = spanmod.read_spans(src)[:limit if limit is not None or path else DEFAULT_LIMITS["spans"]]
        return [LensText(f"{src.name}:{r.line}", r.text, None, r.spans) for r in recs], str(src if path else
                                                                                          "bundled entity spans")
    if path is not None:
        return read_texts(path, limit), str(path)
    from engram_cli.models.loading import demo_suites_dir

    files = [f for f in sorted(demo_suites_dir().glob("*.jsonl")) if not _training_suite(f)]
    texts = [t for f in files for t in read_texts(f, limit or DEFAULT_LIMITS["suites"])]
    return texts, "bundled held-out suites (" + ", ".join(f.stem for f in files) + ")"


def _training_suite(path: Path) -> bool:
    """A bundled suite of training text (header ``"text_split": "train"``): not held out."""
    with path.open(encoding="utf-8") as fh:
        first = fh.readline()
    try:
        head = json.loads(first)
    except json.JSONDecodeError:
        return False
    return isinstance(head, dict) and head.get("text_split") == "train"


def _positions(kind: str, n: int, n_ctx: int | None, ends: Sequence[int]) -> list[int]:
    if kind == "all":
        return list(range(n - 1))
    if kind == "last":
        return [n_ctx - 1] if n_ctx is not None else [n - 1]
    if kind == "answer":
        return list(range(n_ctx - 1, n - 1)) if n_ctx is not None else []
    return sorted(set(ends))


def build_items(texts: Sequence[LensText], tokenizer: Any, positions: str, *, skip_first: int = 0,
                max_length: int = 256) -> list[LensItem]:
    """Tokenise ``texts`` and select positions; texts without any selected position are dropped."""
    from engram_cli.analysis.spans import encode_with_offsets, final_token

    if tokenizer is None:
        raise BadInputError("the model has no tokenizer", hint="pass --tokenizer DIR")
    if positions == "answer" and not any(t.answer is not None for t in texts):
        raise BadInputError("--positions answer needs task items (context + gold answer)",
                            hint="use the bundled suites or a task JSONL with --texts")
    items = []
    for t in texts:
        ends: list[int] = []
        n_ctx = None
        if positions == "entity-final":
            ids, offsets = encode_with_offsets(tokenizer, t.context)
            ends = [e for e in (final_token(offsets, s) for s in t.spans) if e is not None]
        elif t.answer is not None:
            ctx, ans = tokenizer.encode(t.context), tokenizer.encode(t.answer)
            ids, n_ctx = ctx + ans, len(ctx)
            if len(ids) > max_length:  # keep the answer: drop context from the left
                n_ctx -= len(ids) - max_length
                ids = ids[len(ids) - max_length:]
        else:
            ids = tokenizer.encode(t.context)
        ids = ids[:max_length]
        if not ids or (n_ctx is not None and n_ctx < 1):
            continue
        pos = [p for p in _positions(positions, len(ids), n_ctx, ends) if skip_first <= p < len(ids)]
        if pos:
            items.append(LensItem(t.id, ids, pos, [ids[p + 1] if p + 1 < len(ids) else -1 for p in pos]))
    if not items:
        raise BadInputError(f"no positions to read with --positions {positions} and --skip-first {skip_first}",
                            hint="check the texts, --max-length and --skip-first")
    return items
