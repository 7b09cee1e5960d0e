"""Entity-span files for ``--positions entity-final``: read, validate, map to token positions.

Format: JSON Lines, one object per text (blank lines are skipped)::

    {"text": "The capital of France is Paris.", "spans": [{"start": 15, "end": 21, "label": "country"},
                                                       [25, 30]]}

``spans`` holds objects with integer ``start``/``end`` (character offsets into ``text``, ``end``
exclusive, as Python slicing) and an optional ``label``, or ``[start, end]`` pairs. ``id`` is
optional. Each span gives one example: the hidden state at the token that contains the span's
last character (the paper's "final token of named entities"). Few-NERD-style data plugs in by
writing its entity character spans this way. Errors name the file and line and exit 3.

The bundled set (``engram_cli/data/spans/entities.jsonl``) is built by
:func:`build_entity_spans` from the bundled suites only (countryinfo facts and held-out
Wikipedia paragraphs); a test checks the file equals a fresh build.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from engram_cli.errors import BadInputError


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    label: str | None = None


@dataclass(frozen=True)
class SpanText:
    text: str
    spans: tuple[Span, ...]
    line: int


def bundled_spans_path() -> Path:
    return Path(__file__).resolve().parent.parent / "data" / "spans" / "entities.jsonl"


def _span(obj: Any, n: int, where: str, k: int) -> Span:
    label = None
    if isinstance(obj, dict):
        start, end, label = obj.get("start"), obj.get("end"), obj.get("label")
        if label is not None and not isinstance(label, str):
            raise BadInputError(f"{where}: span {k}: 'label' must be a string")
    elif isinstance(obj, (list, tuple)) and len(obj) == 2:
        start, end = obj
    else:
        raise BadInputError(f"{where}: span {k} must be an object with start/end or a [start, end] pair")
    if not (isinstance(start, int) and isinstance(end, int)) or isinstance(start, bool) or isinstance(end, bool):
        raise BadInputError(f"{where}: span {k}: start and end must be integers")
    if not 0 <= start < end <= n:
        raise BadInputError(f"{where}: span {k} [{start}, {end}) is not inside the text (length {n}, end exclusive)")
    return Span(start, end, label)


def parse_line(raw: str, where: str, line: int) -> SpanText:
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BadInputError(f"{where}: invalid JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise BadInputError(f"{where}: expected a JSON object with 'text' and 'spans'")
    text, spans = obj.get("text"), obj.get("spans")
    if not isinstance(text, str) or not text:
        raise BadInputError(f"{where}: 'text' must be a non-empty string")
    if not isinstance(spans, list):
        raise BadInputError(f"{where}: 'spans' must be a list")
    return SpanText(text, tuple(_span(s, len(text), where, k) for k, s in enumerate(spans)), line)


def read_spans(path: str | Path) -> list[SpanText]:
    """All records of a span file; refuses a file without any span (exit 3)."""
    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"span file not found: {p}")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise BadInputError(f"{p}: not UTF-8 text") from None
    out = [parse_line(raw, f"{p}:{i}", i) for i, raw in enumerate(lines, 1) if raw.strip()]
    if not any(r.spans for r in out):
        raise BadInputError(f"{p}: no entity spans (the file is empty or every 'spans' list is)")
    return out


def final_token(offsets: Sequence[tuple[int, int]], span: Span) -> int | None:
    """Index of the token containing the span's last character (else the last token starting before it)."""
    last = span.end - 1
    best = None
    for t, (s, e) in enumerate(offsets):
        if s <= last < e:
            return t
        if s <= last and e > s:
            best = t
    return best


def encode_with_offsets(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of ``text`` (no special tokens), from a ``TextTokenizer``."""
    tok = getattr(tokenizer, "_tok", tokenizer)
    if type(tok).__module__.startswith("tokenizers"):
        enc = tok.encode(text, add_special_tokens=False)
        return list(enc.ids), [tuple(o) for o in enc.offsets]
    try:
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, TypeError, ValueError):
        raise BadInputError("this tokenizer gives no character offsets",
                            hint="entity-final needs a fast (Rust) tokenizer; use --positions last or all") from None
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


# -- the bundled span set ---------------------------------------------------------------------

_CAPITAL_Q = re.compile(r"^Question: What is the capital of (.+)\?\nAnswer:$")


def _suite(path: Path) -> list[dict]:
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    return [r for r in rows if "task" not in r]


def build_entity_spans(suites_dir: Path) -> list[dict]:
    """The bundled entity spans: one fact sentence per country with its capital, and every
    mention of those countries and capitals in the held-out Wikipedia paragraphs."""
    records: list[dict] = []
    names: dict[str, str] = {}
    for item in _suite(suites_dir / "capitals_qa.jsonl"):
        m = _CAPITAL_Q.match(item["context"])
        if not m:
            continue
        country, capital = m.group(1), item["answers"][0]
        text = f"The capital of {country} is {capital}."
        c0, k0 = len("The capital of "), len(f"The capital of {country} is ")
        records.append({"id": f"capital/{country}", "text": text,
                        "spans": [{"start": c0, "end": c0 + len(country), "label": "country"},
                                  {"start": k0, "end": k0 + len(capital), "label": "city"}]})
        names.setdefault(country, "country")
        names.setdefault(capital, "city")
    pattern = re.compile(r"\b(" + "|".join(re.escape(n) for n in sorted(names, key=lambda s: (-len(s), s))) + r")\b")
    for item in _suite(suites_dir / "wiki_ppl.jsonl"):
        spans = [{"start": m.start(), "end": m.end(), "label": names[m.group(1)]} for m in pattern.finditer(item["text"])]
        if spans:
            records.append({"id": f"wiki/{item['id']}", "text": item["text"], "spans": spans})
    return records


def write_entity_spans(records: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
