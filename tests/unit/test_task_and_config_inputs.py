"""Malformed task files and configs: one exit-3 error naming the file and line (issue 14, item 7)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engram_cli.analysis.tasks import load_task
from engram_cli.errors import BadInputError

MC = b'{"task": "t", "category": "factual", "output_type": "multiple_choice"}\n'
GEN = b'{"task": "t", "category": "reading", "output_type": "generate_until"%s}\n{"context": "a", "answers": ["x"]}\n'


@pytest.mark.parametrize("content,needle", [
    (MC + b'{"context": "a", "choices": ["x", "y"], "gold": true}\n', ":2: 'gold'"),
    (MC + b'{"context": "\xff\xfe", "choices": ["x", "y"], "gold": 0}\n', ":2: not UTF-8"),
    (GEN % b', "max_gen_toks": "lots"', ":1: 'max_gen_toks'"),
    (GEN % b', "max_gen_toks": 0', ":1: 'max_gen_toks'"),
    (GEN % b', "until": 5', ":1: 'until'"),
    (GEN % b', "until": ["\\n", 3]', ":1: 'until'"),
])
def test_bad_task_files(tmp_path: Path, content: bytes, needle: str):
    f = tmp_path / "bad.jsonl"
    f.write_bytes(content)
    with pytest.raises(BadInputError, match=needle.replace(".", r"\.")) as exc:
        load_task(f)
    assert "\n" not in exc.value.message


def test_good_generate_header_still_loads(tmp_path: Path):
    f = tmp_path / "ok.jsonl"
    f.write_bytes(GEN % b', "until": ["\\n", "."], "max_gen_toks": 8')
    task = load_task(f)
    assert task.until == ["\n", "."] and task.max_gen_toks == 8


@pytest.mark.parametrize("eos", [[], "2", True, -1])
def test_bad_eos_token_id(eos):
    from engram_cli.layout.config import layout_from_config

    cfg = {"ple_layer_ids": [1, 3], "vocab_size": 500, "eos_token_id": eos, "hidden_size": 64, "ngram_size": 3,
           "heads_per_ngram": 4, "ngram_vocab_size_base": 1000}
    with pytest.raises(BadInputError, match="eos_token_id"):
        layout_from_config(cfg)
