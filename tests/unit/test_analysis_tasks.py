"""Task JSONL parsing and its line-numbered errors."""

from __future__ import annotations

import pytest

from engram_cli.analysis.tasks import load_task, resolve_tasks
from engram_cli.errors import BadInputError


def _w(p, text):
    p.write_text(text, encoding="utf-8")
    return p


def test_header_and_inference(tmp_path):
    t = load_task(_w(tmp_path / "a.jsonl", '{"task": "x", "category": "reading", "output_type": "generate_until", "until": "."}\n'
                     '{"context": "c", "answers": "y"}\n'))
    assert (t.name, t.category, t.output_type, t.until, t.items[0]["answers"]) == ("x", "reading", "generate_until", ["."], ["y"])
    t = load_task(_w(tmp_path / "b.jsonl", '{"context": "c", "choices": ["a", "b"], "gold": 1}\n\n'))
    assert (t.name, t.category, t.output_type, t.chance) == ("b", "other", "multiple_choice", 0.5)


@pytest.mark.parametrize("body,line,msg", [
    ('{"context": "c", "choices": ["a", "b"], "gold": 0}\n{bad json\n', 2, "not valid JSON"),
    ('{"output_type": "multiple_choice"}\n{"context": "c", "choices": ["a"], "gold": 0}\n', 2, "choices"),
    ('{"output_type": "multiple_choice"}\n{"context": "c", "choices": ["a", "b"], "gold": 3}\n', 2, "gold"),
    ('{"output_type": "generate_until"}\n{"context": "c"}\n', 2, "lacks answers"),
    ('{"output_type": "nope"}\n', 1, "unknown output_type"),
    ('[1, 2]\n', 1, "JSON object"),
    ('{"foo": 1}\n', 1, "cannot tell"),
])
def test_malformed_has_line_number(tmp_path, body, line, msg):
    p = _w(tmp_path / "t.jsonl", body)
    with pytest.raises(BadInputError, match=msg) as exc:
        load_task(p)
    assert f"t.jsonl:{line}:" in exc.value.message


def test_resolve(tmp_path):
    _w(tmp_path / "s1.jsonl", '{"text": "a b"}\n')
    assert [t.name for t in resolve_tasks(["s1"], tmp_path)] == ["s1"]
    assert [t.name for t in resolve_tasks(None, tmp_path)] == ["s1"]
    with pytest.raises(BadInputError, match="task not found"):
        resolve_tasks(["nope"], tmp_path)
    with pytest.raises(BadInputError, match="no items"):
        load_task(_w(tmp_path / "e.jsonl", "\n"))
