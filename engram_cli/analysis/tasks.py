"""Task files: a JSONL format close to lm-eval's (see docs/ablate.md).

Line 1 (optional) is a header object with ``output_type``; every other line is one item:

    {"task": "capitals_mc", "category": "factual", "output_type": "multiple_choice"}
    {"id": "...", "context": "The capital of France is", "choices": [" Paris.", " Rome."], "gold": 0}

``output_type``: ``multiple_choice`` (context, choices, gold -> acc, acc_norm),
``generate_until`` (context, answers, header ``until`` / ``max_gen_toks`` -> exact_match),
``loglikelihood_rolling`` (text -> perplexity). Without a header the type is inferred from
the first item's keys, the task name from the file name and the category is "other".

Controls (docs/ablate.md): an item may mark character spans of its ``context``:
``context_span: [start, end]`` (the passage the answer must come from) and ``subject_span``
(the entity a closed-book fact is about). A span is on every item of a task or on none.
A header may say which text a perplexity sample is (``text_split``: ``train`` or ``heldout``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engram_cli.errors import BadInputError

OUTPUT_TYPES = ("multiple_choice", "generate_until", "loglikelihood_rolling")
CATEGORIES = ("factual", "reading", "other")
SPAN_FIELDS = ("context_span", "subject_span")
TEXT_SPLITS = ("train", "heldout")
REQUIRED = {
    "multiple_choice": ("context", "choices", "gold"),
    "generate_until": ("context", "answers"),
    "loglikelihood_rolling": ("text",),
}


@dataclass
class Task:
    name: str
    category: str
    output_type: str
    items: list[dict[str, Any]]
    path: str = ""
    until: list[str] = field(default_factory=lambda: ["\n"])
    max_gen_toks: int = 16
    description: str = ""
    text_split: str | None = None

    @property
    def span_fields(self) -> list[str]:
        """The span fields every item carries (see :data:`SPAN_FIELDS`)."""
        return [f for f in SPAN_FIELDS if self.items and f in self.items[0]]

    @property
    def chance(self) -> float | None:
        if self.output_type == "multiple_choice":
            return sum(1.0 / len(it["choices"]) for it in self.items) / max(1, len(self.items))
        if self.output_type == "generate_until":
            return 0.0
        return None


def _infer_type(item: dict) -> str | None:
    if "choices" in item:
        return "multiple_choice"
    if "answers" in item:
        return "generate_until"
    if "text" in item:
        return "loglikelihood_rolling"
    return None


def load_task(path: str | Path, limit: int | None = None) -> Task:
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"task file not found: {path}")
    header: dict[str, Any] = {}
    items: list[dict[str, Any]] = []
    out_type: str | None = None
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise BadInputError(f"{path}:{lineno}: not UTF-8 text (byte {exc.start} of the line)") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BadInputError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise BadInputError(f"{path}:{lineno}: expected a JSON object")
            if not items and not header and "output_type" in obj and not ({"context", "text"} & set(obj)):
                header = obj
                out_type = obj["output_type"]
                if out_type not in OUTPUT_TYPES:
                    raise BadInputError(f"{path}:{lineno}: unknown output_type {out_type!r}",
                                        hint=f"one of {', '.join(OUTPUT_TYPES)}")
                _check_header(header, f"{path}:{lineno}")
                continue
            if out_type is None:
                out_type = _infer_type(obj)
                if out_type is None:
                    raise BadInputError(f"{path}:{lineno}: cannot tell the item type",
                                        hint="items need 'choices', 'answers' or 'text'")
            missing = [k for k in REQUIRED[out_type] if k not in obj]
            if missing:
                raise BadInputError(f"{path}:{lineno}: {out_type} item lacks {', '.join(missing)}")
            if out_type == "multiple_choice":
                ch, gold = obj["choices"], obj["gold"]
                if not isinstance(ch, list) or len(ch) < 2 or not all(isinstance(c, str) for c in ch):
                    raise BadInputError(f"{path}:{lineno}: 'choices' must be a list of >= 2 strings")
                if not isinstance(gold, int) or isinstance(gold, bool) or not 0 <= gold < len(ch):
                    raise BadInputError(f"{path}:{lineno}: 'gold' must be an index into 'choices'")
            elif out_type == "generate_until":
                ans = obj["answers"]
                if isinstance(ans, str):
                    obj["answers"] = [ans]
                elif not isinstance(ans, list) or not ans or not all(isinstance(a, str) for a in ans):
                    raise BadInputError(f"{path}:{lineno}: 'answers' must be a string or a list of strings")
            for key in ("context", "text"):
                if key in obj and not isinstance(obj[key], str):
                    raise BadInputError(f"{path}:{lineno}: '{key}' must be a string")
            _check_spans(obj, items[0] if items else None, f"{path}:{lineno}")
            obj.setdefault("id", f"{path.stem}/{lineno}")
            items.append(obj)
            if limit is not None and len(items) >= limit:
                break
    if not items or out_type is None:
        raise BadInputError(f"{path}: no items")
    until = header.get("until", ["\n"])
    split = header.get("text_split")
    if split is not None and split not in TEXT_SPLITS:
        raise BadInputError(f"{path}:1: unknown text_split {split!r}", hint=f"one of {', '.join(TEXT_SPLITS)}")
    return Task(name=str(header.get("task", path.stem)), category=str(header.get("category", "other")),
                output_type=out_type, items=items, path=str(path),
                until=[until] if isinstance(until, str) else list(until),
                max_gen_toks=int(header.get("max_gen_toks", 16)), description=str(header.get("description", "")),
                text_split=split)


def _check_header(header: dict, where: str) -> None:
    """Header fields of the right type (one exit-3 line naming the file and line otherwise)."""
    if header.get("category", "other") not in CATEGORIES:
        raise BadInputError(f"{where}: unknown category {header.get('category')!r}", hint=f"one of {', '.join(CATEGORIES)}")
    until = header.get("until", ["\n"])
    if not isinstance(until, str) and not (isinstance(until, list) and all(isinstance(u, str) for u in until)):
        raise BadInputError(f"{where}: 'until' must be a string or a list of strings, got {until!r}")
    mgt = header.get("max_gen_toks", 16)
    if not isinstance(mgt, int) or isinstance(mgt, bool) or not 1 <= mgt <= 4096:
        raise BadInputError(f"{where}: 'max_gen_toks' must be an integer in 1..4096, got {mgt!r}")


def _check_spans(obj: dict, first: dict | None, where: str) -> None:
    """``context_span``/``subject_span``: ``[start, end]`` character offsets into ``context``, on all items or none."""
    for key in SPAN_FIELDS:
        if first is not None and (key in first) != (key in obj):
            raise BadInputError(f"{where}: '{key}' must be on every item of a task or on none")
        if key not in obj:
            continue
        span, ctx = obj[key], obj.get("context")
        if not isinstance(ctx, str):
            raise BadInputError(f"{where}: '{key}' needs a 'context'")
        if (not isinstance(span, list) or len(span) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in span)
                or not 0 <= span[0] < span[1] <= len(ctx)):
            raise BadInputError(f"{where}: '{key}' must be [start, end] with 0 <= start < end <= len(context) ({len(ctx)})")


def resolve_tasks(specs: list[str] | None, default_dir: Path, limit: int | None = None) -> list[Task]:
    """Task files from names (bundled suites), files or directories; None = all bundled suites."""
    paths: list[Path] = []
    for spec in specs or [str(default_dir)]:
        p = Path(spec)
        if p.is_dir():
            paths += sorted(p.glob("*.jsonl"))
        elif p.is_file():
            paths.append(p)
        elif (default_dir / f"{spec}.jsonl").is_file():
            paths.append(default_dir / f"{spec}.jsonl")
        else:
            bundled = ", ".join(sorted(q.stem for q in default_dir.glob("*.jsonl"))) if default_dir.is_dir() else "none"
            raise BadInputError(f"task not found: {spec}", hint=f"a .jsonl file, a directory, or a bundled suite ({bundled})")
    if not paths:
        raise BadInputError("no task files found")
    return [load_task(p, limit) for p in paths]
